"""Label-free checkpoint and hyper-parameter selection (issue 14): what is chosen, what is reported, and that no
target label reaches a validator, the choice or the sweep objective."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

import da.build
from da.data.base import LabelledTensors, Task, Unlabelled
from da.experiment import fit

from .conftest import TINY, run_cli, tiny_cfg
from .test_monitor import _PoisonedLabels


def _log(run_dir) -> list[dict[str, float]]:
    with open(run_dir / "log.csv") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def test_selection_reports_the_validator_chosen_epoch(tmp_path):
    result = fit(tiny_cfg("method=dann", "trainer.epochs=5", "selection=snd"), run_dir=str(tmp_path), quiet=True)
    rows = [r for r in _log(tmp_path) if "target_acc" in r]  # trainer.eval_every=2: epochs 2, 4 and 5 (the last)
    assert [int(r["epoch"]) for r in rows] == [2, 4, 5]
    best = max(rows, key=lambda r: (r["snd_score"], r["epoch"]))
    assert result["selection"] == {"rule": "snd", "epoch": int(best["epoch"]), "score": best["snd_score"]}
    assert result["target_acc"] == pytest.approx(best["target_acc"], abs=1e-7)  # that epoch's weights are reported
    assert result["validators"]["snd"] == pytest.approx(best["snd_score"], abs=1e-6)  # scored on those weights too
    for name in ("im", "snd", "entropy"):
        pick = max(rows, key=lambda r, n=name: (r[f"{n}_score"], r["epoch"]))
        assert result["selected"][name]["epoch"] == int(pick["epoch"])
        assert result["selected"][name]["target_acc"] == pytest.approx(pick["target_acc"], abs=1e-7)
    top = max(rows, key=lambda r: (r["target_acc"], -r["epoch"]))
    assert result["oracle"]["epoch"] == int(top["epoch"]) and "analysis only" in result["oracle"]["note"]
    weights = torch.load(tmp_path / "model.pt", weights_only=True)  # model.pt holds the selected weights too
    assert da.load_run(str(tmp_path)).results["selection"]["epoch"] == result["selection"]["epoch"]
    assert set(weights) == set(da.load_run(str(tmp_path)).model.state_dict())


def test_bad_selection_is_one_line(tmp_path):
    proc = run_cli("selection=nope", cwd=str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "unknown selection 'nope'; valid: last, im, snd" in lines[0]


def test_no_target_label_reaches_the_choice(tmp_path, monkeypatch):
    """Hidden training labels (poisoned) and shuffled test labels: the choice and its score do not move."""
    build = da.build.build_task
    shuffle = {"on": False}

    def build_hidden(*args, **kwargs) -> Task:
        task = build(*args, **kwargs)
        task.target_train = Unlabelled(_PoisonedLabels(task.target_train.base))
        task.target_train_eval = task.target_train
        task.target_train_labels = None
        if shuffle["on"]:  # the test labels only feed the analysis columns (target_acc, oracle)
            test = task.target_test
            y = test.y[torch.randperm(len(test.y), generator=torch.Generator().manual_seed(1))]
            task.target_test = LabelledTensors(test.x, y, test.transform)
        return task

    monkeypatch.setattr(da.build, "build_task", build_hidden)
    cfg = tiny_cfg("method=dann", "trainer.epochs=3", "selection=im")
    a = fit(cfg, run_dir=str(tmp_path / "a"), quiet=True)
    shuffle["on"] = True
    b = fit(cfg, run_dir=str(tmp_path / "b"), quiet=True)
    assert a["selection"] == b["selection"] and a["validators"] == b["validators"]
    assert a["target_acc"] != b["target_acc"]  # the shuffle did reach the analysis columns


def test_inductive_runs_keep_their_validation_rule(tmp_path):
    from da.errors import ConfigError

    with pytest.raises(ConfigError, match="labelled validation split"):
        fit(tiny_cfg("method=finetune", "selection=snd"), run_dir=str(tmp_path), quiet=True)


@pytest.mark.slow
def test_tiny_optuna_study_maximises_a_label_free_score(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "study"
    proc = run_cli(
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.sampler.seed=0",
        "method=dann",
        "method.trade_off=interval(0.03,3)",
        "trainer.lr=tag(log,interval(0.001,0.1))",
        "selection=snd",
        *TINY[1:],
        f"hydra.sweep.dir={sweep}",
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Best parameters" in proc.stdout + proc.stderr
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [json.loads(p.read_text())["selection"]["score"] for p in sweep.glob("*/results.json")]
    assert len(scores) == 3 and best["best_value"] == pytest.approx(max(scores))  # maximised, not minimised
    assert set(best["best_params"]) == {"method.trade_off", "trainer.lr"}


def test_optuna_without_a_validator_is_refused(tmp_path):
    proc = run_cli("-m", "hydra/sweeper=optuna", "method.trade_off=interval(0.03,3)", cwd=str(tmp_path))
    assert proc.returncode == 2 and "selection=<validator>" in proc.stderr
