"""The selection benchmark (issue 14, item 5): a tiny suite runs, skips finished jobs and reports regrets."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import selection

TINY = ["trainer.epochs=2", "trainer.steps_per_epoch=3", "dataset.samples_per_class=12", "trainer.batch_size=16"]


def test_weighted_spearman_on_known_rankings():
    acc = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert selection.weighted_spearman(acc * 3, acc) == pytest.approx(1.0)
    assert selection.weighted_spearman(-acc, acc) == pytest.approx(-1.0)
    # a validator right about the top checkpoints counts more than one right about the bottom ones
    top_right = np.array([2, 1, 3, 4, 5.0])
    bottom_right = np.array([1, 2, 3, 5, 4.0])
    assert selection.weighted_spearman(top_right, acc) > selection.weighted_spearman(bottom_right, acc)


@pytest.mark.slow
def test_tiny_selection_suite(tmp_path):
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(
        "name: tiny\ntitle: tiny\nseeds: [0]\ntask: {dataset: digits, source: fonts, target: sklearn}\n"
        "grids:\n  source_only: {trainer.lr: [0.01, 0.03]}\n  self_training: {method.threshold: [0.9]}\n"
        "defaults:\n  source_only: {trainer.lr: 0.01}\n  self_training: {method.threshold: 0.9}\n"
        'method_overrides:\n  self_training: ["init={out}/runs/source_only/lr0.01/seed${seed}"]\n'
    )
    suite = selection.load(str(suite_file))
    out = tmp_path / "out"
    assert selection.sweep(suite, str(out), TINY) == 3
    assert selection.sweep(suite, str(out), TINY) == 0  # finished jobs are skipped
    assert (out / "runs" / "source_only" / "lr0.03" / "seed0" / "results.json").is_file()
    md, _ = selection.report(suite, str(out))
    text = open(md).read()
    assert "| source_only | snd |" in text and "| self_training | im |" in text and "Smallest regret" in text
    data = selection.analyse(suite, str(out))
    so = data["source_only"]
    assert so["checkpoints"] == 2  # 2 grid points x 1 evaluated epoch (trainer.eval_every=2: epoch 2, the last)
    for v in so["validators"].values():
        assert all(p <= o + 1e-9 for p, o in zip(v["picked"], so["oracle"]))  # nothing beats the oracle


def test_default_must_be_a_grid_point(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: b\ntitle: b\nseeds: [0]\ntask: {dataset: digits, source: fonts, target: sklearn}\n"
        "grids:\n  dann: {method.trade_off: [0.1, 0.3]}\ndefaults:\n  dann: {method.trade_off: 1.0}\n"
    )
    with pytest.raises(SystemExit, match="default of dann"):
        selection.load(str(bad))


def test_thin_keeps_the_scores_eval_every_computes():
    rows = [{"epoch": e, "target_acc": 0.1 * e, "im_score": -e} for e in range(1, 6)]
    thinned = selection.thin(rows, 2)
    assert [("im_score" in r) for r in thinned] == [False, True, False, True, True]  # every 2nd and the last
    assert all("target_acc" in r for r in thinned) and selection.thin(rows, 1) is rows
