"""Source only (ERM): cross-entropy on the labelled source; the baseline every method is compared with."""

from __future__ import annotations

import torch

from da import losses
from da.methods.base import METHODS, Method


@METHODS.register("source_only")
class SourceOnly(Method):
    """Train on source labels alone; the target batch is not used (no BatchNorm adaptation either)."""

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        x_s, y_s = batch_s
        logits_s, _ = self.model(x_s)  # (B, K)
        loss = losses.cross_entropy(logits_s, y_s)
        return {"loss": loss, "cls": loss.detach()}
