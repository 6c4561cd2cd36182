"""DAN: multi-kernel MMD between source and target features. Long et al., ICML 2015, arXiv 1502.02791."""

from __future__ import annotations

from dataclasses import dataclass, field

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation


@METHODS.register("dan")
class DAN(JointAdaptation):
    """Source cross-entropy + trade_off · MK-MMD² (Gaussian kernels, bandwidths α_i σ²) on the bottleneck."""

    @dataclass
    class Config(AdaptationConfig):
        alphas: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0])  # 2^-3 .. 2^1

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.alphas or min(self.alphas) <= 0:
                raise ConfigError(f"method.alphas must be a non-empty list of positive numbers, got {self.alphas}")

    def transfer_loss(self, logits, features, n_s, progress):
        return losses.mk_mmd(features[:n_s], features[n_s:], tuple(self.cfg.alphas)), {}
