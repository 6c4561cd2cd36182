"""The decoded-image cache shared by runs: every image of a file list decoded once, in parallel worker processes,
into one uint8 file ``<data_root>/.da-cache/<key>.u8`` of shape (N, 3, S, S), reused by every later run.

The key hashes the decoder version (this module's ``DECODER_VERSION`` and Pillow's), the size and every file's
path, byte size and modification time: a changed image, list or size is another key. Several jobs starting at
once are safe: one takes ``<key>.lock`` (flock) and decodes into ``<key>.u8.tmp-<pid>``, renamed into place when
complete; ``<key>.json`` (the decode failures, the shape) is written last, atomically — a cache entry without it
is incomplete and decoded again. The others wait on the lock, then read the finished file.

A cached set that fits the memory budget (``dataset.memory_budget_gb``; default half the machine's memory) is
read into one in-memory tensor (as an uncached decode would give: the same bytes). One above it stays on disk as
:class:`DiskImages`: a batch reads its rows with ``pread`` into a fresh (pinned, on CUDA) buffer, so the process
holds a batch, not the set; the operating system's page cache keeps what fits.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from PIL import Image

from da.errors import DataError, one_line
from da.runfolder import read_json, write_json

log = logging.getLogger(__name__)

DECODER_VERSION = 1  # bump when decoding changes (resizing filter, colour conversion): old entries are not read
CACHE_DIR = ".da-cache"
MIN_CACHED_BYTES = 256 * 2**20  # dataset.cache=auto caches decoded sets at least this large (smaller decode fast)


def memory_budget(gb: float | None) -> int:
    """Bytes a decoded set may take in memory: ``gb`` GiB, or (None) half the machine's physical memory."""
    if gb is not None:
        return int(gb * 2**30)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def cache_key(paths: list[str], size: int) -> str:
    """A hash of the decoder version, the size and every file's path, byte size and modification time."""
    import PIL

    digest = hashlib.sha256(f"{DECODER_VERSION}|{PIL.__version__}|{size}|{len(paths)}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
            digest.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(p)}|missing\n".encode())
    return digest.hexdigest()[:24]


class DiskImages:
    """Rows of a cached (N, 3, S, S) uint8 file, read on demand: what a split holds instead of a tensor when the
    decoded set exceeds the memory budget. Indexing with an index tensor, list or slice gives a view (no read);
    with an int, that image as a tensor; :meth:`read` (and ``index_select``) reads rows into a tensor."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, path: str, shape: tuple[int, ...], rows: np.ndarray | None = None) -> None:
        self.path, self.full_shape = path, tuple(shape)
        self.rows = np.arange(shape[0], dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.row_bytes = int(np.prod(shape[1:]))
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:  # worker processes reopen the file
        return {**self.__dict__, "_fd": None, "_pid": -1}

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.full_shape[1:]))

    def __len__(self) -> int:
        return len(self.rows)

    def nelement(self) -> int:
        return len(self.rows) * self.row_bytes

    def element_size(self) -> int:
        return 1

    def is_pinned(self) -> bool:
        """True: a batch is read straight into pinned memory (:meth:`read`), nothing needs pinning up front."""
        return True

    def pin_memory(self) -> DiskImages:
        return self

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            return self.read(torch.tensor([int(index)]))[0]
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return DiskImages(self.path, self.full_shape, self.rows[index])

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, index: torch.Tensor, pin: bool = False) -> torch.Tensor:
        """The rows ``index`` (B,) as a (B, 3, S, S) uint8 tensor; consecutive file rows are read at once."""
        rows = self.rows[index.cpu().numpy()]
        out = torch.empty((len(rows), *self.full_shape[1:]), dtype=torch.uint8, pin_memory=pin)
        buf = out.numpy().reshape(len(rows), self.row_bytes)
        fd, i = self._file(), 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            _pread_into(fd, memoryview(buf[i:j]).cast("B"), int(rows[i]) * self.row_bytes)
            i = j
        return out

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        assert dim == 0
        return self.read(index)

    def to(self, device: torch.device | str) -> torch.Tensor | DiskImages:
        """On the CPU the rows stay on disk; another device receives them all, 1,024 rows at a time."""
        device = torch.device(device)
        if device.type == "cpu":
            return self
        out = torch.empty(tuple(self.shape), dtype=torch.uint8, device=device)
        for start in range(0, len(self), 1024):
            out[start : start + 1024] = self.read(torch.arange(start, min(start + 1024, len(self)))).to(device)
        return out

    def load(self) -> torch.Tensor:
        """Every row in one in-memory tensor."""
        return self.read(torch.arange(len(self)))


def _pread_into(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise DataError(f"the decoded-image cache ended early at byte {offset + done}: delete it and rerun")
        done += n


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold ``path`` (flock, blocking): one process decodes a cache entry, the others wait for it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def _decode_rows(args: tuple) -> list[tuple[int, str]]:
    """Worker: decode ``paths`` into rows ``start..`` of the (N, 3, S, S) file ``out``; the failures' reasons."""
    out, shape, start, paths = args
    rows = np.memmap(out, dtype=np.uint8, mode="r+", shape=shape)
    errors = []
    for k, path in enumerate(paths):
        pixels = decode_image(path, shape[-1])
        if isinstance(pixels, str):
            errors.append((start + k, pixels))
        else:
            rows[start + k] = pixels.transpose(2, 0, 1)
    rows.flush()
    del rows
    return errors


def decode_image(path: str, size: int) -> np.ndarray | str:
    """(S, S, 3) uint8 pixels of one image, or the reason it cannot be read."""
    try:
        with Image.open(path) as img:
            img = _to_8bit(img).convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except Exception as err:  # a corrupt or truncated file of any kind is skipped, never fatal
        return f"{type(err).__name__}: {err}"


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grey images scaled to 8 bits: PIL's ``convert`` would clip them to 255."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return img
    arr = np.asarray(img).astype(np.float64)
    full = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
    return Image.fromarray(np.clip(np.rint(arr * 255.0 / full), 0, 255).astype(np.uint8), mode="L")


def _workers() -> int:
    try:
        return max(1, min(16, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(16, os.cpu_count() or 1))


def decode_to_file(paths: list[str], size: int, path: str, workers: int | None = None) -> dict[int, str]:
    """Decode ``paths`` in parallel worker processes into the (N, 3, S, S) uint8 file ``path``; {row: reason}
    of the files that could not be decoded (their rows stay zero)."""
    shape = (len(paths), 3, size, size)
    with open(path, "wb") as fh:
        fh.truncate(int(np.prod(shape)))
    workers = workers or _workers()
    chunk = max(1, min(512, -(-len(paths) // (4 * workers))))
    jobs = [(path, shape, a, paths[a : a + chunk]) for a in range(0, len(paths), chunk)]
    errors: dict[int, str] = {}
    if workers == 1 or len(jobs) == 1:
        results = map(_decode_rows, jobs)
    else:
        import multiprocessing as mp

        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context)
        results = pool.map(_decode_rows, jobs)
    try:
        for part in results:
            errors.update(part)
    finally:
        if workers > 1 and len(jobs) > 1:
            pool.shutdown()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return errors


def cached_decode(
    paths: list[str], size: int, cache_root: str, budget: int, what: str
) -> tuple[torch.Tensor | DiskImages, dict[int, str]]:
    """The (N, 3, S, S) decoded images of ``paths`` from the cache under ``cache_root`` (decoded there first if
    missing) — a tensor when they fit ``budget`` bytes, else :class:`DiskImages` — and {row: reason} of the
    files that could not be decoded."""
    folder = os.path.join(cache_root, CACHE_DIR)
    key = cache_key(paths, size)
    data, meta_path = os.path.join(folder, f"{key}.u8"), os.path.join(folder, f"{key}.json")
    shape = (len(paths), 3, size, size)
    meta = _complete(data, meta_path, shape)
    if meta is None:
        try:
            os.makedirs(folder, exist_ok=True)
            with file_lock(os.path.join(folder, f"{key}.lock")):
                meta = _complete(data, meta_path, shape)  # another job may have finished it meanwhile
                if meta is None:
                    meta = _build(paths, size, data, meta_path, shape, what)
        except OSError as err:
            raise DataError(
                f"{what}: cannot write the decoded-image cache in {folder} ({one_line(err)}): free space there, "
                "or set dataset.cache=false to decode into memory"
            ) from err
    errors = {int(k): v for k, v in meta["errors"].items()}
    images = DiskImages(data, shape)
    if images.nelement() <= budget:
        return images.load(), errors
    log.info(
        "%s: %.1f GiB decoded > memory budget %.1f GiB: batches are read from %s",
        what,
        images.nelement() / 2**30,
        budget / 2**30,
        data,
    )
    return images, errors


def _complete(data: str, meta_path: str, shape: tuple[int, ...]) -> dict | None:
    meta = read_json(meta_path)
    if not meta or list(meta.get("shape", [])) != list(shape) or not os.path.isfile(data):
        return None
    return meta if os.path.getsize(data) == int(np.prod(shape)) else None


def _build(paths: list[str], size: int, data: str, meta_path: str, shape: tuple[int, ...], what: str) -> dict:
    import shutil
    import time

    for stale in glob.glob(f"{data}.tmp-*"):  # left by a decode that was killed (we hold the lock)
        with contextlib.suppress(OSError):
            os.remove(stale)
    need = int(np.prod(shape))
    free = shutil.disk_usage(os.path.dirname(data)).free
    if free < need:
        raise OSError(f"{need / 2**30:.1f} GiB needed, {free / 2**30:.1f} GiB free")
    tmp = f"{data}.tmp-{os.getpid()}"
    start = time.perf_counter()
    log.info("%s: decoding %d images once into %s", what, len(paths), data)
    try:
        errors = decode_to_file(paths, size, tmp)
        os.replace(tmp, data)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    meta = {
        "shape": list(shape),
        "errors": {str(k): v for k, v in errors.items()},
        "paths": len(paths),
        "decode_seconds": round(time.perf_counter() - start, 3),
        "decoder": DECODER_VERSION,
    }
    write_json(meta_path, meta)
    return meta
