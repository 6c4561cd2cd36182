"""One source of truth for method defaults: configs/method/<name>.yaml equals its method's Config dataclass."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from da.config import compose
from da.methods import METHODS


@pytest.mark.parametrize("name", METHODS.names())
def test_yaml_defaults_equal_the_dataclass_defaults(name):
    cls = METHODS.get(name).Config
    yaml_values = dict(compose([f"method={name}"]).method)
    declared = {}
    for f in fields(cls):
        if f.default is not MISSING:
            declared[f.name] = f.default
        elif f.default_factory is not MISSING:
            declared[f.name] = f.default_factory()
    assert set(yaml_values) == {f.name for f in fields(cls)}, f"configs/method/{name}.yaml and {name}.Config keys"
    assert yaml_values.pop("name") == name
    for key, value in yaml_values.items():
        default = declared[key]
        if hasattr(value, "__iter__") and not isinstance(value, str):
            value = list(value)
        assert value == default and type(value) is type(default) or (value == default and isinstance(value, float)), (
            f"{name}: configs/method/{name}.yaml has {key}={value!r}, the dataclass {default!r}"
        )
