"""Loading and checking configs: Hydra composes them, typed dataclasses reject unknown keys and bad values."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from da.errors import ConfigError

T = TypeVar("T")
LR_SCHEDULES = ("dann", "cosine", "constant")
DATA_ON_DEVICE = ("auto", "true", "false")


@dataclass
class TrainerConfig:
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the larger training domain
    batch_size: int = 64  # per domain: each step reads batch_size source + batch_size target images
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "dann"  # dann: lr / (1 + gamma p)^decay (arXiv 1505.07818); cosine; constant
    lr_gamma: float = 10.0
    lr_decay: float = 0.75
    amp: bool = True  # mixed precision: bf16 (fp16 on GPUs without bf16) on CUDA and on CPUs with native bf16
    num_workers: int = 0  # > 0: per-sample DataLoader workers instead of the batched in-memory path
    data_on_device: str = "auto"  # auto: images live on the accelerator when they fit; true; false (pinned host)
    channels_last: bool = True  # NHWC memory format for convolutional backbones (faster on GPU and CPU)
    compile: bool = False  # torch.compile the model (first steps slower while it compiles)
    log_every: int = 25  # steps between host reads of the losses (progress bar, finiteness check, TensorBoard)
    sync_bn: bool = False  # under torchrun: BatchNorm -> SyncBatchNorm (statistics over every rank's batch)
    eval_batch_size: int = 256
    progress_bar: bool = True  # a bar on a terminal, one line per epoch otherwise
    resume: bool = True  # continue from checkpoint.pt when the run folder already holds one
    deterministic: bool = False  # torch.use_deterministic_algorithms + deterministic cuDNN (slower on GPU)
    tensorboard: bool = False  # also write per-step losses and per-epoch metrics to <run>/tensorboard
    collapse_fraction: float = 0.85  # warn when the target's predicted-class entropy falls below this x its peak

    def __post_init__(self) -> None:
        self.data_on_device = str(self.data_on_device).lower()
        if self.data_on_device not in DATA_ON_DEVICE:
            raise ConfigError(f"trainer.data_on_device must be auto, true or false, got {self.data_on_device!r}")
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"trainer.steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"trainer.lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"trainer.momentum must be in [0, 1), got {self.momentum}")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("trainer.nesterov=true needs trainer.momentum > 0")
        if self.weight_decay < 0 or self.num_workers < 0:
            raise ConfigError("trainer.weight_decay and trainer.num_workers must be >= 0")
        if self.lr_gamma < 0 or self.lr_decay < 0:
            raise ConfigError("trainer.lr_gamma and trainer.lr_decay must be >= 0")
        if not 0 <= self.collapse_fraction < 1:
            raise ConfigError(f"trainer.collapse_fraction must be in [0, 1), got {self.collapse_fraction}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown trainer.lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def lr_at(cfg: TrainerConfig, progress: float) -> float:
    """Learning rate at training progress p in [0, 1]."""
    if cfg.lr_schedule == "dann":
        return cfg.lr / (1.0 + cfg.lr_gamma * progress) ** cfg.lr_decay
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


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
