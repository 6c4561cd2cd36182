import dataclasses
import json
import os

import pytest
import torch

from da.config import TrainerConfig, lr_at
from da.errors import ConfigError
from da.experiment import fit
from da.results import SCHEMA_VERSION, Results
from da.train import Trainer

from .conftest import tiny_cfg


def test_loss_goes_down_on_a_tiny_task(tmp_path):
    cfg = tiny_cfg("trainer.epochs=6", "trainer.steps_per_epoch=10", "dataset.samples_per_class=20")
    fit(cfg, run_dir=str(tmp_path), quiet=True)
    rows = open(tmp_path / "log.csv").read().splitlines()
    header = rows[0].split(",")
    losses = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert len(losses) == 6
    assert losses[-1] < 0.7 * losses[0]


def test_results_json_schema(tmp_path):
    results = fit(tiny_cfg(), run_dir=str(tmp_path), quiet=True)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert set(on_disk) == {f.name for f in dataclasses.fields(Results)} - {"budget"}  # the one schema
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert 0.0 <= on_disk["target_acc"] <= 1.0 and 0.0 <= on_disk["source_acc"] <= 1.0
    assert set(on_disk["per_class_acc"]) == {str(d) for d in range(10)}
    assert on_disk["epochs"] == 2 and on_disk["steps"] == 8
    assert on_disk["selection"] == {"rule": "last", "epoch": on_disk["epochs"], "score": None}
    assert on_disk["method"] == "source_only" and on_disk["dataset"] == "digits"
    assert on_disk["source"] == "fonts" and on_disk["target"] == "sklearn" and on_disk["backbone"] == "lenet"
    assert on_disk["images_per_second"] > 0 and on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["config"]["trainer"]["epochs"] == 2
    for name in ("config.yaml", "checkpoint.pt", "log.csv"):
        assert os.path.isfile(tmp_path / name)


def test_resume_continues_to_the_same_result(tmp_path, monkeypatch):
    straight = fit(tiny_cfg("trainer.epochs=3"), run_dir=str(tmp_path / "a"), quiet=True)
    calls = []
    original = Trainer.train_epoch

    def interrupted(self):  # the second epoch is killed half-way, as by Ctrl-C
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_cfg("trainer.epochs=3"), run_dir=str(tmp_path / "b"), quiet=True)
    monkeypatch.setattr(Trainer, "train_epoch", original)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["epoch"] == 1
    resumed = fit(tiny_cfg("trainer.epochs=3"), run_dir=str(tmp_path / "b"), quiet=True)
    assert resumed["epochs"] == 3 and resumed["steps"] == straight["steps"]
    assert resumed["target_acc"] == straight["target_acc"]
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["method"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["method"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    log = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert len(log) == 4  # header + 3 epochs, none lost across the restart


def test_resume_refuses_a_different_config(tmp_path):
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    with pytest.raises(ConfigError, match="different config"):
        fit(tiny_cfg("trainer.epochs=1", "trainer.lr=0.5"), run_dir=str(tmp_path), quiet=True)


def test_dann_lr_schedule():
    cfg = TrainerConfig(lr=0.01)
    assert lr_at(cfg, 0.0) == pytest.approx(0.01)
    assert lr_at(cfg, 1.0) == pytest.approx(0.01 / 11**0.75)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.epochs=0", "trainer.epochs must be >= 1"),
        ("trainer.lr=-1", "trainer.lr must be a positive"),
        ("trainer.lr_schedule=steps", "unknown trainer.lr_schedule"),
        ("dataset.target=mnist", "dataset.target for digits"),
        ("trainer.batch_size=abc", "invalid value for trainer.batch_size"),
        ("device=tpu", "invalid device"),
        ("trainer.lr_decay=inf", "trainer.lr_decay must be a finite number, got inf"),  # would train at lr 0
        ("trainer.weight_decay=nan", "trainer.weight_decay must be a finite number, got nan"),
    ],
)
def test_invalid_values_raise_config_errors(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        fit(tiny_cfg(override), run_dir=str(tmp_path), quiet=True)
