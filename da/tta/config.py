"""A test-time run's configuration: typed dataclasses registered as Hydra structured configs, composed from
``configs/tta/``.

:class:`TTARunConfig` is the root (``configs/tta/config.yaml``); its sections are the method's ``Config``
(``da/tta/methods/``), :class:`~da.tta.stream.ProtocolConfig` and the data's config (``da/tta/corruptions.py``).
The YAML files under ``configs/tta/`` name their schema (``/tta_schema/...``) and hold only what they change, as
the package's own configs do. :func:`compose` turns ``key=value`` overrides into a config (one ConfigError line on a
bad one) and :func:`typed` checks it into dataclasses before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from da.config import to_dataclass
from da.errors import ConfigError
from da.tta.corruptions import DATA_CONFIGS
from da.tta.methods import TTA_METHODS
from da.tta.stream import ProtocolConfig

#: The source stage of ``init=source`` as ``python -m da.run`` overrides (the run's seed is added): a ResNet-18
#: from scratch with no bottleneck, so every layer has batch norm (LeNet has none outside its bottleneck), trained
#: on the clean scikit-learn digits — the stream is their corrupted test split, as CIFAR-10 -> CIFAR-10-C.
SOURCE_STAGE = [
    "method=source_only",
    "backbone=resnet18",
    "backbone.weights=null",
    "backbone.bottleneck_dim=0",
    "dataset=digits",
    "dataset.source=sklearn",
    "dataset.target=sklearn",
]


@dataclass
class TTARunConfig:
    """The root: one test-time run."""

    method: Any = MISSING  # the method's Config (da/tta/methods/<name>.py)
    protocol: Any = MISSING  # ProtocolConfig (da/tta/stream.py)
    data: Any = MISSING  # the corruption benchmark's config (da/tta/corruptions.py)
    severity: int = 5  # corruption severity, 1-5 (the TTA papers' tables: 5)
    seed: int = 0  # the stream's samples and order, the methods' randomness, the source stage's seed
    # the source model: "source" (train it in <run>/source_stage/ from `source`, reused when finished) or a run
    # folder of `python -m da.run` (its model.pt and its task)
    init: str = "source"
    source: list[str] = field(default_factory=lambda: list(SOURCE_STAGE))  # init=source: da.run overrides
    device: str = "auto"  # auto = CUDA, then MPS, then CPU
    data_root: str = "${oc.env:DA_DATA_ROOT,'~/data'}"  # where CIFAR-10-C/ lives (env DA_DATA_ROOT)
    run_dir: str | None = None  # null: outputs/tta/<data>/<protocol>/<method>/seed<seed>_<time>
    collapse_fraction: float = 0.85  # warn when a window's predicted-class entropy falls below this × its peak
    quiet: bool = False  # no progress lines

    def __post_init__(self) -> None:
        if not 1 <= self.severity <= 5:
            raise ConfigError(f"severity must be 1-5, got {self.severity}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if not 0 <= self.collapse_fraction < 1:
            raise ConfigError(f"collapse_fraction must be in [0, 1), got {self.collapse_fraction}")


@dataclass
class TTAConfigs:
    """The typed sections of a composed TTA config."""

    run: TTARunConfig
    method_cls: type
    method: Any
    protocol: ProtocolConfig
    data: Any


def register_configs() -> None:
    """``tta_schema/run``, ``tta_schema/protocol``, ``tta_schema/method/<name>``, ``tta_schema/data/<name>`` in
    Hydra's ConfigStore, where ``configs/tta/``'s defaults lists find them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="tta_schema", name="run", node=TTARunConfig)
    store.store(group="tta_schema", name="protocol", node=ProtocolConfig)
    for name in TTA_METHODS.names():
        cls = TTA_METHODS.get(name).Config
        store.store(group="tta_schema/method", name=name, node=cls(name=name))
    for name, cls in DATA_CONFIGS.items():
        store.store(group="tta_schema/data", name=name, node=cls(name=name))


def config_dir() -> str:
    """``configs/tta`` of a source checkout, else the copy inside the installed wheel."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.join(os.path.dirname(os.path.dirname(here)), "configs", "tta")
    if os.path.isfile(os.path.join(checkout, "config.yaml")):
        return checkout
    import da.configs

    return os.path.join(os.path.dirname(os.path.abspath(da.configs.__file__)), "tta")


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The TTA config for CLI-style overrides, e.g. ``["method=tent", "protocol=mixed", "severity=3"]``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides or []))
    except Exception as err:  # Hydra's errors span lines: the first meaningful one
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise ConfigError(" ".join(lines[:2]) or type(err).__name__) from err
    finally:
        GlobalHydra.instance().clear()


def typed(cfg: DictConfig) -> TTAConfigs:
    """``cfg`` as dataclasses, every key and value checked (one ConfigError naming the key)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(plain, dict):
        raise ConfigError("a TTA config is a mapping")
    sections = {k: plain.get(k) for k in ("method", "protocol", "data")}
    for key, value in sections.items():
        if not isinstance(value, dict) or (key != "protocol" and "name" not in value):
            raise ConfigError(f"the TTA config has no {key} section with a name")
    method_cls = TTA_METHODS.get(str(sections["method"]["name"]))
    data_name = str(sections["data"]["name"])
    if data_name not in DATA_CONFIGS:
        raise ConfigError(f"unknown data {data_name!r}; valid: {', '.join(DATA_CONFIGS)}")
    return TTAConfigs(
        run=to_dataclass(plain, TTARunConfig, ""),  # the sections stay plain mappings here (typed below)
        method_cls=method_cls,
        method=to_dataclass(sections["method"], method_cls.Config, "method"),
        protocol=to_dataclass(sections["protocol"], ProtocolConfig, "protocol"),
        data=to_dataclass(sections["data"], DATA_CONFIGS[data_name], "data"),
    )


register_configs()
