"""AdaMatch's pieces on hand-made probability tables (arXiv 2106.04732)."""

from __future__ import annotations

import pytest
import torch

from da import losses


def test_relative_threshold_follows_the_source_confidence():
    probs_s = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # mean top probability 0.8 -> cut-off 0.9 * 0.8 = 0.72
    probs_t = torch.tensor([[0.75, 0.25], [0.30, 0.70], [0.5, 0.5]])
    assert losses.relative_confidence_mask(probs_t, probs_s, tau=0.9).tolist() == [True, False, False]
    unsure_s = torch.tensor([[0.6, 0.4], [0.4, 0.6]])  # a less confident source lowers the bar: 0.9 * 0.6 = 0.54
    assert losses.relative_confidence_mask(probs_t, unsure_s, tau=0.9).tolist() == [True, True, False]


def test_distribution_alignment_on_a_hand_made_table():
    probs_t = torch.tensor([[0.9, 0.1], [0.8, 0.2]])  # the target drifts to class 0: marginal (0.85, 0.15)
    aligned = losses.align_distribution(probs_t, torch.tensor([0.5, 0.5]), probs_t.mean(0))
    ratio = torch.tensor([0.5 / 0.85, 0.5 / 0.15])
    expected = probs_t * ratio
    expected = expected / expected.sum(1, keepdim=True)
    torch.testing.assert_close(aligned, expected)
    torch.testing.assert_close(aligned.sum(1), torch.ones(2))
    assert aligned[:, 1].mean() > probs_t[:, 1].mean()  # mass moves back to the neglected class
    same = losses.align_distribution(probs_t, probs_t.mean(0), probs_t.mean(0))
    torch.testing.assert_close(same, probs_t)  # nothing to align: unchanged


def test_random_logit_interpolation_lies_between_its_ends():
    torch.manual_seed(0)
    joint, alone = torch.zeros(64, 5), torch.ones(64, 5)
    mixed = losses.random_logit_interpolation(joint, alone)
    assert ((mixed >= 0) & (mixed <= 1)).all() and mixed.std() > 0.2  # a random weight per element
    torch.testing.assert_close(losses.random_logit_interpolation(alone, alone), alone)


@pytest.mark.parametrize(("progress", "mu"), [(0.0, 0.0), (0.25, 0.5), (0.5, 1.0), (0.75, 1.0), (1.0, 1.0)])
def test_warmup_schedule(progress, mu):
    assert losses.adamatch_warmup(progress) == pytest.approx(mu, abs=1e-12)


def test_flexmatch_thresholds_lower_the_bar_for_neglected_classes():
    learned = torch.tensor([0, 0, 0, 0, 1, -1, -1])  # class 0 learned often, class 1 once, class 2 never
    t = losses.flexmatch_thresholds(learned, 3, threshold=0.95)
    assert t[0] == pytest.approx(0.95)  # beta = 4 / max(4, 2) = 1 -> the full threshold
    assert t[1] == pytest.approx((0.25 / 1.75) * 0.95)  # beta = 1 / 4
    assert t[2] == 0.0  # nothing learned yet
    warm = losses.flexmatch_thresholds(torch.tensor([0, -1, -1, -1]), 2, threshold=0.9)
    assert warm[0] == pytest.approx((1 / 3) / (2 - 1 / 3) * 0.9)  # warm-up: divided by the 3 unused samples
