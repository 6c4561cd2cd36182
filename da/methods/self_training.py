"""Pseudo-label self-training: the (source-trained) model labels the target, confident labels are learned.

Pseudo-labelling, Lee, ICML Workshop 2013; class-balanced selection and rounds with a growing portion from
CBST, Zou et al., ECCV 2018, arXiv 1810.07911. Every ``relabel_every`` epochs (one round) the model in eval
mode predicts the whole unlabelled target set; a prediction is kept when its confidence reaches ``threshold``
and, with ``class_balanced``, when it is among the ``ceil(fraction · N / K)`` most confident predictions of its
class, so a class the model over-predicts cannot take over the pseudo-labels. ``fraction`` grows from
``per_class_fraction`` by ``fraction_step`` per round up to ``max_fraction``. The loss is source CE (weight
``source_weight``; 0 reads no source data at all) + ``trade_off`` · CE on the kept target pseudo-labels.
``distribution_alignment`` (off by default, as in CBST) reweights the target probabilities by the source label
marginal over the target's predicted marginal before selecting (ReMixMatch, arXiv 1911.09785).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, EpochContext, Method, MethodConfig


def select_confident(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pseudo-labels (N,) from class probabilities (N, K): the argmax where its probability ≥ threshold, else −1."""
    confidence, pred = probs.max(1)  # (N,), (N,)
    return torch.where(confidence >= threshold, pred, torch.full_like(pred, -1))


def select_class_balanced(probs: torch.Tensor, per_class: int, threshold: float = 0.0) -> torch.Tensor:
    """Pseudo-labels (N,): per predicted class, at most the ``per_class`` most confident predictions that also
    reach ``threshold``; −1 elsewhere. Ties keep the lower index (a stable sort). CBST, arXiv 1810.07911."""
    confidence, pred = probs.max(1)  # (N,), (N,)
    labels = select_confident(probs, threshold)
    for k in range(probs.shape[1]):
        members = (labels == k).nonzero().flatten()  # (n_k,)
        if len(members) > per_class:
            order = torch.sort(confidence[members], descending=True, stable=True).indices
            labels[members[order[per_class:]]] = -1
    return labels


def select_pseudo_labels(probs: torch.Tensor, threshold: float, per_class: int | None) -> torch.Tensor:
    """Threshold selection, class-balanced when ``per_class`` is given."""
    if per_class is None:
        return select_confident(probs, threshold)
    return select_class_balanced(probs, per_class, threshold)


@METHODS.register("self_training")
class SelfTraining(Method):
    """Rounds of confident (optionally class-balanced) pseudo-labels from the model itself; arXiv 1810.07911."""

    @dataclass
    class Config(MethodConfig):
        backbone_lr_factor: float = 1.0  # backbone lr = trainer.lr * factor
        threshold: float = 0.9  # keep a pseudo-label when softmax confidence >= 0.9 (TLlib's pseudo-label threshold)
        class_balanced: bool = True  # at most ceil(fraction * N / K) most confident labels per predicted class (CBST)
        per_class_fraction: float = 0.2  # fraction in the first round (CBST: portion starts at 20%)
        fraction_step: float = 0.05  # added per round (CBST: +5% per round)
        max_fraction: float = 0.5  # cap (CBST: 50%)
        relabel_every: int = 1  # epochs per round: the target is re-labelled at the start of every round
        # weight of the pseudo-label CE (Lee 2013 ramps it up to 3; we start from a source model)
        trade_off: float = 1.0
        source_weight: float = 1.0  # weight of the source CE; 0 = source-free (no source loader is built)
        source_epochs: int | None = None  # source stage epochs (null = trainer.epochs)
        source_label_smoothing: float = 0.0  # source stage CE label smoothing
        # reweight target probabilities by source label marginal / target predicted marginal before selection
        # (ReMixMatch arXiv 1911.09785); not in CBST
        distribution_alignment: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.threshold <= 1.0:
                raise ConfigError(f"method.threshold must be in [0, 1], got {self.threshold}")
            for key in ("per_class_fraction", "max_fraction"):
                if not 0.0 < getattr(self, key) <= 1.0:
                    raise ConfigError(f"method.{key} must be in (0, 1], got {getattr(self, key)}")
            if self.relabel_every < 1:
                raise ConfigError(f"method.relabel_every must be >= 1 epoch, got {self.relabel_every}")
            if min(self.trade_off, self.source_weight, self.fraction_step) < 0:
                raise ConfigError("method.trade_off, method.source_weight and method.fraction_step must be >= 0")
            if self.source_epochs is not None and self.source_epochs < 1:
                raise ConfigError(f"method.source_epochs must be >= 1 or null, got {self.source_epochs}")

    kind = "unsupervised"
    default_init = "source"  # init=null starts from a source model trained in <run_dir>/source_stage/
    extra_state = ("pseudo_labels", "_labels_t", "_source_counts")  # a resumed round keeps its labels

    def __init__(self, model, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.uses_source = cfg.source_weight > 0  # weight 0: no source loader is built at all
        self._labels_t: torch.Tensor | None = None  # pseudo-labels on the training device (N,)
        self._source_counts = torch.zeros(num_classes)  # source labels seen so far (distribution alignment)

    def fraction(self, round_index: int) -> float:
        c = self.cfg
        return min(c.per_class_fraction + round_index * c.fraction_step, c.max_fraction)

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        c = self.cfg
        if self.pseudo_labels is not None and ctx.epoch % c.relabel_every:
            return {}
        probs = F.softmax(ctx.predict_target(self).logits, dim=1)  # (N, K), labels never included
        if c.distribution_alignment:  # ReMixMatch's alignment (arXiv 1911.09785) on the whole target split
            seen = self._source_counts.sum()
            prior = self._source_counts / seen if seen > 0 else torch.full((self.num_classes,), 1 / self.num_classes)
            probs = losses.align_distribution(probs, prior, probs.mean(0))
        n = len(probs)
        fraction = self.fraction(ctx.epoch // c.relabel_every)
        per_class = math.ceil(fraction * n / self.num_classes) if c.class_balanced else None
        self.pseudo_labels = select_pseudo_labels(probs, c.threshold, per_class)  # (N,), -1 = not kept
        self._labels_t = self.pseudo_labels.to(ctx.device)
        return {"pl_fraction": fraction if c.class_balanced else 1.0}

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        x_t, index_t = batch_t
        if self.uses_source:
            x_s, y_s = batch_s
            logits, _ = self.model(torch.cat([x_s, x_t]))  # one batch: BatchNorm sees both domains
            logits_s, logits_t = logits[: len(x_s)], logits[len(x_s) :]  # (B, K) each
            cls = losses.cross_entropy(logits_s, y_s)
            if self.cfg.distribution_alignment:
                self._source_counts += torch.bincount(y_s.cpu(), minlength=self.num_classes)
        else:
            logits_t, _ = self.model(x_t)  # (B, K)
            cls = logits_t.sum() * 0.0
        pseudo = losses.masked_cross_entropy(logits_t, self._labels_t[index_t])
        loss = self.cfg.source_weight * cls + self.cfg.trade_off * pseudo
        return {"loss": loss, "cls": cls.detach(), "pseudo": pseudo.detach()}
