"""Checkpoint and weights files: the one place that writes and reads them.

A run folder holds two files with weights:

- ``checkpoint.pt``: everything needed to resume exactly — the method's state (``model.*`` plus extra modules
  such as discriminators), optimiser, AMP scaler, counters, history, the RNG states (Python, NumPy, torch CPU
  and CUDA) and the config fingerprint. It holds NumPy objects, so it is read with ``weights_only=False``;
  only read checkpoints you trust.
- ``model.pt``: the trained model's plain ``state_dict`` (backbone, bottleneck, head), the weights that are
  reported; loads with ``torch.load(path, weights_only=True)``.

:func:`read_model_state` reads the model's weights from any of: a run folder, ``model.pt``, ``checkpoint.pt``
or a plain ``state_dict`` file; ``init=`` and ``backbone.checkpoint=`` both go through it.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from da.errors import ConfigError
from da.runfolder import atomic_write

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


def save(obj: Any, path: str) -> None:
    """``torch.save`` through an atomic write (see :mod:`da.runfolder`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load(path: str, what: str, weights_only: bool = False, hint: str = "") -> Any:
    """``torch.load`` on the CPU; an unreadable file (truncated, empty, foreign) is one ConfigError (+ ``hint``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except FileNotFoundError as err:
        raise ConfigError(f"{what}: file not found: {path}") from err
    except Exception as err:
        first = (str(err).splitlines() or [""])[0][:80]
        raise ConfigError(f"{what}: cannot read {path} as a torch file ({type(err).__name__}: {first}){hint}") from err


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
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{what}: {path} holds no state_dict")
    if any(k.startswith("model.") for k in state):  # the method's state: keep its model part
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    return state


def rng_state() -> dict[str, Any]:
    """Every random stream training draws from, to resume exactly (CUDA's too when it is in use)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),  # noqa: NPY002 - the global RNG, restored on resume
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
