"""The training loop: epochs of optimisation steps, each epoch evaluated and handed to the listeners.

Everything else lives beside it: :mod:`da.runtime` (device, precision, DDP, where the images live),
:mod:`da.evaluator` (predictions, validators, collapse monitor), :mod:`da.callbacks` (selection, log.csv,
checkpoint.pt, a user's own listeners), :mod:`da.data.batches` (the batched data path). A step is the
method's (:meth:`~da.methods.base.Method.optimization_step`; by default one backward of its named losses).

The loop does no idle work: the losses of each step stay on the device and are read every
``trainer.log_every`` steps (one host sync), where the progress bar advances and non-finite losses are caught
(before any checkpoint or result is written); a method reads no batch of a domain it does not use.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from da import checkpoint, distributed
from da.callbacks import Callback, Checkpointing, Logging, Selection
from da.config import TrainerConfig, lr_at
from da.data.base import Task, forever, make_loader
from da.data.batches import batches
from da.evaluator import Evaluator
from da.methods.base import EpochContext, Method
from da.runlog import MetricLog, Progress
from da.runtime import Runtime, Step


def all_finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if _floating(t))


def _floating(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


class Trainer:
    """Trains ``method`` on ``task`` for ``cfg.epochs`` epochs, writing checkpoint.pt and log.csv to ``run_dir``.

    ``resume_state``: a checkpoint already read (and checked) by the caller. ``callbacks`` listen after the
    built-in selection, log and checkpoint listeners (:mod:`da.callbacks`).
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
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.cfg, self.method, self.task, self.run_dir, self.seed = cfg, method, task, run_dir, seed
        self.signature, self.resume_state = config_signature or {}, resume_state
        self.runtime = Runtime(cfg, device, seed)
        self.optimizers = self.runtime.prepare(method)
        self.evaluator = Evaluator(task, method, self.runtime, cfg.eval_batch_size, cfg.collapse_fraction)
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, method.epoch_length(task) // (cfg.batch_size * self.world))
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.epoch, self.step = 0, 0  # epochs and optimiser steps completed
        self.train_seconds, self.images_seen = 0.0, 0
        self.log = MetricLog(run_dir, cfg.tensorboard and self.runtime.main, write=self.runtime.main)
        self.progress = Progress(False, self.total_steps, 0, method.cfg.name, cfg.epochs)
        self.selector = Selection(selection, method.patience, task.val is not None)
        self.callbacks = [self.selector, Logging(), Checkpointing(run_dir), *(callbacks or [])]

    @property
    def world(self) -> int:
        return self.runtime.world

    @property
    def history(self) -> list[dict[str, float]]:
        return self.log.rows

    @property
    def selection(self) -> dict[str, Any]:
        """How the reported weights were chosen (results.json ``selection``): {rule, epoch, score}."""
        return self.selector.summary(self.epoch)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        opt = [o.state_dict() for o in self.optimizers]
        return {
            "method": self.method.state_dict(),  # with the method's own state (get_extra_state)
            "optimizer": opt[0] if len(opt) == 1 else opt,
            "scaler": self.runtime.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "history": self.history,
            **self.selector.state_dict(),
            "monitor": self.evaluator.monitor.state_dict(),
            "signature": self.signature,
            "rng": checkpoint.rng_state(),
            "world_size": self.world,
            "rng_per_rank": distributed.gather_objects(checkpoint.rng_state()) if self.world > 1 else None,
        }

    def load_state_dict(self, state: dict) -> None:
        state["method"].setdefault("_extra_state", {})  # a checkpoint from before methods kept their own state
        self.method.load_state_dict(state["method"])
        saved = state["optimizer"] if isinstance(state["optimizer"], list) else [state["optimizer"]]
        for opt, opt_state in zip(self.optimizers, saved, strict=True):
            opt.load_state_dict(opt_state)
        self.runtime.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        self.log.rows = list(state["history"])
        self.selector.load_state_dict(state)
        self.evaluator.monitor.load_state_dict(state.get("monitor"))
        per_rank = state.get("rng_per_rank")
        if self.world > 1 and per_rank and len(per_rank) == self.world:
            checkpoint.set_rng_state(per_rank[self.runtime.rank])  # each rank continues its own random stream
        else:
            checkpoint.set_rng_state(state["rng"])

    # ------------------------------------------------------------------ one epoch
    def _streams(self, epoch: int):
        """Endless batch streams of the source and the target, seeded by (seed, epoch), so a resumed run draws
        the same batches as an uninterrupted one; None for a domain the method does not read."""
        s = self.seed * 100_003 + epoch
        src = self._stream("source_train", 2 * s) if self.method.uses_source else None
        tgt = self._stream("target_train", 2 * s + 1) if self.method.uses_target else None
        return src, tgt

    def _stream(self, key: str, seed: int):
        bs, workers, split, rt = self.cfg.batch_size, self.cfg.num_workers, self.evaluator.splits[key], self.runtime
        if split is not None and (workers == 0 or self.world > 1):
            return batches(split, bs, seed, rt.device, rt.rank, self.world)
        loader = make_loader(getattr(self.task, key), bs, True, seed, workers)
        return (tuple(b.to(rt.device, non_blocking=True) for b in batch) for batch in forever(loader))  # tensors

    def train_epoch(self) -> dict[str, float]:
        start = time.perf_counter()
        ev, rt = self.evaluator, self.runtime
        p0 = self.step / self.total_steps
        ctx = EpochContext(self.epoch, p0, rt.device, self.task.target_train_eval, self.cfg.eval_batch_size)
        ctx.cached = ev.predict_target_train  # computed once per set of weights
        extra = self.method.on_epoch_start(ctx)
        extra.update(ev.pseudo_label_metrics())
        self.method.train()
        src_iter, tgt_iter = self._streams(self.epoch)
        step = Step(rt, self.method, self.optimizers)
        sums: dict[str, float] = {}
        pending: list[torch.Tensor] = []  # per-step losses, still on the device
        keys: list[str] = []
        for i in range(self.steps_per_epoch):
            p = self.step / self.total_steps
            lr = lr_at(self.cfg, p)
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_factor", 1.0)
            batch_s = rt.batch(next(src_iter)) if src_iter is not None else None
            batch_t = rt.batch(next(tgt_iter)) if tgt_iter is not None else None
            out = self.method.optimization_step(batch_s, batch_t, p, step)
            self.step += 1
            self.images_seen += self.world * sum(len(b[0]) for b in (batch_s, batch_t) if b is not None)
            if list(out) != keys:
                self._read_losses(pending, keys, sums)
                keys = list(out)
            pending.append(torch.stack([out[k].detach().float() for k in keys]))  # (K,), no host sync
            if len(pending) == self.cfg.log_every or i == self.steps_per_epoch - 1:
                self._read_losses(pending, keys, sums)
        self.train_seconds += time.perf_counter() - start
        ev.invalidate()
        return {**{k: v / self.steps_per_epoch for k, v in sums.items()}, "lr": lr, **extra}

    def _read_losses(self, pending: list[torch.Tensor], keys: list[str], sums: dict[str, float]) -> None:
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
        self.progress.step(len(rows), rows[-1][loss_col])
        pending.clear()

    def _kept(self) -> str:
        """What survives a divergence: the last checkpoint, if one was written."""
        kept = f"the checkpoint of epoch {self.epoch} is kept in {self.run_dir}"
        kept = kept if self.epoch else "no checkpoint was written"
        return f"lower trainer.lr (now {self.cfg.lr}); {kept}"

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[dict[str, float]]:
        """Train the remaining epochs; evaluate each one and hand it to the listeners."""
        state = self.resume_state
        if state is None and self.cfg.resume:
            state = checkpoint.read_resumable(self.run_dir, self.signature)
        resumed, self.resume_state = state is not None, None
        if resumed:
            self.load_state_dict(state)
        show = self.cfg.progress_bar and self.runtime.main
        self.progress = Progress(show, self.total_steps, self.step, self.method.cfg.name, self.cfg.epochs)
        if resumed:
            self.progress.message(
                f"resumed from {os.path.join(self.run_dir, checkpoint.CHECKPOINT)} after epoch {self.epoch}"
            )
        elif self.epoch == 0:
            self.evaluator.monitor.start(self.evaluator.predict_target_train().logits)  # the start's marginal
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while self.epoch < self.cfg.epochs and not self.selector.stopped:
                row = self.train_epoch()
                if not all_finite(self.method):  # a finite loss can still take a step to non-finite weights
                    raise FloatingPointError(f"the weights became non-finite in epoch {self.epoch + 1}; {self._kept()}")
                self.epoch += 1
                for cb in self.callbacks:
                    cb.on_train_epoch_end(self)
                row = {"epoch": self.epoch, "step": self.step, **row, **self.evaluator.evaluate(self.epoch)}
                for cb in self.callbacks:
                    cb.on_epoch_end(self, row)
        finally:
            self.progress.close()
            self.log.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.history
