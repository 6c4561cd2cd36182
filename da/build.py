"""One assembly of a run's parts: config -> task -> ``prepare_task`` -> model (+ starting weights) -> method.

``fit`` (training), :func:`load_run` (a finished run, in a notebook), figure restoration (``da.plots``) and
the tests all build through :func:`build_run`, so the chain exists once. The starting weights come from the
top-level ``init`` key (see :mod:`da.stages`); ``backbone.checkpoint`` is a deprecated alias kept so earlier
commands still run.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from da import checkpoint
from da.backbones import BackboneConfig, ImageClassifier, build_model
from da.config import RunConfig, TrainerConfig, to_run_config
from da.data import build_task
from da.data.base import Task, hold_out_source_val
from da.errors import ConfigError
from da.methods import METHODS, Method, MethodConfig
from da.runtime import seed_everything

log = logging.getLogger(__name__)


@dataclass
class Configs:
    """The typed sections of a composed config (unknown keys and bad values fail when these are built)."""

    method_cls: type[Method]
    method: MethodConfig
    dataset: Any
    backbone: BackboneConfig
    trainer: TrainerConfig
    run: RunConfig  # the whole config: the sections above and the top-level keys (seed, source_val, ...)


def typed_configs(cfg: DictConfig) -> Configs:
    """``cfg`` as dataclasses, every key checked (:func:`da.config.to_run_config`): once per run — ``fit``
    hands the result to :func:`build_run`."""
    run = to_run_config(cfg)
    return Configs(METHODS.get(run.method.name), run.method, run.dataset, run.backbone, run.trainer, run)


@dataclass
class RunParts:
    cfg: DictConfig
    configs: Configs
    task: Task
    method: Method

    @property
    def model(self) -> ImageClassifier:
        return self.method.model


def load_model(model: ImageClassifier, path: str | None, what: str = "init") -> None:
    """Load the saved model at ``path`` (run folder, model.pt, checkpoint.pt or state_dict) into ``model``.

    Backbone, bottleneck and head are all loaded. When only the number of classes differs (a new label set),
    the head stays new and the rest is loaded; any other mismatch is an error.
    """
    if path is None:
        return
    state = checkpoint.read_model_state(path, what)
    own = model.state_dict()
    saved_head, own_head = state.get("head.weight"), own["head.weight"]
    new_classes = saved_head is not None and saved_head.shape[0] != own_head.shape[0]
    if new_classes and saved_head.shape[1:] == own_head.shape[1:]:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        log.info(
            "%s: %s has %d classes, this task %d: the head is new",
            what,
            path,
            *(saved_head.shape[0], own_head.shape[0]),
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(err)
        raise ConfigError(f"{what}: {path} does not match this model ({first})") from err
    missing = [k for k in missing if not (new_classes and k.startswith("head."))]
    if missing or unexpected:
        first = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ConfigError(f"{what}: {path} does not match this model ({first})")


def load_backbone(model: ImageClassifier, path: str) -> None:
    """Deprecated ``backbone.checkpoint``: the backbone's weights only, from a run or a backbone state_dict."""
    log.warning(
        "backbone.checkpoint is deprecated: use init=<run folder or file> (loads the whole model; the head "
        "stays new when the number of classes differs)"
    )
    state = checkpoint.read_model_state(path, "backbone.checkpoint")
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    try:
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape mismatch
        lines = str(err).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(err)
        raise ConfigError(f"backbone.checkpoint: {path} does not match the backbone ({first})") from err
    if unexpected or len(missing) == len(list(model.backbone.state_dict())):
        raise ConfigError(f"backbone.checkpoint: {path} does not match the backbone (missing {len(missing)} keys)")


def build_run(
    cfg: DictConfig,
    init_path: str | None = None,
    tasks: dict | None = None,
    pretrained: bool = True,
    configs: Configs | None = None,
) -> RunParts:
    """Seed, build the task (``tasks`` caches tasks across calls, keyed by dataset config and seed), let the
    method reshape it, build the model, load its starting weights and wrap it in the method.

    ``pretrained=False`` skips downloading/reading backbone weights (they are about to be overwritten, e.g.
    by a finished run's weights). ``configs``: ``typed_configs(cfg)`` when the caller has it already.
    """
    configs = configs or typed_configs(cfg)
    seed = int(cfg.seed)
    seed_everything(seed)
    key = (repr(configs.dataset), seed)
    if tasks is not None and key in tasks:
        task = tasks[key]
    else:
        task = build_task(configs.dataset, seed, os.path.expanduser(str(cfg.data_root)))
        if tasks is not None:
            tasks[key] = task
    if configs.method_cls.kind != "inductive":  # label-free validators' labelled source split (da/validators.py)
        split_seed = int(getattr(configs.dataset, "split_seed", 0))
        task = hold_out_source_val(task, float(cfg.get("source_val", 0.0) or 0.0), split_seed)
    task = configs.method_cls.prepare_task(task, configs.method, seed)  # inductive: the labelled target budget
    backbone_cfg = configs.backbone
    if not pretrained:
        backbone_cfg = BackboneConfig(**{**vars(backbone_cfg), "weights": None, "checkpoint": None})
    model = build_model(backbone_cfg, task.num_classes, task.in_channels, task.image_size)
    if backbone_cfg.checkpoint:
        load_backbone(model, os.path.expanduser(backbone_cfg.checkpoint))
    load_model(model, init_path)  # the whole model from the init checkpoint, if any
    method = configs.method_cls(model, configs.method, task.num_classes)
    return RunParts(cfg, configs, task, method)


@dataclass
class LoadedRun:
    """A finished run: its config, results and trained method (eval mode), ready for ``predict``."""

    run_dir: str
    cfg: DictConfig
    results: dict[str, Any]
    method: Method
    _task: Task | None = field(default=None, repr=False)
    _preprocessing: dict[str, Any] | None = field(default=None, repr=False)
    _tasks: dict | None = field(default=None, repr=False)  # load_run's task cache, shared by the runs of one task

    @property
    def model(self) -> ImageClassifier:
        return self.method.model

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) of images ``x`` (B, C, H, W) prepared as the run's test split prepares them
        (``preprocessing``); image files or PIL images: :meth:`predict_images`."""
        prep = self._preprocessing
        if prep is not None and (x.ndim != 4 or x.shape[1] != prep["channels"] or x.shape[-1] != prep["crop"]):
            want = f"(B, {prep['channels']}, {prep['crop']}, {prep['crop']})"
            raise ConfigError(
                f"predict takes prepared images {want}, got {tuple(x.shape)}: use run.predict_images(files) for "
                "image files (resized and normalised as preprocessing.json says)"
            )
        device = next(self.method.parameters()).device
        return self.method.predict(x.to(device))

    def predict_images(self, images: list[Any]) -> Any:
        """Class probabilities (N, K) (numpy) of image files (paths) or PIL images, prepared as the run's test
        images were; column k is ``class_names[k]``."""
        from da.inference import predict_files

        return predict_files(self, list(images))

    @property
    def task(self) -> Task:
        """The run's task, built on first use (real datasets must be on disk)."""
        if self._task is None:
            self._task = build_run(self.cfg, tasks=self._tasks, pretrained=False).task
        return self._task

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How an image becomes the network's input (``preprocessing.json``; built from the task for an older run)."""
        if self._preprocessing is None:
            from da.inference import describe

            self._preprocessing = describe(self.task, str(self.cfg.dataset.name))
        return self._preprocessing

    @property
    def class_names(self) -> list[str]:
        """The names of the classes, in the order of the logits."""
        return list(self.preprocessing["class_names"])


def load_run(run_dir: str, device: str = "cpu", tasks: dict | None = None) -> LoadedRun:
    """The trained model of a finished run folder (its reported weights, ``model.pt``) and its config; a folder
    that cannot be read (unfinished, corrupt config.yaml or model.pt) is one ConfigError.

    A run folder with ``preprocessing.json`` (written by every run since it exists) is loaded without its
    dataset: the model is built from config.yaml and that file, and ``LoadedRun.task`` builds the task only when
    asked. An older folder builds its task at once. ``tasks`` caches built tasks across calls (as
    :func:`build_run`): runs of one task share it.

    Args:
        run_dir: a finished run folder (holding model.pt and results.json).
        device: where the model goes (``"cpu"``, ``"cuda"``, ...).
        tasks: a dict shared across calls that caches built tasks."""
    from da.inference import read_preprocessing

    results = checkpoint_results(run_dir)
    cfg = _read_config(os.path.join(run_dir, "config.yaml"))
    prep = read_preprocessing(run_dir)
    if prep is None:
        parts = build_run(cfg, tasks=tasks, pretrained=False)
        method, task = parts.method, parts.task
    else:
        method, task = _method_from(cfg, prep), None
    path = os.path.join(run_dir, checkpoint.MODEL)
    state = checkpoint.load(path, "load_run")  # weights only: a shared run folder runs no code
    checkpoint.check_digest(path, results, "load_run")
    try:
        method.model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = next((ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err).splitlines()[0])
        raise ConfigError(f"load_run: {path} does not match the model config.yaml describes ({first[:160]})") from err
    method.to(device).eval()
    return LoadedRun(run_dir, cfg, results, method, task, prep, tasks)


def _method_from(cfg: DictConfig, prep: dict[str, Any]) -> Method:
    """The run's method around an untrained model of the right shape, from config.yaml and preprocessing.json."""
    configs = typed_configs(cfg)
    backbone_cfg = BackboneConfig(**{**vars(configs.backbone), "weights": None, "checkpoint": None})
    classes = len(prep["class_names"])
    model = build_model(backbone_cfg, classes, int(prep["channels"]), int(prep["crop"]))
    return configs.method_cls(model, configs.method, classes)


def _read_config(path: str) -> DictConfig:
    """A run folder's config.yaml as a DictConfig; missing, unparsable or not a mapping is one ConfigError."""
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError as err:
        raise ConfigError(f"load_run: {path} not found") from err
    except Exception as err:  # yaml's ParserError / ScannerError, an unreadable file, an OmegaConf error
        line = (str(err).splitlines() or [""])[0][:120]
        raise ConfigError(f"load_run: cannot read {path} ({type(err).__name__}: {line})") from err
    if not isinstance(cfg, DictConfig) or "method" not in cfg or "dataset" not in cfg:
        raise ConfigError(f"load_run: {path} is not a run's config (no method and dataset sections)")
    return cfg


def checkpoint_results(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(os.path.join(run_dir, checkpoint.MODEL)):
        if os.path.isfile(path):  # finished; the benchmark runs committed to git keep no weights
            raise ConfigError(
                f"{run_dir} holds the results of a finished run but no model.pt (its weights were not kept, as in "
                "the benchmark runs committed to git): train the same config again to get them"
            )
        raise ConfigError(f"{run_dir} holds no model.pt: the run has not finished (or predates model.pt)")
    try:
        with open(path) as fh:
            results = json.load(fh)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{run_dir}: cannot read results.json ({type(err).__name__})") from err
    if not isinstance(results, dict):
        raise ConfigError(f"{run_dir}: results.json holds no results object")
    return results
