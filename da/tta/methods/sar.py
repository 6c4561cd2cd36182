"""SAR: sharpness-aware and reliable entropy minimisation with model recovery.

Niu, Wu, Zhang, Wen, Chen, Zhao & Tan, ICLR 2023, arXiv 2302.12400 (mr-eggplant/SAR). The batch-norm affine
parameters (except the top block's: ``layer4`` of a ResNet) minimise the entropy of the reliable samples (entropy
below E0 = 0.4 · ln K) with SAM (ρ = 0.05): one gradient at θ, a step to θ + ε̂, the reliable samples filtered
again there, the gradient at θ + ε̂ applied at θ. A moving average (0.9) of the second loss below e_m = 0.2 means
the model has collapsed: it is reset to the source weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from da.errors import ConfigError
from da.tta import losses
from da.tta.methods.base import TTA_METHODS, GradientConfig, TTAMethod, affine_parameters, use_batch_statistics


@TTA_METHODS.register("sar")
class SAR(TTAMethod):
    """Reliable entropy minimisation with SAM and recovery when the loss average collapses; arXiv 2302.12400."""

    @dataclass
    class Config(GradientConfig):
        optimizer: str = "sgd"  # mr-eggplant/SAR main.py: SAM(params, torch.optim.SGD, lr, momentum=0.9)
        lr: float = 0.00025  # main.py for BN ResNets at batch 64 ((0.00025 / 64) · bs · 2 below batch 32)
        momentum: float = 0.9
        margin_factor: float = 0.4  # E0 = 0.4 · ln K (sar.py margin_e0=0.4*math.log(1000))
        rho: float = 0.05  # SAM's neighbourhood size (sam.py rho=0.05)
        reset_threshold: float = 0.2  # e_m: recover when the loss average falls below it (sar.py reset_constant_em)
        ema_momentum: float = 0.9  # the loss average's momentum (sar.py update_ema)
        skip: list[str] = field(default_factory=lambda: ["layer4"])  # sar.py collect_params: top layers not adapted

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.margin_factor <= 0 or self.rho < 0 or self.reset_threshold < 0:
                raise ConfigError("method.margin_factor must be > 0, method.rho and method.reset_threshold >= 0")
            if not 0 <= self.ema_momentum < 1:
                raise ConfigError(f"method.ema_momentum must be in [0, 1), got {self.ema_momentum}")

    def configure(self) -> None:
        use_batch_statistics(self.model)
        self.e_margin = losses.entropy_margin(self.ctx.num_classes, self.cfg.margin_factor)
        self.ema: float | None = None
        self.recoveries = 0

    def adapted_parameters(self) -> dict[str, torch.nn.Parameter]:
        return affine_parameters(self.model, tuple(self.cfg.skip))

    def reset_state(self) -> None:
        self.ema = None

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        params = list(self.adapted_parameters().values())
        with torch.enable_grad():
            logits = self.logits(x)  # (B, K): the prediction
            entropy = losses.softmax_entropy(logits)
            reliable = entropy.detach() < self.e_margin
            if reliable.any():
                entropy[reliable].mean(0).backward()
        perturbation = losses.sam_perturbation([p.grad for p in params], self.cfg.rho)
        with torch.no_grad():  # θ -> θ + ε̂
            for p, e in zip(params, perturbation):
                if e is not None:
                    p.add_(e)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            entropy2 = losses.softmax_entropy(self.logits(x))[reliable]  # second forward, the same samples
            second = entropy2[entropy2.detach() < self.e_margin]  # filtered again at θ + ε̂
            loss2 = second.mean(0) if len(second) else None
            if loss2 is not None:
                self.ema = losses.ema_scalar(self.ema, float(loss2.detach()), self.cfg.ema_momentum)
                loss2.backward()
        with torch.no_grad():  # back to θ, then the base optimiser's step with the gradient taken at θ + ε̂
            for p, e in zip(params, perturbation):
                if e is not None:
                    p.sub_(e)
        if loss2 is not None:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        recovered = losses.sar_should_recover(self.ema, self.cfg.reset_threshold)
        if recovered:
            ema = self.ema
            self.reset()  # sar.py: reset the weights and optimiser, then keep the new loss average
            self.ema = ema
            self.recoveries += 1
        return logits.detach(), {
            "loss": float(loss2.detach()) if loss2 is not None else float("nan"),
            "reliable": int(reliable.sum()),
            "recovered": int(recovered),
        }

    def stats(self) -> dict[str, int]:
        return {"recoveries": self.recoveries}
