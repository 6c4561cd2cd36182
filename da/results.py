"""results.json: its schema, in one place (ARCHITECTURE.md, "results.json" says what each field means).

:class:`Results` is filled once, at the end of a run, and written once (:func:`da.runfolder.write_json`:
strict JSON, non-finite numbers as ``null``). ``schema_version`` changes when a field changes meaning or
disappears; readers (``benchmarks/collect.py``, ``da.load_run``) read results.json as a plain dict.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2  # 1: the unversioned results.json of earlier runs (the same fields, without this one)


@dataclass
class Results:
    method: str
    dataset: str
    source: str
    target: str
    backbone: str
    seed: int
    target_acc: float | None  # on the target test split, of the reported weights (model.pt)
    source_acc: float | None  # on the source test split; None for a source-free method
    per_class_acc: dict[str, float | None]  # target test accuracy of each class (None: no image of it)
    epochs: int
    steps: int
    train_seconds: float
    images_per_second: float
    precision: str  # trainer.amp's autocast dtype: bfloat16, float16 or float32
    selection: dict[str, Any]  # {rule, epoch, score}: how the reported weights were chosen, never by target labels
    validators: dict[str, float]  # label-free scores of the reported weights
    validator_best_epoch: dict[str, int]  # the epoch each validator would choose
    selected: dict[str, dict[str, Any]]  # analysis only: each validator's pick and that epoch's target accuracy
    oracle: dict[str, Any] | None  # analysis only: the best epoch by target test accuracy; it chooses nothing
    splits: dict[str, int]  # the size of every split the run read
    collapse: dict[str, float] | None  # the collapse monitor's warning, or None
    device: str
    skipped_files: int
    init: str | None  # the checkpoint the run started from
    world_size: int  # processes under torchrun; 1 otherwise
    budget: dict[str, int] | None = None  # inductive: sizes of the labelled train / val splits and of the test set
    # the dataset's headline metric: accuracy, or mean_class_accuracy (VisDA-2017): the mean of per_class_acc over
    # the classes the target test split holds (mean_class_acc, written for every run)
    metric: str = "accuracy"
    mean_class_acc: float | None = None
    model_sha256: str | None = None  # sha256 of model.pt's bytes: load_run refuses weights of another run
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["budget"] is None:  # only inductive runs have one
            del out["budget"]
        return out


def headline_acc(r: dict[str, Any]) -> float | None:
    """A results.json's target accuracy in its dataset's headline metric: the mean per-class accuracy where the
    dataset says so (``metric``: VisDA-2017), else the overall ``target_acc``."""
    if r.get("metric") == "mean_class_accuracy" and r.get("mean_class_acc") is not None:
        return r["mean_class_acc"]
    return r["target_acc"]


def versions() -> dict[str, str]:
    """The versions of the run's libraries, read from their installed metadata (importing torchvision or
    scikit-learn only to read a version would cost seconds of start-up)."""
    from importlib.metadata import PackageNotFoundError, version

    import hydra
    import numpy
    import torch

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "hydra": hydra.__version__,
    }
    for key, dist in (("torchvision", "torchvision"), ("scikit-learn", "scikit-learn"), ("da", "da")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # metadata is absent when running from an uninstalled checkout
            pass
    try:
        out["pytorch-adapt"] = version("pytorch-adapt")
    except PackageNotFoundError:
        pass
    return out


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
