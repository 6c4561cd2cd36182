"""Checkpoint and weights files: the one place that writes and reads them.

A run folder holds two files with weights:

- ``checkpoint.pt``: everything needed to resume exactly — the method's state (``model.*`` plus extra modules
  such as discriminators), optimiser, AMP scaler, counters, history, the RNG states (Python, NumPy, torch CPU
  and CUDA, stored as tensors and plain lists) and the config fingerprint.
- ``model.pt``: the trained model's plain ``state_dict`` (backbone, bottleneck, head), the weights that are
  reported; loads with ``torch.load(path, weights_only=True)``.

:func:`read_model_state` reads the model's weights from any of: a run folder, ``model.pt``, ``checkpoint.pt``
or a plain ``state_dict`` file; ``init=`` and ``backbone.checkpoint=`` both go through it.

Every file is read with ``torch.load(..., weights_only=True)``: tensors and plain containers only, so a shared
run folder or weights file can never run code (a pickle naming any other callable is refused with one line).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import re
from typing import Any

import numpy as np
import torch

from da.config import unfingerprinted_keys
from da.errors import ConfigError
from da.runfolder import atomic_write

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def save(obj: Any, path: str) -> None:
    """``torch.save`` through an atomic write (see :mod:`da.runfolder`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def digest(path: str) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def check_digest(path: str, results: Any, what: str) -> None:
    """``path`` (a run's model.pt) must be the file its run wrote: results.json's ``model_sha256`` (a folder
    written before the field has none and is not checked). Weights copied from another run of the same
    architecture would load without error; a file that is no weights file at all is refused as such first."""
    recorded = results.get("model_sha256") if isinstance(results, dict) else None
    if not isinstance(recorded, str) or not recorded:
        return
    try:
        found = digest(path)
    except OSError as err:
        raise ConfigError(f"{what}: cannot read {path} ({err.strerror or err})") from err
    if found != recorded:
        load(path, what, mmap=True)
        raise ConfigError(
            f"{what}: {path} is not the model that run trained (its sha256 {found[:12]}... differs from "
            f"results.json's model_sha256 {recorded[:12]}...): copied from another run? Restore its own model.pt "
            "or retrain it"
        )


def load(path: str, what: str, hint: str = "", mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only, never code. An unreadable
    file (truncated, empty, foreign) or one that holds other objects is one ConfigError (+ ``hint``).
    ``mmap``: the tensors stay on disk until read (to look at a checkpoint's other entries cheaply)."""
    try:
        with _legacy_numpy_arrays():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as err:
        raise ConfigError(f"{what}: file not found: {path}") from err
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):  # a corrupt pickle, not a foreign object
            raise ConfigError(f"{what}: cannot read {path} as a torch file ({_first_line(err)}){hint}") from err
        named = re.search(r"GLOBAL (\S+)", str(err))
        if named is None:  # no foreign object named: the file is no pickle of tensors at all
            raise ConfigError(f"{what}: cannot read {path} as a torch file ({_first_line(err)}){hint}") from None
        raise ConfigError(
            f"{what}: {path} holds objects other than tensors{f' ({named.group(1)})' if named else ''}; "
            f"refusing to unpickle it (only weights files are read){hint}"
        ) from None
    except Exception as err:
        raise ConfigError(f"{what}: cannot read {path} as a torch file ({_first_line(err)}){hint}") from err


def _legacy_numpy_arrays() -> contextlib.AbstractContextManager:
    """Checkpoints of earlier versions hold NumPy's RNG state as an ndarray: allow NumPy's array constructor (no
    other callable) so such run folders still resume (torch >= 2.5; before, they are refused with one line)."""
    allow = getattr(torch.serialization, "safe_globals", None)
    if allow is None:
        return contextlib.nullcontext()
    core = np._core if hasattr(np, "_core") else np.core  # NumPy 2 renamed numpy.core
    return allow([core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))])


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:80]}"


def read_model_state(path: str, what: str = "init") -> dict[str, torch.Tensor]:
    """The whole model's ``state_dict`` from a run folder, ``model.pt``, ``checkpoint.pt`` or a state_dict file."""
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        candidates = [os.path.join(path, MODEL), os.path.join(path, CHECKPOINT)]
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise ConfigError(f"{what}: run folder {path} holds neither {MODEL} nor {CHECKPOINT}")
        path = found[0]
    state = load(path, what)
    if isinstance(state, dict) and isinstance(state.get("method"), dict):  # a trainer checkpoint: the method's
        state = state["method"]
    if isinstance(state, dict):  # a method's own state (its get_extra_state) is no weight of the model
        state = {k: v for k, v in state.items() if not str(k).endswith("_extra_state")}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what}: {path} holds no state_dict")
    if any(k.startswith("model.") for k in state):  # the method's state: keep its model part
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def rng_state() -> dict[str, Any]:
    """Every random stream training draws from, to resume exactly (CUDA's too when it is in use), as tensors and
    plain containers (a checkpoint loads with ``weights_only=True``)."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global RNG, restored on resume
    np_state["state"] = {  # the MT19937 key (624 uint32 words) as an int64 tensor, lossless
        "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "pos": int(np_state["state"]["pos"]),
    }
    state = {"torch": torch.get_rng_state(), "numpy": np_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    if isinstance(np_state, dict):  # this version's plain form (an earlier one saved NumPy's own tuple)
        key = np.asarray(np_state["state"]["key"], dtype=np.int64).astype(np.uint32)
        np_state = {**np_state, "state": {"key": key, "pos": int(np_state["state"]["pos"])}}
    np.random.set_state(np_state)  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------- resuming under the same config
def fingerprint(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that determines a run's numbers (a checkpoint resumes only under it): all
    of it but the keys whose dataclass field is marked as changing no number (``da.config.unfingerprinted``:
    the progress bar, TensorBoard, ...), so a run folder resumes with another value of those."""
    out = dict(resolved)
    for key in unfingerprinted_keys(resolved):
        *parents, leaf = key.split(".")
        node = out
        for part in parents:  # copy the path down to the key: ``resolved`` stays as it was
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.pop(leaf, None)
    return out


def config_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs, e.g. ``["trainer.lr"]``."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        va, vb, name = a.get(key), b.get(key), f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{name}.")
        elif va != vb:
            out.append(name)
    return out


def check_resumable(state: dict[str, Any], signature: dict[str, Any], path: str) -> None:
    """Refuse a checkpoint written under another config, naming the keys that differ."""
    differs = config_differences(state.get("signature", {}), signature)
    if differs:
        shown = ", ".join(differs[:5]) + (f" and {len(differs) - 5} more" if len(differs) > 5 else "")
        hint = " (the LR schedule and the reported epoch depend on it)" if "trainer.epochs" in differs else ""
        raise ConfigError(
            f"{path} was written by a run with a different config: {shown}{hint}; "
            "use another run folder, or trainer.resume=false to move its run to <run>/replaced/<time>/ and start afresh"
        )


def read_resumable(run_dir: str, signature: dict[str, Any], mmap: bool = False) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir`` to resume from (None if there is none), refused if its config differs.
    ``mmap=True`` leaves the weights on disk: the CLI checks a folder this way before it writes anything."""
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isfile(path):
        return None
    state = load(path, "resume", hint="; delete it, or run with trainer.resume=false to start afresh", mmap=mmap)
    if not isinstance(state, dict) or "method" not in state:
        raise ConfigError(f"resume: {path} is not a checkpoint of this package; delete it or use trainer.resume=false")
    check_resumable(state, signature, path)
    return state
