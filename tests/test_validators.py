"""Label-free validators: equal to pytorch-adapt's, blind to target labels, and reported by every run."""

import csv
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import da.evaluator
from da import validators
from da.experiment import find_baseline, fit, summary

from .conftest import tiny_cfg

with warnings.catch_warnings():  # torchmetrics 0.9 (a pytorch-adapt dependency) imports pkg_resources
    warnings.simplefilter("ignore")
    try:  # the test-only reference (da[test]); the tests that need it are skipped without it
        from pytorch_adapt.validators import EntropyValidator, IMValidator, SNDValidator
    except ImportError:
        EntropyValidator = IMValidator = SNDValidator = None

needs_pytorch_adapt = pytest.mark.skipif(
    IMValidator is None, reason="pytorch-adapt (pip install 'da[test]') not installed"
)


def logits(n: int = 300, k: int = 10, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * scale


@needs_pytorch_adapt
@pytest.mark.parametrize("n", [2, 7, 300])
def test_scores_match_pytorch_adapt(n):
    z = logits(n)
    ours = validators.score(z)
    assert ours["im"] == pytest.approx(IMValidator(layer="logits")(target_train={"logits": z}), abs=1e-5)
    assert ours["entropy"] == pytest.approx(EntropyValidator(layer="logits")(target_train={"logits": z}), abs=1e-5)
    snd_ref = SNDValidator()(target_train={"preds": torch.softmax(z, 1)})
    assert ours["snd"] == pytest.approx(snd_ref, abs=1e-5)
    assert validators.snd_score(z, chunk=3) == pytest.approx(snd_ref, abs=1e-5)  # chunking changes nothing


def test_im_prefers_confident_and_diverse_predictions():
    diverse = torch.eye(10).repeat(5, 1) * 20  # confident, every class used
    collapsed = torch.zeros(50, 10)
    collapsed[:, 3] = 20  # confident, one class
    uniform = torch.zeros(50, 10)  # diverse on average, unconfident
    im = {k: validators.im_score(v) for k, v in dict(diverse=diverse, collapsed=collapsed, uniform=uniform).items()}
    assert im["diverse"] == pytest.approx(math.log(10), abs=1e-4)
    assert im["diverse"] > im["uniform"] and im["diverse"] > im["collapsed"]
    assert validators.snd_score(torch.zeros(1, 10)) == 0.0  # a single sample has no neighbours


def test_unknown_validator_is_a_config_error():
    from da.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown validator"):
        validators.score(logits(4), ("oracle",))


def test_best_epoch_reads_the_logged_scores():
    history = [{"epoch": 1, "im_score": 0.5}, {"epoch": 2, "im_score": 0.9}, {"epoch": 3, "im_score": 0.7}]
    assert validators.best_epoch(history, "im") == 2
    assert validators.best_epochs(history) == {"im": 2}
    assert validators.best_epoch(history, "snd") is None


def test_scores_never_see_target_labels():
    from da.evaluate import predict

    from .test_methods import build

    method, task, _ = build("dann")
    cpu = torch.device("cpu")

    val = task.source_test  # the source split the validators may read (source_val on larger tasks)

    def scores():
        t, s = predict(method, task.target_train, cpu), predict(method, val, cpu)
        return validators.score_all(validators.ValidationData(t.logits, t.features, s.logits, s.features, s.labels))

    before = scores()
    base = task.target_train.base
    base.y = base.y[torch.randperm(len(base.y), generator=torch.Generator().manual_seed(0))]  # scramble the labels
    after = scores()
    assert before == after and set(before) == set(validators.VALIDATORS)


def test_default_method_is_mcc():
    from da.config import compose

    assert compose([]).method.name == "mcc"


def test_run_reports_validators_per_epoch_and_at_the_end(tmp_path, capsys):
    baseline = fit(tiny_cfg(), run_dir=str(tmp_path / "0_source_only"), quiet=True)
    capsys.readouterr()
    results = fit(tiny_cfg("method=dann"), run_dir=str(tmp_path / "1_dann"))
    assert f"(source_only, same task and seed: {100 * baseline['target_acc']:.1f}%" in capsys.readouterr().out
    tmp_path = tmp_path / "1_dann"
    assert set(results["validators"]) == set(validators.VALIDATORS)
    assert all(math.isfinite(v) for v in results["validators"].values())
    assert results["selection"]["rule"] == "last"
    with open(tmp_path / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    # trainer.eval_every=2 (the default): epoch 1 is trained, not evaluated; epoch 2 (the last) is
    assert len(rows) == 2 and [bool(row["im_score"] and row["snd_score"]) for row in rows] == [False, True]
    assert float(rows[-1]["im_score"]) == pytest.approx(results["validators"]["im"], abs=1e-6)  # the last epoch
    assert set(results["validator_best_epoch"]) == set(validators.VALIDATORS)


def test_summary_prints_the_source_only_figure_of_the_same_task_and_seed(tmp_path):
    base = {"dataset": "digits", "source": "fonts", "target": "sklearn", "backbone": "lenet", "seed": 0}
    base.update(epochs=20, config={"dataset": {"name": "digits"}})
    for folder, method, seed, acc in [("0_so", "source_only", 0, 0.6), ("1_so", "source_only", 1, 0.9)]:
        os.makedirs(tmp_path / folder)
        (tmp_path / folder / "results.json").write_text(
            json.dumps({**base, "method": method, "seed": seed, "target_acc": acc})
        )
    run = {**base, "method": "dann", "target_acc": 0.7, "source_acc": 0.9, "train_seconds": 1.0}
    other, folder = find_baseline(run, str(tmp_path / "2_dann"))
    assert other["target_acc"] == 0.6 and folder.endswith("0_so")
    assert "source_only, same task and seed: 60.0%" in summary(run, str(tmp_path / "2_dann"))
    assert find_baseline({**run, "seed": 2}, str(tmp_path / "2_dann")) is None
    assert find_baseline({**run, "epochs": 5}, str(tmp_path / "2_dann")) is None
    # the default outputs/ layout: <task>/source_only/seed0_<time> beside <task>/dann/seed0_<time>
    os.makedirs(tmp_path / "task" / "source_only" / "seed0_1")
    (tmp_path / "task" / "source_only" / "seed0_1" / "results.json").write_text(
        json.dumps({**base, "method": "source_only", "target_acc": 0.55})
    )
    assert find_baseline(run, str(tmp_path / "task" / "dann" / "seed0_2"))[0]["target_acc"] == 0.55


def test_logging_validators_does_not_change_training(tmp_path, monkeypatch):
    cfg = tiny_cfg("method=dann", "trainer.epochs=2")
    logged = fit(cfg, run_dir=str(tmp_path / "a"), quiet=True)
    monkeypatch.setattr(da.evaluator, "score_all", lambda *args: {})  # the trainer without the validators
    plain = fit(cfg, run_dir=str(tmp_path / "b"), quiet=True)
    assert logged["target_acc"] == plain["target_acc"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))  # weights and buffers


# ---------------------------------------------------------------- bnm, classami, dev, devn, source_val (issue 14)
def _confident(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Logits predicting class i mod k with high confidence."""
    z = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    z[torch.arange(n), torch.arange(n) % k] += 8.0
    return z


@needs_pytorch_adapt
def test_bnm_and_classami_match_pytorch_adapt():
    from pytorch_adapt.validators import BNMValidator, ClassClusterValidator

    z = logits(200, 5)
    assert validators.bnm_score(z) == pytest.approx(BNMValidator(layer="logits")(target_train={"logits": z}), abs=1e-5)
    f = torch.randn(200, 16, generator=torch.Generator().manual_seed(3)) + z.argmax(1, keepdim=True).float()
    ref = ClassClusterValidator(
        layer="features",
        centroid_init="label_centers",
        feat_normalizer=lambda x: torch.nn.functional.normalize(x, dim=1),
    )(target_train={"features": f, "logits": z})
    assert validators.classami_score(f, z) == pytest.approx(ref, abs=1e-6)


@needs_pytorch_adapt
@pytest.mark.parametrize("normalization", [None, "max"])
def test_dev_risk_matches_the_reference_code(normalization):
    from pytorch_adapt.validators.deep_embedded_validator import get_dev_risk

    g = torch.Generator().manual_seed(1)
    w, e = torch.rand(50, 1, generator=g) * 3, torch.rand(50, 1, generator=g)
    ref = get_dev_risk(w.clone(), e.clone(), normalization)
    ours = validators.dev_risk(w[:, 0].numpy(), e[:, 0].numpy(), normalization)
    assert ours == pytest.approx(ref, rel=1e-6)  # the reference computes in float32


def test_bnm_and_im_prefer_confident_diverse_predictions():
    diverse = _confident(100, 4)
    collapsed = torch.zeros(100, 4)
    collapsed[:, 0] = 8.0
    for name in ("bnm", "im"):
        assert validators.score(diverse, (name,))[name] > validators.score(collapsed, (name,))[name]
    p = torch.softmax(diverse, 1).numpy()
    assert validators.bnm_score(diverse) == pytest.approx(np.linalg.norm(p, "nuc") / len(p), rel=1e-5)


def test_classami_rewards_features_that_agree_with_the_predictions():
    z = _confident(120, 3)
    centres = torch.eye(3) * 5
    agree = centres[z.argmax(1)] + 0.3 * torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
    shuffled = agree[torch.randperm(120, generator=torch.Generator().manual_seed(1))]
    assert validators.classami_score(agree, z) > 0.9 > validators.classami_score(shuffled, z)


def test_dev_penalises_errors_where_the_target_lives():
    """Two models with the same source-validation error count: the one wrong on target-like images is worse."""
    g = torch.Generator().manual_seed(0)
    f_s = torch.cat([torch.randn(100, 2, generator=g) - 2, torch.randn(100, 2, generator=g) + 2])  # half target-like
    f_t = torch.randn(300, 2, generator=g) + 2
    y_s = torch.zeros(200, dtype=torch.long)
    good = torch.tensor([[4.0, 0.0]]).repeat(200, 1)
    wrong_far, wrong_near = good.clone(), good.clone()
    wrong_far[:30] = torch.tensor([0.0, 4.0])  # errors on source-like images (far from the target)
    wrong_near[100:130] = torch.tensor([0.0, 4.0])  # errors on target-like images
    data = dict(features_t=f_t, logits_t=torch.zeros(300, 2), features_s=f_s, labels_s=y_s)
    far = validators.ValidationData(logits_s=wrong_far, **data)
    near = validators.ValidationData(logits_s=wrong_near, **data)
    for name in ("dev", "devn"):
        assert validators.score_all(far, (name,))[name] > validators.score_all(near, (name,))[name]
    accs = [validators.score_all(d, ("source_val",))["source_val"] for d in (far, near)]
    assert accs == pytest.approx([0.85, 0.85])
    weights = validators.domain_weights(f_s, f_t)
    assert weights[100:].mean() > 5 * weights[:100].mean()  # target-like source images weigh more


@pytest.mark.parametrize("n", [1, 2])
def test_validators_are_finite_on_degenerate_inputs(n):
    z = torch.zeros(n, 3)  # all-equal predictions, one predicted class
    f = torch.ones(n, 4)
    data = validators.ValidationData(z, f, torch.zeros(n, 3), f, torch.zeros(n, dtype=torch.long))
    out = validators.score_all(data)
    assert all(np.isfinite(v) for v in out.values()), out
    assert set(out) >= set(validators.TARGET_ONLY)


# ---------------------------------------------------------------- evaluation that scales (issue 22)
def test_subsample_is_fixed_and_whole_below_the_cap():
    assert torch.equal(validators.subsample_index(5, 10), torch.arange(5))
    a, b = validators.subsample_index(1000, 100), validators.subsample_index(1000, 100)
    assert torch.equal(a, b) and len(a) == 100 and bool((a[1:] > a[:-1]).all())


def test_eval_every_and_validator_cap_change_no_training(tmp_path):
    cfg = tiny_cfg("method=dann", "trainer.epochs=3", "trainer.eval_every=1")
    every = fit(cfg, run_dir=str(tmp_path / "a"), quiet=True)
    sparse = tiny_cfg("method=dann", "trainer.epochs=3", "trainer.eval_every=2", "trainer.validator_samples=20")
    capped = fit(sparse, run_dir=str(tmp_path / "b"), quiet=True)
    assert every["target_acc"] == capped["target_acc"]  # selection=last: the same weights, the same report
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    with open(tmp_path / "b" / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [bool(r["target_acc"]) for r in rows] == [False, True, True]  # epoch 2, and the last
    assert rows[0]["im_score"] == "" and rows[1]["im_score"] != ""
    with open(tmp_path / "a" / "log.csv") as fh:
        full = list(csv.DictReader(fh))
    assert rows[1]["target_acc"] == full[1]["target_acc"]  # the accuracy sees every image
    assert rows[1]["im_score"] != full[1]["im_score"]  # the validators a subsample of 20
