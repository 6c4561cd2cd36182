"""Deep CORAL: align second-order statistics of source and target activations. Sun & Saenko, arXiv 1607.01719."""

from __future__ import annotations

from dataclasses import dataclass

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation

LAYERS = ("logits", "features")


@METHODS.register("coral")
class DeepCORAL(JointAdaptation):
    """Source cross-entropy + trade_off · ‖C_s − C_t‖²_F / (4d²) on the chosen layer's activations."""

    @dataclass
    class Config(AdaptationConfig):
        # lenet trains from scratch; 0.1 for a pretrained backbone (the paper: new fc8 at 10x the lr)
        backbone_lr_factor: float = 1.0
        # lambda: the paper sets it so that classification and CORAL losses are about equal at the end; 1.0 is
        # DomainBed's CORAL default (mmd_gamma=1)
        trade_off: float = 1.0
        # the paper applies CORAL to the last classification layer (fc8), Sec. 4.1; or `features` (bottleneck)
        layer: str = "logits"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.layer not in LAYERS:
                raise ConfigError(f"unknown method.layer {self.layer!r}; valid: {', '.join(LAYERS)}")

    def transfer_loss(self, logits, features, n_s, progress):
        a = logits if self.cfg.layer == "logits" else features
        return losses.coral(a[:n_s], a[n_s:]), {}
