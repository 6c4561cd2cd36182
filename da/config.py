"""Loading and checking configs: Hydra composes them, typed dataclasses reject unknown keys and bad values."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from da.errors import ConfigError

T = TypeVar("T")
TOP_LEVEL_KEYS = (
    "method",
    "dataset",
    "backbone",
    "trainer",
    "seed",
    "device",
    "data_root",
    "init",
    "selection",
    "source_val",
)


def config_dir() -> str:
    """The Hydra config folder: ``configs/`` of a source checkout, else the copy inside the installed wheel."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(here), "configs")
    if os.path.isfile(os.path.join(checkout, "config.yaml")):
        return checkout
    import da.configs

    return os.path.dirname(os.path.abspath(da.configs.__file__))


def group_options(group: str) -> list[str]:
    """Names of the YAML files in a config group (``method``, ``dataset``, ``backbone``)."""
    folder = os.path.join(config_dir(), group)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def compose(overrides: list[str] | None = None, return_hydra_config: bool = False) -> DictConfig:
    """The composed config for CLI-style ``overrides`` (e.g. ``["method=dann", "seed=1"]``), for notebooks."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    except Exception as err:  # Hydra's errors are multi-line; keep the first meaningful line
        message = one_line(err)
        match = re.match(r"Could not override '([^']+)'", message)
        if match:
            message = _unknown_key(match.group(1), overrides)
        raise ConfigError(message) from err
    finally:
        GlobalHydra.instance().clear()


def _unknown_key(key: str, overrides: list[str]) -> str:
    """One line for an override of a key the config does not have, listing the keys that exist there.

    Hydra's own advice (append it with ``+key=...``) would only move the error: no section takes unknown keys.
    """
    parent, _, leaf = key.rpartition(".")
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = compose(rest)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
    except ConfigError:
        valid = ""
    where = f"{parent}" if parent else "the top level"
    return f"unknown key {key!r}" + (f"; valid keys of {where}: {valid}" if valid else "")


def one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:3]) if lines else type(err).__name__


def to_dataclass(node: Any, cls: type[T], where: str) -> T:
    """``node`` (a config section) as an instance of dataclass ``cls``; unknown keys and bad types fail."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ConfigError(f"unknown key {where}.{unknown[0]}; valid keys of {where}: {', '.join(known)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or getattr(err, "key", "")
        raise ConfigError(f"invalid value for {where}.{key}: {one_line(err)}") from err


def check_top_level(cfg: DictConfig) -> None:
    unknown = [k for k in cfg if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}; valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    selection = cfg.get("selection", "last")
    if selection is not None and selection != "last":
        from da.validators import VALIDATORS

        if selection not in VALIDATORS:
            raise ConfigError(f"unknown selection {selection!r}; valid: last, {', '.join(VALIDATORS)}")
    fraction = cfg.get("source_val", 0.0)
    if not isinstance(fraction, int | float) or not 0 <= fraction < 0.5:
        raise ConfigError(f"source_val must be a fraction in [0, 0.5), got {fraction!r}")
    if not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.get('seed')!r}")
