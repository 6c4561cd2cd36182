"""``fit(cfg)``: the one function the CLI and notebooks call to run an experiment end to end."""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from da.backbones import BackboneConfig, build_model
from da.config import check_top_level, to_dataclass
from da.data import DATASETS, build_task
from da.evaluate import accuracy, per_class_accuracy, predict
from da.methods import METHODS, Method, MethodConfig
from da.stages import load_model, resolve_init
from da.train import TrainerConfig, seed_everything, select_device
from da.validators import ValidatedTrainer, best_epochs, epoch_scores

RESULT_KEYS = (
    "method",
    "dataset",
    "source",
    "target",
    "backbone",
    "seed",
    "target_acc",
    "source_acc",
    "per_class_acc",
    "epochs",
    "steps",
    "train_seconds",
    "images_per_second",
    "selection",
    "validators",
    "versions",
    "git_commit",
    "config",
)


def default_run_dir(cfg: DictConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = cfg.dataset
    return os.path.join("outputs", f"{d.name}", f"{d.source}_to_{d.target}", cfg.method.name, f"seed{cfg.seed}_{stamp}")


def versions() -> dict[str, str]:
    import hydra
    import numpy
    import sklearn
    import torchvision

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "hydra": hydra.__version__,
    }
    try:
        from importlib.metadata import version

        out["da"] = version("da")
        out["pytorch-adapt"] = version("pytorch-adapt")
    except Exception:  # metadata is absent when running from an uninstalled checkout
        pass
    return out


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def typed_configs(cfg: DictConfig) -> tuple[type[Method], MethodConfig, Any, BackboneConfig]:
    """The method class and the typed method, dataset and backbone sections of ``cfg`` (unknown keys fail)."""
    method_cls = METHODS.get(cfg.method.name)
    method_cfg = to_dataclass(cfg.method, method_cls.Config, "method")
    dataset_cfg = to_dataclass(cfg.dataset, DATASETS.get(cfg.dataset.name).config, "dataset")
    backbone_cfg = to_dataclass(cfg.backbone, BackboneConfig, "backbone")
    return method_cls, method_cfg, dataset_cfg, backbone_cfg


def fit(cfg: DictConfig, run_dir: str | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train and evaluate the experiment ``cfg`` describes; write the run folder; return results.json's content.

    ``cfg`` is a composed config (``da.compose([...])`` in a notebook, Hydra's in the CLI). A reused
    ``run_dir`` holding a checkpoint of the same config resumes from it.
    """
    check_top_level(cfg)
    method_cls, method_cfg, dataset_cfg, backbone_cfg = typed_configs(cfg)
    trainer_cfg = to_dataclass(cfg.trainer, TrainerConfig, "trainer")
    device = select_device(str(cfg.device))
    resolved = OmegaConf.to_container(cfg, resolve=True)

    run_dir = run_dir or default_run_dir(cfg)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as fh:
        fh.write(OmegaConf.to_yaml(OmegaConf.create(resolved)))

    init_path = resolve_init(cfg, method_cls, run_dir, quiet)  # init=source trains <run_dir>/source_stage first
    seed_everything(cfg.seed)
    data_root = os.path.expanduser(str(cfg.data_root))
    task = build_task(dataset_cfg, cfg.seed, data_root)
    task = method_cls.prepare_task(task, method_cfg, cfg.seed)  # inductive: the labelled target budget
    model = build_model(backbone_cfg, task.num_classes, task.in_channels, task.image_size)
    load_model(model, init_path)  # the whole model from the init checkpoint, if any
    method = method_cls(model, method_cfg, task.num_classes)
    signature = {k: v for k, v in resolved.items() if k != "trainer"}
    signature["trainer"] = {k: v for k, v in resolved["trainer"].items() if k not in ("epochs", "progress_bar")}
    trainer = ValidatedTrainer(trainer_cfg, method, task, run_dir, device, cfg.seed, signature)  # + label-free scores
    trainer.fit()

    tgt = predict(method, task.target_test, device, trainer_cfg.eval_batch_size)
    src = predict(method, task.source_test, device, trainer_cfg.eval_batch_size) if method.uses_source else None
    results: dict[str, Any] = {
        "method": method_cfg.name,
        "dataset": task.name,
        "source": task.source,
        "target": task.target,
        "backbone": backbone_cfg.name,
        "seed": cfg.seed,
        "target_acc": accuracy(tgt.logits, tgt.labels),
        "source_acc": accuracy(src.logits, src.labels) if src is not None else None,
        "per_class_acc": dict(zip(task.class_names, per_class_accuracy(tgt.logits, tgt.labels, task.num_classes))),
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_seconds": round(trainer.train_seconds, 3),
        "images_per_second": round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 1),
        "selection": trainer.selection,
        # label-free scores of the reported weights on the unlabelled target train split (da/validators.py)
        "validators": {
            k.removesuffix("_score"): v
            for k, v in epoch_scores(method, task.target_train, device, trainer_cfg.eval_batch_size).items()
        },
        "validator_best_epoch": best_epochs(trainer.history),  # the epoch each validator would choose
        "versions": versions(),
        "git_commit": git_commit(),
        "config": resolved,
    }
    results["device"] = device.type
    results["skipped_files"] = task.skipped_files
    results["init"] = init_path
    if "budget" in task.notes:  # inductive: sizes of the labelled train / val splits and of the test set
        results["budget"] = task.notes["budget"]
    with open(os.path.join(run_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    if not quiet:
        print(summary(results, run_dir))
    return results


def summary(results: dict[str, Any], run_dir: str) -> str:
    r = results
    return (
        f"{r['method']} on {r['dataset']} {r['source']}->{r['target']} ({r['backbone']}, seed {r['seed']}, "
        f"{r['epochs']} epochs, {r['train_seconds']:.0f}s): source acc {_pct(r['source_acc'])}, "
        f"target acc {_pct(r['target_acc'])}{_baseline_note(r, run_dir)}\nrun folder: {run_dir}"
    )


def find_baseline(results: dict[str, Any], run_dir: str) -> tuple[dict[str, Any], str] | None:
    """The newest source_only results.json for the same task, backbone and seed near ``run_dir``: a sibling run
    folder (a multirun sweep) or ``../../source_only/*`` (the default ``outputs/`` layout)."""
    if results.get("method") == "source_only":
        return None
    parent = os.path.dirname(os.path.abspath(run_dir))
    candidates = glob.glob(os.path.join(parent, "*", "results.json"))
    candidates += glob.glob(os.path.join(os.path.dirname(parent), "source_only", "*", "results.json"))
    same = ("dataset", "source", "target", "backbone", "seed")
    found = []
    for path in set(candidates):
        try:
            with open(path) as fh:
                other = json.load(fh)
        except (OSError, ValueError):
            continue
        comparable = all(other.get(k) == results.get(k) for k in same) and other.get("epochs") == results.get("epochs")
        comparable = comparable and other.get("config", {}).get("dataset") == results["config"].get("dataset")
        if other.get("method") == "source_only" and comparable:
            found.append((os.path.getmtime(path), path, other))
    if not found:
        return None
    _, path, other = max(found, key=lambda item: item[0])
    return other, os.path.dirname(path)


def _baseline_note(results: dict[str, Any], run_dir: str) -> str:
    hit = find_baseline(results, run_dir)
    if hit is None:
        return ""
    other, folder = hit
    return f" (source_only, same task and seed: {_pct(other['target_acc'])}, {os.path.relpath(folder)})"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"
