"""Label-free validators: equal to pytorch-adapt's, blind to target labels, and reported by every run."""

import csv
import json
import math
import os
import warnings

import pytest
import torch

import da.train
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
    from .test_methods import build

    method, task, _ = build("dann")
    before = validators.epoch_scores(method, task.target_train, torch.device("cpu"), 64)
    base = task.target_train.base
    base.y = base.y[torch.randperm(len(base.y), generator=torch.Generator().manual_seed(0))]  # scramble the labels
    after = validators.epoch_scores(method, task.target_train, torch.device("cpu"), 64)
    assert before == after and set(before) == {"im_score", "snd_score", "entropy_score"}


def test_default_method_is_dann():
    from da.config import compose

    assert compose([]).method.name == "dann"


def test_run_reports_validators_per_epoch_and_at_the_end(tmp_path, capsys):
    baseline = fit(tiny_cfg(), run_dir=str(tmp_path / "0_source_only"), quiet=True)
    capsys.readouterr()
    results = fit(tiny_cfg("method=dann"), run_dir=str(tmp_path / "1_dann"))
    assert f"(source_only, same task and seed: {100 * baseline['target_acc']:.1f}%" in capsys.readouterr().out
    tmp_path = tmp_path / "1_dann"
    assert set(results["validators"]) == {"im", "snd", "entropy"}
    assert all(math.isfinite(v) for v in results["validators"].values())
    assert results["selection"]["rule"] == "last"
    with open(tmp_path / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and all(row["im_score"] and row["snd_score"] for row in rows)
    assert float(rows[-1]["im_score"]) == pytest.approx(results["validators"]["im"], abs=1e-6)  # the last epoch
    assert set(results["validator_best_epoch"]) == {"im", "snd", "entropy"}


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
    monkeypatch.setattr(da.train, "score", lambda *args: {})  # the trainer without the validators
    plain = fit(cfg, run_dir=str(tmp_path / "b"), quiet=True)
    assert logged["target_acc"] == plain["target_acc"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
