"""AdaMatch: FixMatch for domain adaptation. Berthelot et al., ICLR 2022, arXiv 2106.04732.

Three ingredients on top of FixMatch's weak-to-strong consistency (:mod:`da.methods.fixmatch`):

1. **random logit interpolation** (Sec. 3.1): the source logits are a random per-element mix of a forward pass
   of source + target (batch-norm statistics of both domains) and one of the source alone;
2. **distribution alignment** (Sec. 3.2): target weak-view probabilities are reweighted by the ratio of the
   source batch's predicted class marginal to the target batch's, so pseudo-labels cannot drift to a few classes;
3. **relative confidence threshold** (Sec. 3.3): a target pseudo-label is kept when its confidence reaches
   τ × the source batch's mean confidence (τ = 0.9), instead of a fixed 0.95 that an out-of-distribution
   target may never (or too easily, when wrong) reach.

Loss: CE(source weak) + CE(source strong) + μ(t)·trade_off·masked CE(target strong, aligned weak pseudo-label),
μ(t) warming up from 0 to 1 over the first half of training (Sec. 3.4). Like the paper, the method trains
source and target together from the start (``default_init`` is null); the paper's target batch is 3× the source
batch (uratio 3), here both are ``trainer.batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da import augment_tensor, losses
from da.errors import ConfigError
from da.methods.base import METHODS, EpochContext, Method, MethodConfig
from da.methods.fixmatch import check_views


@METHODS.register("adamatch")
class AdaMatch(Method):
    """Source CE on both views + warmed-up, aligned, relatively thresholded consistency on the target."""

    smoke_overrides = ("method.warmup=false",)  # the registry smoke test checks that a fixed loss goes down

    @dataclass
    class Config(MethodConfig):
        backbone_lr_factor: float = 1.0  # backbone lr = trainer.lr * factor
        # relative confidence threshold: tau x mean source confidence (paper, Sec. 3.3; Table 7 uses 0.9)
        tau: float = 0.9
        trade_off: float = 1.0  # target-loss weight after the warm-up (paper: mu(t) rises to 1)
        # target marginal aligned to the source's (paper, Sec. 3.2; ReMixMatch, arXiv 1911.09785)
        distribution_alignment: bool = True
        # source logits mixed between joint and source-only batch norm (paper, Sec. 3.1)
        random_logit_interpolation: bool = True
        warmup: bool = True  # μ(t) = 1/2 − cos(min(π, 2πt/T))/2 (paper, Sec. 3.4); false: μ = 1
        # weak view: random translation up to 12.5% of the side (FixMatch, arXiv 2001.07685, Sec. 2.3)
        weak_shift: float = 0.125
        # weak view flip: off for digits (a flipped digit is another glyph); the paper flips natural images
        hflip: bool = False
        strong_ops: int = 2  # RandAugment ops per image (FixMatch's strong view; the paper uses RandAugment too)
        cutout: float = 0.5  # Cutout square side as a fraction of the image side (FixMatch, Table 12)

        def __post_init__(self) -> None:
            super().__post_init__()
            check_views(self)
            if not 0.0 <= self.tau <= 1.0:
                raise ConfigError(f"method.tau must be in [0, 1], got {self.tau}")

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Keeps the last kept pseudo-label of each target image (−1 otherwise) for the coverage log."""
        if self.pseudo_labels is None:
            self.pseudo_labels = torch.full((len(ctx.target_train),), -1, dtype=torch.long)
        return {}

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        c = self.cfg
        (x_s, y_s), (x_t, index_t) = batch_s, batch_t
        with torch.no_grad():
            views_s = torch.cat(
                [augment_tensor.weak(x_s, c.weak_shift, c.hflip), augment_tensor.strong(x_s, c.strong_ops, c.cutout)]
            )
            x_t_weak = augment_tensor.weak(x_t, c.weak_shift, c.hflip)
            x_t_strong = augment_tensor.strong(x_t, c.strong_ops, c.cutout)
        n_s, n_t = len(views_s), len(x_t)
        logits, _ = self.model(torch.cat([views_s, x_t_weak, x_t_strong]))  # joint batch-norm statistics
        logits_s, logits_t = logits[:n_s], logits[n_s:]  # (2B_s, K), (2B_t, K)
        if c.random_logit_interpolation:
            alone, _ = self.model(views_s)  # batch-norm statistics of the source alone
            logits_s = losses.random_logit_interpolation(logits_s, alone)
        logits_t_weak, logits_t_strong = logits_t[:n_t], logits_t[n_t:]
        half = n_s // 2
        cls = losses.cross_entropy(logits_s[:half], y_s) + losses.cross_entropy(logits_s[half:], y_s)
        with torch.no_grad():
            probs_s = F.softmax(logits_s[:half].float(), dim=1)  # (B_s, K) source weak view
            probs_t = F.softmax(logits_t_weak.float(), dim=1)  # (B_t, K)
            if c.distribution_alignment:
                probs_t = losses.align_distribution(probs_t, probs_s.mean(0), probs_t.mean(0))
            kept = losses.relative_confidence_mask(probs_t, probs_s, c.tau)  # (B_t,)
            pseudo = probs_t.argmax(1)  # (B_t,)
        per_sample = F.cross_entropy(logits_t_strong, pseudo, reduction="none")  # (B_t,)
        target = (per_sample * kept.to(per_sample.dtype)).mean()
        mu = losses.adamatch_warmup(progress) if c.warmup else 1.0
        if self.pseudo_labels is not None:
            self.pseudo_labels[index_t.cpu()] = torch.where(kept, pseudo, torch.full_like(pseudo, -1)).cpu()
        loss = cls + mu * c.trade_off * target
        return {"loss": loss, "cls": cls.detach(), "consistency": target.detach(), "mask": kept.float().mean()}
