"""The run folder on disk: atomic writes, an exclusive lock, and checks that a folder can be written at all.

Every file a run writes (config.yaml, log.csv, results.json, checkpoint.pt, model.pt) goes through
:func:`atomic_write`: the content lands in a uniquely named temporary file in the same folder, which is then
renamed over the target. A crash or a full disk leaves the previous version (or nothing), never half a file,
and a failed write removes its temporary file.

:class:`RunLock` holds ``<run>/.lock`` with ``flock`` for the lifetime of a run: a second run (another seed of a
sweep, a second terminal, a parallel launcher job) that points at the same folder stops with one clear line
instead of mixing its files with the first's. The operating system drops the lock when the process dies,
so a ``kill -9`` never leaves a stale lock behind. The CLI takes a folder's lock (re-entrant) before anything is
written there, and :func:`da.fit` then locks it again within the same process. The lock's descriptor is not
inherited: a process forked while it is held (a decode worker) closes its copy, so it never keeps the folder
locked after the run is gone.

A run folder belongs to one kind of run (``training``: ``da train`` / :func:`da.fit`; ``test_time``:
``python -m da.tta`` / ``fit_stream``) and, once finished, to one config: :func:`claim_folder` refuses anything
else before a file is written, and moves a run aside to ``<run>/replaced/<time>/`` when the new run starts the
folder afresh (``trainer.resume=false``).
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
import time
import weakref
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
NAME_MAX = 255  # bytes in one file or folder name on ext4, XFS, APFS, NTFS (os.pathconf's PC_NAME_MAX where known)
# the random part and suffix mkstemp adds to a temporary file's name, with the leading dot and separator
TMP_EXTRA = 1 + 1 + 8 + len(TMP_SUFFIX)


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file in the same folder, renamed over ``path``.
    A full disk (or quota) is one ConfigError naming the file; the previous version of the file is kept."""
    folder = os.path.dirname(os.path.abspath(path))
    check_name_length(path, "cannot write")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{_fit_name(os.path.basename(path))}.", suffix=TMP_SUFFIX, dir=folder)
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


def _fit_name(name: str) -> str:
    """``name`` cut so that a temporary file named after it stays within the file system's name limit."""
    raw = os.fsencode(name)
    return name if len(raw) <= NAME_MAX - TMP_EXTRA else raw[: NAME_MAX - TMP_EXTRA].decode("utf-8", "ignore")


def name_limit(folder: str) -> int:
    """The longest file or folder name (bytes) the file system of ``folder`` (or its nearest existing parent)
    allows."""
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return int(os.pathconf(folder or ".", "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # Windows has no pathconf
        return NAME_MAX


def check_name_length(path: str, action: str) -> None:
    """One ConfigError when a name in ``path`` is longer than its file system allows (instead of an OSError
    deep in Hydra's folder creation or a write)."""
    limit = name_limit(os.path.dirname(os.path.abspath(path)))
    for part in os.path.abspath(path).split(os.sep):
        size = len(os.fsencode(part))
        if size > limit:
            raise ConfigError(
                f"{action} {path}: the name {part[:24]}... is {size} bytes long; the file system allows {limit} "
                "per file or folder name"
            )


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
    check_name_length(path, "cannot create run folder")
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
        os.set_inheritable(fh.fileno(), False)  # close-on-exec: a program the run starts never holds it
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            recorded = fh.read().decode(errors="replace").strip()
            fh.close()
            raise ConfigError(
                f"run folder {os.path.dirname(self.path)} is {_holder(self.path, recorded)}; "
                "wait for it to finish or choose another hydra.run.dir"
            ) from None
        with contextlib.suppress(OSError):  # who holds it, for the message above (a full disk may refuse it)
            fh.seek(0)
            self._previous = fh.read()
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}".encode())
        self._fh = fh
        _OPEN.add(self)
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

    def _close_in_child(self) -> None:
        """In a forked child: close the inherited descriptor (the parent keeps the lock; the child never holds it)."""
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None


_OPEN: weakref.WeakSet[RunLock] = weakref.WeakSet()  # the locks this process holds, closed in a forked child


def _forget_locks_in_child() -> None:
    """A forked process shares its parent's lock until it closes the descriptor (flock belongs to the open file,
    not to a process): a worker left alive after its parent died would keep the folder locked."""
    for lock in list(_OPEN):
        lock._close_in_child()
    _OPEN.clear()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_holders(path: str) -> list[int]:
    """The processes (other than this one) with ``path`` open, found through /proc (Linux; [] elsewhere or for
    other users' processes)."""
    try:
        target = os.stat(path)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return []
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    st = os.stat(f"/proc/{pid}/fd/{fd}")
                    if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                        found.append(pid)
                        break
    return sorted(found)


def _holder(path: str, recorded: str) -> str:
    """Who holds the lock file ``path``, for the refusal: the live run whose pid it records, or the process that
    still holds it after that run died (a child it forked)."""
    pid = int(recorded.split()[-1]) if recorded.startswith("pid ") and recorded.split()[-1].isdigit() else None
    found = lock_holders(path)  # [] where /proc cannot tell
    if pid is not None and _alive(pid) and (not found or pid in found):
        return f"in use by another run (pid {pid})"
    holders = [h for h in found if h != pid]
    dead = f"the run that took it (pid {pid}) is no longer running" if pid is not None else "its run is gone"
    if holders:
        shown = ", ".join(str(h) for h in holders[:5])
        return (
            f"in use by another run's process: pid {shown} still holds {LOCK_NAME} ({dead}; a process it started "
            f"keeps the lock: stop it, e.g. kill {holders[0]})"
        )
    return f"in use by another run ({dead}; a process it started still holds {LOCK_NAME})"


TRAINING, TEST_TIME = "training", "test_time"
KINDS = {TRAINING: "a training run (da train)", TEST_TIME: "a test-time run (python -m da.tta)"}
REPLACED_DIR = "replaced"
# what a run of any kind writes: a folder holding one of these holds a run
RUN_FILES = ("results.json", "config.yaml", "checkpoint.pt", "model.pt", "log.csv")


def held_run(run_dir: str) -> tuple[str | None, dict[str, Any] | None]:
    """The kind of run ``run_dir`` holds (``training``, ``test_time``; None: no run, or none this package can
    tell) and its results.json when it finished (None otherwise)."""
    results = read_json(os.path.join(run_dir, "results.json"))
    if isinstance(results, dict):  # a test-time run's says so; training's has no ``kind``
        return str(results.get("kind") or TRAINING), results
    if any(os.path.isfile(os.path.join(run_dir, f)) for f in ("checkpoint.pt", "model.pt")):
        return TRAINING, None
    try:
        import yaml

        with open(os.path.join(run_dir, "config.yaml")) as fh:
            keys = set(yaml.safe_load(fh) or {})
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return None, None
    if "protocol" in keys:  # da.tta's root config (da/tta/config.py)
        return TEST_TIME, None
    return (TRAINING, None) if "trainer" in keys else (None, None)


def check_folder(
    run_dir: str, kind: str, differs: Callable[[dict[str, Any]], list[str]], replace: bool = False, hint: str = ""
) -> bool:
    """Refuse ``run_dir`` (one ConfigError, nothing written) when it holds a run of another kind, or a finished
    run of another config (``differs(its config)``: the keys that differ) unless ``replace``; ``hint`` ends the
    second refusal. True when the folder holds a run of this kind that ``replace`` is to move aside."""
    held, results = held_run(run_dir)
    if held is None:
        return False
    if held != kind:
        raise ConfigError(
            f"run folder {run_dir} holds {KINDS.get(held, held)}; {KINDS[kind]} never writes into it: choose "
            "another run folder"
        )
    if replace:
        return any(os.path.exists(os.path.join(run_dir, f)) for f in RUN_FILES)
    keys = differs(results.get("config") or {}) if results is not None else []
    if keys:
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        raise ConfigError(
            f"run folder {run_dir} holds a finished {KINDS[kind][2:]} with a different config: {shown}; "
            f"choose another run folder{hint}"
        )
    return False


def claim_folder(
    run_dir: str, kind: str, differs: Callable[[dict[str, Any]], list[str]], replace: bool = False, hint: str = ""
) -> str | None:
    """:func:`check_folder`, then (``replace``) move the run the folder holds aside; call with the folder's lock
    held, before the run writes anything. Returns where the earlier run went, or None."""
    if check_folder(run_dir, kind, differs, replace, hint):
        return move_aside(run_dir)
    return None


def move_aside(run_dir: str) -> str:
    """Move the run in ``run_dir`` to ``<run_dir>/replaced/<time>/`` (with the folder's lock held): results.json
    first, so that an interrupted move never leaves a finished-looking run of mixed files; an interrupted move is
    completed by the next. run.log is copied (a log handler may be writing it) and emptied."""
    replaced = os.path.join(run_dir, REPLACED_DIR)
    os.makedirs(replaced, exist_ok=True)
    partial = sorted(e for e in os.listdir(replaced) if e.startswith(".") and e.endswith(".partial"))
    stamp = partial[0][1 : -len(".partial")] if partial else time.strftime("%Y%m%d-%H%M%S")
    while not partial and os.path.exists(os.path.join(replaced, stamp)):
        stamp += "-1"
    staging = os.path.join(replaced, f".{stamp}.partial")
    os.makedirs(staging, exist_ok=True)
    keep = {LOCK_NAME, REPLACED_DIR, "run.log"}
    rest = sorted(e for e in os.listdir(run_dir) if e not in keep and e not in RUN_FILES)
    for entry in [*RUN_FILES, *rest]:  # results.json first: what makes a folder a finished run goes first
        if os.path.lexists(os.path.join(run_dir, entry)):
            os.replace(os.path.join(run_dir, entry), os.path.join(staging, entry))
    log_file = os.path.join(run_dir, "run.log")
    if os.path.isfile(log_file):
        shutil.copy2(log_file, os.path.join(staging, "run.log"))
        with open(log_file, "r+b") as fh:
            fh.truncate()
    target = os.path.join(replaced, stamp)
    os.replace(staging, target)
    return target


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
def locked_run_dir(path: str, claim: Callable[[str], object] | None = None) -> Iterator[str]:
    """Create, lock and clean (stale temporary files) a run folder for the duration of a run; ``claim(folder)``
    runs first with the lock held (:func:`claim_folder`): when it refuses, the lock file is as it was."""
    path = ensure_run_dir(path)
    lock = RunLock(path).acquire()
    try:
        if claim is not None:
            claim(path)
    except BaseException:
        lock.release(restore=True)
        raise
    try:
        remove_stale_tmp(path)
        yield path
    finally:
        lock.release()
