"""The inductive task: a small labelled budget of the target, a validation split carved from it, the rest as test.

From a transductive :class:`Task` (labelled source, unlabelled target train split, labelled target test split),
``label_budget`` builds the task an inductive method trains on:

- labelled pool = the target's train split; ``labels_per_class`` images of each class (or ``label_fraction`` of
  each class, at least one) are drawn from it with the run's seed: the whole label budget;
- ``val_fraction`` of each class's budget (at least one image when > 0, at least one left to train on) becomes
  the validation split, used for early stopping: it is part of the budget, so this is legitimate here;
- the rest of the target (the target's test split plus every pool image outside the budget) is the test set.

In the returned task ``source_train`` / ``source_test`` are the labelled budget (augmented / not augmented):
the trainer's labelled loader reads them, and ``source_acc`` is the accuracy on the labelled training images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from da.data.base import LabelledTensors, Task, Unlabelled
from da.errors import ConfigError


class Transformed(Dataset):
    """``base`` with a per-sample transform of the image; labels unchanged."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return (self.transform(x) if self.transform else x), y


def _evaluation_view(pool: Dataset, test: Dataset) -> Dataset:
    """The pool as evaluation sees it: a folder data set's training view randomly crops and flips; its
    validation and test images must get the test split's deterministic transform instead."""
    if isinstance(pool, LabelledTensors) and isinstance(test, LabelledTensors) and pool.transform is not None:
        return LabelledTensors(pool.x, pool.y, test.transform)
    return pool


def budget_line(budget: dict) -> str:
    """The label budget in words, both labelled parts: ``80 labelled training + 20 validation images``."""
    val = budget.get("val") or 0
    return f"{budget.get('train')} labelled training" + (f" + {val} validation images" if val else " images")


def split_budget(
    labels: torch.Tensor,
    num_classes: int,
    labels_per_class: int | None,
    label_fraction: float | None,
    val_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the pool (train, val, rest), stratified by class and drawn with ``seed``.

    Hand-written rather than scikit-learn's ``train_test_split(stratify=...)``: a label budget is an exact
    number of images per class (``labels_per_class``), which a proportional stratified split cannot give.
    """
    rng = np.random.default_rng(seed)
    y = labels.cpu().numpy()
    train, val, rest = [], [], []
    for k in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == k))
        if labels_per_class is not None:
            n = labels_per_class
            if n > len(idx):
                raise ConfigError(
                    f"method.labels_per_class={n} but class {k} has only {len(idx)} images in the labelled pool"
                )
        else:
            n = max(1, round(label_fraction * len(idx))) if len(idx) else 0  # type: ignore[operator]
        n_val = 0
        if val_fraction > 0 and n > 0:
            n_val = min(max(1, round(val_fraction * n)), n - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:n])
        rest.append(idx[n:])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) for part in (train, val, rest))  # type: ignore[return-value]


def label_budget(
    task: Task,
    labels_per_class: int | None,
    label_fraction: float | None,
    val_fraction: float,
    seed: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Task:
    """The inductive version of ``task`` (see the module docstring)."""
    if (labels_per_class is None) == (label_fraction is None):
        raise ConfigError("set exactly one of method.labels_per_class and method.label_fraction (the other null)")
    pool = task.target_train.base  # labelled target images; the budget's labels are read here, nowhere else
    eval_pool = _evaluation_view(pool, task.target_test)
    labels = task.target_train_labels
    if labels is None:
        labels = torch.as_tensor([int(pool[i][1]) for i in range(len(pool))])  # type: ignore[arg-type]
    train, val, rest = split_budget(labels, task.num_classes, labels_per_class, label_fraction, val_fraction, seed)
    if len(train) == 0:
        raise ConfigError("the label budget leaves no training image; raise labels_per_class or label_fraction")
    labelled = Subset(eval_pool, train.tolist())
    rest_set = Subset(eval_pool, rest.tolist())
    test = ConcatDataset([task.target_test, rest_set]) if len(rest) else task.target_test
    notes = dict(task.notes)
    notes["budget"] = {
        "train": len(train),
        "val": len(val),
        "test": len(test),  # type: ignore[arg-type]
        "labels_per_class": labels_per_class,
        "label_fraction": label_fraction,
    }
    return Task(
        name=task.name,
        source=task.target,
        target=task.target,
        source_train=Transformed(Subset(pool, train.tolist()), transform),
        source_test=labelled,
        target_train=Unlabelled(rest_set),
        target_test=test,
        class_names=task.class_names,
        in_channels=task.in_channels,
        image_size=task.image_size,
        target_train_labels=None,
        skipped_files=task.skipped_files,
        skipped=task.skipped,
        notes=notes,
        val=Subset(eval_pool, val.tolist()) if len(val) else None,
    )
