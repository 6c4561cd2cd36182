"""DAN: multi-kernel MMD between source and target features. Long et al., ICML 2015, arXiv 1502.02791."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


@METHODS.register("dan")
class DAN(Method):
    """Source cross-entropy + trade_off · MK-MMD² (Gaussian kernels, bandwidths α_i σ²) on the bottleneck."""

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0
        alphas: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0])  # 2^-3 .. 2^1

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        if cfg.trade_off < 0:
            raise ConfigError(f"method.trade_off must be >= 0, got {cfg.trade_off}")
        if not cfg.alphas or min(cfg.alphas) <= 0:
            raise ConfigError(f"method.alphas must be a non-empty list of positive numbers, got {cfg.alphas}")

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # (2B, K), (2B, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        transfer = losses.mk_mmd(f[:n_s], f[n_s:], tuple(self.cfg.alphas))
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach()}
