"""DANN: domain-adversarial training with a gradient reversal layer. Ganin et al., JMLR 2016, arXiv 1505.07818."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


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


def check_adversarial(cfg: MethodConfig) -> None:
    """Shared checks of the adversarial methods' hyper-parameters: one clear line on bad input."""
    if cfg.trade_off < 0:
        raise ConfigError(f"method.trade_off must be >= 0, got {cfg.trade_off}")
    if cfg.grl_gamma <= 0 or cfg.grl_high < 0:
        raise ConfigError("method.grl_gamma must be > 0 and method.grl_high >= 0")
    if cfg.hidden_dim is not None and cfg.hidden_dim < 1:
        raise ConfigError(f"method.hidden_dim must be >= 1 or null, got {cfg.hidden_dim}")


@METHODS.register("dann")
class DANN(Method):
    """Source cross-entropy + a domain discriminator on the bottleneck features, trained through a GRL.

    The reversed gradient is scaled by λ_p = grl_high · (2/(1+exp(−γp)) − 1) (Ganin et al., Sec. 5.2.2);
    the learning-rate annealing μ_p = μ0/(1+10p)^0.75 is the trainer's ``lr_schedule=dann``.
    """

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0  # weight of the domain loss
        grl_gamma: float = 10.0  # γ in λ_p
        grl_high: float = 1.0  # λ_p's final value
        hidden_dim: int | None = None  # discriminator width; None = sized to the backbone

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        check_adversarial(cfg)
        self.discriminator = DomainDiscriminator(model.features_dim, discriminator_width(model, cfg.hidden_dim))

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # one batch: BatchNorm sees both domains; (2B, K), (2B, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        coeff = losses.grl_coefficient(progress, self.cfg.grl_gamma, self.cfg.grl_high)
        d = self.discriminator(losses.grad_reverse(f, coeff))  # (2B,)
        transfer = losses.domain_adversarial(d[:n_s], d[n_s:])
        with torch.no_grad():
            domain_acc = torch.cat([d[:n_s] > 0, d[n_s:] <= 0]).float().mean()
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach(), "domain_acc": domain_acc}
