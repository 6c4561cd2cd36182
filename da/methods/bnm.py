"""BNM: batch nuclear-norm maximization of the target predictions. Cui et al., CVPR 2020, arXiv 2003.12237."""

from __future__ import annotations

from dataclasses import dataclass

from da import losses
from da.methods.base import METHODS, AdaptationConfig, JointAdaptation


@METHODS.register("bnm")
class BNM(JointAdaptation):
    """Source cross-entropy + trade_off · (−‖softmax(z_t)‖_* / B): discriminable and diverse target predictions."""

    @dataclass
    class Config(AdaptationConfig):
        backbone_lr_factor: float = 1.0  # lenet trains from scratch; 0.1 for a pretrained backbone
        # lambda: the official code cuishuhao/BNM DA/BNM/train_image.py default --trade_off 1 (that code averages
        # the singular values, i.e. divides by min(B, K); da divides by B, as in the paper)
        trade_off: float = 1.0

    def transfer_loss(self, logits, features, n_s, progress):
        return losses.bnm(logits[n_s:]), {}
