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
