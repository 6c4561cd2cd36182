"""Evaluation: predictions, accuracy and per-class accuracy on a labelled split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from da.methods.base import Method


@dataclass
class Predictions:
    logits: torch.Tensor  # (N, K)
    features: torch.Tensor  # (N, D)
    labels: torch.Tensor | None  # (N,) or None for an unlabelled split


@torch.no_grad()
def predict(method: Method, dataset: Dataset, device: torch.device, batch_size: int = 256) -> Predictions:
    """Logits and bottleneck features of ``method`` in eval mode over a whole split, in order."""
    was_training = method.training
    method.eval()
    logits, feats, labels = [], [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        logit, f = method.logits_and_features(x)
        logits.append(logit.float().cpu())
        feats.append(f.float().cpu())
        if isinstance(y, torch.Tensor) and y.dtype == torch.long:
            labels.append(y)
    method.train(was_training)
    has_labels = len(labels) == len(logits) and not getattr(dataset, "is_unlabelled", False)
    return Predictions(torch.cat(logits), torch.cat(feats), torch.cat(labels) if has_labels else None)


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
