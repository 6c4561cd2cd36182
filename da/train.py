"""The shared trainer: a readable loop over epochs and steps. Its parts live beside it:

- :mod:`da.checkpoint`: checkpoint.pt / model.pt I/O and the RNG states that make a resumed run exact;
- :mod:`da.runlog`: log.csv, TensorBoard, the progress bar / per-epoch lines;
- :mod:`da.selection`: which weights are reported (early stopping on an inductive task's validation split);
- :mod:`da.validators`: the label-free scores logged for every epoch;
- :mod:`da.data.batches`: the batched data path (batches drawn by index from in-memory tensors, transformed
  as a batch, on the device when the data fit there).

The loop does no idle work: the losses of each step stay on the device and are read every
``trainer.log_every`` steps (one host sync), where the progress bar advances and non-finite losses are caught
(before any checkpoint or result is written); a method reads no batch of a domain it does not use.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from da import checkpoint, distributed
from da.checkpoint import read_resumable
from da.data.base import Task, forever, make_loader
from da.data.batches import TensorSplit, batches, resolve
from da.errors import ConfigError
from da.evaluate import Predictions, accuracy, predict
from da.methods.base import EpochContext, Method
from da.monitor import CollapseMonitor
from da.runlog import MetricLog, Progress
from da.selection import EarlyStopping, LabelFreeSelection
from da.validators import ValidationData, score_all

LR_SCHEDULES = ("dann", "cosine", "constant")
DATA_ON_DEVICE = ("auto", "true", "false")
DEVICE_MEMORY_FRACTION = 0.5  # data_on_device=auto: the data move to the accelerator if they take at most this
COMPILE_BACKEND = "inductor"  # torch.compile's backend for trainer.compile=true (tests use "aot_eager")


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code that uses the global RNG
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (``trainer.deterministic``): torch raises on an op that has no deterministic version."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on  # autotuned convolutions when exact reruns are not asked for


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


def make_sgd(groups: list[dict], cfg: TrainerConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum over ``groups``; torch's fused kernel (one pass over every parameter per step) on the
    CPU and CUDA, where torch has one: 1.1-1.25x faster LeNet steps on 2 CPU cores than the per-tensor loop,
    with the same update up to float rounding."""
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.SGD(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or parameters it cannot fuse
            pass
    return torch.optim.SGD(groups, **kwargs)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16, Linux's /proc/cpuinfo flags).
    There CPU autocast runs LeNet's training step 1.4x faster than float32; elsewhere oneDNN emulates bfloat16
    and is slower than float32, so mixed precision stays off."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open("/proc/cpuinfo") as fh:
                flags = set(next((line for line in fh if line.startswith("flags")), "").split())
        except OSError:
            flags = set()
        _CPU_BF16 = bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
    return _CPU_BF16


_CPU_BF16: bool | None = None


def amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.amp`` on ``device``; None: float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return None


def _to(batch, device: torch.device):
    return tuple(b.to(device, non_blocking=True) if isinstance(b, torch.Tensor) else b for b in batch)


def _images_first(batch, channels_last: bool):
    """A batch with its images in channels-last memory format when the model is (4-D images only)."""
    x = batch[0]
    if channels_last and x.dim() == 4:
        return (x.contiguous(memory_format=torch.channels_last), *batch[1:])
    return batch


def same_images(a: TensorSplit, b: TensorSplit) -> bool:
    """Whether two splits hold the same images under the same transform (their predictions are equal)."""
    return a.x is b.x and a.transform is b.transform and len(a) == len(b)


def has_conv(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def place_splits(
    splits: dict[str, TensorSplit | None], device: torch.device, mode: str
) -> tuple[dict[str, TensorSplit | None], str]:
    """The splits on ``device`` (``trainer.data_on_device``), and where their images live: on an accelerator
    they move there when they fit (``auto``: at most half its free memory), else stay in pinned host memory and
    are copied a batch at a time. Views sharing one image tensor (a folder's training and evaluation views)
    share it on the device too."""
    present = {k: v for k, v in splits.items() if v is not None}
    if device.type == "cpu" or not present:
        return splits, "host"
    unique = {id(s.x): s.nbytes for s in present.values()}
    total = sum(unique.values())
    resident = mode == "true"
    if mode == "auto":
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        resident = device.type != "cuda" or total <= DEVICE_MEMORY_FRACTION * free
    moved: dict[int, torch.Tensor] = {}
    out: dict[str, TensorSplit | None] = dict(splits)
    for key, split in present.items():
        if id(split.x) not in moved:
            if resident:
                moved[id(split.x)] = split.to(device).x
            else:  # host memory (pinned for CUDA's asynchronous copies); batches are copied as they are drawn
                moved[id(split.x)] = split.to(device, pin=True).x if device.type == "cuda" else split.x
        labels = split.labels.to(device) if resident and split.labels is not None else split.labels
        out[key] = TensorSplit(moved[id(split.x)], labels, split.transform)
    return out, ("device" if resident else "pinned host" if device.type == "cuda" else "host")


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


class Trainer:
    """Runs ``method`` on ``task`` for ``cfg.epochs`` epochs, writing checkpoint.pt and log.csv to ``run_dir``.

    ``resume_state``: a checkpoint already read (and checked) by the caller; otherwise, with ``cfg.resume``,
    the trainer reads ``<run_dir>/checkpoint.pt`` itself.
    """

    def __init__(
        self,
        cfg: TrainerConfig,
        method: Method,
        task: Task,
        run_dir: str,
        device: torch.device,
        seed: int,
        config_signature: dict | None = None,
        resume_state: dict | None = None,
        selection: str = "last",
    ) -> None:
        self.cfg, self.method, self.task, self.run_dir = cfg, method, task, run_dir
        self.device, self.seed = device, seed
        self.signature = config_signature or {}
        self.resume_state = resume_state
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.main = self.rank == 0  # the process that writes the run folder
        if self.world > 1 and cfg.sync_bn:
            if device.type != "cuda":
                raise ConfigError("trainer.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on the CPU")
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # replaces the BatchNorm layers in place
        self.method.to(device)
        self.optimizer = make_sgd(method.param_groups(cfg.lr), cfg, device)
        self.amp_dtype = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.channels_last = cfg.channels_last and has_conv(method)  # the model's and the batches' format
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if cfg.compile:
            self.method.model.compile(backend=COMPILE_BACKEND)  # in place: state_dict keys stay the same
        self.ddp = None  # under torchrun: the method wrapped in DistributedDataParallel (its forward is a step)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(method, device_ids=ids, output_device=ids[0] if ids else None)
            torch.manual_seed(seed + 1_000_003 * self.rank)  # each rank its own dropout masks and augmentations
        self.splits, self.data_placement = place_splits(
            {
                "source_train": resolve(task.source_train),
                "target_train": resolve(task.target_train),
                "target_train_eval": resolve(task.target_train_eval),
                "target_test": resolve(task.target_test),
                "source_val": resolve(task.source_val) if method.uses_source else None,
            },
            device,
            cfg.data_on_device,
        )
        self._target_train_pred: tuple[int, Any] | None = None  # (step, predictions): one forward per set of weights
        # One pass over the larger training domain; a transductive method that reads no target batch (source
        # only) still counts the target, so every method of a task trains the same number of steps.
        counts_target = method.uses_target or (method.kind == "transductive" and method.uses_source)
        used = ((task.source_train, method.uses_source), (task.target_train, counts_target))
        longest = max([len(d) for d, on in used if on] or [cfg.batch_size])  # type: ignore[arg-type]
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, longest // (cfg.batch_size * self.world))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps completed
        self.train_seconds = 0.0
        self.images_seen = 0
        self.log = MetricLog(run_dir, cfg.tensorboard and self.main, write=self.main)
        self.early_stopping = EarlyStopping(method.patience) if task.val is not None else None
        self.label_free = LabelFreeSelection(selection)
        self.stopped = False  # early stopping ended the run before cfg.epochs
        self.monitor = CollapseMonitor(cfg.collapse_fraction)  # label-free: predictions on the unlabelled target
        self.checkpoint_path = os.path.join(run_dir, checkpoint.CHECKPOINT)

    @property
    def history(self) -> list[dict[str, float]]:
        return self.log.rows

    @property
    def selection(self) -> dict[str, Any]:
        """How the reported weights were chosen (results.json ``selection``): {rule, epoch, score}."""
        if self.early_stopping is not None and self.early_stopping.best is not None:
            best = self.early_stopping.best
            return {"rule": "val_acc", "epoch": best["epoch"], "score": best["val_acc"]}
        if self.label_free.best is not None:
            best = self.label_free.best
            return {"rule": self.label_free.rule, "epoch": best["epoch"], "score": best["score"]}
        return {"rule": "last", "epoch": self.epoch, "score": None}

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
            "best": self.early_stopping.best if self.early_stopping is not None else None,
            "selected": self.label_free.best,
            "stopped": self.stopped,
            "monitor": self.monitor.state_dict(),
            "signature": self.signature,
            "rng": checkpoint.rng_state(),
            "world_size": self.world,
            "rng_per_rank": distributed.gather_objects(checkpoint.rng_state()) if self.world > 1 else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.log.rows = list(state["history"])
        if self.early_stopping is not None:
            self.early_stopping.best = state.get("best")
        self.stopped = state.get("stopped", False)
        self.label_free.best = state.get("selected")
        self.monitor.load_state_dict(state.get("monitor"))
        per_rank = state.get("rng_per_rank")
        if self.world > 1 and per_rank and len(per_rank) == self.world:
            checkpoint.set_rng_state(per_rank[self.rank])  # each rank continues its own random stream
        else:
            checkpoint.set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        state = self.state_dict()  # on every rank: it gathers the ranks' random states
        if self.main:
            checkpoint.save(state, self.checkpoint_path)

    def try_resume(self) -> bool:
        """Continue from the checkpoint in the run folder (or the one handed in); refuse another config's."""
        state = self.resume_state
        if state is None and self.cfg.resume:
            state = read_resumable(self.run_dir, self.signature)
        if state is None:
            return False
        self.load_state_dict(state)
        self.resume_state = None
        return True

    # ------------------------------------------------------------------ one epoch
    def evaluate(self) -> dict[str, float]:
        """Test accuracies (curves only: they choose nothing), the label-free scores of this epoch's model and
        the collapse monitor's statistics, with one forward pass over each split.

        The validators and the monitor read the unlabelled target training split under the evaluation
        transform; when the target test split is the same images (a folder task's transductive protocol), its
        accuracy comes from that same forward pass. The source accuracy curve is measured on the held-out
        source validation split the validators read when the run has one (``source_val`` > 0), else on the
        source test split; results.json's ``source_acc`` is always the source test split's. A source-free
        method is not evaluated on source images.
        """
        data = self.validation_data()
        tgt = self.target_test_predictions()
        out = {"target_acc": accuracy(tgt.logits, tgt.labels)}
        if self.method.uses_source:
            if data.has_source:
                out["source_acc"] = accuracy(data.logits_s, data.labels_s)
            else:
                src = self.predict(self.task.source_test)
                out["source_acc"] = accuracy(src.logits, src.labels)
        out.update({f"{k}_score": v for k, v in score_all(data).items()})
        out.update(self.monitor.update(self.epoch, data.logits_t))
        return out

    def target_test_predictions(self):
        """Predictions on the target test split: those of the target training split when both are the same
        images under the same transform, else a forward pass of their own."""
        test, train = self.splits["target_test"], self.splits["target_train_eval"]
        if test is not None and train is not None and test.labels is not None and same_images(test, train):
            pred = self.predict_target_train()
            return Predictions(pred.logits, pred.features, test.labels.cpu())
        return self.predict(self.task.target_test)

    def validation_data(self) -> ValidationData:
        """Predictions the label-free validators read: the unlabelled target training split (evaluation
        transform) and, for a method that uses source data, the labelled source validation split. Training's
        random stream is left untouched (a DataLoader draws a seed from the global RNG)."""
        with torch.random.fork_rng(devices=[]):
            tgt = self.predict_target_train()
            src_val = self.splits["source_val"] or (self.task.source_val if self.method.uses_source else None)
            src = self.predict(src_val) if src_val is not None and len(src_val) else None
        if src is None:
            return ValidationData(tgt.logits, tgt.features)
        return ValidationData(tgt.logits, tgt.features, src.logits, src.features, src.labels)

    def predict_target_train(self):
        """Predictions on the unlabelled target training split (evaluation transform) of the current weights,
        leaving training's random stream untouched. Computed once per set of weights: the end-of-epoch
        validators and monitor, and the next epoch's pseudo-labelling (same weights), share one forward pass."""
        if self._target_train_pred is None or self._target_train_pred[0] != self.step:
            split = self.splits["target_train_eval"] or self.task.target_train_eval
            with torch.random.fork_rng(devices=[]):
                pred = self.predict(split)
            self._target_train_pred = (self.step, pred)
        return self._target_train_pred[1]

    def predict(self, dataset):
        """Predictions over a whole split; under torchrun each rank predicts a contiguous shard and every rank
        receives all of them, in order (each image predicted once)."""
        if self.world == 1:
            return predict(self.method, dataset, self.device, self.cfg.eval_batch_size, self.amp_dtype)
        return distributed.predict_sharded(self.method, dataset, self.device, self.cfg.eval_batch_size, self.amp_dtype)

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

    def _batches(self, epoch: int):
        """Endless batch streams of the source and the target, seeded by (seed, epoch), so a resumed run draws
        the same batches as an uninterrupted one; None for a domain the method does not read."""
        s = self.seed * 100_003 + epoch
        src = self._stream("source_train", 2 * s) if self.method.uses_source else None
        tgt = self._stream("target_train", 2 * s + 1) if self.method.uses_target else None
        return src, tgt

    def _stream(self, key: str, seed: int):
        bs, workers, split = self.cfg.batch_size, self.cfg.num_workers, self.splits[key]
        if split is not None and (workers == 0 or self.world > 1):
            return batches(split, bs, seed, self.device, self.rank, self.world)
        loader = make_loader(getattr(self.task, key), bs, True, seed, workers)
        return (_to(b, self.device) for b in forever(loader))

    def train_epoch(self, progress: Progress) -> dict[str, float]:
        start = time.perf_counter()
        ctx = EpochContext(
            self.epoch, self.step / self.total_steps, self.device, self.task.target_train_eval, self.cfg.eval_batch_size
        )
        ctx.cached = self.predict_target_train  # computed once per set of weights
        extra = self.method.on_epoch_start(ctx)
        extra.update(self.pseudo_label_metrics())
        self.method.train()
        src_iter, tgt_iter = self._batches(self.epoch)
        sums: dict[str, float] = {}
        pending: list[torch.Tensor] = []  # per-step losses, still on the device
        keys: list[str] = []
        for i in range(self.steps_per_epoch):
            p = self.step / self.total_steps
            lr = lr_at(self.cfg, p)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_factor", 1.0)
            batch_s = _images_first(next(src_iter), self.channels_last) if src_iter is not None else None
            batch_t = _images_first(next(tgt_iter), self.channels_last) if tgt_iter is not None else None
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                if self.ddp is not None:
                    out = self.ddp(batch_s, batch_t, p)  # DistributedDataParallel: gradients averaged over ranks
                else:
                    out = self.method.training_step(batch_s, batch_t, p)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.step += 1
            self.images_seen += self.world * sum(len(b[0]) for b in (batch_s, batch_t) if b is not None)
            if list(out) != keys:
                self._read_losses(pending, keys, sums, progress)
                keys = list(out)
            pending.append(torch.stack([out[k].detach().float() for k in keys]))  # (K,), no host sync
            if len(pending) == self.cfg.log_every or i == self.steps_per_epoch - 1:
                self._read_losses(pending, keys, sums, progress)
        self.train_seconds += time.perf_counter() - start
        row = {k: v / self.steps_per_epoch for k, v in sums.items()}
        row["lr"] = lr
        row.update(extra)
        return row

    def _read_losses(
        self, pending: list[torch.Tensor], keys: list[str], sums: dict[str, float], progress: Progress
    ) -> None:
        """Read the losses of the last steps from the device (one sync), stop on a non-finite loss, add them to
        the epoch's sums, TensorBoard and the progress bar. Empties ``pending``."""
        if not pending:
            return
        stacked = torch.stack(pending)  # (n, K)
        if self.world > 1:  # the mean over the ranks: every rank logs and stops alike
            stacked = distributed.all_reduce_sum(stacked) / self.world
        rows = stacked.cpu().tolist()  # (n, K) floats
        first = self.step - len(pending)  # steps completed before the first of them
        loss_col = keys.index("loss")
        for j, values in enumerate(rows):
            if not math.isfinite(values[loss_col]):
                raise FloatingPointError(f"loss became {values[loss_col]} at step {first + j}; {self._kept()}")
        for j, values in enumerate(rows):
            named = dict(zip(keys, values, strict=True))
            for k, v in named.items():
                sums[k] = sums.get(k, 0.0) + v
            self.log.step(first + j + 1, named)
        progress.step(len(rows), rows[-1][loss_col])
        pending.clear()

    def _kept(self) -> str:
        """What survives a divergence: the last checkpoint, if one was written."""
        kept = (
            f"the checkpoint of epoch {self.epoch} is kept in {self.run_dir}"
            if self.epoch
            else "no checkpoint was written"
        )
        return f"lower trainer.lr (now {self.cfg.lr}); {kept}"

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs; evaluate, log and checkpoint after each one."""
        resumed = self.try_resume()
        show = self.cfg.progress_bar and self.main
        progress = Progress(show, self.total_steps, self.step, self.method.cfg.name, self.cfg.epochs)
        if resumed:
            progress.message(f"resumed from {self.checkpoint_path} after epoch {self.epoch}")
        elif self.epoch == 0:
            self.monitor.start(self.predict_target_train().logits)  # the starting model's class marginal
        try:
            while self.epoch < self.cfg.epochs and not self.stopped:
                row = self.train_epoch(progress)
                if not all_finite(self.method):  # a finite loss can still take a step to non-finite weights
                    raise FloatingPointError(f"the weights became non-finite in epoch {self.epoch + 1}; {self._kept()}")
                self.epoch += 1
                metrics = self.evaluate()
                if self.early_stopping is not None:
                    val = self.predict(self.task.val)
                    metrics.update(self.early_stopping.update(self.epoch, val.logits, val.labels, self.method))
                    self.stopped = self.early_stopping.should_stop(self.epoch)
                self.label_free.update(self.epoch, metrics, self.method)
                row = {"epoch": self.epoch, "step": self.step, **row, **metrics}
                self.log.append({**row, "train_seconds": round(self.train_seconds, 3)})
                self.save_checkpoint()
                shown = {"loss": row["loss"], "src": metrics.get("source_acc"), "tgt": metrics.get("target_acc")}
                progress.epoch_end(self.epoch, self.step, shown)
        finally:
            progress.close()
            self.log.close()
        best = self.early_stopping.best if self.early_stopping is not None else self.label_free.best
        if best is not None:  # report the chosen epoch's weights, not the last
            self.method.load_state_dict(best["method"])
            self._target_train_pred = None  # predictions of other weights
        return self.history
