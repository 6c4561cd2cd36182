"""CDAN(+E): conditional adversarial adaptation on f ⊗ softmax(z). Long et al., NeurIPS 2018, arXiv 1705.10667."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig
from da.methods.dann import DomainDiscriminator, check_adversarial, discriminator_width


@METHODS.register("cdan")
class CDAN(Method):
    """A domain discriminator on the multilinear map f ⊗ g (g = detached softmax), through a GRL.

    ``entropy=true`` is CDAN+E: each sample's domain loss is weighted by 1 + exp(−H(g)). ``randomized=true``
    replaces f ⊗ g (K·D wide) by the randomized map (R_f f) ⊙ (R_g g) / √d with fixed Gaussian matrices.
    """

    @dataclass
    class Config(MethodConfig):
        trade_off: float = 1.0
        entropy: bool = True  # CDAN+E
        randomized: bool = False
        randomized_dim: int = 1024
        grl_gamma: float = 10.0
        grl_high: float = 1.0
        hidden_dim: int | None = None  # discriminator width; None = sized to the backbone

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        check_adversarial(cfg)
        if cfg.randomized_dim < 1:
            raise ConfigError(f"method.randomized_dim must be >= 1, got {cfg.randomized_dim}")
        d = model.features_dim
        if cfg.randomized:
            # fixed random projections (buffers: saved in checkpoints, never trained)
            self.register_buffer("r_f", torch.randn(d, cfg.randomized_dim))  # (D, d)
            self.register_buffer("r_g", torch.randn(num_classes, cfg.randomized_dim))  # (K, d)
            in_dim = cfg.randomized_dim
        else:
            in_dim = d * num_classes
        self.discriminator = DomainDiscriminator(in_dim, discriminator_width(model, cfg.hidden_dim))

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # (2B, K), (2B, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        g = F.softmax(logits, dim=1).detach()  # (2B, K)
        if self.cfg.randomized:
            h = losses.randomized_multilinear_map(f, g, self.r_f, self.r_g)  # (2B, d)
        else:
            h = losses.multilinear_map(f, g)  # (2B, K*D)
        coeff = losses.grl_coefficient(progress, self.cfg.grl_gamma, self.cfg.grl_high)
        d = self.discriminator(losses.grad_reverse(h, coeff))  # (2B,)
        w = losses.entropy_weights(logits) if self.cfg.entropy else None  # (2B,)
        w_s, w_t = (w[:n_s], w[n_s:]) if w is not None else (None, None)
        transfer = losses.domain_adversarial(d[:n_s], d[n_s:], w_s, w_t)
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach()}
