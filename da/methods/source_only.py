"""Source only (ERM): cross-entropy on the labelled source; the baseline every method is compared with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


@METHODS.register("source_only")
class SourceOnly(Method):
    """Train on source labels alone; no target batch is read (no BatchNorm adaptation either). The trainer still
    counts the target's size in the epoch length, so source only trains as many steps as the methods it is
    compared with."""

    uses_target = False

    @dataclass
    class Config(MethodConfig):
        # backbone lr = trainer.lr * factor (0.1 is the usual choice for a pretrained backbone)
        backbone_lr_factor: float = 1.0
        # label-smoothed source CE; SHOT's source stage uses 0.1 (arXiv 2002.08546, Sec. 3.1)
        label_smoothing: float = 0.0

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.label_smoothing < 1.0:
                raise ConfigError(f"method.label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        x_s, y_s = batch_s
        logits_s, _ = self.model(x_s)  # (B, K)
        loss = losses.cross_entropy(logits_s, y_s, self.cfg.label_smoothing)
        return {"loss": loss, "cls": loss.detach()}
