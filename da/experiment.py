"""``fit(cfg)``: the one function the CLI and notebooks call to run an experiment end to end.

A run happens inside its locked run folder (:mod:`da.runfolder`): the config is checked against any checkpoint
already there *before* anything is written, then config.yaml, the source stage (``init=source``), training,
and finally model.pt, results.json and skipped_files.txt, each written atomically.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from da import checkpoint, distributed, predictions
from da.backbones import backbone_label
from da.build import build_run, typed_configs
from da.callbacks import Callback
from da.checkpoint import config_differences, fingerprint, read_resumable
from da.data.budget import budget_line
from da.errors import ConfigError
from da.evaluate import accuracy, per_class_accuracy
from da.inference import save_preprocessing
from da.report import TestPredictions, source_acc_name, try_write, write_report
from da.results import Results, git_commit, headline_acc, versions
from da.runfolder import TRAINING, claim_folder, locked_run_dir, read_json, write_json, write_text
from da.runlog import log_to_run_folder
from da.runtime import select_device, set_deterministic, set_threads
from da.selection import oracle, selected_epochs
from da.stages import SOURCE_STAGE_DIR, init_choice, source_stage_config
from da.train import Trainer
from da.validators import VALIDATORS, best_epochs, score_all

log = logging.getLogger(__name__)
REPLACE_HINT = ", or trainer.resume=false to move it to <run>/replaced/<time>/ and start afresh"


def default_run_dir(cfg: DictConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = cfg.dataset
    return os.path.join("outputs", f"{d.name}", f"{d.source}_to_{d.target}", cfg.method.name, f"seed{cfg.seed}_{stamp}")


def source_checkpoint(cfg: DictConfig, run_dir: str, quiet: bool = True, **overrides: Any) -> str:
    """Train (or reuse) the source model for ``cfg`` in ``<run_dir>/source_stage/``; return its checkpoint path.

    A stage whose results.json exists for the same config (up to keys that change no number) is reused; an
    unfinished or unreadable one is trained (resuming from its own checkpoint when it has one).
    """
    stage_cfg = source_stage_config(cfg, **overrides)
    stage_dir = os.path.join(run_dir, SOURCE_STAGE_DIR)
    path = os.path.join(stage_dir, checkpoint.CHECKPOINT)
    done = read_json(os.path.join(stage_dir, "results.json"))
    wanted = fingerprint(OmegaConf.to_container(stage_cfg, resolve=True))
    if isinstance(done, dict) and os.path.isfile(path) and fingerprint(done.get("config", {})) == wanted:
        say = log.debug if quiet else log.info
        say("source stage: reusing %s (target acc %.1f%%)", stage_dir, 100 * done["target_acc"])
        return path
    (log.debug if quiet else log.info)("source stage: training source_only in %s", stage_dir)
    fit(stage_cfg, run_dir=stage_dir, quiet=quiet)
    return path


def resolve_init(cfg: DictConfig, method_cls: type, run_dir: str, quiet: bool = True) -> str | None:
    """The checkpoint file a run starts from (training the source stage first when asked), or None."""
    choice = init_choice(cfg, method_cls)
    return source_checkpoint(cfg, run_dir, quiet=quiet) if choice == "source" else choice


def fit(
    cfg: DictConfig | list[str] | dict[str, Any] | None = None,
    run_dir: str | None = None,
    quiet: bool = False,
    callbacks: list[Callback] | None = None,
) -> FitResult:
    """Train and evaluate the experiment ``cfg`` describes; write the run folder; return its results.

    Args:
        cfg: the experiment: a composed config (``da.compose([...])``, Hydra's in the CLI), a list of overrides
            as on the command line (``["method=dann", "trainer.epochs=2"]``), a dict of them
            (``{"method": "dann", "trainer.epochs": 2}``; nested dicts are dotted) or None (the defaults: MCC on
            the digits task).
        run_dir: the run folder; None: ``outputs/<dataset>/<source>_to_<target>/<method>/seed<s>_<time>``. A folder
            holding a checkpoint of the same config resumes from it; one of another config is refused (naming the
            keys that differ) and left untouched.
        quiet: log the summary line at debug level instead of info.
        callbacks: listeners of the training loop (:class:`da.callbacks.Callback`), called after the built-in ones.

    Returns:
        :class:`FitResult`: results.json's content as a dict, with the run folder as ``.run_dir``.
    """
    cfg = as_config(cfg)
    configs = typed_configs(cfg)  # every section checked before the run folder is touched
    distributed.init_from_env(str(cfg.device))  # under torchrun: join the process group (da/distributed.py)
    device = distributed.device_for_rank(select_device(str(cfg.device)))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    signature = fingerprint(resolved)
    main = distributed.is_main()  # rank 0 alone writes the run folder
    set_threads(configs.trainer.threads)  # before any tensor work: the count is part of the run's numbers
    set_deterministic(configs.trainer.deterministic)
    # What can refuse the run (data, backbone, init weights, selection) is checked before the folder is touched:
    # no stub folder is left behind. init=source builds again after its stage (same seed, cached task).
    choice, tasks = init_choice(cfg, configs.method_cls), {}
    parts = build_run(cfg, None if choice == "source" else choice, tasks=tasks, configs=configs)
    rule = str(cfg.get("selection") or "last")
    if parts.task.val is not None and rule != "last":
        raise ConfigError(f"selection={rule}: an inductive run selects on its labelled validation split; use last")
    run_dir = distributed.broadcast_object(run_dir or default_run_dir(cfg))
    folder = (
        locked_run_dir(run_dir, claim_training(signature, configs.trainer.resume))
        if main
        else contextlib.nullcontext(run_dir)
    )
    with folder as run_dir, log_to_run_folder(run_dir) if main else contextlib.nullcontext():
        distributed.barrier()  # the folder exists, locked by rank 0
        resume_state = read_resumable(run_dir, signature) if configs.trainer.resume else None
        if main:
            write_text(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(OmegaConf.create(resolved)))
        init_path = choice
        if choice == "source":  # <run>/source_stage first, then the model from its weights
            init_path = source_checkpoint(cfg, run_dir, quiet=quiet)
            parts = build_run(cfg, init_path, tasks=tasks, configs=configs)
        method, task = parts.method, parts.task
        trainer = Trainer(
            configs.trainer, method, task, run_dir, device, cfg.seed, signature, resume_state, rule, callbacks
        )
        del resume_state
        trainer.fit()
        # every rank: gathers predictions; data = the reported weights' label-free predictions the validators scored
        record, tgt, src, data = _results(cfg, parts, trainer, resolved, init_path)
        results = record.to_dict()
        if main:
            model_path = os.path.join(run_dir, checkpoint.MODEL)
            checkpoint.save(method.model.state_dict(), model_path)  # reported weights
            results["model_sha256"] = checkpoint.digest(model_path)  # load_run serves these weights only
            if task.skipped:  # every unreadable file, with its reason (results.json holds the count)
                write_text(os.path.join(run_dir, "skipped_files.txt"), "\n".join(task.skipped) + "\n")
            predictions.save(run_dir, data, configs.trainer.save_predictions)  # for choices across runs
            save_preprocessing(run_dir, task, str(cfg.dataset.name))  # load_run / da predict need no dataset
            write_json(os.path.join(run_dir, "results.json"), results)  # first: a failing page costs no result
            if configs.trainer.report:
                preds, names = _test_predictions(tgt, src), list(task.class_names)
                try_write(write_report, run_dir, results, preds, names, baseline=find_baseline(results, run_dir))
            (log.debug if quiet else log.info)(summary(results, run_dir))
        distributed.barrier()  # the other ranks go on (e.g. from a source stage) once rank 0 has written
    return FitResult(results, run_dir=os.path.abspath(run_dir))


def claim_training(signature: dict[str, Any], resume: bool):
    """The run folder's claim for a training run of ``signature`` (:func:`da.runfolder.claim_folder`): another
    kind's run or a finished run of another config is refused; ``resume=False`` moves the run there aside."""

    def claim(run_dir: str) -> None:
        def differs(config: dict[str, Any]) -> list[str]:
            return config_differences(fingerprint(config), signature)

        if resume:  # a checkpoint.pt is checked first: read as weights only, its own config compared
            read_resumable(run_dir, signature, mmap=True)
        moved = claim_folder(run_dir, TRAINING, differs, replace=not resume, hint=REPLACE_HINT)
        if moved:
            log.info("trainer.resume=false: the run that was in %s moved to %s", run_dir, moved)

    return claim


class FitResult(dict):
    """What :func:`fit` returns: results.json's content (a dict) and ``run_dir``, the run folder."""

    def __init__(self, results: dict[str, Any], run_dir: str) -> None:
        super().__init__(results)
        self.run_dir = run_dir

    def __repr__(self) -> str:
        return f"FitResult(run_dir={self.run_dir!r}, target_acc={self.get('target_acc')!r})"


def as_config(cfg: DictConfig | list[str] | dict[str, Any] | None) -> DictConfig:
    """``fit``'s config argument as a composed config: a composed config as it is; a list of overrides
    (``["method=dann", "trainer.epochs=2"]``) or a dict of them (``{"method": "dann", "trainer.epochs": 2}``)
    composed onto the defaults, as the command line would."""
    if isinstance(cfg, DictConfig):
        return cfg
    from da.config import compose, override_value

    if cfg is None:
        return compose([])
    if isinstance(cfg, str):
        raise ConfigError(f"fit: pass a list of overrides, e.g. da.fit([{cfg!r}]), not a string")
    if isinstance(cfg, dict):
        cfg = [f"{k}={override_value(v)}" for k, v in _dotted(cfg).items()]
    if isinstance(cfg, list | tuple) and all(isinstance(a, str) for a in cfg):
        from da.config import group_options

        for override in cfg:  # the CLI's message for a group option that does not exist (da.run.check_overrides)
            key, _, value = override.partition("=")
            if key in ("method", "dataset", "backbone") and value not in group_options(key):
                raise ConfigError(f"unknown {key} {value!r}; valid {key}s: {', '.join(group_options(key))}")
        return compose(list(cfg))
    raise ConfigError(f"fit: cfg must be a composed config, a list of overrides or a dict, got {type(cfg).__name__}")


def _dotted(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"epochs": 2}}`` -> ``{"trainer.epochs": 2}`` (a group's choice stays a plain string)."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _test_predictions(tgt, src) -> TestPredictions:
    def np_(t):
        return None if t is None else t.detach().float().cpu().numpy()

    return TestPredictions(
        np_(tgt.logits), np_(tgt.labels).astype(np.int64), np_(tgt.features),
        np_(src.features) if src is not None else None,
        np_(src.labels).astype(np.int64) if src is not None else None,
    )  # fmt: skip


def _results(cfg: DictConfig, parts, trainer: Trainer, resolved: dict, init_path: str | None):
    """results.json's record, and what it was computed from: the target (and source) test predictions and the
    label-free validation data (predictions.npz saves the latter)."""
    method, task, ev, rt = parts.method, parts.task, trainer.evaluator, trainer.runtime
    tgt = ev.predict(task.target_test)  # under the training's precision, as the per-epoch curves
    src = ev.predict(task.source_test) if method.uses_source else None
    data = ev.validation_data()  # one forward of the source validation split (the target's is cached)
    read = ("target_train", "target_test", "val") + (
        ("source_train", "source_val", "source_test") if method.uses_source else ()
    )
    per_class = per_class_accuracy(tgt.logits, tgt.labels, task.num_classes)
    present = [a for a in per_class if a is not None]
    record = Results(
        method=parts.configs.method.name,
        dataset=task.name,
        source=task.source,
        target=task.target,
        backbone=backbone_label(parts.configs.backbone),
        seed=cfg.seed,
        target_acc=accuracy(tgt.logits, tgt.labels),
        source_acc=accuracy(src.logits, src.labels) if src is not None else None,
        per_class_acc=dict(zip(task.class_names, per_class, strict=True)),
        epochs=trainer.epoch,
        steps=trainer.step,
        train_seconds=round(trainer.train_seconds, 3),
        images_per_second=round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 1),
        precision=rt.precision,
        selection=trainer.selection,
        validators=score_all(data),  # label-free scores of the reported weights
        validator_best_epoch=best_epochs(trainer.history),
        selected=selected_epochs(trainer.history, list(VALIDATORS)),  # analysis only
        oracle=oracle(trainer.history),  # analysis only (target labels); chooses nothing
        splits={name: len(getattr(task, name)) for name in read if getattr(task, name) is not None},
        collapse=ev.monitor.collapse,
        device=rt.device.type,
        skipped_files=task.skipped_files,
        init=init_path,
        world_size=rt.world,
        budget=task.notes.get("budget"),  # inductive: the labelled train / val splits and the test set
        metric=task.notes.get("metric", "accuracy"),
        mean_class_acc=sum(present) / len(present) if present else None,
        versions=versions(),
        git_commit=git_commit(),
        config=resolved,
    )
    return record, tgt, src, data


def summary(results: dict[str, Any], run_dir: str) -> str:
    """The run's closing lines: the task as trained, the reported epoch and how it was chosen, the accuracies
    named for what they measured, the run folder and its report."""
    r = results
    budget = r.get("budget")
    if budget:  # inductive: trained on a labelled budget of the target itself
        task = f"{r['dataset']} {r['target']} ({budget_line(budget)})"
    else:
        task = f"{r['dataset']} {r['source']}->{r['target']}"
    sel = r.get("selection") or {}
    rule = sel.get("rule", "last")
    chosen = f"epoch {sel.get('epoch', r.get('epochs'))}/{r.get('epochs')}" + ("" if rule == "last" else f" by {rule}")
    report = os.path.join(run_dir, "report.html")
    return (
        f"{r['method']} on {task} ({r['backbone']}, seed {r['seed']}, {r.get('steps', '?')} steps, "
        f"{r.get('train_seconds', 0):.0f}s), reported weights: {chosen}: {source_acc_name(r)} {_pct(r['source_acc'])}, "
        f"{_target(r)} (target test split){_baseline_note(r, run_dir)}\nrun folder: {run_dir}"
        + (f"\nreport: {report}" if os.path.isfile(report) else "")
    )


def _target(r: dict[str, Any]) -> str:
    """The target accuracy in the dataset's headline metric (VisDA-2017: mean per-class, overall beside it)."""
    acc = headline_acc(r)
    if acc is r["target_acc"]:  # the overall accuracy is the headline
        return f"target acc {_pct(acc)}"
    return f"target mean per-class acc {_pct(acc)} (overall {_pct(r['target_acc'])})"


def find_baseline(results: dict[str, Any], run_dir: str) -> tuple[dict[str, Any], str] | None:
    """A source_only run comparable with ``results``: the one ``init`` names (the model the run started from), else
    one whose config is equal but for the method keys (the same dataset config, backbone, seed, trainer budget,
    ...), found in a sibling run folder (a multirun sweep) or in
    ``../../source_only/*`` (the default ``outputs/`` layout). Of several, the first by folder path: the line
    does not depend on which run was written last."""
    if results.get("method") == "source_only":
        return None
    started_from = _init_run(results)
    if started_from is not None:
        return started_from
    parent = os.path.dirname(os.path.abspath(run_dir))
    candidates = glob.glob(os.path.join(parent, "*", "results.json"))
    candidates += glob.glob(os.path.join(os.path.dirname(parent), "source_only", "*", "results.json"))
    wanted = _without_method(results.get("config") or {})
    same = ("dataset", "source", "target", "backbone", "seed", "epochs")
    for path in sorted(set(candidates)):
        other = read_json(path)
        if not isinstance(other, dict) or other.get("method") != "source_only" or other.get("target_acc") is None:
            continue
        if all(other.get(k) == results.get(k) for k in same) and not config_differences(
            _without_method(other.get("config") or {}), wanted
        ):
            return other, os.path.dirname(path)
    return None


def _init_run(results: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The finished source_only run folder that ``init`` names (the model a source-free run starts from), if it
    is one: its config differs from the run's in ``init`` itself, so the sibling search never finds it."""
    init = (results.get("config") or {}).get("init")
    if not isinstance(init, str) or not os.path.isdir(init):
        return None
    other = read_json(os.path.join(init, "results.json"))
    if not isinstance(other, dict) or other.get("method") != "source_only" or other.get("target_acc") is None:
        return None
    same = ("dataset", "source", "target", "backbone")
    return (other, os.path.abspath(init)) if all(other.get(k) == results.get(k) for k in same) else None


def _without_method(config: dict[str, Any]) -> dict[str, Any]:
    """A results.json's config for comparing runs of different methods: its fingerprint less ``method``."""
    return {k: v for k, v in fingerprint(config).items() if k != "method"}


def _baseline_note(results: dict[str, Any], run_dir: str) -> str:
    hit = find_baseline(results, run_dir)
    if hit is None:
        return ""
    other, folder = hit
    shown = os.path.relpath(folder)
    return f" (source_only, same task and seed: {_pct(headline_acc(other))}, same config but the method: {shown})"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
