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
import re
from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from da.config import override_value, to_dataclass
from da.errors import ConfigError
from da.tta.corruptions import DATA_CONFIGS
from da.tta.methods import TTA_METHODS
from da.tta.stream import ProtocolConfig

#: The source stage of ``init=source`` as ``python -m da.run`` overrides (the run's seed is added): a ResNet-18
#: from scratch with no bottleneck, so every layer has batch norm (LeNet has none outside its bottleneck), trained
#: on the clean scikit-learn digits — the stream is their corrupted test split, as CIFAR-10 -> CIFAR-10-C — for
#: 5 epochs, as the README's table (benchmarks/tta.py; its clean test accuracy is ~98% from the third epoch on).
SOURCE_STAGE = [
    "method=source_only",
    "backbone=resnet18",
    "backbone.weights=null",
    "backbone.bottleneck_dim=0",
    "dataset=digits",
    "dataset.source=sklearn",
    "dataset.target=sklearn",
    "trainer.epochs=5",
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
    data_root: str = "${da.data_root:}"  # where CIFAR-10-C/ lives: $DA_DATA_ROOT (set, not empty), else ~/data
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

    overrides = list(overrides or [])
    check_overrides(overrides)
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as err:  # Hydra's errors span lines: the first meaningful one
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        match = re.match(r"Could not override '([^']+)'", lines[0] if lines else "")
        if match:
            raise ConfigError(_unknown_key(match.group(1), overrides)) from err
        merging = re.match(r"Error merging override (\S+?)=", lines[0] if lines else "")
        cause = err.__cause__
        while cause is not None and cause.__cause__ is not None:  # the schema's refusal, e.g. not an integer
            cause = cause.__cause__
        if merging and cause is not None and str(cause).strip():
            raise ConfigError(f"invalid value for {merging.group(1)}: {str(cause).strip().splitlines()[0]}") from err
        raise ConfigError(" ".join(lines[:2]) or type(err).__name__) from err
    finally:
        GlobalHydra.instance().clear()


GROUPS = ("method", "protocol", "data")
PLURAL = {"method": "methods", "protocol": "protocols", "data": "data sets"}


def group_options(group: str) -> list[str]:
    """The options of a group of ``configs/tta/`` (``method``, ``protocol``, ``data``): its YAML files."""
    folder = os.path.join(config_dir(), group)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def check_overrides(overrides: list[str]) -> None:
    """One line naming the valid values for an unknown group option (``method=nosuch``) or top-level key, and the
    right key for one of the source stage's (``trainer.epochs``: a key of ``da train``, given through ``source``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra's own parse error, raised by compose
        return
    roots = [f.name for f in fields(TTARunConfig)]
    for override in parsed:
        key = override.key_or_group
        root = key.split(".")[0]
        if key in GROUPS and override.value_type is not None and not override.is_sweep_override():
            value = override.get_value_element_as_str()
            if value not in group_options(key):
                valid = ", ".join(group_options(key))
                raise ConfigError(f"unknown {key} {value!r}; valid {PLURAL[key]}: {valid}")
        elif root not in roots and not override.is_add():
            if root in _training_keys():
                raise ConfigError(source_stage_hint(override.input_line))
            raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(roots)} (da tta --help lists them all)")


def _training_keys() -> set[str]:
    """The top-level keys of a ``da train`` config (and its groups): what a source stage's override starts with."""
    from da.config import TOP_LEVEL_KEYS

    return set(TOP_LEVEL_KEYS) | {"method", "dataset", "backbone"}


def source_stage_hint(override: str) -> str:
    """The line for a training key given to a test-time run: it belongs in ``source``, written out in full."""
    key = override.split("=", 1)[0].lstrip("+~")
    stage = [o for o in SOURCE_STAGE if o.split("=", 1)[0] != key] + [override.lstrip("+")]
    listed = ",".join(f'"{o}"' for o in stage)
    return (
        f"{key} is a key of the source stage (init=source trains the source model with da train), not of the "
        f"test-time run: pass it in source, the stage's overrides, e.g. 'source=[{listed}]' (da tta --help)"
    )


def _unknown_key(key: str, overrides: list[str]) -> str:
    """One line for an unknown key inside a section (``method.nope``), listing the section's keys."""
    parent = key.rpartition(".")[0]
    choices = [o for o in overrides if o.split("=", 1)[0] in GROUPS]
    try:
        node = OmegaConf.select(compose(choices), parent) if parent else None
        valid = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
    except ConfigError:
        valid = ""
    return f"unknown key {key!r}" + (f"; valid keys of {parent}: {valid}" if valid else "")


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


HELP = """usage: da tta [key=value ...]    (the same as python -m da.tta key=value ...)

Test-time adaptation: a trained source model adapts to a stream of unlabelled, corrupted test batches while it
predicts them; the online error of each corruption and their mean go to the run folder's results.json.
docs/tta.md describes the protocols and methods; the README's table is python -m benchmarks.tta.

examples:
  da tta                                      # TENT, continual, digits_c at severity 5: the README table's setup
  da tta method=eata protocol=reset severity=3
  da tta init=RUN method=sar                  # adapt a finished `da train` run of dataset=digits
  da tta 'source=["method=source_only","backbone=lenet","dataset.source=sklearn","dataset.target=sklearn"]'

init=source (the default) first trains the source model with da train's overrides in `source` (5 epochs of a
ResNet-18 on the clean digits) in <run_dir>/source_stage/, reused by a rerun into the same folder.
"""


def _comments(cls: type) -> dict[str, str]:
    """Each dataclass field's comment in its source (beside it, else the comment lines above it), base classes
    first: the one-line descriptions of ``da tta --help``."""
    import inspect

    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        above: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            field_line = re.match(r"(\w+): [^=#]+(?:=[^#]*)?(?:#\s*(.*))?$", text)
            if text.startswith("#"):
                above.append(text.lstrip("# "))
            elif field_line and field_line.group(1) in klass.__dataclass_fields__:
                out[field_line.group(1)] = field_line.group(2) or " ".join(above)
                above = []
            else:
                above = []
    return out


HELP_WIDTH = 113  # the widest line of HELP
KEY_COLUMN = 34


def _line(key: str, value: Any, comment: str = "") -> str:
    """``  key=value   comment``, wrapped at HELP_WIDTH under the comment column; a value too long for its column
    (a list) broken after its commas, with the comment on the lines below it."""
    import textwrap

    text = f"  {key}={override_value(value)}"
    indent = " " * (KEY_COLUMN + 1)
    if len(text) > KEY_COLUMN:
        parts = re.findall(r"[^,]+,?", text)
        rows = [""]
        for part in parts:
            if rows[-1] and len(rows[-1]) + len(part) > HELP_WIDTH:
                rows.append("      ")
            rows[-1] += part
        text = "\n".join(rows)
        return text + (
            "\n" + textwrap.fill(comment, HELP_WIDTH, initial_indent=indent, subsequent_indent=indent)
            if comment
            else ""
        )
    if not comment:
        return text
    return textwrap.fill(f"{text:<{KEY_COLUMN}} {comment}", HELP_WIDTH, subsequent_indent=indent)


def help_text() -> str:
    """``da tta --help``: the groups' options and every key with its default (from the composed default config
    and the methods' and data sets' dataclasses), one line per key."""
    from da.tta.corruptions import CifarCConfig, DigitsCConfig

    cfg = OmegaConf.to_container(compose([]), resolve=False)
    assert isinstance(cfg, dict)
    lines = [HELP, "groups (the default, then every option):"]
    for group in GROUPS:
        lines.append(f"  {group + '=' + cfg[group]['name']:<32} {', '.join(group_options(group))}")
    lines += ["", "keys (key=default, with the default method=tent, protocol=continual, data=digits_c):"]
    run = _comments(TTARunConfig)
    lines += [_line(k, v, run.get(k, "")) for k, v in cfg.items() if k not in GROUPS]
    protocol = _comments(ProtocolConfig)
    protocol["num_samples"] += " (data=digits_c sets 256, as the README's table)"
    lines += [_line(f"protocol.{k}", v, protocol.get(k, "")) for k, v in cfg["protocol"].items() if k != "name"]
    digits = _comments(DigitsCConfig)
    lines += [_line(f"data.{k}", v, digits.get(k, "")) for k, v in cfg["data"].items() if k != "name"]
    cifar = _comments(CifarCConfig)
    for k, f in CifarCConfig.__dataclass_fields__.items():
        if k not in cfg["data"]:
            lines.append(_line(f"data.{k}", f.default, f"data=cifar10c, cifar100c: {cifar.get(k, '')}"))
    lines += _method_lines(str(cfg["method"]["name"]))
    return "\n".join(lines)


def _method_lines(default: str) -> list[str]:
    """``method.<key>``: every method's keys, the default method's value first, the others' where they differ."""
    configs = {n: vars(TTA_METHODS.get(n).Config(name=n)) for n in TTA_METHODS.names()}
    keys = list(dict.fromkeys(k for c in configs.values() for k in c if k != "name"))
    lines = []
    for key in keys:
        owners = [n for n, c in configs.items() if key in c]
        first = default if default in owners else owners[0]
        value = configs[first][key]
        same = [n for n in owners if configs[n][key] == value]
        others = [f"{n}: {override_value(configs[n][key])}" for n in owners if n not in same]
        comment = _comments(TTA_METHODS.get(first).Config).get(key, "")
        where = f"[{', '.join(same)}" + (f"; {', '.join(others)}" if others else "") + "]"
        lines.append(_line(f"method.{key}", value, f"{where} {comment}".strip()))
    return lines


register_configs()
