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
        backbone_lr_factor: float = 1.0  # lenet trains from scratch; TLlib uses 0.1 for a pretrained ResNet-50 backbone
        trade_off: float = 1.0  # TLlib dan.py default --trade-off 1.0 (Office-31 script)
        # Gaussian kernels with bandwidth alpha * mean squared distance, alpha = 2^-3 .. 2^1: TLlib dan.py
        alphas: list[float] = field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0, 2.0])

        def __post_init__(self) -> None:
            super().__post_init__()
            if not self.alphas or min(self.alphas) <= 0:
                raise ConfigError(f"method.alphas must be a non-empty list of positive numbers, got {self.alphas}")

    def transfer_loss(self, logits, features, n_s, progress):
        return losses.mk_mmd(features[:n_s], features[n_s:], tuple(self.cfg.alphas)), {}
