"""No adaptation (``source``) and test-time batch normalisation (``bn_adapt``): the two baselines of every TTA paper.

``bn_adapt`` normalises each test batch with its own statistics (Schneider et al., NeurIPS 2020, arXiv 2006.16971;
Nado et al., arXiv 2006.10963), as DequanWang/tent's ``norm.py`` does: batch-norm layers in train mode, the
running statistics still updated with momentum 0.1 but not used by the forward. Nothing is learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da.errors import ConfigError
from da.tta.methods.base import TTA_METHODS, TTAConfig, TTAMethod, norm_layers


@TTA_METHODS.register("source")
class Source(TTAMethod):
    """The source model as it is (eval mode, source BN statistics): the reference every method is held against."""

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.logits(x), {}


@TTA_METHODS.register("bn_adapt")
class BNAdapt(TTAMethod):
    """Test-time BN: normalise with the test batch's statistics (tent ``norm.Norm``, its defaults)."""

    @dataclass
    class Config(TTAConfig):
        momentum: float = 0.1  # running-statistics momentum (tent norm.Norm default; unused by the forward)
        eps: float = 1e-5  # BN epsilon (tent norm.Norm default)

        def __post_init__(self) -> None:
            if not 0 <= self.momentum <= 1 or not self.eps > 0:
                raise ConfigError("method.momentum must be in [0, 1] and method.eps > 0")

    def configure(self) -> None:
        layers = norm_layers(self.model)
        if not layers:
            raise ConfigError("bn_adapt: the model has no batch-norm layer (use a backbone with BN)")
        for _, m in layers:
            m.train()
            m.momentum, m.eps = self.cfg.momentum, self.cfg.eps

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.logits(x), {}
