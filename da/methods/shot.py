"""SHOT: source-free adaptation by information maximisation and self-supervised pseudo-labels.

Liang, Hu & Feng, ICML 2020, arXiv 2002.08546 (reference code tim-learn/SHOT). The source model is trained
first with label-smoothed CE (``init=source``: ``source_only`` with ``method.source_label_smoothing``). The
adaptation stage reads no source data (``uses_source = False``): it freezes the classifier head (the source
hypothesis) and trains the feature extractor and bottleneck with

    loss = im_weight · (mean entropy − diversity) + beta · CE(logits, pseudo-labels),

where the pseudo-labels are recomputed at the start of every epoch by weighted-centroid clustering of the
target features (:func:`shot_pseudo_labels`: cosine distance, one hard refinement round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, EpochContext, Method, MethodConfig, check_source_stage


def shot_pseudo_labels(probs: torch.Tensor, features: torch.Tensor, rounds: int = 1) -> torch.Tensor:
    """SHOT's self-supervised pseudo-labels (N,) from probabilities (N, K) and features (N, D). arXiv 2002.08546.

    Features get a constant 1 appended and are L2-normalised; the initial centroids are the probability-weighted
    means (Eq. 4), each sample takes its nearest centroid by cosine distance (Eq. 5), then ``rounds`` times the
    centroids are recomputed from those hard labels (Eq. 6) and the labels reassigned, as in tim-learn/SHOT.
    """
    f = torch.cat([features.float(), torch.ones(len(features), 1, device=features.device)], dim=1)  # (N, D+1)
    f = F.normalize(f, dim=1)
    weights = probs.float()  # (N, K)
    labels = torch.empty(0)
    for _ in range(rounds + 1):
        centroids = weights.T @ f / (weights.sum(0)[:, None] + 1e-8)  # (K, D+1)
        cosine = f @ F.normalize(centroids, dim=1).T  # (N, K); an empty class has a zero centroid
        labels = cosine.argmax(1)  # smallest cosine distance
        weights = F.one_hot(labels, probs.shape[1]).float()
    return labels


@METHODS.register("shot")
class SHOT(Method):
    """Source-free: frozen source head, IM loss + β · CE on clustering pseudo-labels; arXiv 2002.08546."""

    @dataclass
    class Config(MethodConfig):
        backbone_lr_factor: float = 1.0  # backbone lr = trainer.lr * factor (digits: LeNet from scratch, same lr)
        beta: float = 0.3  # weight of the pseudo-label CE (paper: beta = 0.3 for digits; tim-learn --cls_par 0.3)
        im_weight: float = 1.0  # weight of the information-maximisation loss (tim-learn --ent_par 1.0)
        diversity: bool = True  # subtract the entropy of the mean prediction (tim-learn --gent)
        epsilon: float = 1e-5  # inside the diversity log (tim-learn --epsilon)
        refine_rounds: int = 1  # hard-label centroid refinements after the weighted one (tim-learn obtain_label)
        source_epochs: int | None = None  # source stage epochs (null = trainer.epochs; tim-learn trains 30 for digits)
        source_label_smoothing: float = 0.1  # source stage label smoothing (paper Sec. 3.1; tim-learn --smooth 0.1)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.beta < 0 or self.im_weight < 0 or self.refine_rounds < 0:
                raise ConfigError("method.beta, method.im_weight and method.refine_rounds must be >= 0")
            check_source_stage(self)

    kind = "unsupervised"
    extra_state = ("pseudo_labels", "_labels_t")
    uses_source = False  # the adaptation stage never builds a source loader nor evaluates on source images
    default_init = "source"  # init=null trains the source model first, in <run_dir>/source_stage/

    def __init__(self, model, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        for p in self.model.head.parameters():
            p.requires_grad_(False)  # the source hypothesis stays fixed; the optimiser never sees it
        self._labels_t: torch.Tensor | None = None

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        if self.cfg.beta == 0:
            return {}
        pred = ctx.predict_target(self)  # eval mode, the whole unlabelled target train set
        probs = F.softmax(pred.logits, dim=1)  # (N, K)
        self.pseudo_labels = shot_pseudo_labels(probs, pred.features, self.cfg.refine_rounds)  # (N,)
        self._labels_t = self.pseudo_labels.to(ctx.device)
        return {"pl_agree": (self.pseudo_labels == probs.argmax(1)).float().mean().item()}

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        x_t, index_t = batch_t
        logits_t, _ = self.model(x_t)  # (B, K)
        if c.diversity:
            im = losses.information_maximization(logits_t, c.epsilon)
        else:
            im = losses.entropy(logits_t.float())
        pseudo = losses.cross_entropy(logits_t, self._labels_t[index_t]) if c.beta > 0 else im * 0.0
        loss = c.im_weight * im + c.beta * pseudo
        return {"loss": loss, "im": im.detach(), "pseudo": pseudo.detach()}
