"""Epoch-end listeners: what happens around the training loop without being part of it.

The loop (:class:`da.train.Trainer`) calls every listener at the start and end of a fit and at the end of each
epoch, in order. The built-in ones choose the reported weights (:class:`Selection`), write log.csv and the
progress line (:class:`Logging`) and the checkpoint (:class:`Checkpointing`); ``da.fit(cfg, callbacks=[...])``
appends a user's own after them (e.g. ``benchmarks/throughput.py``'s timer). A listener reads the trainer's
public attributes (``epoch``, ``step``, ``method``, ``evaluator``, ``history``); it must not change what a run
computes — keys a listener adds to an epoch's row are logged, and nothing else it does reaches the weights.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from da import checkpoint
from da.selection import EarlyStopping, LabelFreeSelection

if TYPE_CHECKING:
    from da.train import Trainer


class Callback:
    """A listener of the training loop; every hook is optional."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch still to train (after a resume: the checkpoint is loaded)."""

    def on_train_epoch_end(self, trainer: Trainer) -> None:
        """After an epoch's optimisation steps, before its evaluation."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After an epoch's evaluation; ``row`` is its log.csv row (a listener may add columns)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch (also when the fit stops early, not when it fails)."""


class Selection(Callback):
    """Which weights are reported: early stopping on an inductive task's labelled validation split, or a
    label-free validator's best epoch (``selection=<validator>``), else the last epoch."""

    def __init__(self, rule: str, patience: int | None, has_val: bool) -> None:
        self.early_stopping = EarlyStopping(patience) if has_val else None
        self.label_free = LabelFreeSelection(rule)
        self.stopped = False  # early stopping ended the run before trainer.epochs

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.early_stopping is not None:
            val = trainer.evaluator.predict(trainer.task.val)
            row.update(self.early_stopping.update(trainer.epoch, val.logits, val.labels, trainer.method))
            self.stopped = self.early_stopping.should_stop(trainer.epoch)
        self.label_free.update(trainer.epoch, row, trainer.method)

    def on_fit_end(self, trainer: Trainer) -> None:
        best = self.early_stopping.best if self.early_stopping is not None else self.label_free.best
        if best is not None:  # report the chosen epoch's weights, not the last
            trainer.method.load_state_dict(best["method"])
            trainer.evaluator.invalidate()  # predictions of other weights

    def summary(self, last_epoch: int) -> dict[str, Any]:
        """How the reported weights were chosen (results.json ``selection``): {rule, epoch, score}."""
        if self.early_stopping is not None and self.early_stopping.best is not None:
            best = self.early_stopping.best
            return {"rule": "val_acc", "epoch": best["epoch"], "score": best["val_acc"]}
        if self.label_free.best is not None:
            best = self.label_free.best
            return {"rule": self.label_free.rule, "epoch": best["epoch"], "score": best["score"]}
        return {"rule": "last", "epoch": last_epoch, "score": None}

    def state_dict(self) -> dict[str, Any]:
        es = self.early_stopping
        return {"best": es.best if es is not None else None, "selected": self.label_free.best, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.early_stopping is not None:
            self.early_stopping.best = state.get("best")
        self.stopped = state.get("stopped", False)
        self.label_free.best = state.get("selected")


class Logging(Callback):
    """log.csv's row of each epoch and the progress bar's epoch line."""

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        trainer.log.append({**row, "train_seconds": round(trainer.train_seconds, 3)})
        shown = {"loss": row.get("loss"), "src": row.get("source_acc"), "tgt": row.get("target_acc")}
        trainer.progress.epoch_end(trainer.epoch, trainer.step, shown)


class Checkpointing(Callback):
    """checkpoint.pt after each epoch (rank 0 writes it; every rank contributes its random state)."""

    def __init__(self, run_dir: str) -> None:
        self.path = os.path.join(run_dir, checkpoint.CHECKPOINT)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        state = trainer.state_dict()  # on every rank: it gathers the ranks' random states
        if trainer.runtime.main:
            checkpoint.save(state, self.path)
