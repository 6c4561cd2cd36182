"""NRC: neighbourhood reciprocity clustering, source-free. Yang et al., NeurIPS 2021, arXiv 2110.04202.

As in the reference code (Albert0147/NRC_SFDA, ``train_tar.py``): the source model is trained first
(``init=source``: ``source_only`` with label smoothing 0.1, SHOT's source stage); the adaptation stage reads no
source data and trains the whole model. A feature bank (L2-normalised bottleneck features) and a score bank
(softmax predictions) of every target training image are filled from the source model at the start and
overwritten with each batch's train-mode outputs. Each image is attracted to the bank scores of its K nearest
neighbours (affinity 1 when the neighbour counts it among its own KK nearest, else r = 0.1) and of their KK
nearest (affinity r), plus a diversity term (:func:`da.losses.neighbourhood_clustering`). The banks are
``extra_state``: the checkpoint holds them. Under torchrun every rank writes the whole global batch into its
banks (so they stay equal); the diversity term is over each rank's batch, as the reference's per-GPU batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import distributed, losses
from da.errors import ConfigError
from da.methods.base import METHODS, EpochContext, Method, MethodConfig, check_source_stage


class NeighbourBanks(Method):
    """Shared by the source-free neighbourhood methods (NRC, AaD): the feature and score banks of the whole
    target training set, filled from the starting model and updated with every batch, and neighbour search."""

    kind = "unsupervised"
    uses_source = False  # the adaptation stage never builds a source loader
    default_init = "source"  # init=null trains the source model first, in <run_dir>/source_stage/
    extra_state = ("fea_bank", "score_bank")

    def __init__(self, model, cfg, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.fea_bank: torch.Tensor | None = None  # (N, D) L2-normalised features
        self.score_bank: torch.Tensor | None = None  # (N, K) softmax predictions

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        if self.fea_bank is None:  # the first epoch (a resumed run restores the banks from the checkpoint)
            pred = ctx.predict_target(self)  # eval mode, every target training image, in index order
            self.fea_bank = F.normalize(pred.features.float(), dim=1).to(ctx.device)
            self.score_bank = F.softmax(pred.logits.float(), dim=1).to(ctx.device)
        return {}

    def forward_target(self, batch_t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, K) of the target batch, its normalised features (B, D) and indices (B,), after writing the
        batch into the banks (the whole global batch under torchrun)."""
        x_t, index = batch_t
        logits, f = self.model(x_t)
        with torch.no_grad():
            f_n = F.normalize(f.float(), dim=1)
            p = F.softmax(logits.float(), dim=1)
            rows = (f_n, p, index)
            if self.reduce_sum is not None:  # torchrun: equal shards, gathered in rank order
                rows = tuple(distributed.gather_rows(t, len(index) * distributed.world_size()) for t in rows)
            self.fea_bank[rows[2]] = rows[0]
            self.score_bank[rows[2]] = rows[1]
        return logits, f_n, index

    def nearest(self, f_n: torch.Tensor, k: int) -> torch.Tensor:
        """Bank indices (..., k) of the k nearest features by cosine similarity, the closest (itself) left out."""
        return (f_n @ self.fea_bank.T).topk(k + 1, dim=-1).indices[..., 1:]


@METHODS.register("nrc")
class NRC(NeighbourBanks):
    """Source-free: attract each prediction to its (expanded) neighbourhood's bank scores; arXiv 2110.04202."""

    @dataclass
    class Config(MethodConfig):
        # backbone lr = trainer.lr * factor (digits: LeNet, same lr); the reference trains the backbone at 0.1 x lr
        backbone_lr_factor: float = 1.0
        k: int = 5  # K nearest neighbours: the reference's VisDA default --K 5 (Office-Home script: 3)
        kk: int = 5  # expanded neighbours of each neighbour: VisDA default --KK 5 (Office-Home script: 2)
        r: float = 0.1  # affinity of a non-reciprocal and of an expanded neighbour (paper Sec. 3.2; code 0.1)
        epsilon: float = 1e-5  # inside the diversity log: the reference's --epsilon
        source_epochs: int | None = None  # source stage epochs (null = trainer.epochs)
        # source stage label smoothing: the reference reuses SHOT's source training (--smooth 0.1)
        source_label_smoothing: float = 0.1

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.k < 1 or self.kk < 1:
                raise ConfigError(f"method.k and method.kk must be >= 1, got {self.k} and {self.kk}")
            if self.r < 0 or self.epsilon <= 0:
                raise ConfigError("method.r must be >= 0 and method.epsilon > 0")
            check_source_stage(self)

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        logits, f_n, index = self.forward_target(batch_t)
        with torch.no_grad():
            near = self.nearest(f_n, c.k)  # (B, K)
            near_near = self.nearest(self.fea_bank[near], c.kk)  # (B, K, KK)
            reciprocal = (near_near == index[:, None, None]).sum(-1).float()  # (B, K): counted by its neighbour
            weight = torch.where(reciprocal > 0, reciprocal, torch.full_like(reciprocal, c.r))  # (B, K)
            scores = torch.cat([self.score_bank[near], self.score_bank[near_near.flatten(1)]], dim=1)  # (B, M, K)
            weights = torch.cat([weight, torch.full((len(index), c.k * c.kk), c.r, device=weight.device)], dim=1)
        loss = losses.neighbourhood_clustering(logits, scores, weights, c.epsilon)
        return {"loss": loss, "reciprocal": (reciprocal > 0).float().mean()}
