"""The run folder on disk: atomic writes, an exclusive lock, and checks that a folder can be written at all.

Every file a run writes (config.yaml, log.csv, results.json, checkpoint.pt, model.pt) goes through
:func:`atomic_write`: the content lands in a uniquely named temporary file in the same folder, which is then
renamed over the target. A crash or a full disk leaves the previous version (or nothing), never half a file,
and a failed write removes its temporary file.

:class:`RunLock` holds ``<run>/.lock`` with ``flock`` for the lifetime of a run: a second run (another seed of a
sweep, a second terminal, a parallel launcher job) that points at the same folder stops with one clear line
instead of mixing its files with the first's. The operating system drops the lock when the process dies,
so a ``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from da.errors import ConfigError

LOCK_NAME = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file in the same folder, renamed over ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a run folder's files follow the umask
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN / Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path: str, data: Any) -> None:
    """Strict JSON (non-finite numbers become null), written atomically."""
    write_text(path, json.dumps(finite_or_none(data), indent=2, allow_nan=False) + "\n")


def read_json(path: str) -> Any | None:
    """The JSON in ``path``, or None if it is missing, truncated or not JSON."""
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def remove_stale_tmp(folder: str) -> list[str]:
    """Delete temporary files left by interrupted writes (call only while holding the folder's lock)."""
    removed = []
    for path in glob.glob(os.path.join(folder, f"*{TMP_SUFFIX}")) + glob.glob(os.path.join(folder, f".*{TMP_SUFFIX}")):
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed


def check_run_dir(path: str) -> str:
    """The absolute run folder, if it can be created: not a file, no file among its parents, not read-only."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"run folder {path} exists and is not a folder; choose another hydra.run.dir")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"cannot create run folder {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"cannot create run folder {path}: {parent} is not writable (read-only mount?)")
    return path


def ensure_run_dir(path: str) -> str:
    """Create the run folder (and its parents); a path that cannot be a writable folder is one ConfigError."""
    path = check_run_dir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create run folder {path}: {err.strerror or err}") from err
    if not os.access(path, os.W_OK):
        raise ConfigError(f"run folder {path} is not writable (read-only mount or permissions)")
    return path


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``<run>/.lock``), released when the process ends."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, LOCK_NAME)
        self._fh: IO[str] | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected against each other there
            return self
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise ConfigError(
                f"run folder {os.path.dirname(self.path)} is in use by another run ({holder}); "
                "wait for it to finish or choose another hydra.run.dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_run_dir(path: str) -> Iterator[str]:
    """Create, lock and clean (stale temporary files) a run folder for the duration of a run."""
    path = ensure_run_dir(path)
    with RunLock(path):
        remove_stale_tmp(path)
        yield path
