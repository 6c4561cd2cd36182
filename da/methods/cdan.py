"""CDAN(+E): conditional adversarial adaptation on f ⊗ softmax(z). Long et al., NeurIPS 2018, arXiv 1705.10667."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation
from da.methods.dann import DomainDiscriminator, check_adversarial, discriminator_width


@METHODS.register("cdan")
class CDAN(JointAdaptation):
    """A domain discriminator on the multilinear map f ⊗ g (g = detached softmax), through a GRL.

    ``entropy=true`` is CDAN+E: each sample's domain loss is weighted by 1 + exp(−H(g)). ``randomized=true``
    replaces f ⊗ g (K·D wide) by the randomized map (R_f f) ⊙ (R_g g) / √d with fixed Gaussian matrices.
    """

    @dataclass
    class Config(AdaptationConfig):
        backbone_lr_factor: float = 1.0  # lenet trains from scratch; TLlib uses 0.1 for a pretrained ResNet-50 backbone
        trade_off: float = 1.0  # TLlib cdan.py default --trade-off 1.0 (Office-31 script)
        entropy: bool = True  # CDAN+E: weight each sample by 1 + exp(-H(g)); TLlib's Office-31 script passes -E
        # the multilinear map f (x) g; true = randomized map (the paper's CDAN-RM), TLlib default false
        randomized: bool = False
        randomized_dim: int = 1024  # width of the randomized map: TLlib cdan.py default --randomized-dim 1024
        # lambda_p = 2 / (1 + exp(-gamma p)) - 1: DANN's schedule, which the CDAN paper adopts (Sec. 4)
        grl_gamma: float = 10.0
        grl_high: float = 1.0  # lambda_p's final value (TLlib WarmStartGradientReverseLayer hi=1)
        # discriminator width; null = 1024 for >=1024-d backbones (TLlib), else 500 (ADDA's digits discriminator)
        hidden_dim: int | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            check_adversarial(self)
            if self.randomized_dim < 1:
                raise ConfigError(f"method.randomized_dim must be >= 1, got {self.randomized_dim}")

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        d = model.features_dim
        if cfg.randomized:
            # fixed random projections (buffers: saved in checkpoints, never trained)
            self.register_buffer("r_f", torch.randn(d, cfg.randomized_dim))  # (D, d)
            self.register_buffer("r_g", torch.randn(num_classes, cfg.randomized_dim))  # (K, d)
            in_dim = cfg.randomized_dim
        else:
            in_dim = d * num_classes
        self.discriminator = DomainDiscriminator(in_dim, discriminator_width(model, cfg.hidden_dim))

    def transfer_loss(self, logits, features, n_s, progress):
        g = F.softmax(logits, dim=1).detach()  # (2B, K)
        if self.cfg.randomized:
            h = losses.randomized_multilinear_map(features, g, self.r_f, self.r_g)  # (2B, d)
        else:
            h = losses.multilinear_map(features, g)  # (2B, K*D)
        coeff = losses.grl_coefficient(progress, self.cfg.grl_gamma, self.cfg.grl_high)
        d = self.discriminator(losses.grad_reverse(h, coeff))  # (2B,)
        w = losses.entropy_weights(logits, self.reduce_sum) if self.cfg.entropy else None  # (2B,), global batch
        w_s, w_t = (w[:n_s], w[n_s:]) if w is not None else (None, None)
        return losses.domain_adversarial(d[:n_s], d[n_s:], w_s, w_t), {}
