"""Choosing the reported weights: early stopping on a labelled validation split (inductive tasks).

The trainer reports the last epoch's weights unless a rule here keeps better ones. A rule keeps its best
weights as a CPU copy and is saved in the checkpoint, so a resumed run chooses as an uninterrupted one.
Transductive and unsupervised runs have no labelled target data: only label-free rules may choose for them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from da.evaluate import accuracy


def cpu_copy(state: dict[str, Any]) -> dict[str, Any]:
    """A detached CPU copy of a ``state_dict`` (a method's extra state, a dict of tensors, copied alike)."""
    return {
        k: cpu_copy(v) if isinstance(v, dict) else v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
        for k, v in state.items()
    }


class EarlyStopping:
    """Accuracy and loss on the labelled validation split (part of an inductive task's label budget).

    Keeps the best weights (higher accuracy, ties broken by lower loss, as a few validation images tie often)
    and stops after ``patience`` epochs without improvement (None: never stops, still reports the best epoch).
    """

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best: dict[str, Any] | None = None  # {"epoch", "val_acc", "val_loss", "method" (CPU state)}

    def update(self, epoch: int, logits: torch.Tensor, labels: torch.Tensor, module: nn.Module) -> dict[str, float]:
        val_acc = accuracy(logits, labels)
        val_loss = F.cross_entropy(logits, labels).item()
        best = self.best
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            state = cpu_copy(module.state_dict())
            self.best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "method": state}
        return {"val_acc": val_acc, "val_loss": val_loss}

    def should_stop(self, epoch: int) -> bool:
        return self.patience is not None and self.best is not None and epoch - self.best["epoch"] >= self.patience

    @property
    def rule(self) -> str:
        return "last" if self.best is None else f"val_acc (best epoch {self.best['epoch']})"


class LabelFreeSelection:
    """Keep the weights of the epoch with the best label-free validator score (``selection=<validator>``).

    The score is read from the epoch's metrics (``<rule>_score``, computed on the unlabelled target training
    split); ties go to the later epoch. ``rule="last"`` keeps nothing: the last epoch is reported.
    """

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.best: dict[str, Any] | None = None  # {"epoch", "score", "method" (CPU state)}

    def update(self, epoch: int, metrics: dict[str, float], module: nn.Module) -> None:
        if self.rule == "last":
            return
        value = metrics.get(f"{self.rule}_score")
        if value is None or value != value:  # not computed, or NaN: never chosen
            return
        if self.best is None or value >= self.best["score"]:
            state = cpu_copy(module.state_dict())
            self.best = {"epoch": epoch, "score": value, "method": state}


def selected_epochs(history: list[dict[str, float]], validators: list[str]) -> dict[str, dict[str, float]]:
    """For every validator logged per epoch: the epoch it would choose (ties: the later) and that epoch's target
    accuracy. Analysis only — the accuracy is read after the choice and chooses nothing."""
    out = {}
    for name in validators:
        scored = [(row[f"{name}_score"], row["epoch"], row.get("target_acc")) for row in history if _finite(row, name)]
        if scored:
            score, epoch, acc = max(scored, key=lambda t: (t[0], t[1]))
            out[name] = {"epoch": epoch, "score": score, "target_acc": acc}
    return out


def oracle(history: list[dict[str, float]]) -> dict[str, Any] | None:
    """The epoch with the best target *test* accuracy — for analysis only, never used to choose anything."""
    rows = [r for r in history if r.get("target_acc") is not None]
    if not rows:
        return None
    best = max(rows, key=lambda r: (r["target_acc"], -r["epoch"]))
    return {"epoch": best["epoch"], "target_acc": best["target_acc"], "note": "analysis only: uses target labels"}


def _finite(row: dict[str, float], name: str) -> bool:
    value = row.get(f"{name}_score")
    return isinstance(value, int | float) and value == value and abs(value) != float("inf")
