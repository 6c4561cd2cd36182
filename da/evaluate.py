"""Evaluation: predictions, accuracy and per-class accuracy on a labelled split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from da.data.batches import TensorSplit, resolve

if TYPE_CHECKING:
    from da.methods.base import Method


@dataclass
class Predictions:
    logits: torch.Tensor  # (N, K)
    features: torch.Tensor  # (N, D)
    labels: torch.Tensor | None  # (N,) or None for an unlabelled split


@torch.no_grad()
def predict(
    method: Method,
    dataset: Dataset | TensorSplit,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> Predictions:
    """Logits and bottleneck features of ``method`` in eval mode over a whole split, in order (on the CPU), as
    float32; ``amp_dtype``: the forward under autocast (the trainer's mixed precision).

    A split of in-memory tensors (see :mod:`da.data.batches`) is read by slicing, a batch at a time; any other
    ``Dataset`` through a ``DataLoader``.
    """
    if isinstance(dataset, ConcatDataset):  # e.g. an inductive task's test set: the parts one after another
        parts = [predict(method, d, device, batch_size, amp_dtype) for d in dataset.datasets]
        labels = [p.labels for p in parts]
        return Predictions(
            torch.cat([p.logits for p in parts]),
            torch.cat([p.features for p in parts]),
            None if any(y is None for y in labels) else torch.cat(labels),  # type: ignore[arg-type]
        )
    was_training = method.training
    method.eval()
    split = resolve(dataset)
    if split is not None:
        batches = split.slices(batch_size, device)
    else:
        batches = DataLoader(dataset, batch_size=batch_size, shuffle=False)  # type: ignore[arg-type]
    logits, feats, labels = [], [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    for x, y in batches:
        with autocast:
            logit, f = method.logits_and_features(x.to(device))
        logits.append(logit.float())
        feats.append(f.float())
        if isinstance(y, torch.Tensor) and y.dtype == torch.long:
            labels.append(y)
    method.train(was_training)
    unlabelled = getattr(dataset, "is_unlabelled", False) or (split is not None and split.labels is None)
    has_labels = len(labels) == len(logits) and not unlabelled
    return Predictions(torch.cat(logits).cpu(), torch.cat(feats).cpu(), torch.cat(labels).cpu() if has_labels else None)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of correct argmax predictions, in [0, 1]."""
    return (logits.argmax(1) == labels).float().mean().item() if len(labels) else float("nan")


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy of each class (None where the split has no sample of that class)."""
    pred = logits.argmax(1)
    out: list[float | None] = []
    for k in range(num_classes):
        mask = labels == k
        out.append((pred[mask] == k).float().mean().item() if mask.any() else None)
    return out
