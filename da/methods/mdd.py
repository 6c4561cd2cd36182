"""MDD: margin disparity discrepancy. Zhang, Liu, Long & Jordan, ICML 2019, arXiv 1904.05801.

An adversarial auxiliary head f' (same hypothesis class as the main head: one linear layer on the bottleneck)
sees the features through a gradient reversal layer. It maximises the disparity D_γ with the main head's
predictions (agree on the source with margin γ, disagree on the target); the features minimise it
(:func:`da.losses.margin_disparity_discrepancy`). As TLlib's ``mdd.py``: loss = CE_s − trade_off · D_γ, with
the adversarial head's gradient reversed up to ``grl_high`` = 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation


@METHODS.register("mdd")
class MDD(JointAdaptation):
    """Source cross-entropy − trade_off · D_γ(main head, adversarial head through a GRL); arXiv 1904.05801."""

    @dataclass
    class Config(AdaptationConfig):
        # lenet trains from scratch; TLlib's MDD (GeneralModule.get_parameters) uses 0.1 for a pretrained backbone
        backbone_lr_factor: float = 1.0
        trade_off: float = 1.0  # weight of the disparity: TLlib mdd.py default --trade-off 1.0
        margin: float = 4.0  # γ: TLlib mdd.py default --margin 4 (every script except ImageNet-Sketch's 2)
        # GRL schedule lambda_p = grl_high (2 / (1 + exp(-gamma p)) - 1): DANN's shape (arXiv 1505.07818); TLlib's
        # step-based WarmStartGradientReverseLayer(alpha=1, max_iters=1000) is the same curve with gamma = steps/1000
        grl_gamma: float = 10.0
        grl_high: float = 0.1  # lambda_p's final value: TLlib mdd's WarmStartGradientReverseLayer(hi=0.1)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.margin <= 0:
                raise ConfigError(f"method.margin must be > 0, got {self.margin}")
            if self.grl_gamma <= 0 or self.grl_high < 0:
                raise ConfigError("method.grl_gamma must be > 0 and method.grl_high >= 0")

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.adv_head = nn.Linear(model.features_dim, num_classes)  # f': the main head's hypothesis class

    def transfer_loss(self, logits, features, n_s, progress):
        coeff = losses.grl_coefficient(progress, self.cfg.grl_gamma, self.cfg.grl_high)
        reversed_f = losses.grad_reverse(features, coeff)  # (2B, D)
        with torch.autocast(features.device.type, enabled=False):  # float32 logits, as ImageClassifier's head
            adv = self.adv_head(reversed_f.float())  # (2B, K)
        disparity = losses.margin_disparity_discrepancy(
            logits[:n_s], logits[n_s:], adv[:n_s], adv[n_s:], self.cfg.margin
        )
        with torch.no_grad():
            agree_t = (adv[n_s:].argmax(1) == logits[n_s:].argmax(1)).float().mean()
        return -disparity, {"disparity": disparity.detach(), "adv_agree_t": agree_t}
