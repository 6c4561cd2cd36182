"""BNM: batch nuclear-norm maximization of the target predictions. Cui et al., CVPR 2020, arXiv 2003.12237."""

from __future__ import annotations

from da import losses
from da.methods.base import METHODS, JointAdaptation


@METHODS.register("bnm")
class BNM(JointAdaptation):
    """Source cross-entropy + trade_off · (−‖softmax(z_t)‖_* / B): discriminable and diverse target predictions."""

    def transfer_loss(self, logits, features, n_s, progress):
        return losses.bnm(logits[n_s:]), {}
