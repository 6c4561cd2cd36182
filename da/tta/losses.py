"""Test-time adaptation losses and update rules as pure functions: tensors in, tensors (or numbers) out, no state.

Each cites the paper and the official code it follows. The methods in ``da/tta/methods/`` hold the state (the
moving averages, the source weights) and call these; the tests check them on hand-made cases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H(softmax(z)) in nats of (B, K) logits -> (B,). TENT, arXiv 2006.10726, Eq. 2."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def tent_loss(logits: torch.Tensor) -> torch.Tensor:
    """TENT's objective: the mean prediction entropy of the batch (DequanWang/tent ``forward_and_adapt``)."""
    return softmax_entropy(logits).mean(0)


def entropy_margin(num_classes: int, factor: float = 0.4) -> float:
    """The reliable-sample threshold E0 = factor · ln K (EATA arXiv 2204.02610 Eq. 3; SAR arXiv 2302.12400 Eq. 2:
    both use 0.4 · ln 1000 on ImageNet, i.e. 0.4 · ln K)."""
    return factor * math.log(num_classes)


def eata_weights(entropy: torch.Tensor, e_margin: float) -> torch.Tensor:
    """EATA's sample weights 1 / exp(H − E0) (Eq. 6), from detached entropies (B,) -> (B,)."""
    return torch.exp(e_margin - entropy.detach())


def eata_select(
    logits: torch.Tensor, e_margin: float, d_margin: float, probs_ema: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """EATA's two filters on (B, K) logits -> (reliable (B,) bool, selected (B,) bool).

    Reliable: entropy < E0 (Eq. 3). Selected: reliable and not redundant, i.e. the cosine similarity of the sample's
    probabilities to the moving average ``probs_ema`` (K,) has absolute value below ``d_margin`` (Eq. 5); with no
    average yet every reliable sample is selected (mr-eggplant/EATA ``forward_and_adapt_eata``).
    """
    entropy = softmax_entropy(logits.detach())
    reliable = entropy < e_margin
    if probs_ema is None:
        return reliable, reliable.clone()
    cosine = F.cosine_similarity(probs_ema.unsqueeze(0), logits.detach().softmax(1), dim=1)  # (B,)
    return reliable, reliable & (cosine.abs() < d_margin)


def eata_update_probs(
    probs_ema: torch.Tensor | None, probs: torch.Tensor, momentum: float = 0.9
) -> torch.Tensor | None:
    """EATA's moving average of the selected samples' probabilities (Eq. 4; ``update_model_probs``): the first
    batch's mean, then ``momentum`` · old + (1 − momentum) · mean; an empty batch leaves it as it was."""
    if len(probs) == 0:
        return probs_ema
    mean = probs.detach().mean(0)
    return mean if probs_ema is None else momentum * probs_ema + (1 - momentum) * mean


def fisher_penalty(
    params: dict[str, torch.Tensor], fishers: dict[str, tuple[torch.Tensor, torch.Tensor]], alpha: float
) -> torch.Tensor:
    """EATA's anti-forgetting regulariser α · Σ F_i (θ_i − θ_i⁰)² (Eq. 9) over the parameters named in ``fishers``
    (name -> (diagonal Fisher, source value))."""
    total = torch.zeros((), device=next(iter(params.values())).device) if params else torch.zeros(())
    for name, p in params.items():
        if name in fishers:
            fisher, theta0 = fishers[name]
            total = total + (fisher * (p - theta0) ** 2).sum()
    return alpha * total


def sam_perturbation(grads: list[torch.Tensor | None], rho: float) -> list[torch.Tensor | None]:
    """SAM's first step ε̂ = ρ · g / ‖g‖₂ over all parameters' gradients together (Foret et al., arXiv 2010.01412;
    SAR's ``sam.py`` ``first_step`` with ``adaptive=False``); a None gradient stays None."""
    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    norm = torch.norm(torch.stack([g.norm(p=2) for g in present]), p=2)
    scale = rho / (norm + 1e-12)
    return [None if g is None else g * scale for g in grads]


def ema_scalar(ema: float | None, value: float, momentum: float = 0.9) -> float:
    """SAR's moving average of the entropy loss (``update_ema``): the first value, then momentum · ema + (1 − m) · v."""
    return value if ema is None else momentum * ema + (1 - momentum) * value


def sar_should_recover(ema: float | None, threshold: float = 0.2) -> bool:
    """SAR's model recovery: reset to the source weights when the loss average falls below e_m = 0.2 (Sec. 4)."""
    return ema is not None and ema < threshold


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CoTTA's consistency loss −Σ_k p_teacher,k log p_student,k per sample (B,) (arXiv 2203.13591 Eq. 3;
    qinenergy/cotta ``softmax_entropy(x, x_ema)``)."""
    return -(teacher_logits.softmax(1) * student_logits.log_softmax(1)).sum(1)


def cotta_pseudo_logits(
    anchor_confidence: torch.Tensor, threshold: float, standard: torch.Tensor, augmented: torch.Tensor
) -> torch.Tensor:
    """CoTTA's teacher output: the mean over augmentations ``augmented`` (N, B, K) when the anchor's mean confidence
    (B,) is below ``threshold`` (the domain gap is large), else the teacher's plain output ``standard`` (B, K)."""
    return augmented.mean(0) if float(anchor_confidence.mean()) < threshold else standard


def ema_tensor(teacher: torch.Tensor, student: torch.Tensor, alpha: float) -> torch.Tensor:
    """The mean-teacher update α · θ_teacher + (1 − α) · θ_student (CoTTA Eq. 2, ``update_ema_variables``)."""
    return alpha * teacher + (1 - alpha) * student


def restore_mask(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """CoTTA's stochastic restore mask: each element True with probability ``p`` (Eq. 5; ``torch.rand < rst``)."""
    return torch.rand(shape, generator=generator) < p


def stochastic_restore(current: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Source weights where ``mask`` is set, the adapted ones elsewhere (CoTTA Eq. 5)."""
    return torch.where(mask.to(current.device), source.to(current.dtype), current)
