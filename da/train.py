"""The shared trainer: optimiser, LR schedule, AMP, per-epoch evaluation, checkpoints, resume and log.csv."""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from da.data.base import Task, forever, make_loader
from da.errors import ConfigError
from da.evaluate import accuracy, predict
from da.methods.base import EpochContext, Method

LR_SCHEDULES = ("dann", "cosine", "constant")


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
    amp: bool = True  # mixed precision, CUDA only
    num_workers: int = 0
    eval_batch_size: int = 256
    progress_bar: bool = True
    resume: bool = True  # continue from checkpoint.pt when the run folder already holds one

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(self, key)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"trainer.steps_per_epoch must be >= 1 or null, got {self.steps_per_epoch}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"trainer.lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0 or self.num_workers < 0:
            raise ConfigError("trainer.weight_decay and trainer.num_workers must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown trainer.lr_schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")


def lr_at(cfg: TrainerConfig, progress: float) -> float:
    """Learning rate at training progress p in [0, 1]."""
    if cfg.lr_schedule == "dann":
        return cfg.lr / (1.0 + cfg.lr_gamma * progress) ** cfg.lr_decay
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code that uses the global RNG
    torch.manual_seed(seed)


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err


def _to(batch, device: torch.device):
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


class Trainer:
    """Runs ``method`` on ``task`` for ``cfg.epochs`` epochs, writing checkpoint.pt and log.csv to ``run_dir``."""

    def __init__(
        self,
        cfg: TrainerConfig,
        method: Method,
        task: Task,
        run_dir: str,
        device: torch.device,
        seed: int,
        config_signature: dict | None = None,
    ) -> None:
        self.cfg, self.method, self.task, self.run_dir = cfg, method, task, run_dir
        self.device, self.seed = device, seed
        self.signature = config_signature or {}
        self.method.to(device)
        self.optimizer = torch.optim.SGD(
            method.param_groups(cfg.lr),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
        self.amp_dtype = None
        if cfg.amp and device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        sizes = [
            len(d)
            for d, used in ((task.source_train, method.uses_source), (task.target_train, method.uses_target))
            if used
        ]  # type: ignore[arg-type]
        longest = max(sizes or [cfg.batch_size])
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, longest // cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps completed
        self.train_seconds = 0.0
        self.images_seen = 0
        self.history: list[dict[str, float]] = []
        self.best: dict | None = None  # early stopping on task.val: {"epoch", "val_acc", "method" (state)}
        self.stopped = False  # early stopping ended the run before cfg.epochs
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
        self.log_path = os.path.join(run_dir, "log.csv")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "history": self.history,
            "best": self.best,
            "stopped": self.stopped,
            "signature": self.signature,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),  # noqa: NPY002 - the global RNG, restored on resume
                "python": random.getstate(),
            },
        }

    def save_checkpoint(self) -> None:
        tmp = self.checkpoint_path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.checkpoint_path)  # atomic: an interrupted save never corrupts the last one

    def try_resume(self) -> bool:
        """Load checkpoint.pt from the run folder if it exists; refuse one written for another config."""
        if not (self.cfg.resume and os.path.isfile(self.checkpoint_path)):
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        saved = state.get("signature", {})
        differs = sorted(k for k in set(saved) | set(self.signature) if saved.get(k) != self.signature.get(k))
        if differs:
            raise ConfigError(
                f"{self.checkpoint_path} was written by a run with a different config ({', '.join(differs)}); "
                "use another run folder or trainer.resume=false"
            )
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.history = state["history"]
        self.best, self.stopped = state.get("best"), state.get("stopped", False)
        torch.set_rng_state(state["rng"]["torch"].cpu())
        np.random.set_state(state["rng"]["numpy"])  # noqa: NPY002
        random.setstate(state["rng"]["python"])
        return True

    # ------------------------------------------------------------------ training
    def evaluate(self) -> dict[str, float]:
        """Test accuracies; a source-free method is not evaluated on source images either."""
        bs = self.cfg.eval_batch_size
        tgt = predict(self.method, self.task.target_test, self.device, bs)
        out = {"target_acc": accuracy(tgt.logits, tgt.labels)}
        if self.method.uses_source:
            src = predict(self.method, self.task.source_test, self.device, bs)
            out["source_acc"] = accuracy(src.logits, src.labels)
        return out

    def pseudo_label_metrics(self) -> dict[str, float]:
        """Coverage of the method's pseudo-labels and (analysis only) their accuracy on the hidden labels."""
        pl, truth = self.method.pseudo_labels, self.task.target_train_labels
        if pl is None:
            return {}
        kept = pl >= 0
        out = {"pl_coverage": kept.float().mean().item()}
        if truth is not None and kept.any():
            out["pl_acc"] = (pl[kept].cpu() == truth[kept.cpu()]).float().mean().item()
        return out

    def _loaders(self, epoch: int):
        """Loaders seeded by (seed, epoch), so a resumed run draws the same batches as an uninterrupted one."""
        bs, workers = self.cfg.batch_size, self.cfg.num_workers
        s = self.seed * 100_003 + epoch
        src = (
            forever(make_loader(self.task.source_train, bs, True, 2 * s, workers)) if self.method.uses_source else None
        )
        tgt = (
            forever(make_loader(self.task.target_train, bs, True, 2 * s + 1, workers))
            if self.method.uses_target
            else None
        )
        return src, tgt

    def train_epoch(self, bar: tqdm | None) -> dict[str, float]:
        start = time.perf_counter()
        ctx = EpochContext(
            self.epoch, self.step / self.total_steps, self.device, self.task.target_train, self.cfg.eval_batch_size
        )
        extra = self.method.on_epoch_start(ctx)
        extra.update(self.pseudo_label_metrics())
        self.method.train()
        src_iter, tgt_iter = self._loaders(self.epoch)
        sums: dict[str, float] = {}
        for _ in range(self.steps_per_epoch):
            progress = self.step / self.total_steps
            lr = lr_at(self.cfg, progress)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_factor", 1.0)
            batch_s = _to(next(src_iter), self.device) if src_iter is not None else None
            batch_t = _to(next(tgt_iter), self.device) if tgt_iter is not None else None
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                out = self.method.training_step(batch_s, batch_t, progress)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at step {self.step} (epoch {self.epoch + 1}); "
                    f"lower trainer.lr (now {self.cfg.lr}); the last checkpoint is kept in {self.run_dir}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.images_seen += sum(len(b[0]) for b in (batch_s, batch_t) if b is not None)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        self.train_seconds += time.perf_counter() - start
        row = {k: v / self.steps_per_epoch for k, v in sums.items()}
        row["lr"] = lr
        row.update(extra)
        return row

    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs; evaluate, log and checkpoint after each one."""
        resumed = self.try_resume()
        bar = None
        if self.cfg.progress_bar:
            bar = tqdm(
                total=self.total_steps,
                initial=self.step,
                desc=f"{self.method.cfg.name}",
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
            if resumed:
                bar.write(f"resumed from {self.checkpoint_path} after epoch {self.epoch}")
        while self.epoch < self.cfg.epochs and not self.stopped:
            row = self.train_epoch(bar)
            self.epoch += 1
            metrics = self.evaluate()  # logged for curves only; never used to choose a checkpoint
            if self.task.val is not None:
                metrics.update(self.early_stopping())
            self.history.append(
                {
                    "epoch": self.epoch,
                    "step": self.step,
                    **row,
                    **metrics,
                    "train_seconds": round(self.train_seconds, 3),
                }
            )
            self.write_log()
            self.save_checkpoint()
            if bar is not None:
                shown = {"src": metrics.get("source_acc"), "tgt": metrics.get("target_acc")}  # no src: source-free
                bar.set_postfix(loss=f"{row['loss']:.3f}", **{k: f"{v:.3f}" for k, v in shown.items() if v is not None})
        if bar is not None:
            bar.close()
        if self.best is not None:  # report the best validation epoch, not the last
            self.method.load_state_dict(self.best["method"])
        return self.history

    @property
    def selection(self) -> str:
        """How the reported weights were chosen (results.json ``selection``)."""
        return "last" if self.best is None else f"val_acc (best epoch {self.best['epoch']})"

    def early_stopping(self) -> dict[str, float]:
        """Accuracy and loss on the labelled validation split (part of an inductive task's label budget): keeps
        the best weights (higher accuracy, ties broken by lower loss, as a few validation images tie often) and
        sets ``stopped`` after ``method.patience`` epochs without improvement."""
        val = predict(self.method, self.task.val, self.device, self.cfg.eval_batch_size)
        val_acc = accuracy(val.logits, val.labels)
        val_loss = torch.nn.functional.cross_entropy(val.logits, val.labels).item()
        best = self.best
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            state = {k: v.detach().cpu().clone() for k, v in self.method.state_dict().items()}
            self.best = {"epoch": self.epoch, "val_acc": val_acc, "val_loss": val_loss, "method": state}
        patience = self.method.patience
        self.stopped = patience is not None and self.epoch - self.best["epoch"] >= patience
        return {"val_acc": val_acc, "val_loss": val_loss}

    def write_log(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        with open(self.log_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
