"""MCD: maximum classifier discrepancy. Saito, Watanabe, Ushiku & Harada, CVPR 2018, arXiv 1712.02560.

Two classifiers F1 (the model's head, which predicts) and F2 on the generator G (backbone + bottleneck), and
three phases per step (the paper's Sec. 3.2, TLlib's ``mcd.py``), each through ``Step.forward`` so precision and
DDP apply: A) G, F1, F2 minimise the source cross-entropy of both heads; B) F1, F2 (G fixed) minimise it minus
trade_off × their discrepancy on the target; C) G alone minimises trade_off × the discrepancy, ``num_k`` times.
The discrepancy is :func:`da.losses.classifier_discrepancy`. Two optimisers: G's and the heads'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from da import losses
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig


@METHODS.register("mcd")
class MCD(Method):
    """Two heads, three phases (source; heads maximise the discrepancy; G minimises it); arXiv 1712.02560."""

    @dataclass
    class Config(MethodConfig):
        # backbone lr = trainer.lr * factor (lenet from scratch: 1; TLlib's pretrained ResNet-50 G: the same lr as
        # the heads, mcd.py builds optimizer_g over G at --lr)
        backbone_lr_factor: float = 1.0
        trade_off: float = 1.0  # weight of the discrepancy in phases B and C: TLlib mcd.py --trade-off 1.0
        num_k: int = 4  # generator updates per step (phase C): the paper's n = 4 for digits; TLlib --num-k 4

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.trade_off < 0:
                raise ConfigError(f"method.trade_off must be >= 0, got {self.trade_off}")
            if self.num_k < 1:
                raise ConfigError(f"method.num_k must be >= 1, got {self.num_k}")

    find_unused_parameters = True  # phase B leaves G without gradients

    def __init__(self, model, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.head2 = nn.Linear(model.features_dim, num_classes)  # F2; F1 is model.head

    def configure_optimizers(self, make):
        """G (backbone at ``backbone_lr_factor``, bottleneck) and the two heads: two optimisers."""
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        bottleneck = [p for p in self.model.bottleneck.parameters() if p.requires_grad]
        heads = [*self.model.head.parameters(), *self.head2.parameters()]
        g = [{"params": backbone, "lr_factor": self.cfg.backbone_lr_factor}, {"params": bottleneck, "lr_factor": 1.0}]
        return [make([group for group in g if group["params"]]), make([{"params": heads, "lr_factor": 1.0}])]

    def _heads(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F1 and F2 logits (B, K) of features (B, D), in float32 as ImageClassifier's head under autocast."""
        with torch.autocast(f.device.type, enabled=False):
            return self.model.head(f.float()), self.head2(f.float())

    def _split(self, batch_s, batch_t, detach: bool = False):
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            f = self.model.bottleneck(self.model.backbone(torch.cat([x_s, x_t])))  # (B_s + B_t, D)
        a, b = self._heads(f)
        return a, b, y_s, len(x_s)

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        """Phase A: G, F1 and F2 on the source labels (both domains through the network, one batch)."""
        a, b, y_s, n = self._split(batch_s, batch_t)
        cls = losses.cross_entropy(a[:n], y_s) + losses.cross_entropy(b[:n], y_s)
        return {"loss": cls, "cls": cls.detach()}

    def maximize_discrepancy(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        """Phase B: the heads, G fixed: source CE − trade_off · discrepancy on the target."""
        a, b, y_s, n = self._split(batch_s, batch_t, detach=True)
        cls = losses.cross_entropy(a[:n], y_s) + losses.cross_entropy(b[:n], y_s)
        disc = losses.classifier_discrepancy(a[n:], b[n:])
        return {"loss": cls - self.cfg.trade_off * disc, "discrepancy": disc.detach()}

    def minimize_discrepancy(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        """Phase C: G, heads fixed (only G's optimiser steps): trade_off · discrepancy on the target."""
        a, b, _, n = self._split(batch_s, batch_t)
        disc = losses.classifier_discrepancy(a[n:], b[n:])
        return {"loss": self.cfg.trade_off * disc, "discrepancy": disc.detach()}

    def optimization_step(self, batch_s, batch_t, progress, step):
        g, heads = step.optimizers
        out = step.forward(batch_s, batch_t, progress)  # A
        step.zero_grad()
        step.backward(out["loss"])
        step.step(g, heads)
        b = step.forward(batch_s, batch_t, progress, phase="maximize_discrepancy")  # B
        step.zero_grad()
        step.backward(b["loss"])
        step.step(heads)
        for _ in range(self.cfg.num_k):  # C
            c = step.forward(batch_s, batch_t, progress, phase="minimize_discrepancy")
            step.zero_grad()
            step.backward(c["loss"])
            step.step(g)
        return {**out, "discrepancy_b": b["discrepancy"], "discrepancy": c["discrepancy"]}
