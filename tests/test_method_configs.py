"""One source of truth for method defaults: each method's ``Config`` dataclass; its YAML only names it."""

from __future__ import annotations

import os
from dataclasses import asdict, fields

import pytest
import yaml
from omegaconf import OmegaConf

from da.config import compose, config_dir, group_options
from da.methods import METHODS


def _package_methods() -> list[str]:
    """The methods this package registers (tests register their own, which have no YAML)."""
    return [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("da.methods.")]


def test_every_method_has_one_yaml():
    assert group_options("method") == _package_methods()


@pytest.mark.parametrize("name", group_options("method"))
def test_composing_a_method_gives_its_dataclass_defaults(name):
    cls = METHODS.get(name).Config
    composed = compose([f"method={name}"]).method
    assert OmegaConf.get_type(composed) is cls  # a structured config: typed while composing
    values = OmegaConf.to_container(composed)
    assert list(values) == [f.name for f in fields(cls)], "keys in the dataclass's order (what --cfg job prints)"
    assert values == asdict(cls(name=name))


@pytest.mark.parametrize("name", group_options("method"))
def test_a_method_yaml_holds_no_values(name):
    with open(os.path.join(config_dir(), "method", f"{name}.yaml")) as fh:
        text = fh.read()
    assert yaml.safe_load(text) == {"defaults": [f"/schema/method/{name}@_here_", "_self_"]}
    assert text.startswith("# "), "a header comment: the paper, what the method is"
