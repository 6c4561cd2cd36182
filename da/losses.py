"""Losses as pure functions: tensors in, scalar tensor out, no state. Each cites its paper."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def float32(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``loss`` in float32 even under autocast (``trainer.amp``): the batch statistics it computes
    (covariances, kernel means, class-confusion products) would go through bfloat16 matrix products, whose 8
    significant bits blur a difference of covariances. Floating tensor arguments (positional or keyword) are cast
    up, so the loss itself needs no casts; outside autocast nothing else changes. These losses cost little beside
    the network."""

    def up(a):
        return a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a

    @functools.wraps(loss)
    def wrapped(*args, **kwargs):
        args, kwargs = tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device = tensors[0].device.type if tensors else "cpu"
        if not torch.is_autocast_enabled(device):
            return loss(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return loss(*args, **kwargs)

    return wrapped


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits against (B,) labels, optionally label-smoothed."""
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


# ---------------------------------------------------------------- transductive adaptation


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``-coeff`` backward (Ganin et al., arXiv 1505.07818)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer (GRL): ``x`` unchanged, gradient scaled by ``-coeff``. arXiv 1505.07818."""
    return _GradientReversal.apply(x, float(coeff))


def grl_coefficient(progress: float, gamma: float = 10.0, high: float = 1.0) -> float:
    """DANN's schedule λ_p = high · (2 / (1 + exp(−γ p)) − 1), from 0 at p=0 to ≈high at p=1. arXiv 1505.07818."""
    return high * (2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0)


def domain_adversarial(
    d_s: torch.Tensor, d_t: torch.Tensor, w_s: torch.Tensor | None = None, w_t: torch.Tensor | None = None
) -> torch.Tensor:
    """Domain classifier BCE on logits: source labelled 1, target 0; mean of the two domains. arXiv 1505.07818.

    ``d_s`` (B_s,) / ``d_t`` (B_t,) are discriminator logits; optional per-sample weights (CDAN's entropy
    conditioning) multiply each sample's loss.
    """
    loss_s = F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s), weight=w_s)
    loss_t = F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t), weight=w_t)
    return 0.5 * (loss_s + loss_t)


def _covariance(f: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance (D, D) of (B, D) features; zero for a batch of one."""
    centred = f - f.mean(0, keepdim=True)  # (B, D)
    return centred.T @ centred / max(f.shape[0] - 1, 1)


@float32
def coral(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: ‖C_s − C_t‖²_F / (4 d²) between feature covariances. Sun & Saenko, arXiv 1607.01719."""
    d = f_s.shape[1]
    diff = _covariance(f_s) - _covariance(f_t)  # (D, D)
    return (diff * diff).sum() / (4 * d * d)


@float32
def mk_mmd(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    alphas: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0),
    bandwidth: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-kernel MMD² (unbiased within-domain terms) with Gaussian kernels. DAN, Long et al., arXiv 1502.02791.

    k(a, b) = mean_i exp(−‖a − b‖² / (2 α_i σ²)), σ² = ``bandwidth`` or the mean squared distance over the
    joint batch (detached; TLlib's ``GaussianKernel``). Within-domain sums skip the diagonal (Gretton et al.
    2012's unbiased estimate) when a domain has at least two samples.
    """
    f = torch.cat([f_s, f_t])  # (B_s + B_t, D)
    dist = torch.cdist(f, f).pow(2)  # (N, N)
    sigma2 = dist.detach().mean() if bandwidth is None else torch.as_tensor(bandwidth, dtype=f.dtype)
    sigma2 = sigma2.clamp_min(1e-12)
    a = torch.as_tensor(alphas, dtype=f.dtype, device=f.device).view(-1, 1, 1)  # (M, 1, 1)
    k = torch.exp(-dist.unsqueeze(0) / (2 * a * sigma2)).mean(0)  # (N, N)
    n_s = f_s.shape[0]
    k_ss, k_tt, k_st = k[:n_s, :n_s], k[n_s:, n_s:], k[:n_s, n_s:]

    def within(kk: torch.Tensor) -> torch.Tensor:
        n = kk.shape[0]
        if n < 2:
            return kk.mean()
        return (kk.sum() - kk.diagonal().sum()) / (n * (n - 1))

    return within(k_ss) + within(k_tt) - 2 * k_st.mean()


def entropy(logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Shannon entropy of softmax(logits) per row (B,), or its mean. Grandvalet & Bengio, NeurIPS 2004."""
    h = -(F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1)).sum(1)  # (B,)
    return h.mean() if reduction == "mean" else h


def entropy_weights(
    logits: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """CDAN's entropy conditioning: w = 1 + exp(−H(p)), normalised to mean 1 over the batch (B,), detached.

    Long et al., arXiv 1705.10667, Sec. 3.3 (normalisation as in TLlib's ``ConditionalDomainAdversarialLoss``).
    ``reduce_sum`` sums a tensor over the processes of a distributed run (``Method.reduce_sum``): the mean is
    then 1 over the global batch, so N ranks compute what one process computes on their union.
    """
    w = 1.0 + torch.exp(-entropy(logits.detach().float(), reduction="none"))  # (B,)
    if reduce_sum is not None:
        total = reduce_sum(torch.stack([w.sum(), torch.tensor(float(len(w)), device=w.device)]))  # (2,)
        return w * total[1] / total[0]
    return w * len(w) / w.sum()


def multilinear_map(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """CDAN's multilinear conditioning f ⊗ g, flattened: (B, D), (B, K) -> (B, K·D). arXiv 1705.10667."""
    return torch.bmm(g.unsqueeze(2), f.unsqueeze(1)).flatten(1)  # (B, K, D) -> (B, K*D)


def randomized_multilinear_map(f: torch.Tensor, g: torch.Tensor, r_f: torch.Tensor, r_g: torch.Tensor) -> torch.Tensor:
    """CDAN's randomized map (R_f f) ⊙ (R_g g) / √d with fixed random (D, d), (K, d) matrices. arXiv 1705.10667."""
    return (f @ r_f) * (g @ r_g) / math.sqrt(r_f.shape[1])  # (B, d)


@float32
def mcc(logits_t: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Minimum Class Confusion: entropy-weighted class confusion off the diagonal. Jin et al., arXiv 1912.03699.

    As in the reference code (thuml/Versatile-Domain-Adaptation, TLlib ``MinimumClassConfusionLoss``):
    p = softmax(z/T) (B, K); w = 1 + exp(−H(p)) normalised to sum B; C = (p·w)ᵀ p (K, K), each column scaled by
    its class total (C is symmetric); loss = (ΣC − tr C) / K.
    """
    z = logits_t / temperature
    p = F.softmax(z, dim=1)  # (B, K)
    h = -(p * F.log_softmax(z, dim=1)).sum(1).detach()  # (B,) entropy
    w = 1.0 + torch.exp(-h)
    w = (len(w) * w / w.sum()).unsqueeze(1)  # (B, 1)
    conf = (p * w).T @ p  # (K, K)
    conf = conf / conf.sum(dim=1)
    k = conf.shape[0]
    return (conf.sum() - conf.trace()) / k


@float32
def bnm(logits_t: torch.Tensor) -> torch.Tensor:
    """Batch Nuclear-norm Maximization: −‖softmax(z)‖_* / B. Cui et al., arXiv 2003.12237, Eq. 9."""
    p = F.softmax(logits_t, dim=1)  # (B, K)
    return -torch.linalg.matrix_norm(p, ord="nuc") / p.shape[0]


# ---------------------------------------------------------------- unsupervised transfer


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, K) logits over the rows whose pseudo-label (B,) is not −1; 0 when none is kept.

    Pseudo-labelling, Lee, ICML-W 2013; class-balanced self-training, Zou et al., arXiv 1810.07911.
    """
    kept = labels >= 0  # (B,)
    if not kept.any():
        return logits.sum() * 0.0  # keeps the graph (and the device) for a batch without any pseudo-label
    return F.cross_entropy(logits[kept], labels[kept])


def fixmatch(logits_weak: torch.Tensor, logits_strong: torch.Tensor, threshold: float = 0.95) -> torch.Tensor:
    """FixMatch consistency: CE of the strong view against the weak view's hard label, only where the weak
    view's confidence ≥ ``threshold``; averaged over the whole batch (B,). Sohn et al., arXiv 2001.07685, Eq. 4.

    The weak view's logits are detached: they give the target, not a gradient.
    """
    probs = F.softmax(logits_weak.detach().float(), dim=1)  # (B, K)
    confidence, pseudo = probs.max(1)  # (B,), (B,)
    mask = (confidence >= threshold).to(logits_strong.dtype)  # (B,)
    return (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()


def information_maximization(logits: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """SHOT's IM loss: mean per-sample entropy − entropy of the batch-mean prediction (diversity).

    Liang et al., arXiv 2002.08546, Eq. 2-3 (``epsilon`` inside the log as in tim-learn/SHOT).
    """
    p = F.softmax(logits.float(), dim=1)  # (B, K)
    mean_p = p.mean(0)  # (K,)
    diversity = -(mean_p * torch.log(mean_p + epsilon)).sum()
    return entropy(logits.float()) - diversity


# ---------------------------------------------------------------- inductive transfer


def l2_sp(
    pretrained: list[torch.Tensor],
    anchors: list[torch.Tensor],
    new: list[torch.Tensor],
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """L2-SP: α/2·Σ||w − w0||² over the pretrained weights + β/2·Σ||w||² over the new layers' weights.

    Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional networks",
    ICML 2018, arXiv 1802.01483: the starting point (``anchors`` = w0, the pretrained values) is the
    reference, not zero. ``pretrained`` and ``anchors`` pair up tensor by tensor.
    """
    if len(pretrained) != len(anchors):
        raise ValueError(f"{len(pretrained)} pretrained tensors but {len(anchors)} anchors")
    zero = torch.zeros((), device=(pretrained or new or [torch.zeros(())])[0].device)
    sp = sum(((w - w0.detach()) ** 2).sum() for w, w0 in zip(pretrained, anchors)) if pretrained else zero
    l2 = sum((w**2).sum() for w in new) if new else zero
    return 0.5 * alpha * sp + 0.5 * beta * l2


def l1_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """Σ|w| over ``params`` (the L1 penalty; Tibshirani's lasso applied to network weights)."""
    if not params:
        return torch.zeros(())
    return sum(w.abs().sum() for w in params)


# ---------------------------------------------------------------- collapse-safe self-training


def align_distribution(probs_t: torch.Tensor, marginal_s: torch.Tensor, marginal_t: torch.Tensor) -> torch.Tensor:
    """Distribution alignment: target probabilities (B, K) reweighted by the ratio of the source class marginal
    to the target's (K,), renormalised per row. ReMixMatch (Berthelot et al., arXiv 1911.09785, Sec. 3.2); as
    AdaMatch uses it (arXiv 2106.04732, Sec. 3.2): the marginals are the batch means of the weak-view predictions.
    """
    eps = torch.finfo(probs_t.dtype).tiny
    aligned = probs_t * (marginal_s / marginal_t.clamp_min(eps))  # (B, K)
    return aligned / aligned.sum(1, keepdim=True).clamp_min(eps)


def relative_confidence_mask(probs_t: torch.Tensor, probs_s: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    """AdaMatch's relative threshold: keep target rows whose top probability ≥ τ · (mean top probability of the
    source batch), so the cut-off follows the model's confidence on data it knows. arXiv 2106.04732, Sec. 3.3."""
    c_tau = tau * probs_s.max(1).values.mean()
    return probs_t.max(1).values >= c_tau  # (B,)


def random_logit_interpolation(joint: torch.Tensor, alone: torch.Tensor) -> torch.Tensor:
    """λ·joint + (1 − λ)·alone with λ ~ U(0, 1) drawn per element: source logits from a forward pass with both
    domains in the batch-norm statistics and one with the source alone. AdaMatch, arXiv 2106.04732, Sec. 3.1."""
    lam = torch.rand_like(joint)
    return lam * joint + (1.0 - lam) * alone


def adamatch_warmup(progress: float) -> float:
    """AdaMatch's target-loss weight μ(t) = 1/2 − cos(min(π, 2πt/T))/2: from 0 to 1 over the first half of
    training, then 1. arXiv 2106.04732, Sec. 3.4."""
    return 0.5 - math.cos(min(math.pi, 2.0 * math.pi * progress)) / 2.0


def flexmatch_thresholds(learned: torch.Tensor, num_classes: int, threshold: float) -> torch.Tensor:
    """FlexMatch's per-class thresholds (Zhang et al., NeurIPS 2021, arXiv 2110.08263, Eq. 6-7, with its
    threshold warm-up): σ_c = number of target images whose latest confident prediction is c (``learned`` (N,),
    −1 where none); β_c = σ_c / max(max_c σ_c, #unlabelled-yet); T_c = β_c / (2 − β_c) · τ. A class the model
    already predicts often keeps τ; a neglected class gets a lower bar, which counters the drift to a few classes.
    """
    sigma = torch.bincount(learned[learned >= 0], minlength=num_classes).float()  # (K,)
    unused = (learned < 0).sum().float()
    beta = sigma / torch.maximum(sigma.max(), unused).clamp_min(1.0)
    return beta / (2.0 - beta) * threshold  # (K,)


# ---------------------------------------------------------------- today's methods


def _shift_log(x: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    """log(min(x + offset, 1)): the log of a probability without log(0)'s infinite gradient (TLlib's shift_log)."""
    return torch.log(torch.clamp(x + offset, max=1.0))


@float32
def margin_disparity_discrepancy(
    logits_s: torch.Tensor, logits_t: torch.Tensor, adv_s: torch.Tensor, adv_t: torch.Tensor, margin: float = 4.0
) -> torch.Tensor:
    """MDD's empirical disparity D_γ = γ·E_s[log σ_{h(x)}(f'(x))] + E_t[log(1 − σ_{h(x)}(f'(x)))].

    Zhang et al., "Bridging Theory and Algorithm for Domain Adaptation", ICML 2019, arXiv 1904.05801, Sec. 5
    (the classification losses L and L' before Eq. 11). h(x) is the main head's prediction (argmax of
    ``logits_s`` (B_s, K) / ``logits_t`` (B_t, K), so no gradient reaches the main head through it); f' is the
    adversarial head (``adv_s``, ``adv_t``). The adversary maximises D_γ: it agrees with h on the source (first
    term, weighted by the margin γ) and disagrees on the target; the features minimise it (a GRL between them).
    log(1 − p) is TLlib's ``shift_log`` (offset 1e-6), so a confident disagreement has a finite gradient.
    """
    pred_s, pred_t = logits_s.argmax(1), logits_t.argmax(1)  # (B_s,), (B_t,)
    source = -F.cross_entropy(adv_s, pred_s)  # E_s log σ_{h(x)}(f'(x))
    p_t = F.softmax(adv_t, dim=1).gather(1, pred_t[:, None]).squeeze(1)  # (B_t,)
    target = _shift_log(1.0 - p_t).mean()  # E_t log(1 − σ_{h(x)}(f'(x)))
    return margin * source + target


@float32
def classifier_discrepancy(logits_1: torch.Tensor, logits_2: torch.Tensor) -> torch.Tensor:
    """MCD's discrepancy d(p1, p2) = (1/K) Σ_k |p1_k − p2_k| of two classifiers' probabilities, averaged over the
    batch (B, K). Saito et al., "Maximum Classifier Discrepancy for Unsupervised Domain Adaptation", CVPR 2018,
    arXiv 1712.02560, Eq. 1."""
    return (F.softmax(logits_1, dim=1) - F.softmax(logits_2, dim=1)).abs().mean()


def masked_consistency(logits_masked: torch.Tensor, logits_teacher: torch.Tensor) -> torch.Tensor:
    """MIC's masked-image consistency: cross-entropy of the student's logits on the masked images (B, K) against
    the EMA teacher's hard pseudo-labels on the whole images, each weighted by the teacher's confidence (its top
    softmax probability), averaged over the batch. Hoyer et al., "MIC: Masked Image Consistency for
    Context-Enhanced Domain Adaptation", CVPR 2023, arXiv 2212.01322, Eq. 3-4; the confidence weight is its
    classification code's ``pseudo_label_weight='prob'`` (lhoyer/MIC, cls/). The teacher gives targets only."""
    probs = F.softmax(logits_teacher.detach().float(), dim=1)  # (B, K)
    confidence, pseudo = probs.max(1)  # (B,), (B,)
    return (confidence * F.cross_entropy(logits_masked.float(), pseudo, reduction="none")).mean()


@float32
def neighbourhood_clustering(
    logits: torch.Tensor, neighbour_scores: torch.Tensor, neighbour_weights: torch.Tensor, epsilon: float = 1e-5
) -> torch.Tensor:
    """NRC's loss: −(1/B) Σ_i Σ_j A_ij S_j·p_i + Σ_c p̄_c log(p̄_c + ε).

    Yang et al., "Exploiting the Intrinsic Neighborhood Structure for Source-free Domain Adaptation", NeurIPS
    2021, arXiv 2110.04202, Eq. 2-6. p = softmax(``logits``) (B, K); ``neighbour_scores`` (B, M, K) are the
    score-bank entries of each sample's neighbours (its K nearest and their expanded neighbours, detached) and
    ``neighbour_weights`` (B, M) their affinities A (1 for a reciprocal neighbour, r = 0.1 otherwise and for every
    expanded one); the last term (p̄ the batch-mean prediction) keeps the predictions diverse (L_div). The
    reference code (Albert0147/NRC_SFDA) writes the dot products as ``kl_div`` of probabilities, which equals
    them up to a term constant in the model.
    """
    p = F.softmax(logits, dim=1)  # (B, K)
    attraction = (torch.einsum("bk,bmk->bm", p, neighbour_scores) * neighbour_weights).sum(1).mean()
    mean_p = p.mean(0)  # (K,)
    return -attraction + (mean_p * torch.log(mean_p + epsilon)).sum()


@float32
def attract_disperse(logits: torch.Tensor, neighbour_scores: torch.Tensor, dispersion: float) -> torch.Tensor:
    """AaD's loss: −(1/B) Σ_i Σ_{j∈C_i} p_i·s_j + λ (1/B) Σ_i Σ_{m≠i} p_i·p_m.

    Yang et al., "Attracting and Dispersing: A Simple Approach for Source-free Domain Adaptation", NeurIPS 2022,
    arXiv 2205.04183, Eq. 5: each prediction p_i = softmax(``logits``) (B, K) is attracted to the bank scores of
    its K nearest neighbours (``neighbour_scores`` (B, K, K_classes), detached) and dispersed from the other
    predictions of the batch, weighted by ``dispersion`` (λ, decayed by the method). As for NRC, the reference
    code's ``kl_div`` of probabilities equals the attraction term up to a constant.
    """
    p = F.softmax(logits, dim=1)  # (B, K)
    attraction = torch.einsum("bk,bnk->bn", p, neighbour_scores).sum(1).mean()
    gram = p @ p.T  # (B, B)
    return -attraction + dispersion * (gram.sum(1) - gram.diagonal()).mean()
