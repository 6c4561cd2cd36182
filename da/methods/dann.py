"""DANN: domain-adversarial training with a gradient reversal layer. Ganin et al., JMLR 2016, arXiv 1505.07818."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation


class DomainDiscriminator(nn.Sequential):
    """Two hidden layers (Linear-BN-ReLU) and a logit: source (1) vs target (0). TLlib's ``DomainDiscriminator``."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(1)  # (B,) logits


def discriminator_width(model: ImageClassifier, hidden_dim: int | None) -> int:
    """``hidden_dim``, or sized to the backbone: 1024 for wide backbones (>= 1024 features: ResNet-50's 2048,
    TLlib's Office-31 setting), 500 for small ones such as LeNet's 800 (ADDA's digits discriminator, arXiv
    1702.05464)."""
    if hidden_dim is not None:
        return hidden_dim
    first = model.bottleneck[0] if isinstance(model.bottleneck, nn.Sequential) else None
    backbone_dim = first.in_features if isinstance(first, nn.Linear) else model.features_dim
    return 1024 if backbone_dim >= 1024 else 500


def check_adversarial(cfg) -> None:
    """The checks of the adversarial methods' shared keys (DANN, CDAN): the GRL schedule, the discriminator."""
    if cfg.grl_gamma <= 0 or cfg.grl_high < 0:
        raise ConfigError("method.grl_gamma must be > 0 and method.grl_high >= 0")
    if cfg.hidden_dim is not None and cfg.hidden_dim < 1:
        raise ConfigError(f"method.hidden_dim must be >= 1 or null, got {cfg.hidden_dim}")


@METHODS.register("dann")
class DANN(JointAdaptation):
    """Source cross-entropy + a domain discriminator on the bottleneck features, trained through a GRL.

    The reversed gradient is scaled by λ_p = grl_high · (2/(1+exp(−γp)) − 1) (Ganin et al., Sec. 5.2.2);
    the learning-rate annealing μ_p = μ0/(1+10p)^0.75 is the trainer's ``lr_schedule=dann``.
    """

    @dataclass
    class Config(AdaptationConfig):
        backbone_lr_factor: float = 1.0  # lenet trains from scratch; TLlib uses 0.1 for a pretrained ResNet-50 backbone
        trade_off: float = 1.0  # weight of the domain loss: TLlib dann.py default --trade-off 1.0 (Office-31 script)
        grl_gamma: float = 10.0  # lambda_p = 2 / (1 + exp(-gamma p)) - 1 with gamma = 10: the paper, Sec. 5.2.2
        # lambda_p's final value: the paper's schedule goes 0 -> 1 (TLlib WarmStartGradientReverseLayer hi=1)
        grl_high: float = 1.0
        # discriminator width, 2 hidden layers; null = 1024 for >=1024-d backbones (TLlib, ResNet-50), else 500
        # (ADDA's digits discriminator, arXiv 1702.05464)
        hidden_dim: int | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            check_adversarial(self)

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.discriminator = DomainDiscriminator(model.features_dim, discriminator_width(model, cfg.hidden_dim))

    def transfer_loss(self, logits, features, n_s, progress):
        coeff = losses.grl_coefficient(progress, self.cfg.grl_gamma, self.cfg.grl_high)
        d = self.discriminator(losses.grad_reverse(features, coeff))  # (2B,)
        transfer = losses.domain_adversarial(d[:n_s], d[n_s:])
        with torch.no_grad():
            domain_acc = torch.cat([d[:n_s] > 0, d[n_s:] <= 0]).float().mean()
        return transfer, {"domain_acc": domain_acc}
