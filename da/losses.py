"""Losses as pure functions: tensors in, scalar tensor out, no state. Each cites its paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) labels, optionally label-smoothed."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
