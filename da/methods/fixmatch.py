"""FixMatch for domain adaptation: weak-view pseudo-labels supervise the strong view of the same target image.

Sohn et al., NeurIPS 2020, arXiv 2001.07685, used for unsupervised DA as in TLlib's ``fixmatch.py``: source CE
plus ``trade_off`` · the masked consistency loss (:func:`da.losses.fixmatch`). The two views are made per batch
on tensors (:mod:`da.augment_tensor`): weak = a small shift (a horizontal flip only with ``hflip``, never for
digits), strong = RandAugment + Cutout. Only weak-view predictions with confidence ≥ ``threshold`` contribute.

Two options against confirmation bias on a hard shift (off by default: the paper has neither):
``distribution_alignment`` reweights the target's weak-view probabilities by the source batch's predicted class
marginal over the target batch's (ReMixMatch, arXiv 1911.09785; as in AdaMatch, arXiv 2106.04732), and
``class_thresholds`` replaces the fixed threshold by FlexMatch's per-class thresholds (arXiv 2110.08263), which
lower the bar for the classes the model neglects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import augment_tensor, losses
from da.errors import ConfigError
from da.methods.base import METHODS, EpochContext, Method, MethodConfig


def check_views(cfg) -> None:
    """The checks of the keys FixMatch and AdaMatch share: the consistency weight, the weak and strong views."""
    if cfg.trade_off < 0 or cfg.strong_ops < 0:
        raise ConfigError("method.trade_off and method.strong_ops must be >= 0")
    if not 0.0 <= cfg.weak_shift < 1.0 or not 0.0 <= cfg.cutout < 1.0:
        raise ConfigError("method.weak_shift and method.cutout are fractions of the side, in [0, 1)")


@METHODS.register("fixmatch")
class FixMatch(Method):
    """Source CE + confidence-masked weak-to-strong consistency on the target; arXiv 2001.07685."""

    @dataclass
    class Config(MethodConfig):
        backbone_lr_factor: float = 1.0  # backbone lr = trainer.lr * factor
        threshold: float = 0.95  # tau: confidence of the weak view needed to pseudo-label (paper, Sec. 2.2, Table 8)
        trade_off: float = 1.0  # lambda_u, weight of the consistency loss (paper's 1; TLlib's --trade-off 1)
        weak_shift: float = 0.125  # weak view: random translation up to 12.5% of the side (paper, Sec. 2.3)
        # weak view flip: the paper flips natural images; a flipped digit is another glyph, so off here
        hflip: bool = False
        strong_ops: int = 2  # RandAugment ops per image, random magnitude (paper, Sec. 2.3; TLlib rand-m10-n2)
        # Cutout square side as a fraction of the image side (paper's RandAugment variant, Table 12)
        cutout: float = 0.5
        source_epochs: int | None = None  # source stage epochs (null = trainer.epochs)
        source_label_smoothing: float = 0.0  # source stage CE label smoothing
        # reweight target weak-view probabilities by source/target predicted class marginals (ReMixMatch arXiv
        # 1911.09785; AdaMatch arXiv 2106.04732); not in the FixMatch paper
        distribution_alignment: bool = False
        # FlexMatch per-class thresholds (arXiv 2110.08263, Eq. 6-7, with its warm-up) instead of one fixed threshold
        class_thresholds: bool = False

        def __post_init__(self) -> None:
            super().__post_init__()
            check_views(self)
            if not 0.0 <= self.threshold <= 1.0:
                raise ConfigError(f"method.threshold must be in [0, 1], got {self.threshold}")

    kind = "unsupervised"
    default_init = "source"  # init=null starts from a source model trained in <run_dir>/source_stage/
    extra_state = ("pseudo_labels", "_learned")  # FlexMatch's per-image learned classes resume exactly

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Keeps the last weak-view pseudo-label of each target image (−1 below τ) for the coverage log."""
        if self.pseudo_labels is None:
            self.pseudo_labels = torch.full((len(ctx.target_train),), -1, dtype=torch.long)
            self._learned = torch.full((len(ctx.target_train),), -1, dtype=torch.long, device=ctx.device)
        return {}

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        x_s, y_s = batch_s
        x_t, index_t = batch_t
        with torch.no_grad():
            x_weak = augment_tensor.weak(x_t, c.weak_shift, c.hflip)  # (B, C, H, W)
            x_strong = augment_tensor.strong(x_t, c.strong_ops, c.cutout)  # (B, C, H, W)
        logits, _ = self.model(torch.cat([x_s, x_weak, x_strong]))  # one batch: BatchNorm sees both domains
        logits_s, logits_weak, logits_strong = logits.split([len(x_s), len(x_t), len(x_t)])  # (B, K) each
        cls = losses.cross_entropy(logits_s, y_s)
        with torch.no_grad():
            probs = F.softmax(logits_weak.float(), dim=1)  # (B, K)
            if c.distribution_alignment:
                probs = losses.align_distribution(probs, F.softmax(logits_s.float(), 1).mean(0), probs.mean(0))
            confidence, pseudo = probs.max(1)  # (B,)
            learned = getattr(self, "_learned", None)
            if c.class_thresholds and learned is not None:
                learned[index_t] = torch.where(confidence >= c.threshold, pseudo, learned[index_t])
                kept = confidence >= losses.flexmatch_thresholds(learned, self.num_classes, c.threshold)[pseudo]
            else:
                kept = confidence >= c.threshold
        per_sample = F.cross_entropy(logits_strong, pseudo, reduction="none")  # (B,)
        consistency = (per_sample * kept.to(per_sample.dtype)).mean()  # losses.fixmatch, with this mask
        if self.pseudo_labels is not None:
            self.pseudo_labels[index_t.cpu()] = torch.where(kept, pseudo, torch.full_like(pseudo, -1)).cpu()
        loss = cls + c.trade_off * consistency
        return {"loss": loss, "cls": cls.detach(), "consistency": consistency.detach(), "mask": kept.float().mean()}
