"""BNM: batch nuclear-norm maximization of the target predictions. Cui et al., CVPR 2020, arXiv 2003.12237."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


@METHODS.register("bnm")
class BNM(Method):
    """Source cross-entropy + trade_off · (−‖softmax(z_t)‖_* / B): discriminable and diverse target predictions."""

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        if cfg.trade_off < 0:
            raise ConfigError(f"method.trade_off must be >= 0, got {cfg.trade_off}")

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, _ = self.model(torch.cat([x_s, x_t]))  # (2B, K)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        transfer = losses.bnm(logits[n_s:])
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach()}
