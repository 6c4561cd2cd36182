"""CDAN(+E): conditional adversarial adaptation on f ⊗ softmax(z). Long et al., NeurIPS 2018, arXiv 1705.10667."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, JointAdaptation
from da.methods.dann import AdversarialConfig, DomainDiscriminator, discriminator_width


@METHODS.register("cdan")
class CDAN(JointAdaptation):
    """A domain discriminator on the multilinear map f ⊗ g (g = detached softmax), through a GRL.

    ``entropy=true`` is CDAN+E: each sample's domain loss is weighted by 1 + exp(−H(g)). ``randomized=true``
    replaces f ⊗ g (K·D wide) by the randomized map (R_f f) ⊙ (R_g g) / √d with fixed Gaussian matrices.
    """

    @dataclass
    class Config(AdversarialConfig):
        entropy: bool = True  # CDAN+E
        randomized: bool = False
        randomized_dim: int = 1024

        def __post_init__(self) -> None:
            super().__post_init__()
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
