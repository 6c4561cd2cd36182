"""``predictions.npz``: a finished run's label-free predictions of its reported weights.

Written at the end of every run (``trainer.save_predictions``: ``all``, ``logits`` or ``none``) so that a choice
across runs (issue 24's cross-run rules) re-runs no model. It holds exactly what a label-free validator may read
(:class:`da.validators.ValidationData`): logits (and, with ``all``, features) on the unlabelled target training
split under the evaluation transform, and for a method that uses source data the same on the labelled source
validation split with its labels. Target labels are never written here. Arrays are float16 (labels int64).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from da.runfolder import atomic_write
from da.validators import ValidationData

FILE = "predictions.npz"
KEEP = ("all", "logits", "none")


def save(run_dir: str, data: ValidationData, keep: str = "all") -> str | None:
    """Write ``<run_dir>/predictions.npz`` (atomically); return its path, or None when ``keep`` is ``none``."""
    if keep == "none":
        return None
    arrays: dict[str, np.ndarray] = {"logits_t": _half(data.logits_t)}
    if keep == "all":
        arrays["features_t"] = _half(data.features_t)
    if data.labels_s is not None and data.logits_s is not None:
        arrays["logits_s"] = _half(data.logits_s)
        arrays["labels_s"] = data.labels_s.detach().cpu().long().numpy()
        if keep == "all" and data.features_s is not None:
            arrays["features_s"] = _half(data.features_s)
    path = os.path.join(run_dir, FILE)
    atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))
    return path


def load(run_dir: str) -> ValidationData | None:
    """The run's saved predictions as float32 tensors (features: empty (N, 0) when only logits were kept), or
    None when the run saved none."""
    path = os.path.join(run_dir, FILE)
    if not os.path.isfile(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        got = {k: torch.from_numpy(z[k].astype(np.int64 if k == "labels_s" else np.float32)) for k in z.files}
    logits_t = got["logits_t"]
    features_t = got.get("features_t", torch.empty(len(logits_t), 0))
    if "labels_s" not in got:
        return ValidationData(logits_t, features_t)
    features_s = got.get("features_s", torch.empty(len(got["logits_s"]), 0))
    return ValidationData(logits_t, features_t, got["logits_s"], features_s, got["labels_s"])


def _half(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float16)
