"""A label-free collapse monitor: is the model predicting fewer and fewer classes on the target?

Self-training and some alignment losses can drive a model to predict a few classes for nearly every target
image (confirmation bias), which no training loss shows and no user without target labels can see as accuracy.
The monitor watches the *predicted class marginal* on the unlabelled target training split — the histogram of
argmax predictions — each epoch:

- ``marginal_entropy``: its entropy in nats (ln K when every class is predicted equally often, 0 when one
  class takes everything);
- ``largest_class_fraction``: the share of the target given to the most predicted class.

It flags a collapse when the marginal entropy falls below ``fraction`` × its reference value: the starting
model's (measured before the first epoch) or the highest seen since, whichever is larger. It reads predictions
only, never a target label.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def class_marginal(logits: torch.Tensor, num_classes: int | None = None) -> dict[str, float]:
    """Entropy (nats) of the argmax-prediction histogram of (N, K) logits and its largest class share."""
    k = num_classes or logits.shape[1]
    counts = torch.bincount(logits.argmax(1), minlength=k).double()  # (K,)
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return {
        "marginal_entropy": float(-(nz * nz.log()).sum()),
        "largest_class_fraction": float(p.max()),
    }


class CollapseMonitor:
    """Per-epoch class-marginal statistics and the first epoch whose entropy fell below ``fraction`` × reference."""

    def __init__(self, fraction: float = 0.85) -> None:
        self.fraction = fraction
        self.reference: float | None = None  # the highest marginal entropy seen (starting model included)
        self.collapse: dict[str, Any] | None = None

    def start(self, logits: torch.Tensor) -> None:
        """The starting model's predictions (before any training): the first reference."""
        self.reference = class_marginal(logits)["marginal_entropy"]

    def update(self, epoch: int, logits: torch.Tensor) -> dict[str, float]:
        stats = class_marginal(logits)
        h = stats["marginal_entropy"]
        if self.reference is None or h > self.reference:
            self.reference = h
        elif self.fraction > 0 and self.collapse is None and h < self.fraction * self.reference:
            self.collapse = {"epoch": epoch, **stats, "reference_entropy": self.reference}
            log.warning(
                "collapse warning (epoch %d): the predicted class marginal on the target has entropy %.2f, below "
                "%.0f%% of %.2f; %.0f%% of target images go to one class (of %d). Label-free signal: the method "
                "may be confirming its own mistakes",
                epoch,
                h,
                100 * self.fraction,
                self.reference,
                100 * stats["largest_class_fraction"],
                logits.shape[1],
            )
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "collapse": self.collapse}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.reference, self.collapse = state.get("reference"), state.get("collapse")
