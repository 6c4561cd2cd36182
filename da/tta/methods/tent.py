"""TENT: fully test-time adaptation by entropy minimisation of the batch-norm affine parameters.

Wang, Shelhamer, Liu, Olshausen & Darrell, ICLR 2021, arXiv 2006.10726 (DequanWang/tent). Batch-norm layers
normalise with the test batch's statistics; their scale and shift take one optimiser step per batch on the mean
prediction entropy of that batch; the batch's prediction is the forward the loss is computed on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from da.tta import losses
from da.tta.methods.base import TTA_METHODS, GradientConfig, TTAMethod, affine_parameters, use_batch_statistics


@TTA_METHODS.register("tent")
class Tent(TTAMethod):
    """Entropy minimisation of BN scale/shift under test-batch statistics; arXiv 2006.10726."""

    @dataclass
    class Config(GradientConfig):
        # DequanWang/tent cfgs/tent.yaml (the CIFAR-10-C example: OPTIM.METHOD Adam, LR 1e-3, BETA 0.9, WD 0; one
        # step per batch). The paper's ImageNet setting is optimizer=sgd lr=0.00025 momentum=0.9 (batch 64).
        optimizer: str = "adam"
        lr: float = 1e-3
        beta: float = 0.9

    def configure(self) -> None:
        use_batch_statistics(self.model)

    def adapted_parameters(self) -> dict[str, torch.nn.Parameter]:
        return affine_parameters(self.model)

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.enable_grad():
            logits = self.logits(x)  # (B, K)
            loss = losses.tent_loss(logits)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach(), {"loss": float(loss.detach())}
