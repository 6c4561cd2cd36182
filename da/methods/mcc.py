"""MCC: minimum class confusion on the target predictions. Jin et al., ECCV 2020, arXiv 1912.03699."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


@METHODS.register("mcc")
class MCC(Method):
    """Source cross-entropy + trade_off · class confusion of temperature-scaled target predictions."""

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0
        temperature: float = 2.5

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        if cfg.trade_off < 0 or cfg.temperature <= 0:
            raise ConfigError("method.trade_off must be >= 0 and method.temperature > 0")

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, _ = self.model(torch.cat([x_s, x_t]))  # (2B, K)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        transfer = losses.mcc(logits[n_s:], self.cfg.temperature)
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach()}
