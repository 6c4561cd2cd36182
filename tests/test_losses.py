"""Each transfer loss against an independent reference (numpy or pytorch-adapt's layer) and edge cases."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from da import losses

with warnings.catch_warnings():  # torchmetrics 0.9 (a pytorch-adapt dependency) imports pkg_resources
    warnings.simplefilter("ignore")
    try:  # the test-only reference (da[test]); the tests that need it are skipped without it
        from pytorch_adapt.layers import (
            BNMLoss,
            CORALLoss,
            EntropyLoss,
            GradientReversal,
            MCCLoss,
            MMDLoss,
            RandomizedDotProduct,
        )
    except ImportError:
        BNMLoss = CORALLoss = EntropyLoss = GradientReversal = MCCLoss = MMDLoss = RandomizedDotProduct = None

needs_pytorch_adapt = pytest.mark.skipif(
    CORALLoss is None, reason="pytorch-adapt (pip install 'da[test]') not installed"
)

ATOL = 1e-5


def feats(seed: int, n: int = 32, d: int = 8, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def close(a, b, atol: float = ATOL) -> None:
    assert float(a) == pytest.approx(float(b), abs=atol, rel=1e-5)


# ------------------------------------------------------------------ gradient reversal
@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
@needs_pytorch_adapt
def test_grl_flips_the_sign_and_scales_by_lambda(coeff):
    x = feats(0).requires_grad_()
    y = losses.grad_reverse(x, coeff)
    torch.testing.assert_close(y, x)  # identity forward
    w = feats(1)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -coeff * w)
    ref_x = x.detach().clone().float().requires_grad_()
    (GradientReversal(coeff)(ref_x) * w.float()).sum().backward()
    torch.testing.assert_close(x.grad.float(), ref_x.grad)


def test_grl_coefficient_schedule():
    assert losses.grl_coefficient(0.0) == 0.0
    assert losses.grl_coefficient(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert losses.grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert 0.999 < losses.grl_coefficient(1.0) < 1.0
    assert losses.grl_coefficient(1.0, high=0.5) == pytest.approx(0.5 * losses.grl_coefficient(1.0))


# ------------------------------------------------------------------ domain adversarial BCE
def test_domain_adversarial_matches_numpy():
    d_s, d_t = feats(0, 16, 1).squeeze(1), feats(1, 16, 1).squeeze(1)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    ref = 0.5 * (-np.log(sig(d_s.numpy())).mean() - np.log(1 - sig(d_t.numpy())).mean())
    close(losses.domain_adversarial(d_s, d_t), ref)
    w_s, w_t = torch.rand(16, dtype=torch.float64), torch.rand(16, dtype=torch.float64)
    ref_w = 0.5 * (
        -(w_s.numpy() * np.log(sig(d_s.numpy()))).mean() - (w_t.numpy() * np.log(1 - sig(d_t.numpy()))).mean()
    )
    close(losses.domain_adversarial(d_s, d_t, w_s, w_t), ref_w)


def test_domain_adversarial_of_a_blind_discriminator_is_log2():
    zeros = torch.zeros(1)
    close(losses.domain_adversarial(zeros, zeros), math.log(2))


# ------------------------------------------------------------------ CORAL
def numpy_coral(a: np.ndarray, b: np.ndarray) -> float:
    d = a.shape[1]
    return float(((np.cov(a, rowvar=False) - np.cov(b, rowvar=False)) ** 2).sum() / (4 * d * d))


@needs_pytorch_adapt
def test_coral_matches_numpy_and_pytorch_adapt():
    f_s, f_t = feats(0), feats(1, shift=0.5) * 2
    close(losses.coral(f_s, f_t), numpy_coral(f_s.numpy(), f_t.numpy()))
    close(losses.coral(f_s.float(), f_t.float()), CORALLoss()(f_s.float(), f_t.float()))


def test_coral_edge_cases():
    f = feats(0)
    assert float(losses.coral(f, f)) == pytest.approx(0.0, abs=1e-12)  # identical domains
    assert float(losses.coral(f, f + 3.0)) == pytest.approx(0.0, abs=1e-10)  # a mean shift is not a covariance shift
    one = losses.coral(f[:1], f[1:2])  # a batch of one has zero covariance
    assert torch.isfinite(one) and float(one) == 0.0
    assert float(losses.coral(f, 2 * f)) > 0


# ------------------------------------------------------------------ MK-MMD (DAN)
def numpy_mk_mmd(a: np.ndarray, b: np.ndarray, alphas, sigma2: float) -> float:
    z = np.concatenate([a, b])
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)
    k = np.mean([np.exp(-d2 / (2 * al * sigma2)) for al in alphas], axis=0)
    n = len(a)
    kss, ktt, kst = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(b)
    return float(
        (kss.sum() - np.trace(kss)) / (n * (n - 1)) + (ktt.sum() - np.trace(ktt)) / (m * (m - 1)) - 2 * kst.mean()
    )


def test_mk_mmd_matches_numpy_with_the_mean_distance_bandwidth():
    f_s, f_t = feats(0), feats(1, shift=0.7)
    alphas = (0.125, 0.25, 0.5, 1.0, 2.0)
    z = torch.cat([f_s, f_t])
    sigma2 = float(torch.cdist(z, z).pow(2).mean())
    close(losses.mk_mmd(f_s, f_t, alphas), numpy_mk_mmd(f_s.numpy(), f_t.numpy(), alphas, sigma2))


@needs_pytorch_adapt
def test_mk_mmd_matches_pytorch_adapt_quadratic():
    f_s, f_t = feats(0).float(), feats(1, shift=0.7).float()
    alphas = (0.25, 0.5, 1.0, 2.0, 4.0)
    bandwidth = 7.0
    # pytorch-adapt: exp(-d² · s / bandwidth) with kernel_scales s; ours: exp(-d² / (2 α σ²)) -> s = 1 / (2α)
    ref = MMDLoss(kernel_scales=torch.tensor([1 / (2 * a) for a in alphas]), mmd_type="quadratic", bandwidth=bandwidth)
    close(losses.mk_mmd(f_s, f_t, alphas, bandwidth=bandwidth), ref(f_s, f_t))


def test_mk_mmd_edge_cases():
    f = feats(0)
    assert abs(float(losses.mk_mmd(f, f))) < 0.05  # identical domains: the unbiased estimate is ≈ 0
    assert float(losses.mk_mmd(f, f + 3.0)) > 0.5
    one = losses.mk_mmd(f[:1], f[:1])  # a batch of one: biased within-domain terms, exactly 0
    assert float(one) == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(losses.mk_mmd(f[:1], f[1:2]))


# ------------------------------------------------------------------ entropy, CDAN
@needs_pytorch_adapt
def test_entropy_matches_pytorch_adapt_and_numpy():
    z = feats(0, 16, 10)
    close(losses.entropy(z.float()), EntropyLoss()(z.float()))
    p = np.exp(z.numpy()) / np.exp(z.numpy()).sum(1, keepdims=True)
    close(losses.entropy(z), -(p * np.log(p)).sum(1).mean())
    assert float(losses.entropy(torch.zeros(1, 10))) == pytest.approx(math.log(10))  # uniform, batch of one
    assert float(losses.entropy(torch.zeros(4, 1))) == 0.0  # a single class: no uncertainty


def test_entropy_weights_normalised_to_mean_one():
    z = feats(0, 16, 10) * 3
    w = losses.entropy_weights(z)
    h = losses.entropy(z, reduction="none")
    raw = 1 + torch.exp(-h)
    torch.testing.assert_close(w, raw * 16 / raw.sum(), check_dtype=False)
    assert float(w.mean()) == pytest.approx(1.0)
    assert int(w.argmax()) == int(h.argmin())  # the most confident sample weighs most


def test_multilinear_map_is_the_flattened_outer_product():
    f, g = feats(0, 4, 3), feats(1, 4, 5).softmax(1)
    ref = np.stack([np.outer(g[i].numpy(), f[i].numpy()).ravel() for i in range(4)])
    np.testing.assert_allclose(losses.multilinear_map(f, g).numpy(), ref, atol=ATOL)


@needs_pytorch_adapt
def test_randomized_multilinear_map_matches_pytorch_adapt():
    f, g = feats(0, 6, 8).float(), feats(1, 6, 5).softmax(1).float()
    ref = RandomizedDotProduct(in_dims=[8, 5], out_dim=32)
    r_f, r_g = ref.rand_mat0, ref.rand_mat1  # pytorch-adapt's (in, out) random matrices
    torch.testing.assert_close(losses.randomized_multilinear_map(f, g, r_f, r_g), ref(f, g), atol=ATOL, rtol=1e-5)


# ------------------------------------------------------------------ MCC, BNM
def numpy_mcc(z: np.ndarray, t: float) -> float:
    e = np.exp((z - z.max(1, keepdims=True)) / t)
    p = e / e.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1)
    w = 1 + np.exp(-h)
    w = len(w) * w / w.sum()
    c = (p * w[:, None]).T @ p
    c = c / c.sum(1)[None, :]  # column j scaled by class j's total (c is symmetric)
    return float((c.sum() - np.trace(c)) / len(c))


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@needs_pytorch_adapt
def test_mcc_matches_numpy_and_pytorch_adapt(temperature):
    z = feats(0, 32, 10) * 2
    close(losses.mcc(z, temperature), numpy_mcc(z.numpy(), temperature))
    close(losses.mcc(z.float(), temperature), MCCLoss(T=temperature)(z.float()))


def test_mcc_edge_cases():
    confident = torch.eye(10).repeat(3, 1) * 50  # every class predicted with certainty: no confusion
    assert float(losses.mcc(confident, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.mcc(torch.zeros(8, 10), 1.0)) == pytest.approx(0.9)  # uniform: (K - 1) / K
    assert torch.isfinite(losses.mcc(feats(0, 1, 10)))  # a batch of one
    assert float(losses.mcc(feats(0, 8, 1))) == 0.0  # a single class


@needs_pytorch_adapt
def test_bnm_matches_numpy_and_pytorch_adapt():
    z = feats(0, 32, 10)
    p = F.softmax(z, 1).numpy()
    close(losses.bnm(z), -np.linalg.svd(p, compute_uv=False).sum() / 32)
    close(losses.bnm(z.float()), BNMLoss()(z.float()))


def test_bnm_edge_cases():
    one_hot = torch.eye(10) * 100  # confident and diverse: nuclear norm = B, the minimum of −‖P‖_*/B
    assert float(losses.bnm(one_hot)) == pytest.approx(-1.0, abs=1e-5)
    collapsed = torch.zeros(10, 10)
    collapsed[:, 0] = 100  # confident but one class: rank one, ‖P‖_* = √B
    assert float(losses.bnm(collapsed)) == pytest.approx(-math.sqrt(10) / 10, abs=1e-5)
    assert float(losses.bnm(feats(0, 1, 10))) == pytest.approx(-1.0 * float(F.softmax(feats(0, 1, 10), 1).norm()))
    assert float(losses.bnm(feats(0, 6, 1))) == pytest.approx(-math.sqrt(6) / 6)  # a single class


# ---------------------------------------------------------------- issue 21: MDD, MCD, MIC, NRC, AaD (hand-computed)

LN3 = math.log(3.0)


def test_margin_disparity_discrepancy_equals_the_papers_formula_by_hand():
    logits_s = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)  # h(x_s) = 0, 1
    adv_s = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    logits_t = torch.tensor([[0.0, 0.0, 3.0], [5.0, 0.0, 0.0]])  # h(x_t) = 2, 0
    adv_t = torch.tensor([[0.0, 0.0, 0.0], [LN3, 0.0, 0.0]], requires_grad=True)  # sigma_h = 1/3, 3/5
    gamma = 4.0
    # D = gamma * mean_s log sigma_h(f') + mean_t log(1 - sigma_h(f'))  (arXiv 1904.05801, Sec. 5)
    source = (math.log(math.e / (math.e + 2)) + math.log(1 / 3)) / 2
    target = (math.log(2 / 3 + 1e-6) + math.log(2 / 5 + 1e-6)) / 2
    d = losses.margin_disparity_discrepancy(logits_s, logits_t, adv_s, adv_t, gamma)
    assert float(d) == pytest.approx(gamma * source + target, abs=1e-6)
    d.backward()
    assert logits_s.grad is None  # the main head's predictions are labels: no gradient through them
    # the adversary ascends D: raise the predicted class on the source (agree), lower it on the target (disagree)
    assert adv_s.grad[0, 0] > 0 and adv_t.grad[0, 2] < 0


def test_margin_disparity_discrepancy_of_an_agreeing_adversary_is_the_log_of_the_offset():
    z = feats(3, 6, 4).float()
    # f' = f on identical, confident domains: log sigma_h -> 0, log(1 - sigma_h) -> log(offset)
    confident = z * 100
    d = losses.margin_disparity_discrepancy(confident, confident, confident, confident, 2.0)
    assert float(d) == pytest.approx(math.log(1e-6), rel=1e-3)


def test_classifier_discrepancy_by_hand():
    a = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    b = torch.tensor([[LN3, 0.0], [1.0, 2.0]])  # row 0: (1/2, 1/2) vs (3/4, 1/4); row 1 identical
    assert float(losses.classifier_discrepancy(a, b)) == pytest.approx((0.25 + 0.25 + 0 + 0) / 4)
    assert float(losses.classifier_discrepancy(a, a)) == 0.0
    assert float(losses.classifier_discrepancy(a, b)) == float(losses.classifier_discrepancy(b, a))


def test_masked_consistency_by_hand():
    teacher = torch.tensor([[LN3, 0.0], [0.0, math.log(4.0)]], requires_grad=True)  # (3/4, 1/4), (1/5, 4/5)
    student = torch.tensor([[0.0, 0.0], [LN3, 0.0]], requires_grad=True)  # CE vs label 0: ln 2; vs 1: ln 4
    loss = losses.masked_consistency(student, teacher)
    assert float(loss) == pytest.approx((0.75 * math.log(2) + 0.8 * math.log(4)) / 2, abs=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None  # the teacher gives targets only


def test_neighbourhood_clustering_by_hand_and_against_the_reference_kl_form():
    logits = torch.tensor([[0.0, 0.0], [LN3, 0.0]], requires_grad=True)  # p = (1/2, 1/2), (3/4, 1/4)
    scores = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [1.0, 0.0]]])  # (B, M, K)
    weights = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    attraction = ((1.0 * 0.5 + 0.1 * 0.5) + (0.1 * 0.5 + 1.0 * 0.75)) / 2
    mean_p = [(0.5 + 0.75) / 2, (0.5 + 0.25) / 2]
    diversity = sum(m * math.log(m + 1e-5) for m in mean_p)
    loss = losses.neighbourhood_clustering(logits, scores, weights, 1e-5)
    assert float(loss) == pytest.approx(-attraction + diversity, abs=1e-6)
    # Albert0147/NRC_SFDA writes the attraction as kl_div of probabilities: the same gradient
    p = F.softmax(logits, 1)
    kl = (F.kl_div(p.unsqueeze(1).expand_as(scores), scores, reduction="none").sum(-1) * weights).sum(1).mean()
    m = p.mean(0)
    reference = kl + (m * torch.log(m + 1e-5)).sum()
    (g_ours,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_attract_disperse_by_hand_and_against_the_reference_kl_form():
    logits = torch.tensor([[LN3, 0.0], [0.0, 0.0]], requires_grad=True)  # p = (3/4, 1/4), (1/2, 1/2)
    scores = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # one neighbour each
    loss = losses.attract_disperse(logits, scores, dispersion=2.0)
    # attraction mean(3/4, 1/2); dispersion: p_1 . p_2 = 1/2 for each row
    assert float(loss) == pytest.approx(-(0.75 + 0.5) / 2 + 2.0 * 0.5, abs=1e-6)
    # Albert0147/AaD_SFDA tar_adaptation.py: kl_div of probabilities (one-hot scores: the constant is 0)
    p = F.softmax(logits, 1)
    reference = F.kl_div(p.unsqueeze(1), scores, reduction="none").sum(-1).sum(1).mean()
    mask = 1.0 - torch.eye(2)
    reference = reference + 2.0 * ((p @ p.T) * mask).sum(-1).mean()
    assert float(loss) == pytest.approx(float(reference), abs=1e-6)
    (g_ours,) = torch.autograd.grad(loss, logits)
    (g_ref,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(g_ours, g_ref)
    assert float(losses.attract_disperse(logits[:1], scores[:1], 2.0)) == pytest.approx(-0.75)  # batch of one
