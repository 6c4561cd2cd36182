"""The run folder on disk: atomic writes, an exclusive lock, and checks that a folder can be written at all.

Every file a run writes (config.yaml, log.csv, results.json, checkpoint.pt, model.pt) goes through
:func:`atomic_write`: the content lands in a uniquely named temporary file in the same folder, which is then
renamed over the target. A crash or a full disk leaves the previous version (or nothing), never half a file,
and a failed write removes its temporary file.

:class:`RunLock` holds ``<run>/.lock`` with ``flock`` for the lifetime of a run: a second run (another seed of a
sweep, a second terminal, a parallel launcher job) that points at the same folder stops with one clear line
instead of mixing its files with the first's. The operating system drops the lock when the process dies,
so a ``kill -9`` never leaves a stale lock behind. The CLI takes a folder's lock (re-entrant) before anything is
written there, and :func:`da.fit` then locks it again within the same process.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from da.errors import ConfigError

LOCK_NAME = ".lock"
# lock files this process holds re-entrantly (real path -> nested holders): flock conflicts between two
# descriptors of one process, so a nested RunLock of such a folder (the CLI's, then fit's) counts here instead
_HELD: dict[str, int] = {}
_UMASK = os.umask(0)
os.umask(_UMASK)
TMP_SUFFIX = ".tmp"
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))  # no space, quota exceeded


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file in the same folder, renamed over ``path``.
    A full disk (or quota) is one ConfigError naming the file; the previous version of the file is kept."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX, dir=folder)
    except OSError as err:
        full = _disk_full(err, path)
        if full is None:
            raise
        raise full from None
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; a run folder's files follow the umask
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        full = _disk_full(err, path)
        if full is not None:
            raise full from None
        raise


def _disk_full(err: BaseException, path: str) -> ConfigError | None:
    """One line for a full disk or quota anywhere in ``err``'s chain (torch.save wraps the OSError of a failed
    write in a RuntimeError of its zip writer), else None."""
    seen: BaseException | None = err
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return ConfigError(
                f"cannot write {path}: {os.strerror(seen.errno)} (the previous version of the file, if any, is "
                "kept); free some space and rerun"
            )
        seen = seen.__cause__ or seen.__context__
    return None


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
    """An exclusive, non-blocking lock on a run folder (``<run>/.lock``), released when the process ends.

    ``reentrant``: while it is held, another RunLock of the same folder in this process succeeds (nested) instead
    of conflicting: the CLI takes the folder before it calls :func:`da.fit`, which locks it again."""

    def __init__(self, folder: str, reentrant: bool = False) -> None:
        self.path = os.path.join(folder, LOCK_NAME)
        self.reentrant = reentrant
        self._fh: IO[bytes] | None = None
        self._nested = False
        self._previous = b""

    def acquire(self) -> RunLock:
        key = os.path.realpath(self.path)
        if _HELD.get(key):
            _HELD[key] += 1
            self._nested = True
            return self
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected against each other there
            return self
        fh = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - held open for the lock's lifetime; unbuffered
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().decode(errors="replace").strip() or "another process"
            fh.close()
            raise ConfigError(
                f"run folder {os.path.dirname(self.path)} is in use by another run ({holder}); "
                "wait for it to finish or choose another hydra.run.dir"
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for the message above (a full disk may refuse it)
            fh.seek(0)
            self._previous = fh.read()
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}".encode())
        self._fh = fh
        if self.reentrant:
            _HELD[key] = 1
        return self

    def release(self, restore: bool = False) -> None:
        """Drop the lock; ``restore``: put back what the lock file said before (a run that was refused after
        taking the lock leaves the folder as it found it)."""
        key = os.path.realpath(self.path)
        if self._nested:
            _HELD[key] -= 1
            self._nested = False
        elif self._fh is not None:
            if restore:
                with contextlib.suppress(OSError):
                    self._fh.seek(0)
                    self._fh.truncate()
                    self._fh.write(self._previous)
            _HELD.pop(key, None)
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def only_hydra_log(run_dir: str) -> bool:
    """Whether ``run_dir`` holds nothing but an empty run.log (the CLI: Hydra made the folder for this run)."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return False
    return all(e == "run.log" and os.path.getsize(os.path.join(run_dir, e)) == 0 for e in entries)


def drop_unstarted(run_dir: str, fresh: bool) -> bool:
    """After an error, with the folder's lock held: remove a folder made for this run (``fresh``) that it never
    wrote to (no config.yaml: an error found before the run began leaves no stub folder), closing the log handler
    writing into it; True when removed."""
    if not fresh or os.path.exists(os.path.join(run_dir, "config.yaml")):
        return False
    detach_logs(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def detach_logs(run_dir: str) -> None:
    """Close the log files writing into ``run_dir`` (Hydra's run.log): a refused run writes nothing there."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and os.path.dirname(handler.baseFilename) == run_dir:
            root.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def locked_run_dir(path: str) -> Iterator[str]:
    """Create, lock and clean (stale temporary files) a run folder for the duration of a run."""
    path = ensure_run_dir(path)
    with RunLock(path):
        remove_stale_tmp(path)
        yield path
