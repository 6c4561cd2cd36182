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
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            self.best = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "method": state}
        return {"val_acc": val_acc, "val_loss": val_loss}

    def should_stop(self, epoch: int) -> bool:
        return self.patience is not None and self.best is not None and epoch - self.best["epoch"] >= self.patience

    @property
    def rule(self) -> str:
        return "last" if self.best is None else f"val_acc (best epoch {self.best['epoch']})"
