"""Unsupervised transfer (issue 5): pseudo-label selection, FixMatch's mask, SHOT's clustering and source-freeness."""

from __future__ import annotations

import math

import pytest
import torch

import da.build
import da.experiment
from da import losses
from da.data.base import Task
from da.errors import ConfigError
from da.experiment import fit, source_checkpoint
from da.methods.self_training import SelfTraining, select_class_balanced, select_confident
from da.methods.shot import shot_pseudo_labels
from tests.conftest import tiny_cfg

# ---------------------------------------------------------------- pseudo-label selection (hand-made tables)

PROBS = torch.tensor(
    [
        [0.97, 0.02, 0.01],  # 0: class 0, very confident
        [0.95, 0.04, 0.01],  # 1: class 0
        [0.92, 0.05, 0.03],  # 2: class 0
        [0.60, 0.30, 0.10],  # 3: class 0, unsure
        [0.10, 0.85, 0.05],  # 4: class 1
        [0.30, 0.40, 0.30],  # 5: class 1, unsure
        [0.05, 0.05, 0.90],  # 6: class 2
        [0.94, 0.03, 0.03],  # 7: class 0
    ]
)


def test_threshold_keeps_only_confident_argmax():
    assert select_confident(PROBS, 0.9).tolist() == [0, 0, 0, -1, -1, -1, 2, 0]
    assert select_confident(PROBS, 0.0).tolist() == [0, 0, 0, 0, 1, 1, 2, 0]
    assert select_confident(PROBS, 0.99).tolist() == [-1] * 8
    assert select_confident(PROBS, 0.95).tolist() == [0, 0, -1, -1, -1, -1, -1, -1]  # >= τ is kept


def test_class_balanced_caps_the_dominant_class_at_its_most_confident():
    # class 0 is predicted 5 times; with 2 per class only its two most confident (rows 0 and 1) survive
    assert select_class_balanced(PROBS, per_class=2).tolist() == [0, 0, -1, -1, 1, 1, 2, -1]
    assert select_class_balanced(PROBS, per_class=3).tolist() == [0, 0, -1, -1, 1, 1, 2, 0]
    # the threshold applies before the cap: row 5 (0.40) is dropped, rare classes keep what passes
    assert select_class_balanced(PROBS, per_class=2, threshold=0.8).tolist() == [0, 0, -1, -1, 1, -1, 2, -1]
    assert select_class_balanced(PROBS, per_class=100).tolist() == select_confident(PROBS, 0.0).tolist()


def test_class_balanced_ties_keep_the_lower_index():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    assert select_class_balanced(probs, per_class=1).tolist() == [0, -1, -1, 1]


def test_self_training_rounds_grow_the_fraction_and_keep_the_cap():
    cfg = SelfTraining.Config(name="self_training", per_class_fraction=0.2, fraction_step=0.1, max_fraction=0.45)
    method = SelfTraining(torch.nn.Linear(1, 1), cfg, num_classes=10)
    assert [round(method.fraction(r), 6) for r in range(4)] == [0.2, 0.3, 0.4, 0.45]
    with pytest.raises(ConfigError, match="threshold"):
        SelfTraining.Config(name="self_training", threshold=1.5)


# ---------------------------------------------------------------- FixMatch


def test_fixmatch_mask_only_targets_above_tau_contribute():
    # weak-view confidences 0.965, 0.367, 0.987, 0.472: with τ = 0.95 only rows 0 and 2 are pseudo-labelled
    logits_weak = torch.tensor([[4.0, 0.0, 0.0], [0.5, 0.4, 0.3], [0.0, 0.0, 5.0], [1.0, 1.2, 0.0]], requires_grad=True)
    logits_strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    loss = losses.fixmatch(logits_weak, logits_strong, threshold=0.95)
    loss.backward()
    row_has_grad = logits_strong.grad.abs().sum(1) > 0
    assert row_has_grad.tolist() == [True, False, True, False]
    assert logits_weak.grad is None or logits_weak.grad.abs().sum() == 0  # the weak view is only a target
    ce = torch.nn.functional.cross_entropy(logits_strong.detach(), torch.tensor([0, 0, 2, 1]), reduction="none")
    assert torch.allclose(loss, (ce[0] + ce[2]) / 4)  # averaged over the whole batch (paper, Eq. 4)
    assert losses.fixmatch(logits_weak, logits_strong, threshold=0.99).item() == 0.0
    assert torch.allclose(losses.fixmatch(logits_weak, logits_strong, threshold=0.0), ce.mean())


# ---------------------------------------------------------------- SHOT


def test_shot_clustering_fixes_a_sample_the_classifier_got_wrong():
    centres = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])
    noise = 0.3 * torch.randn(30, 3, generator=torch.Generator().manual_seed(1))
    features = centres.repeat_interleave(10, 0) + noise  # (30, 3): 10 per class
    truth = torch.arange(3).repeat_interleave(10)
    probs = torch.nn.functional.one_hot(truth, 3).float() * 0.8 + 0.1 / 3
    probs[0] = torch.tensor([0.1, 0.8, 0.1])  # the classifier is wrong on sample 0 (a class-0 sample)
    labels = shot_pseudo_labels(probs, features, rounds=1)
    assert labels.tolist() == truth.tolist()
    assert shot_pseudo_labels(probs, features, rounds=0).shape == (30,)


def test_information_maximization_rewards_confident_and_diverse_predictions():
    confident_diverse = torch.eye(4) * 20  # (4, 4): one class each, certain
    collapsed = torch.zeros(4, 4)
    collapsed[:, 0] = 20  # certain but all the same class
    uniform = torch.zeros(4, 4)
    im = [losses.information_maximization(x).item() for x in (confident_diverse, collapsed, uniform)]
    assert im[0] == pytest.approx(-math.log(4), abs=1e-3)  # entropy 0, diversity log K
    assert im[1] == pytest.approx(0.0, abs=1e-3)
    assert im[2] == pytest.approx(0.0, abs=1e-3)  # entropy log K, diversity log K


class Forbidden(torch.utils.data.Dataset):
    """A source split that fails the test if anything reads it."""

    def __init__(self) -> None:
        self.touched = 0

    def _fail(self, *_):
        self.touched += 1
        raise AssertionError("the source-free stage touched a source sample")

    __len__ = __getitem__ = __iter__ = _fail


def _forbid_source(monkeypatch) -> list[Forbidden]:
    spies: list[Forbidden] = []
    build = da.build.build_task

    def build_without_source(*args, **kwargs) -> Task:
        task = build(*args, **kwargs)
        task.source_train, task.source_test = Forbidden(), Forbidden()
        spies.extend([task.source_train, task.source_test])
        return task

    monkeypatch.setattr(da.build, "build_task", build_without_source)
    return spies


@pytest.fixture(scope="module")
def shot_run(tmp_path_factory):
    """A tiny SHOT run whose adaptation stage sees a task with forbidden source splits (shared by two tests)."""
    run_dir = tmp_path_factory.mktemp("shot")
    cfg = tiny_cfg("method=shot")
    stage = source_checkpoint(cfg, str(run_dir))  # the source stage reads the source, before the patch
    with pytest.MonkeyPatch.context() as monkeypatch:
        spies = _forbid_source(monkeypatch)
        result = fit(cfg, run_dir=str(run_dir), quiet=True)  # init=null -> source: the stage above is reused
        with pytest.raises(AssertionError, match="source sample"):  # the spy works: a source-using method fails
            fit(tiny_cfg("method=fixmatch"), run_dir=str(run_dir / "fixmatch"), quiet=True)
    return run_dir, stage, result, spies


def test_shot_adaptation_touches_no_source_sample(shot_run):
    _, stage, result, spies = shot_run
    assert result["init"] == stage and result["source_acc"] is None
    # SHOT's task; then fixmatch's: built for its pre-start checks, and again in its source stage, which failed
    assert len(spies) == 6 and all(s.touched == 0 for s in spies[:2])
    assert sum(s.touched for s in spies[2:]) == 1


def test_source_weight_zero_means_no_source_loader():
    model = torch.nn.Linear(1, 1)
    assert not SelfTraining(model, SelfTraining.Config(name="self_training", source_weight=0.0), 10).uses_source
    assert SelfTraining(model, SelfTraining.Config(name="self_training"), 10).uses_source


def test_shot_freezes_the_source_head_and_logs_pseudo_labels(shot_run):
    run_dir, _, result, _ = shot_run
    source = torch.load(run_dir / "source_stage" / "checkpoint.pt", weights_only=False)["method"]
    adapted = torch.load(run_dir / "checkpoint.pt", weights_only=False)["method"]
    assert torch.equal(source["model.head.weight"], adapted["model.head.weight"])
    assert not torch.equal(source["model.backbone.features.0.weight"], adapted["model.backbone.features.0.weight"])
    assert result["config"]["method"]["source_label_smoothing"] == 0.1
    stage_cfg = (run_dir / "source_stage" / "config.yaml").read_text()
    assert "label_smoothing: 0.1" in stage_cfg and "name: source_only" in stage_cfg
    header = (run_dir / "log.csv").read_text().splitlines()[0]
    assert "pl_coverage" in header and "pl_acc" in header


@pytest.mark.parametrize("method", ["self_training", "fixmatch"])
def test_self_training_methods_run_and_log_pseudo_labels(tmp_path, method, shot_run):
    init = f"init={shot_run[0] / 'source_stage'}"  # any source model will do: reuse the one trained above
    result = fit(tiny_cfg(f"method={method}", "method.threshold=0.0", init), run_dir=str(tmp_path), quiet=True)
    assert result["init"] == str(shot_run[0] / "source_stage" / "model.pt") and 0.0 <= result["target_acc"] <= 1.0
    header, *rows = (tmp_path / "log.csv").read_text().splitlines()
    assert "pl_coverage" in header
    coverage = float(rows[-1].split(",")[header.split(",").index("pl_coverage")])
    assert coverage > 0  # threshold 0: some targets are pseudo-labelled


def test_source_free_run_with_the_progress_bar(tmp_path):
    """The progress bar shows no source accuracy for a source-free method (there is none) instead of failing."""
    from da.experiment import fit

    from .conftest import tiny_cfg

    result = fit(tiny_cfg("method=shot", "trainer.progress_bar=true", "trainer.epochs=1"), str(tmp_path), quiet=True)
    assert result["source_acc"] is None and 0.0 <= result["target_acc"] <= 1.0
