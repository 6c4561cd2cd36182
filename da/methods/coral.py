"""Deep CORAL: align second-order statistics of source and target activations. Sun & Saenko, arXiv 1607.01719."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig

LAYERS = ("logits", "features")


@METHODS.register("coral")
class DeepCORAL(Method):
    """Source cross-entropy + trade_off · ‖C_s − C_t‖²_F / (4d²) on the chosen layer's activations."""

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0  # λ
        layer: str = "logits"  # logits (the paper's fc8) or features (the bottleneck)

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        if cfg.layer not in LAYERS:
            raise ConfigError(f"unknown method.layer {cfg.layer!r}; valid: {', '.join(LAYERS)}")
        if cfg.trade_off < 0:
            raise ConfigError(f"method.trade_off must be >= 0, got {cfg.trade_off}")

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # (2B, K), (2B, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        a = logits if self.cfg.layer == "logits" else f
        transfer = losses.coral(a[:n_s], a[n_s:])
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach()}
