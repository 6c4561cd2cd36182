"""``predictions.npz``: a finished run's label-free predictions of its reported weights.

Written at the end of every run (``trainer.save_predictions``: ``all``, ``logits`` or ``none``) so that a choice
across runs (da select's cross-run rules) re-runs no model. It holds exactly what a label-free validator may read
(:class:`da.validators.ValidationData`): logits (and, with ``all``, features) on the unlabelled target training
split under the evaluation transform, and for a method that uses source data the same on the labelled source
validation split with its labels. Target labels are never written here. Arrays are float16 (labels int64), or
float32 where a value lies beyond float16's range (|x| > 65504 would be stored as inf and flip a ranking; clipping
would tie values a rule tells apart). :func:`load` refuses, in one line, a file that is not such a record.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np
import torch

from da.errors import ConfigError
from da.runfolder import atomic_write
from da.validators import ValidationData

FILE = "predictions.npz"
KEEP = ("all", "logits", "none")
FLOAT16_MAX = float(np.finfo(np.float16).max)
ARRAYS = ("logits_t", "features_t", "logits_s", "features_s", "labels_s")


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
    None when the run saved none; a file that is not a predictions record raises :class:`ConfigError`."""
    path = os.path.join(run_dir, FILE)
    if not os.path.isfile(path):
        return None
    broken = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
    try:
        z = np.load(path, allow_pickle=False)
    except broken:
        z = None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path}: not a readable .npz archive (truncated, or not a predictions file)")
    with z:
        try:
            raw = {k: z[k] for k in z.files if k in ARRAYS}
        except ValueError:  # numpy refuses object arrays without pickle
            raise ConfigError(f"{path}: holds an object array (only numeric arrays are read)") from None
        except broken as err:
            raise ConfigError(f"{path}: truncated or corrupt ({type(err).__name__})") from None
    got = {k: torch.from_numpy(_checked(path, k, v)) for k, v in raw.items()}
    _check_rows(path, got)
    logits_t = got["logits_t"]
    features_t = got.get("features_t", torch.empty(len(logits_t), 0))
    if "labels_s" not in got:
        return ValidationData(logits_t, features_t)
    features_s = got.get("features_s", torch.empty(len(got["logits_s"]), 0))
    return ValidationData(logits_t, features_t, got["logits_s"], features_s, got["labels_s"])


def finite(data: ValidationData) -> bool:
    """Whether every saved logit and feature is finite (a diverged model's NaN cannot be scored)."""
    parts = (data.logits_t, data.features_t, data.logits_s, data.features_s)
    return all(bool(torch.isfinite(t).all()) for t in parts if t is not None)


def _checked(path: str, key: str, a: np.ndarray) -> np.ndarray:
    want = 1 if key == "labels_s" else 2
    if a.ndim != want or not (np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a)):
        raise ConfigError(f"{path}: {key} is a {a.ndim}-D {a.dtype} array, not a {want}-D numeric one")
    return a.astype(np.int64 if key == "labels_s" else np.float32)


def _check_rows(path: str, got: dict[str, torch.Tensor]) -> None:
    if "logits_t" not in got:
        raise ConfigError(f"{path}: no logits_t array (not a predictions file of this package)")
    if "features_t" in got and len(got["features_t"]) != len(got["logits_t"]):
        raise ConfigError(f"{path}: {len(got['features_t'])} feature rows for {len(got['logits_t'])} target logits")
    if ("labels_s" in got) != ("logits_s" in got):
        raise ConfigError(f"{path}: source logits and source labels must be saved together")
    if "labels_s" in got:
        rows = {len(got[k]) for k in ("logits_s", "features_s", "labels_s") if k in got}
        if len(rows) > 1:
            raise ConfigError(f"{path}: the source arrays differ in rows {sorted(rows)}")
        k, y = got["logits_t"].shape[1], got["labels_s"]
        out_of_range = len(y) > 0 and (int(y.min()) < 0 or int(y.max()) >= k)
        if out_of_range or got["logits_s"].shape[1] != k:
            raise ConfigError(f"{path}: source labels or logits do not match the {k} target classes")


def _half(t: torch.Tensor) -> np.ndarray:
    """float16, or float32 when a finite value lies beyond float16's range."""
    a = t.detach().float().cpu().numpy()
    big = np.abs(a[np.isfinite(a)]).max(initial=0.0) > FLOAT16_MAX
    return a if big else a.astype(np.float16)
