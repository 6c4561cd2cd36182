"""Where a run's starting model comes from: the top-level ``init`` key, and the automatic source stage.

``init`` is one of

- ``null``: the method's own default (``Method.default_init``; ``source`` for self-training, FixMatch and SHOT,
  nothing for the others);
- ``scratch``: the model as the backbone config builds it (random or ImageNet features, new bottleneck/head);
- a run folder of this package (its ``model.pt``, else ``checkpoint.pt``) or a file: ``model.pt``, a trainer
  checkpoint or a plain ``state_dict`` of the whole model; backbone, bottleneck and head are all loaded (the
  head stays new when the number of classes differs; see ``da.build.load_model``). This is the one way to
  start from saved weights (``backbone.checkpoint`` is a deprecated alias for the backbone alone);
- ``source``: train the source model first, as a normal run folder ``<run_dir>/source_stage/`` (``source_only``
  on the labelled source, with the method's ``source_*`` options), and start from its checkpoint. A stage whose
  ``results.json`` exists with the same config is reused, so a rerun or a resumed run does not retrain it.

This module only reads configs; ``da.experiment`` trains the stage (``source_checkpoint``, ``resolve_init``).
Other stages (e.g. "train on source, then fine-tune") call ``da.experiment.source_checkpoint`` directly.
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from da.checkpoint import CHECKPOINT, MODEL, check_digest
from da.errors import ConfigError
from da.runfolder import read_json

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


def check_run_model(run_dir: str, init: str) -> None:
    """``init=<run folder>``: its model.pt must be the file that run wrote, as :func:`da.build.load_run` checks."""
    check_digest(os.path.join(run_dir, MODEL), read_json(os.path.join(run_dir, "results.json")), f"init={init}")


def init_choice(cfg: DictConfig, method_cls: type) -> str | None:
    """What ``init`` asks for: None (the model as built), ``"source"`` (train the source stage first; done by
    ``da.experiment.resolve_init``) or the path of an existing checkpoint file."""
    init = cfg.get("init")
    if init is None:
        init = getattr(method_cls, "default_init", None)
    if init is None or init == "scratch":
        return None
    init = str(init)
    if init == "source":
        return init
    path = os.path.expanduser(init)
    if os.path.isdir(path):
        found = [os.path.join(path, f) for f in (MODEL, CHECKPOINT) if os.path.isfile(os.path.join(path, f))]
        path = found[0] if found else os.path.join(path, CHECKPOINT)
        if found and found[0].endswith(MODEL):
            check_run_model(os.path.dirname(path), init)
    if not os.path.isfile(path):
        raise ConfigError(
            f"init={init}: no such checkpoint file or run folder with model.pt / checkpoint.pt; "
            f"valid: null, {', '.join(INIT_KEYWORDS)}, a run folder or a checkpoint file"
        )
    return path
