"""MCC: minimum class confusion on the target predictions. Jin et al., ECCV 2020, arXiv 1912.03699."""

from __future__ import annotations

from dataclasses import dataclass

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation


@METHODS.register("mcc")
class MCC(JointAdaptation):
    """Source cross-entropy + trade_off · class confusion of temperature-scaled target predictions."""

    @dataclass
    class Config(AdaptationConfig):
        backbone_lr_factor: float = 1.0  # lenet trains from scratch; TLlib uses 0.1 for a pretrained ResNet-50 backbone
        trade_off: float = 1.0  # TLlib mcc.py default --trade-off 1.0 (Office-31 script); the paper's lambda = 1
        temperature: float = 2.5  # T: TLlib mcc.py default --temperature 2.5; the paper, Sec. 4 (T = 2.5 for DA)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.temperature <= 0:
                raise ConfigError(f"method.temperature must be > 0, got {self.temperature}")

    def transfer_loss(self, logits, features, n_s, progress):
        return losses.mcc(logits[n_s:], self.cfg.temperature), {}
