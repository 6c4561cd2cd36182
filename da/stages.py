"""Where a run's starting model comes from: the top-level ``init`` key, and the automatic source stage.

``init`` is one of

- ``null``: the method's own default (``Method.default_init``; ``source`` for self-training, FixMatch and SHOT,
  nothing for the others);
- ``scratch``: the model as the backbone config builds it (random or ImageNet features, new bottleneck/head);
- a run folder of this package or a file: its ``checkpoint.pt`` (the trainer's, whose ``"method"`` state holds
  ``model.*``) or a plain ``state_dict`` of the whole model; backbone, bottleneck and head are all loaded;
- ``source``: train the source model first, as a normal run folder ``<run_dir>/source_stage/`` (``source_only``
  on the labelled source, with the method's ``source_*`` options), and start from its checkpoint. A stage whose
  ``results.json`` exists with the same config is reused, so a rerun or a resumed run does not retrain it.

Other stages (e.g. "train on source, then fine-tune") call :func:`source_checkpoint` directly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from da.errors import ConfigError

SOURCE_STAGE_DIR = "source_stage"
INIT_KEYWORDS = ("source", "scratch")


def source_stage_config(cfg: DictConfig, **overrides: Any) -> DictConfig:
    """The source stage's config: ``source_only`` on the same data, backbone, trainer and seed as ``cfg``.

    The method's optional ``source_epochs`` (None = ``trainer.epochs``) and ``source_label_smoothing`` apply;
    ``overrides`` are dotted keys, e.g. ``source_checkpoint(cfg, d, **{"trainer.lr": 0.1})``.
    """
    method = cfg.method
    stage = OmegaConf.to_container(cfg, resolve=True)
    stage["init"] = "scratch"
    stage["method"] = {
        "name": "source_only",
        "backbone_lr_factor": method.get("backbone_lr_factor", 1.0),
        "label_smoothing": method.get("source_label_smoothing", 0.0) or 0.0,
    }
    if method.get("source_epochs") is not None:
        stage["trainer"]["epochs"] = method.source_epochs
    out = OmegaConf.create(stage)
    for key, value in overrides.items():
        if OmegaConf.select(out, key, default=KeyError) is KeyError:
            raise ConfigError(f"unknown source-stage key {key!r}")
        OmegaConf.update(out, key, value, merge=False)
    return out


def _same_config(a: dict, b: dict) -> bool:
    def strip(c: dict) -> dict:
        c = json.loads(json.dumps(c))
        c.get("trainer", {}).pop("progress_bar", None)
        return c

    return strip(a) == strip(b)


def source_checkpoint(cfg: DictConfig, run_dir: str, quiet: bool = True, **overrides: Any) -> str:
    """Train (or reuse) the source model for ``cfg`` in ``<run_dir>/source_stage/``; return its checkpoint path."""
    from da.experiment import fit

    stage_cfg = source_stage_config(cfg, **overrides)
    stage_dir = os.path.join(run_dir, SOURCE_STAGE_DIR)
    results_path = os.path.join(stage_dir, "results.json")
    checkpoint = os.path.join(stage_dir, "checkpoint.pt")
    if os.path.isfile(results_path) and os.path.isfile(checkpoint):
        with open(results_path) as fh:
            done = json.load(fh)
        if _same_config(done.get("config", {}), OmegaConf.to_container(stage_cfg, resolve=True)):
            if not quiet:
                print(f"source stage: reusing {stage_dir} (target acc {100 * done['target_acc']:.1f}%)")
            return checkpoint
    if not quiet:
        print(f"source stage: training source_only in {stage_dir}")
    fit(stage_cfg, run_dir=stage_dir, quiet=quiet)
    return checkpoint


def resolve_init(cfg: DictConfig, method_cls: type, run_dir: str, quiet: bool = True) -> str | None:
    """The checkpoint file a run starts from (training the source stage first when asked), or None."""
    init = cfg.get("init")
    if init is None:
        init = method_cls.default_init
    if init is None or init == "scratch":
        return None
    init = str(init)
    if init == "source":
        return source_checkpoint(cfg, run_dir, quiet=quiet)
    path = os.path.expanduser(init)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    if not os.path.isfile(path):
        raise ConfigError(
            f"init={init}: no such checkpoint file or run folder with checkpoint.pt; "
            f"valid: null, {', '.join(INIT_KEYWORDS)}, a run folder or a checkpoint file"
        )
    return path


def load_model(model: nn.Module, path: str | None) -> None:
    """Load the whole model (backbone, bottleneck, head) from a trainer checkpoint or a state_dict file."""
    if path is None:
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ConfigError(f"init: cannot read {path} as a torch checkpoint ({type(err).__name__})") from err
    if isinstance(state, dict) and "method" in state:  # written by da's trainer: the method's state
        state = state["method"]
    if not isinstance(state, dict):
        raise ConfigError(f"init: {path} holds no state_dict")
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise ConfigError(f"init: {path} does not match this model ({first})") from err
