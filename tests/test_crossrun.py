"""Choosing among runs without target labels (issue 24): the cross-run rules on hand-made arrays, `da select` and
`da portfolio` on one shared tiny portfolio, and that no target label reaches any rule's choice."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from da import crossrun, predictions
from da.crossrun import Candidate
from da.validators import ValidationData

from .test_monitor import _PoisonedLabels

TINY_JOB = [
    "dataset.samples_per_class=12",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=2",
    "trainer.batch_size=16",
    "trainer.progress_bar=false",
    "trainer.report=false",
    "device=cpu",
]

# ------------------------------------------------------------------------------------ pure functions, by hand


def _onehot(classes: list[int], k: int = 2, p: float = 0.9) -> np.ndarray:
    out = np.full((len(classes), k), (1 - p) / (k - 1))
    out[np.arange(len(classes)), classes] = p
    return out


def test_ensemble_agreement_by_hand():
    probs = np.stack([_onehot([0, 0, 1, 1]), _onehot([0, 1, 1, 1]), _onehot([1, 1, 0, 0])])
    # ensemble (mean) classes: [0, 1, 1, 1]; agreement of each run with it
    np.testing.assert_allclose(crossrun.ensemble_agreement(probs), [0.75, 1.0, 0.25])


def test_importance_weighted_risk_by_hand():
    losses = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(crossrun.importance_weighted_risk(losses, np.array([3.0, 1.0])), [0.75, 0.25])
    np.testing.assert_allclose(crossrun.shared_weights(np.array([[1.0, 3.0], [3.0, 1.0], [2.0, 2.0]])), [1, 1])


def test_reverse_accuracy_by_hand():
    f_t = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    f_s, y_s = np.array([[1.0, 0.2], [0.2, 1.0]]), np.array([0, 1])
    assert crossrun.reverse_accuracy(f_t, np.array([0, 0, 1, 1]), f_s, y_s, 3) == 1.0
    assert crossrun.reverse_accuracy(f_t, np.array([1, 1, 0, 0]), f_s, y_s, 3) == 0.0  # swapped pseudo-labels
    assert crossrun.reverse_accuracy(f_t, np.array([0, 0, 0, 0]), f_s, y_s, 3) == 0.5  # one class given


def test_mix_pairs_and_ice_by_hand():
    a, b = crossrun.mix_pairs(5, batch=2, seed=0)
    assert sorted(a) == sorted(b) == list(range(5))
    np.testing.assert_array_equal(b[:2], a[:2][::-1])  # each batch against itself reversed
    assert b[4] == a[4]
    pl_a, pl_b = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0])
    assert crossrun.ice(np.array([0, 0, 0, 1]), pl_a, pl_b) == (0.5, 1.0)  # intra: pairs 0, 2; inter: 1, 3
    assert np.isnan(crossrun.ice(np.array([0]), np.array([0]), np.array([0]))[1])


def test_ranks_veto_and_choice_by_hand():
    np.testing.assert_allclose(crossrun.ranks(np.array([0.3, np.nan, 0.1])), [2, 0, 1])
    np.testing.assert_allclose(crossrun.mean_rank(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])), [2, 2, 2])
    assert np.isnan(crossrun.mean_rank(np.array([1.0, np.nan]), np.array([1.0, 2.0]))[1])
    np.testing.assert_array_equal(crossrun.collapse_veto([True, False]), [False, True])
    np.testing.assert_array_equal(crossrun.collapse_veto([True, True]), [True, True])  # all flagged: no veto
    assert crossrun.choose(np.array([0.9, 0.5, np.nan]), np.array([False, True, True])) == 1
    assert crossrun.choose(np.array([0.5, 0.5]), np.array([True, True])) == 0  # ties: the first
    assert crossrun.choose(np.array([np.nan]), np.array([True])) is None


# ----------------------------------------------------------------------------- synthetic pools of candidates


def _pool(rng: np.random.Generator, n_runs: int = 4, n_t: int = 60, n_s: int = 30, k: int = 3, d: int = 4):
    """Runs of one task: the same source-validation samples, predictions of varying quality, run 0 collapsed."""
    y_s = torch.from_numpy(rng.integers(0, k, n_s))
    cands = []
    for r in range(n_runs):
        logits_t = torch.from_numpy(rng.normal(0, 1, (n_t, k))).float()
        if r == 0:
            logits_t[:, 0] += 20  # every target sample in class 0, confidently: the entropy rules love it
        logits_s = torch.from_numpy(rng.normal(0, 1, (n_s, k))).float()
        logits_s[torch.arange(n_s), y_s] += r  # later runs fit the source better
        data = ValidationData(
            logits_t,
            torch.from_numpy(rng.normal(0, 1, (n_t, d))).float(),
            logits_s,
            torch.from_numpy(rng.normal(0, 1, (n_s, d))).float(),
            y_s,
        )
        info = {"method": f"m{r}", "dataset": "digits", "source": "a", "target": "b"}
        info["collapse"] = {"epoch": 1} if r == 0 else None
        cands.append(Candidate(f"run{r}", info, data))
    return cands


def test_collapse_veto_keeps_a_collapsed_run_out():
    cands = _pool(np.random.default_rng(0))
    assert crossrun.rank_candidates(cands, "entropy", veto=False).chosen == "run0"  # the collapsed run
    sel = crossrun.rank_candidates(cands, "entropy")
    assert sel.chosen != "run0" and sel.rows[-1]["run"] == "run0" and sel.rows[-1]["vetoed"]


def test_source_rules_skip_source_free_runs():
    cands = _pool(np.random.default_rng(1))
    cands[3].data = ValidationData(cands[3].data.logits_t, cands[3].data.features_t)  # a source-free method
    for rule in crossrun.SOURCE_RULES:
        scores = crossrun.score(rule, cands)
        assert np.isnan(scores[3]) and np.isfinite(scores[1:3]).all(), rule
    assert crossrun.rank_candidates(cands, "source_val").chosen == "run2"  # run 3 would fit the source best
    assert np.isfinite(crossrun.score("ensv", cands)).all()


def test_iwv_scores_the_runs_sharing_source_samples():
    cands = _pool(np.random.default_rng(4))
    d = cands[3].data
    cands[3].data = ValidationData(d.logits_t, d.features_t, d.logits_s, d.features_s, d.labels_s.flip(0))
    scores = crossrun.score("iwv", cands)
    assert np.isnan(scores[3]) and np.isfinite(scores[:3]).all()  # another seed's split: not comparable
    assert scores[2] > scores[1]  # run 2 fits the (shared) source samples better


def test_pool_of_two_tasks_is_one_line():
    cands = _pool(np.random.default_rng(2))
    cands[1].info["target"] = "c"
    with pytest.raises(crossrun.ConfigError, match="different tasks"):
        crossrun.rank_candidates(cands)


def _write_pool(root, cands) -> None:
    """Run folders holding what a finished run holds: predictions.npz and a results.json with target labels'
    numbers (target_acc, per-class, oracle, selected) beside the label-free keys."""
    for i, c in enumerate(cands):
        folder = root / c.run_dir
        folder.mkdir(parents=True)
        predictions.save(str(folder), c.data)
        results = {**c.info, "target_acc": 0.1 * i, "per_class_acc": [0.1 * i] * 3, "source_acc": 0.5}
        results["oracle"] = {"epoch": 1, "target_acc": 0.1 * i}
        results["selected"] = {"im": {"epoch": 1, "target_acc": 0.1 * i}}
        (folder / "results.json").write_text(json.dumps(results))


def test_no_target_label_reaches_any_rule(tmp_path):
    """Every rule chooses the same run after the target-label numbers of results.json are reversed and replaced
    by junk, and a candidate holds no key that derives from target labels."""
    cands = _pool(np.random.default_rng(3))
    _write_pool(tmp_path, cands)
    ice = {str(tmp_path / c.run_dir): (0.1 * i, 0.2) for i, c in enumerate(cands)}  # MixVal's part needs a model
    rules = [r for r in crossrun.RULES if r != "mixval"]

    def choices() -> dict[str, list]:
        got, _ = crossrun.load_candidates(crossrun.find_runs([str(tmp_path)]))
        for c in got:
            assert not {"target_acc", "per_class_acc", "oracle", "selected", "source_acc"} & set(c.info)
        out = {r: [row["run"] for row in crossrun.rank_candidates(got, r).rows] for r in rules}
        out["mixval"] = [row["run"] for row in crossrun.rank_candidates(got, "mixval", mixval=ice).rows]
        return out

    before = choices()
    for i, c in enumerate(cands):
        path = tmp_path / c.run_dir / "results.json"
        results = json.loads(path.read_text())
        results.update(target_acc=1 - 0.1 * i, per_class_acc="poison", oracle="poison", selected="poison")
        path.write_text(json.dumps(results))
    assert choices() == before


# ------------------------------------------------------------------ da portfolio / da select on a tiny portfolio


@pytest.fixture(scope="module")
def portfolio(tmp_path_factory):
    """The default task, a two-method portfolio with tiny budgets, trained once for this module."""
    out = tmp_path_factory.mktemp("portfolio") / "pf"
    rc = crossrun.main_portfolio(["--methods", "source_only,dann", "--out", str(out), "--", *TINY_JOB])
    return out, rc


def test_portfolio_trains_and_chooses(portfolio, capsys):
    out, rc = portfolio
    assert rc == 0
    for method in ("source_only", "dann"):
        assert (out / method / "default" / "predictions.npz").is_file()
    sel = json.loads((out / "selection.json").read_text())
    assert sel["rule"] == crossrun.DEFAULT_RULE and len(sel["ranking"]) == 2
    assert os.path.realpath(out / "chosen") == os.path.realpath(sel["chosen"])


def test_select_prints_writes_and_links(portfolio, tmp_path, capsys):
    out, _ = portfolio
    assert crossrun.main(["select", str(out), "--rule", "reverse", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "chosen (reverse)" in printed and "source_only" in printed and "dann" in printed
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["rule"] == "reverse" and os.path.islink(tmp_path / "chosen")
    assert crossrun.select(str(out), "reverse").chosen == sel["chosen"]  # the Python entry point agrees


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rule", "nope"], "unknown rule 'nope'; valid: ensv"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_select_bad_input_is_one_line(portfolio, capsys, args, message):
    out, _ = portfolio
    assert crossrun.main_select([str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_select_missing_or_empty_folder_is_one_line(tmp_path, capsys):
    assert crossrun.main_select([str(tmp_path / "nope")]) == 2
    assert crossrun.main_select([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not a folder" in err[0] and "no run folder" in err[1]
    assert crossrun.main_portfolio(["--methods", "nope", "--out", str(tmp_path)]) == 2
    assert crossrun.main([]) == 2 and crossrun.main(["nope"]) == 2  # python -m da.crossrun without a command


def test_mixval_reads_no_target_label(portfolio, monkeypatch):
    """MixVal runs each model on mixed target images: with the target's labels poisoned it gives the same ICE."""
    import da.build

    out, _ = portfolio
    cands, _ = crossrun.load_candidates(crossrun.find_runs([str(out)]))
    clean = crossrun.mixval_ice(cands)
    build = da.build.build_run

    def poisoned(*args, **kwargs):
        parts = build(*args, **kwargs)
        parts.task.target_train_eval.base = _PoisonedLabels(parts.task.target_train_eval.base)
        return parts

    monkeypatch.setattr(da.build, "build_run", poisoned)
    assert crossrun.mixval_ice(cands) == clean
    assert all(0 <= v <= 1 for pair in clean.values() for v in pair if not np.isnan(v))
