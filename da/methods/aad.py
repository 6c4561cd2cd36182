"""AaD: attracting and dispersing, source-free. Yang et al., NeurIPS 2022, arXiv 2205.04183.

As in the reference code (Albert0147/AaD_SFDA, ``tar_adaptation.py``): from the source model (``init=source``,
label smoothing 0.1), with NRC's feature and score banks (:class:`~da.methods.nrc.NeighbourBanks`, in the
checkpoint), each target prediction is attracted to the bank scores of its K nearest neighbours and dispersed
from the other predictions of the batch, the dispersion weighted by λ = alpha · (1 + 10 p)^(−beta)
(:func:`da.losses.attract_disperse`). Under torchrun the dispersion is over each rank's batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, MethodConfig, check_source_stage
from da.methods.nrc import NeighbourBanks


@METHODS.register("aad")
class AaD(NeighbourBanks):
    """Source-free: attract to the K nearest neighbours' bank scores, disperse the batch; arXiv 2205.04183."""

    @dataclass
    class Config(MethodConfig):
        # backbone lr = trainer.lr * factor (digits: LeNet, same lr); the reference trains the backbone at 0.1 x lr
        backbone_lr_factor: float = 1.0
        k: int = 5  # K nearest neighbours: the reference's VisDA default --K 5 (Office-Home script: 3)
        alpha: float = 1.0  # dispersion weight at the start: --alpha 1.0
        beta: float = 5.0  # its decay (1 + 10 p)^-beta: the VisDA default --beta 5.0 (Office-Home code: 0.75)
        source_epochs: int | None = None  # source stage epochs (null = trainer.epochs)
        # source stage label smoothing: the reference's src_pretrain.py (SHOT's, --smooth 0.1)
        source_label_smoothing: float = 0.1

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.k < 1:
                raise ConfigError(f"method.k must be >= 1, got {self.k}")
            if self.alpha < 0 or self.beta < 0:
                raise ConfigError("method.alpha and method.beta must be >= 0")
            check_source_stage(self)

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        logits, f_n, _ = self.forward_target(batch_t)
        with torch.no_grad():
            scores = self.score_bank[self.nearest(f_n, c.k)]  # (B, K, classes)
        dispersion = c.alpha * (1.0 + 10.0 * progress) ** (-c.beta)
        loss = losses.attract_disperse(logits, scores, dispersion)
        return {"loss": loss, "dispersion_weight": logits.new_tensor(dispersion)}
