"""The configuration's one source of truth (issue 20 item 3) and finite numbers (issue 26 item 7).

The dataclasses hold every default and check and are Hydra's structured configs; the YAML files hold only what
a group changes; the resume fingerprint reads the fields' "changes no number" mark; NaN and inf are refused for
every float key with one line naming it.
"""

from __future__ import annotations

import copy
import functools
import os
import typing
from dataclasses import fields

import pytest
import yaml
from omegaconf import OmegaConf

import da.build
from da.backbones import BackboneConfig
from da.build import typed_configs
from da.checkpoint import fingerprint
from da.config import RunConfig, TrainerConfig, compose, config_dir, group_options, unfingerprinted_keys
from da.data import DATASETS
from da.errors import ConfigError
from da.experiment import fit
from da.methods import METHODS

from .conftest import tiny_cfg


def _float_fields(cls: type) -> list[str]:
    """Fields typed float, float | None or list[float]."""
    hints = typing.get_type_hints(cls)
    return [f.name for f in fields(cls) if hints[f.name] is float or float in typing.get_args(hints[f.name])]


def _cases() -> list[tuple[str, str, str]]:
    """(override choosing the section's option, section, float field) for every registered method, dataset,
    the backbone, the trainer and the top level."""
    out = [("", "", name) for name in _float_fields(RunConfig)]
    out += [("", "trainer", name) for name in _float_fields(TrainerConfig)]
    out += [("", "backbone", name) for name in _float_fields(BackboneConfig)]
    for method in group_options("method"):
        out += [(f"method={method}", "method", name) for name in _float_fields(METHODS.get(method).Config)]
    for dataset in group_options("dataset"):
        out += [(f"dataset={dataset}", "dataset", name) for name in _float_fields(DATASETS.get(dataset).config)]
    return out


@functools.lru_cache
def _composed(choice: str) -> dict:
    return OmegaConf.to_container(compose([choice] if choice else []), resolve=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize(("choice", "section", "name"), _cases())
def test_every_float_key_refuses_nan_and_inf(choice, section, name, value):
    cfg = copy.deepcopy(_composed(choice))
    node = cfg[section] if section else cfg
    key = f"{section}.{name}" if section else name
    node[name] = [1.0, value] if isinstance(node[name], list) else value
    typed_configs(_composed(choice))  # the defaults pass
    with pytest.raises(ConfigError, match=rf"^{key} must"):
        typed_configs(cfg)


def test_float_keys_are_covered():
    keys = {f"{s}.{n}" if s else n for _, s, n in _cases()}
    assert {"method.trade_off", "method.grl_gamma", "method.alphas", "trainer.lr_decay", "source_val"} <= keys
    assert {"trainer.weight_decay", "trainer.lr_gamma", "backbone.bottleneck_dropout", "dataset.test_fraction"} <= keys


def test_nan_on_the_command_line_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^method\.trade_off must be a finite number, got nan$"):
        typed_configs(compose(["method=dann", "method.trade_off=nan"]))
    with pytest.raises(ConfigError, match=r"^trainer\.lr_decay must be a finite number, got inf$"):
        typed_configs(compose(["trainer.lr_decay=inf"]))


def test_the_composed_config_is_typed_by_the_dataclasses():
    cfg = compose(["method=cdan", "dataset=mnist_usps"])
    assert OmegaConf.get_type(cfg) is RunConfig and OmegaConf.get_type(cfg.trainer) is TrainerConfig
    assert OmegaConf.get_type(cfg.method) is METHODS.get("cdan").Config
    assert OmegaConf.get_type(cfg.dataset) is DATASETS.get("mnist_usps").config
    assert OmegaConf.get_type(cfg.backbone) is BackboneConfig
    run = typed_configs(cfg).run
    assert isinstance(run, RunConfig) and run.trainer == TrainerConfig() and run.seed == 0
    with pytest.raises(ConfigError, match="invalid value for trainer.epochs"):  # refused while composing
        compose(["trainer.epochs=many"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=-1", "seed must be a non-negative integer"),
        ("source_val=0.5", r"source_val must be a fraction in \[0, 0.5\)"),
        ("selection=nope", "unknown selection 'nope'; valid: last, im, snd"),
        ("+method.foo=1", "unknown key method.foo; valid keys of method: name, backbone_lr_factor"),
    ],
)
def test_top_level_checks_live_in_the_root_dataclass(override, message):
    with pytest.raises(ConfigError, match=message):
        typed_configs(compose([override]))


def test_a_plain_config_is_checked_as_a_composed_one():
    """A run folder's config.yaml (plain, no schema) goes through the same conversion."""
    plain = _composed("")
    assert typed_configs(plain).run == typed_configs(compose([])).run
    with pytest.raises(ConfigError, match="unknown config key 'foo'; valid top-level keys: method, backbone"):
        typed_configs({**plain, "foo": 1})
    with pytest.raises(ConfigError, match="unknown key trainer.epoch; valid keys of trainer: epochs"):
        typed_configs({**plain, "trainer": {**plain["trainer"], "epoch": 3}})


def test_yaml_files_hold_only_what_a_group_changes():
    folder = config_dir()
    with open(os.path.join(folder, "config.yaml")) as fh:
        root = yaml.safe_load(fh)
    assert set(root) == {"defaults", "hydra"} and root["defaults"][0] == "/schema/run@_here_"
    for name in group_options("dataset"):
        with open(os.path.join(folder, "dataset", f"{name}.yaml")) as fh:
            data = yaml.safe_load(fh)
        assert set(data) == {"defaults"} and data["defaults"][0] == f"/schema/dataset/{name}@_here_"
    defaults = {f.name: f.default for f in fields(BackboneConfig)}
    for name in group_options("backbone"):
        with open(os.path.join(folder, "backbone", f"{name}.yaml")) as fh:
            data = yaml.safe_load(fh)
        assert data.pop("defaults") == ["/schema/backbone@_here_", "_self_"] and "name" in data
        assert all(value != defaults[key] for key, value in data.items()), f"{name}.yaml repeats a default"


def test_the_fingerprint_leaves_out_exactly_the_marked_keys():
    resolved = _composed("")
    marked = ["data_on_device", "threads", "log_every", "progress_bar", "resume", "collapse_fraction"]
    marked += ["tensorboard", "save_predictions", "report"]  # threads: left out at its default only
    assert unfingerprinted_keys(resolved) == [f"trainer.{k}" for k in marked]
    print_only = OmegaConf.to_container(
        compose(["trainer.progress_bar=false", "trainer.log_every=3", "trainer.tensorboard=true"]), resolve=True
    )
    assert fingerprint(print_only) == fingerprint(resolved)
    assert fingerprint(_composed("trainer.lr=0.02")) != fingerprint(resolved)
    assert resolved["trainer"]["progress_bar"] is True, "the resolved config itself is left as it was"


def test_fit_converts_the_config_once(tmp_path, monkeypatch):
    calls = []
    convert = da.build.to_run_config
    monkeypatch.setattr(da.build, "to_run_config", lambda cfg: calls.append(1) or convert(cfg))
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    assert len(calls) == 1
