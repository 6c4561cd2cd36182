"""EATA: efficient anti-forgetting test-time adaptation.

Niu, Wu, Zhang, Chen, Zheng, Zhao & Tan, ICML 2022, arXiv 2204.02610 (mr-eggplant/EATA). TENT's entropy
minimisation of the batch-norm affine parameters, but only on *reliable* samples (entropy below E0 = 0.4 · ln K)
that are *not redundant* (|cos| of their probabilities to a moving average below ε), each weighted by
1 / exp(H − E0), plus a Fisher regulariser β · Σ F (θ − θ⁰)² that keeps important parameters near the source.
The diagonal Fisher is estimated once, before the stream, from clean in-distribution images with the model's own
pseudo-labels (the paper uses 2,000 clean ImageNet validation images; here: the source run's held-out source
images, labels unused).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da.errors import ConfigError
from da.tta import losses
from da.tta.methods.base import TTA_METHODS, GradientConfig, TTAMethod, affine_parameters, use_batch_statistics


@TTA_METHODS.register("eata")
class EATA(TTAMethod):
    """Reliable, non-redundant, weighted entropy minimisation with a Fisher regulariser; arXiv 2204.02610."""

    @dataclass
    class Config(GradientConfig):
        optimizer: str = "sgd"  # mr-eggplant/EATA main.py: SGD(params, 0.00025, momentum=0.9), batch 64
        lr: float = 0.00025
        momentum: float = 0.9
        margin_factor: float = 0.4  # E0 = 0.4 · ln K (main.py --e_margin math.log(1000)*0.40)
        d_margin: float = 0.05  # ε of the redundancy filter, cosine (main.py --d_margin)
        fisher_alpha: float = 2000.0  # β, the regulariser's weight (main.py --fisher_alpha, Eq. 8)
        fisher_size: int = 2000  # clean images for the Fisher (main.py --fisher_size); capped at what there is
        probs_momentum: float = 0.9  # the probability average's momentum (eata.py update_model_probs)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.margin_factor <= 0 or not 0 <= self.d_margin <= 1 or self.fisher_alpha < 0:
                raise ConfigError("method.margin_factor > 0, method.d_margin in [0, 1], method.fisher_alpha >= 0")
            if self.fisher_size < 0 or not 0 <= self.probs_momentum < 1:
                raise ConfigError("method.fisher_size must be >= 0 and method.probs_momentum in [0, 1)")

    def configure(self) -> None:
        use_batch_statistics(self.model)
        self.e_margin = losses.entropy_margin(self.ctx.num_classes, self.cfg.margin_factor)
        self.probs_ema: torch.Tensor | None = None
        self.counts = {"reliable": 0, "selected": 0, "seen": 0}

    def adapted_parameters(self) -> dict[str, torch.nn.Parameter]:
        return affine_parameters(self.model)

    def reset_state(self) -> None:
        # mr-eggplant/EATA's reset() restores weights and optimiser only; the probability average is adaptation
        # state too, so a reset here starts it afresh (a reset run begins from the source in every respect)
        self.probs_ema = None

    def _fishers(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The diagonal Fisher of the adapted parameters on clean images with pseudo-labels (main.py, ``eata``)."""
        images = self.ctx.clean_images
        params = self.adapted_parameters()
        if images is None or self.cfg.fisher_alpha == 0 or self.cfg.fisher_size == 0 or not len(images):
            return {}
        images = images[: self.cfg.fisher_size]
        batches = torch.split(images, self.ctx.batch_size)
        squares = {name: torch.zeros_like(p) for name, p in params.items()}
        for x in batches:
            with torch.enable_grad():
                logits = self.logits(x.to(self.ctx.device))
                F.cross_entropy(logits, logits.argmax(1)).backward()  # the model's own pseudo-labels
            for name, p in params.items():
                if p.grad is not None:
                    squares[name] += p.grad.detach() ** 2
                p.grad = None
        return {name: (sq / len(batches), params[name].detach().clone()) for name, sq in squares.items()}

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        if not hasattr(self, "fishers"):  # computed on the first batch's device, from the source weights
            self.fishers = self._fishers()
        c = self.cfg
        with torch.enable_grad():
            logits = self.logits(x)  # (B, K)
            reliable, selected = losses.eata_select(logits, self.e_margin, c.d_margin, self.probs_ema)
            probs = logits.detach().softmax(1)[selected]
            self.probs_ema = losses.eata_update_probs(self.probs_ema, probs, c.probs_momentum)
            entropy = losses.softmax_entropy(logits)[selected]
            loss = (entropy * losses.eata_weights(entropy, self.e_margin)).mean(0) if len(entropy) else None
            if loss is not None and self.fishers:
                loss = loss + losses.fisher_penalty(self.adapted_parameters(), self.fishers, c.fisher_alpha)
            if loss is not None:  # the official code steps only when a sample was selected
                loss.backward()
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        n_rel, n_sel = int(reliable.sum()), int(selected.sum())
        self.counts["reliable"] += n_rel
        self.counts["selected"] += n_sel
        self.counts["seen"] += len(x)
        return logits.detach(), {"loss": float(loss.detach()) if loss is not None else float("nan"), "selected": n_sel}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)
