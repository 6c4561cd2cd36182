"""The configuration's one source of truth: typed dataclasses, registered as Hydra structured configs.

:class:`RunConfig` is the root; its ``method``, ``backbone`` and ``dataset`` sections are each method's nested
``Config`` (``da/methods/``), :class:`~da.backbones.BackboneConfig` and each dataset's config (``da/data/``),
and ``trainer`` is :class:`TrainerConfig`. The dataclasses hold every default and every check (``__post_init__``,
one :class:`~da.errors.ConfigError` line each); :func:`register_configs` stores them in Hydra's ConfigStore as
``schema/run``, ``schema/backbone``, ``schema/method/<name>`` and ``schema/dataset/<name>``, and the YAML files
under ``configs/`` name their schema in their defaults list and hold only what they change. A composed config
is therefore typed while it is composed (a value of the wrong type is refused at once), and
:func:`to_run_config` turns it into the dataclasses once per run, rejecting unknown keys, non-finite numbers and
what the ``__post_init__`` checks refuse.

A field that changes no number (the progress bar, TensorBoard, ...) is declared with :func:`unfingerprinted`:
the resume fingerprint (``da.checkpoint.fingerprint``) leaves out every key so marked. A field added after run
folders were written, whose default computes what those folders computed, is declared with :func:`added`: the
fingerprint leaves it out at its default only, so such a folder resumes, and any other value is compared.
"""

from __future__ import annotations

import math
import os
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from da.backbones import BackboneConfig
from da.data import DATASETS
from da.errors import ConfigError, one_line
from da.methods import METHODS
from da.validators import VALIDATORS

T = TypeVar("T")
LR_SCHEDULES = ("dann", "cosine", "constant")
DATA_ON_DEVICE = ("auto", "true", "false")
#: Field metadata key: ``False`` marks a key that changes no number (left out of the resume fingerprint);
#: ``DEFAULT_ONLY`` a key left out only at its default (:func:`added`).
FINGERPRINT = "fingerprint"
DEFAULT_ONLY = "default-only"


def default_data_root() -> str:
    """``$DA_DATA_ROOT`` when it is set to a path, else ``~/data``: set but empty means unset, not the current
    folder (where a download would land in ``./MNIST/raw``)."""
    return os.environ.get("DA_DATA_ROOT", "").strip() or "~/data"


OmegaConf.register_new_resolver("da.data_root", default_data_root, replace=True)


def unfingerprinted(default: Any) -> Any:
    """A field that changes no number a run computes: a run folder resumes under another value of it."""
    return field(default=default, metadata={FINGERPRINT: False})


def added(default: Any) -> Any:
    """A field that run folders written before it lack, and whose ``default`` computes what they computed: left
    out of the resume fingerprint at its default (those folders resume), compared at any other value."""
    return field(default=default, metadata={FINGERPRINT: DEFAULT_ONLY})


def cpu_threads(value: Any) -> int:
    """The number of CPU threads ``trainer.threads`` asks for: a positive integer, or ``auto`` (one per CPU core
    this process may use); anything else is a ConfigError."""
    if isinstance(value, str) and value.lower() == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"trainer.threads must be a positive integer or auto, got {value!r}")
    return value


@dataclass
class TrainerConfig:
    epochs: int = 20
    steps_per_epoch: int | None = None  # None: one pass over the larger training domain
    batch_size: int = 64  # per domain: each step reads batch_size source + batch_size target images
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    lr_schedule: str = "dann"  # dann: lr / (1 + gamma p)^decay, Ganin et al. arXiv 1505.07818; cosine; constant
    lr_gamma: float = 10.0
    lr_decay: float = 0.75
    # bf16 autocast on CUDA (fp16 where bf16 is missing) and on CPUs with AVX512-BF16/AMX; false: float32
    amp: bool = True
    num_workers: int = 0  # > 0: per-sample DataLoader workers instead of the batched in-memory path
    # auto: the images live on the accelerator when they fit (else pinned host memory); true; false
    data_on_device: str = unfingerprinted("auto")
    channels_last: bool = True  # NHWC memory format for convolutional backbones (faster on GPU and CPU)
    compile: bool = False  # torch.compile the model (first steps slower while it compiles)
    # PyTorch's CPU threads (torch.set_num_threads), whatever OMP_NUM_THREADS says: a CPU kernel sums in a
    # thread-dependent order, so the count is part of a run's numbers; 1: the fastest for the embedded task's small
    # batches on a small shared CPU (docs/cli.md); auto: one per core (large backbones on a CPU with many cores)
    threads: Any = added(1)
    # steps between host reads of the losses (progress bar, non-finite check, TensorBoard)
    log_every: int = unfingerprinted(25)
    sync_bn: bool = False  # under torchrun: BatchNorm -> SyncBatchNorm (statistics over every rank's batch)
    eval_batch_size: int = 256
    # evaluate (accuracy curves, validators, collapse monitor) after every k-th epoch and after the last; 2: the
    # measured cost of evaluating every epoch (a source_only epoch of the embedded task: 24%) halved, at a selection
    # regret within 0.5 points per method (docs/datasets.md, "Measured")
    eval_every: int = 2
    # the label-free validators score a fixed subsample (seed 0) of at most this many target-train and
    # source-validation images (their cost grows with N; SND's with N^2); null: every image
    validator_samples: int | None = 2000
    progress_bar: bool = unfingerprinted(True)  # a bar on a terminal, one line per epoch when stdout is a file
    resume: bool = unfingerprinted(True)  # continue from the run folder's checkpoint.pt (refused under another config)
    # torch.use_deterministic_algorithms + deterministic cuDNN (exact reruns on GPU, slower)
    deterministic: bool = False
    # warn (and record results.json "collapse") when the target's predicted-class entropy falls below this x its peak
    collapse_fraction: float = unfingerprinted(0.85)
    tensorboard: bool = unfingerprinted(False)  # also write <run>/tensorboard (pip install 'da[tensorboard]')
    # predictions.npz of the reported weights (label-free target-train and source-val predictions): all; logits; none
    save_predictions: str = unfingerprinted("all")
    report: bool = unfingerprinted(True)  # report.html + its figures in the run folder at the end (da/report.py)

    def __post_init__(self) -> None:
        cpu_threads(self.threads)
        if isinstance(self.threads, str):
            self.threads = self.threads.lower()
        self.data_on_device = str(self.data_on_device).lower()
        if self.data_on_device not in DATA_ON_DEVICE:
            raise ConfigError(f"trainer.data_on_device must be auto, true or false, got {self.data_on_device!r}")
        for key in ("epochs", "batch_size", "eval_batch_size", "log_every", "eval_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.validator_samples is not None and self.validator_samples < 2:
            raise ConfigError(f"trainer.validator_samples must be >= 2 or null, got {self.validator_samples}")
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
        if self.save_predictions not in ("all", "logits", "none"):
            raise ConfigError(f"trainer.save_predictions must be all, logits or none, got {self.save_predictions!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown trainer.lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def lr_at(cfg: TrainerConfig, progress: float) -> float:
    """Learning rate at training progress p in [0, 1]."""
    if cfg.lr_schedule == "dann":
        return cfg.lr / (1.0 + cfg.lr_gamma * progress) ** cfg.lr_decay
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


@dataclass
class RunConfig:
    """The root: one run's whole configuration (``configs/config.yaml`` picks the groups' options)."""

    method: Any = MISSING  # the method's Config (da/methods/<name>.py)
    backbone: Any = MISSING  # BackboneConfig (da/backbones.py)
    dataset: Any = MISSING  # the dataset's config (da/data/)
    seed: int = 0
    device: str = "auto"  # auto = CUDA, then MPS, then CPU
    data_root: str = "${da.data_root:}"  # where real datasets live: $DA_DATA_ROOT, else ~/data (default_data_root)
    # fraction of the labelled source train split held out (stratified, fixed split) for dev/devn/source_val
    source_val: float = 0.1
    # the reported checkpoint: last, or the epoch a label-free validator scores best (im, snd, ...)
    selection: str = "last"
    # starting model: null = the method's default, scratch, source (train it first), or a run folder/file
    init: str | None = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0 <= self.source_val < 0.5:
            raise ConfigError(f"source_val must be a fraction in [0, 0.5), got {self.source_val!r}")
        if self.selection != "last" and self.selection not in VALIDATORS:
            raise ConfigError(f"unknown selection {self.selection!r}; valid: last, {', '.join(VALIDATORS)}")


TOP_LEVEL_KEYS = tuple(f.name for f in fields(RunConfig))


def register_configs() -> None:
    """Store the dataclasses in Hydra's ConfigStore, where the YAML files' defaults lists find them:
    ``schema/run`` (the root), ``schema/backbone``, ``schema/method/<name>`` and ``schema/dataset/<name>`` for
    every registered method and dataset. Done when this module is imported and again before each
    :func:`compose` (a method registered later, e.g. in a notebook, is then found too)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=RunConfig)
    store.store(group="schema", name="backbone", node=BackboneConfig)
    for name in METHODS.names():
        store.store(group="schema/method", name=name, node=METHODS.get(name).Config(name=name))
    for name in DATASETS.names():
        store.store(group="schema/dataset", name=name, node=DATASETS.get(name).config)


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
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)
    except Exception as err:  # Hydra's errors are multi-line; keep the first meaningful line
        raise ConfigError(_compose_error(err, overrides)) from err
    finally:
        GlobalHydra.instance().clear()


def _compose_error(err: BaseException, overrides: list[str]) -> str:
    """One line for Hydra's error: an unknown key lists the valid ones; a value the schema refuses says why."""
    message = one_line(err)
    match = re.match(r"Could not override '([^']+)'", message)
    if match:
        return _unknown_key(match.group(1), overrides)
    cause = err.__cause__
    while cause is not None and cause.__cause__ is not None:
        cause = cause.__cause__
    match = re.match(r"Error merging override (\S+?)=", message)
    if match and cause is not None and str(cause).strip():
        return f"invalid value for {match.group(1)}: {str(cause).strip().splitlines()[0]}"
    return message


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


def _plain(node: Any) -> Any:
    """A config section as plain containers, interpolations resolved."""
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node) if isinstance(node, dict) else node


def _dotted(where: str, key: Any) -> str:
    return ".".join(str(k) for k in (where, key) if k not in (None, ""))


def check_finite(value: Any, key: str) -> None:
    """Every float in ``value`` (a config section as plain containers) is finite: NaN and inf are one
    ConfigError naming the key (a NaN weight or an infinite decay would otherwise train on, or fail later under
    another key's name)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, _dotted(key, k))
    elif isinstance(value, list | tuple):
        if any(isinstance(v, float) and not math.isfinite(v) for v in value):
            raise ConfigError(f"{key} must hold finite numbers, got {list(value)}")
        for v in value:
            check_finite(v, key)


def to_dataclass(node: Any, cls: type[T], where: str, sections: dict[str, type] | None = None) -> T:
    """``node`` (a config section) as an instance of dataclass ``cls``: unknown keys, values of the wrong type,
    non-finite numbers and what ``__post_init__`` refuses are one ConfigError naming the key. ``sections``: the
    dataclass of each ``Any`` field that holds a section (the root's method, backbone and dataset)."""
    schema = OmegaConf.structured(cls)
    for key, section in (sections or {}).items():
        schema[key] = OmegaConf.structured(section)
    try:
        merged = OmegaConf.merge(schema, _plain(node))
    except (ConfigKeyError, ConfigAttributeError) as err:  # a key the dataclass (or a section's) does not have
        parent, _, leaf = str(err.full_key or getattr(err, "key", "")).rpartition(".")
        holder = OmegaConf.select(schema, parent) if parent else schema
        valid = ", ".join(str(k) for k in holder) if isinstance(holder, DictConfig) else ""
        if not parent and not where:
            raise ConfigError(f"unknown config key {leaf!r}; valid top-level keys: {valid}") from err
        message = f"unknown key {_dotted(where, err.full_key)}; valid keys of {_dotted(where, parent)}: {valid}"
        raise ConfigError(message) from err
    except OmegaConfBaseException as err:
        key = _dotted(where, getattr(err, "full_key", None) or getattr(err, "key", ""))
        raise ConfigError(f"invalid value for {key}: {one_line(err)}") from err
    check_finite(OmegaConf.to_container(merged), where)
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except MissingMandatoryValue as err:
        raise ConfigError(f"missing value for {_dotted(where, err.full_key)}") from err
    except OmegaConfBaseException as err:
        key = _dotted(where, getattr(err, "full_key", None) or getattr(err, "key", ""))
        raise ConfigError(f"invalid value for {key}: {one_line(err)}") from err


def section_classes(cfg: Any) -> dict[str, type]:
    """The dataclass of each named section of ``cfg`` (a config or its plain containers): the registered
    method's ``Config``, the dataset's config and :class:`~da.backbones.BackboneConfig`. A name that is not
    registered is a ConfigError listing the valid ones; a section without a name is left to the schema."""
    lookups = {
        "method": lambda name: METHODS.get(name).Config,
        "backbone": lambda name: BackboneConfig,
        "dataset": lambda name: DATASETS.get(name).config,
    }
    out = {}
    for key, lookup in lookups.items():
        section = cfg.get(key) if hasattr(cfg, "get") else None
        name = section.get("name") if hasattr(section, "get") else None
        if isinstance(name, str):
            out[key] = lookup(name)
    return out


def to_run_config(cfg: Any) -> RunConfig:
    """A composed config (or its plain containers, e.g. a run folder's config.yaml) as a :class:`RunConfig`,
    every section typed and checked: the one conversion of a run (``da.build.typed_configs`` calls it)."""
    data = _plain(cfg)
    return to_dataclass(data, RunConfig, "", section_classes(data))


def _marked(cls: type, prefix: str, values: Any) -> list[str]:
    """Dotted keys of the fields of dataclass ``cls`` (and its dataclass-typed fields) marked ``unfingerprinted``,
    and of those marked :func:`added` whose value in ``values`` (the section as a dict) is their default."""
    hints = typing.get_type_hints(cls)
    values = values if isinstance(values, dict) else {}
    out = []
    for f in fields(cls):  # type: ignore[arg-type]
        mark = f.metadata.get(FINGERPRINT, True)
        if mark is False or (mark == DEFAULT_ONLY and f.name in values and values[f.name] == f.default):
            out.append(prefix + f.name)
        elif is_dataclass(hints.get(f.name)):
            out.extend(_marked(hints[f.name], f"{prefix}{f.name}.", values.get(f.name)))
    return out


def config_classes(config: dict[str, Any]) -> dict[str, type]:
    """Key prefix -> dataclass of a (resolved) run config: ``""`` -> :class:`RunConfig`, and ``"method."``,
    ``"backbone."``, ``"dataset."`` -> their registered dataclasses (a section whose name is not registered is
    left out)."""
    classes: dict[str, type] = {"": RunConfig}
    for key in ("method", "backbone", "dataset"):
        try:
            cls = section_classes({key: config.get(key)}).get(key)
        except ConfigError:
            continue
        if cls is not None:
            classes[f"{key}."] = cls
    return classes


def unfingerprinted_keys(resolved: dict[str, Any]) -> list[str]:
    """The dotted keys of ``resolved`` (a resolved run config) that change no number: the fields declared with
    :func:`unfingerprinted` in :class:`RunConfig`, :class:`TrainerConfig` and the config's sections' dataclasses
    (sections whose name is not registered are skipped), and those declared with :func:`added` that are at their
    default in ``resolved``."""
    keys: list[str] = []
    for prefix, cls in config_classes(resolved).items():
        keys.extend(_marked(cls, prefix, resolved.get(prefix[:-1]) if prefix else resolved))
    return keys


def override_value(v: Any) -> str:
    """``v`` as the value of a ``key=value`` command-line override: null, true/false, ``[a,b]``."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list | tuple):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    return str(v)


register_configs()
