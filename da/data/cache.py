"""The decoded-image cache shared by runs: every image of a file list decoded once, in parallel worker processes,
into one uint8 file ``<data_root>/.da-cache/<key>.u8`` of shape (N, 3, S, S), reused by every later run.

The key hashes the decoder version (this module's ``DECODER_VERSION`` and Pillow's), the size and every file's
path, byte size and modification time: a changed image, list or size is another key. Several jobs starting at
once are safe: one takes ``<key>.lock`` (flock) and decodes into ``<key>.u8.tmp-<pid>``, renamed into place when
complete; ``<key>.json`` (the decode failures, the shape, the bytes' CRC-32) is written last, atomically — an
entry without it, with a malformed one, or whose bytes no longer match the CRC-32 (checked once per process; for a
set read from disk, only when the file's modification time changed) is decoded again. The others wait on the
lock, then read the finished file. The workers are spawned: they hold none of the run's files and die with it
(:func:`_pool`).

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

from da.data.decode import decode_image
from da.errors import DataError, one_line
from da.runfolder import read_json, write_json

log = logging.getLogger(__name__)

# bump when decoding (filter, colour conversion) or the entry's record changes: old entries are not read
DECODER_VERSION = 2
CACHE_DIR = ".da-cache"
MIN_CACHED_BYTES = 256 * 2**20  # dataset.cache=auto caches decoded sets at least this large (smaller decode fast)
POOL_MIN_IMAGES = 1000  # fewer images decode faster here than worker processes start (each imports torch)


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


def _worker_start(parent: int) -> None:
    """A decode worker dies with the run that started it: on Linux the kernel sends it SIGKILL when its parent
    dies (``prctl(PR_SET_PDEATHSIG)``, prctl(2)); Ctrl-C reaches the whole process group, and the run stops us."""
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the run died before the line above took effect
        os._exit(1)


def _pool(workers: int) -> ProcessPoolExecutor:
    """Spawned worker processes, children of the run: a forked worker would inherit every open file of the run (the
    run folder's and the cache's flock among them) and hold them after a kill; a forkserver's worker is the
    forkserver's child, and the forkserver lives as long as its workers do (they hold its liveness pipe)."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(),))


@contextlib.contextmanager
def _main_not_rerun() -> Iterator[None]:
    """While workers start: a spawned worker imports this module only, never the parent's ``__main__`` again."""
    # A script that trains at its top level (no ``if __name__ == "__main__":``) would run again in every worker,
    # which then waits forever on the cache entry the parent holds; multiprocessing prepares a spawned child's
    # main from these two attributes (multiprocessing.spawn.get_preparation_data).
    import sys

    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (an interrupted decode): queued chunks are dropped, running ones killed."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, AttributeError):
            proc.kill()


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
    if workers == 1 or len(jobs) == 1 or len(paths) < POOL_MIN_IMAGES:
        for part in map(_decode_rows, jobs):
            errors.update(part)
    else:
        pool = _pool(workers)
        try:
            with _main_not_rerun():
                for part in pool.map(_decode_rows, jobs):
                    errors.update(part)
        except BaseException:  # Ctrl-C, SIGTERM, a broken worker: no worker outlives the decode
            _stop(pool)
            raise
        pool.shutdown()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
    return errors


def cached_decode(
    paths: list[str], size: int, cache_root: str, budget: int, what: str
) -> tuple[torch.Tensor | DiskImages, dict[int, str]]:
    """The (N, 3, S, S) decoded images of ``paths`` from the cache under ``cache_root`` (decoded there first if
    missing, malformed or not matching its checksum) — a tensor when they fit ``budget`` bytes, else
    :class:`DiskImages` — and {row: reason} of the files that could not be decoded."""
    folder = os.path.join(cache_root, CACHE_DIR)
    key = cache_key(paths, size)
    data, meta_path = os.path.join(folder, f"{key}.u8"), os.path.join(folder, f"{key}.json")
    shape = (len(paths), 3, size, size)
    entry = _verified(data, meta_path, shape, budget, None)
    if entry is None:
        try:
            os.makedirs(folder, exist_ok=True)
            with file_lock(os.path.join(folder, f"{key}.lock")):
                entry = _verified(data, meta_path, shape, budget, what)  # another job may have finished it meanwhile
                if entry is None:
                    meta = _build(paths, size, data, meta_path, shape, what)
                    entry = _open(data, shape, budget), meta
        except OSError as err:
            raise DataError(
                f"{what}: cannot write the decoded-image cache in {folder} ({one_line(err)}): free space there, "
                "or set dataset.cache=false to decode into memory"
            ) from err
    images, meta = entry
    if isinstance(images, DiskImages):
        log.info(
            "%s: %.1f GiB decoded > memory budget %.1f GiB: batches are read from %s",
            what,
            images.nelement() / 2**30,
            budget / 2**30,
            data,
        )
    return images, {int(k): v for k, v in meta["errors"].items()}


def _open(data: str, shape: tuple[int, ...], budget: int) -> torch.Tensor | DiskImages:
    images = DiskImages(data, shape)
    return images.load() if images.nelement() <= budget else images


def _complete(data: str, meta_path: str, shape: tuple[int, ...]) -> dict | None:
    """The entry's record, or None when it is missing, unreadable or malformed, or the file has another size."""
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("shape") != list(shape) or not isinstance(meta.get("crc32"), int):
        return None
    errors = meta.get("errors")
    if not isinstance(errors, dict) or not all(k.isdigit() and isinstance(v, str) for k, v in errors.items()):
        return None
    try:
        return meta if os.path.getsize(data) == int(np.prod(shape)) else None
    except OSError:
        return None


# entries whose checksum this process has verified: (path, inode, size, mtime_ns) -> crc32
_VERIFIED: dict[tuple, int] = {}


def _identity(data: str) -> tuple:
    st = os.stat(data)
    return data, st.st_ino, st.st_size, st.st_mtime_ns


def _verified(
    data: str, meta_path: str, shape: tuple[int, ...], budget: int, what: str | None
) -> tuple[torch.Tensor | DiskImages, dict] | None:
    """(images, record) of a complete entry whose bytes match its checksum (checked once per process); None
    means decode again (with one warning line naming ``what`` when the bytes changed, unless it is None)."""
    meta = _complete(data, meta_path, shape)
    if meta is None:
        return None
    try:
        identity = _identity(data)
        images = _open(data, shape, budget)
        # a set on disk is hashed only when the file changed since its decode: hashing reads it all, at every start
        unchanged = isinstance(images, DiskImages) and meta.get("mtime_ns") == identity[3]
        if not unchanged and _VERIFIED.get(identity) != meta["crc32"]:
            crc = _crc32(images)
            if crc != meta["crc32"]:
                if what is not None:
                    log.warning("%s: %s does not match its checksum (changed on disk): decoding again", what, data)
                return None
            _VERIFIED[identity] = crc
    except (OSError, DataError):
        return None
    return images, meta


def _crc32(images: torch.Tensor | DiskImages) -> int:
    """zlib's CRC-32 of the decoded bytes: of the tensor in memory, or of the file read in 64 MiB blocks."""
    import zlib

    if isinstance(images, torch.Tensor):
        return zlib.crc32(memoryview(images.numpy()).cast("B"))
    crc, block = 0, memoryview(bytearray(64 * 2**20))
    with open(images.path, "rb", buffering=0) as fh:
        while n := fh.readinto(block):
            crc = zlib.crc32(block[:n], crc)
    return crc


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
        crc = _crc32(DiskImages(tmp, shape))
        os.replace(tmp, data)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    identity = _identity(data)
    _VERIFIED[identity] = crc
    meta = {
        "shape": list(shape),
        "errors": {str(k): v for k, v in errors.items()},
        "paths": len(paths),
        "decode_seconds": round(time.perf_counter() - start, 3),
        "decoder": DECODER_VERSION,
        "crc32": crc,
        "mtime_ns": identity[3],
    }
    write_json(meta_path, meta)
    return meta
