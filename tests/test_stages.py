"""The ``init`` key and the automatic source stage (issue 5)."""

from __future__ import annotations

import os

import pytest
import torch

import da.experiment
from da.backbones import BackboneConfig, build_model
from da.build import load_model
from da.config import to_dataclass
from da.errors import ConfigError
from da.experiment import fit, resolve_init, source_checkpoint
from da.stages import source_stage_config
from tests.conftest import run_cli, tiny_cfg


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny source_only run folder, the model every test below starts from."""
    run_dir = tmp_path_factory.mktemp("source")
    fit(tiny_cfg(), run_dir=str(run_dir), quiet=True)
    return run_dir


def _model(*overrides: str):
    return build_model(to_dataclass(tiny_cfg(*overrides).backbone, BackboneConfig, "backbone"), 10, 1, 28)


@pytest.mark.parametrize("form", ["folder", "checkpoint", "state_dict", "prefixed_state_dict"])
def test_init_loads_the_whole_model(source_run, tmp_path, form):
    saved = torch.load(source_run / "checkpoint.pt", weights_only=False)["method"]  # {"model.<name>": tensor}
    path = {"folder": source_run, "checkpoint": source_run / "checkpoint.pt"}.get(form)
    if path is None:
        path = tmp_path / "weights.pt"
        model_part = {k[len("model.") :]: v for k, v in saved.items() if k.startswith("model.")}
        state = model_part if form == "state_dict" else saved
        torch.save(state, path)
    resolved = resolve_init(tiny_cfg(f"init={path}"), object, str(tmp_path))
    model = _model()
    load_model(model, resolved)
    for name, value in model.state_dict().items():  # backbone, bottleneck and head alike
        assert torch.equal(value, saved[f"model.{name}"]), name
    assert {n.split(".")[0] for n in model.state_dict()} == {"backbone", "bottleneck", "head"}


def test_bad_init_is_one_clear_error(source_run, tmp_path):
    with pytest.raises(ConfigError, match="no such checkpoint"):
        resolve_init(tiny_cfg(f"init={tmp_path / 'missing'}"), object, str(tmp_path))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        load_model(_model(), str(junk))
    other = _model("backbone.bottleneck_dim=32")
    with pytest.raises(ConfigError, match="does not match this model"):
        load_model(other, str(source_run / "checkpoint.pt"))
    result = run_cli(f"init={tmp_path / 'missing'}", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: init=") and len(result.stderr.strip().splitlines()) == 1


def test_init_null_and_scratch(tmp_path):
    assert resolve_init(tiny_cfg(), da.methods.METHODS.get("source_only"), str(tmp_path)) is None
    assert resolve_init(tiny_cfg("method=shot", "init=scratch"), da.methods.METHODS.get("shot"), "x") is None
    assert not os.path.exists(tmp_path / "source_stage")


def test_source_stage_config_takes_the_method_source_options():
    stage = source_stage_config(tiny_cfg("method=shot", "method.source_epochs=3", "seed=4"))
    assert stage.method.name == "source_only" and stage.method.label_smoothing == 0.1
    assert stage.trainer.epochs == 3 and stage.seed == 4 and stage.init == "scratch"
    assert source_stage_config(tiny_cfg("method=self_training")).trainer.epochs == 2  # null: trainer.epochs
    assert source_stage_config(tiny_cfg("method=shot"), **{"trainer.lr": 0.5}).trainer.lr == 0.5
    with pytest.raises(ConfigError, match="unknown source-stage key"):
        source_stage_config(tiny_cfg(), **{"trainer.nope": 1})


def test_source_stage_is_trained_once_and_reused(tmp_path, monkeypatch):
    cfg = tiny_cfg("method=shot", "method.source_epochs=1")
    path = source_checkpoint(cfg, str(tmp_path))
    assert path == str(tmp_path / "source_stage" / "checkpoint.pt") and os.path.isfile(path)
    assert (tmp_path / "source_stage" / "results.json").is_file()
    calls = []
    monkeypatch.setattr(da.experiment, "fit", lambda *a, **k: calls.append(a))
    assert source_checkpoint(cfg, str(tmp_path)) == path and calls == []  # reused: nothing retrained
    source_checkpoint(tiny_cfg("method=shot", "method.source_epochs=2"), str(tmp_path))
    assert len(calls) == 1  # another source config is not silently reused
