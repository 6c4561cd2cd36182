"""CoTTA: continual test-time adaptation with a mean teacher, augmentation-averaged pseudo-labels and stochastic
restore.

Wang, Fink, Van Gool & Dai, CVPR 2022, arXiv 2203.13591 (qinenergy/cotta, ``cifar/cotta.py``). Every parameter
of the student learns from the teacher's soft pseudo-labels (cross-entropy, Eq. 3); the teacher is the student's
exponential moving average (α = 0.999, Eq. 2) and predicts the batch. When the frozen source model (the anchor) is
unsure — its mean confidence below 0.92 on CIFAR-10 — the teacher's output is averaged over 32 augmented copies of
the batch (Eq. 4). After each step every weight returns to its source value with probability p = 0.01 (Eq. 5).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from da.errors import ConfigError
from da.tta import losses
from da.tta.methods.base import TTA_METHODS, GradientConfig, TTAMethod, use_batch_statistics


@TTA_METHODS.register("cotta")
class CoTTA(TTAMethod):
    """Mean teacher + augmentation-averaged pseudo-labels + stochastic restore; arXiv 2203.13591."""

    @dataclass
    class Config(GradientConfig):
        # qinenergy/cotta cifar/cfgs/cifar10/cotta.yaml: OPTIM.METHOD Adam, LR 1e-3, BETA 0.9, WD 0, MT 0.999,
        # RST 0.01, AP 0.92; cotta.py: N = 32 augmentations, get_tta_transforms (hflip p 0.5, noise std 0.005)
        optimizer: str = "adam"
        lr: float = 1e-3
        beta: float = 0.9
        ema: float = 0.999  # α, the teacher's momentum (MT)
        restore: float = 0.01  # p, the stochastic-restore probability (RST)
        threshold: float = 0.92  # the anchor confidence below which the teacher averages augmentations (AP)
        augmentations: int = 32  # N
        hflip: float = 0.5  # horizontal-flip probability of the augmentations (0 for digits: a flip changes them)
        noise_std: float = 0.005  # Gaussian noise of the augmentations, on [0, 1] images

        def __post_init__(self) -> None:
            super().__post_init__()
            if not (0 <= self.ema <= 1 and 0 <= self.restore <= 1 and 0 <= self.hflip <= 1):
                raise ConfigError("method.ema, method.restore and method.hflip must be in [0, 1]")
            if self.augmentations < 1 or self.noise_std < 0:
                raise ConfigError("method.augmentations must be >= 1 and method.noise_std >= 0")

    def configure(self) -> None:
        use_batch_statistics(self.model)  # cotta.py configure_model; every other parameter learns too

    def adapted_parameters(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.model.named_parameters())  # cotta.py collect_params: every weight and bias

    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        self.reset_state()
        self.augmented_batches = 0

    def reset_state(self) -> None:
        # cotta.py reset(): teacher and anchor copied afresh from the (restored) student
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.source = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """cotta.py ``get_tta_transforms`` on normalised images: one random draw for the whole batch, as the
        torchvision transforms there do. Brightness, contrast and gamma in random order (saturation and hue only
        for RGB), edge padding + affine + centre crop, Gaussian blur, flip, noise, clip — on [0, 1] images."""
        m, s = self.ctx.mean, self.ctx.std
        u = (x * s + m).clamp(0, 1)
        ops = ["brightness", "contrast", "gamma"] + (["saturation", "hue"] if u.shape[1] == 3 else [])
        for i in torch.randperm(len(ops)).tolist():
            op = ops[i]
            if op == "brightness":
                u = TF.adjust_brightness(u, float(torch.empty(()).uniform_(0.6, 1.4)))
            elif op == "contrast":
                u = TF.adjust_contrast(u, float(torch.empty(()).uniform_(0.7, 1.3)))
            elif op == "gamma":
                u = TF.adjust_gamma(u.clamp(1e-8, 1.0), float(torch.empty(()).uniform_(0.7, 1.3)))
            elif op == "saturation":
                u = TF.adjust_saturation(u, float(torch.empty(()).uniform_(0.5, 1.5)))
            else:
                u = TF.adjust_hue(u, float(torch.empty(()).uniform_(-0.06, 0.06)))
        h, w = u.shape[-2:]
        pad = h // 2
        u = F.pad(u, (pad, pad, pad, pad), mode="replicate")  # transforms.Pad(n/2, padding_mode="edge")
        angle = float(torch.empty(()).uniform_(-15, 15))
        shift = [
            round(float(torch.empty(()).uniform_(-w / 16, w / 16))),
            round(float(torch.empty(()).uniform_(-h / 16, h / 16))),
        ]
        scale = float(torch.empty(()).uniform_(0.9, 1.1))
        u = TF.affine(u, angle=angle, translate=shift, scale=scale, shear=[0.0, 0.0])  # bilinear
        sigma = float(torch.empty(()).uniform_(0.001, 0.5))
        u = TF.gaussian_blur(u, kernel_size=[5, 5], sigma=[sigma, sigma])
        u = TF.center_crop(u, [h, w])
        if float(torch.rand(())) < self.cfg.hflip:
            u = TF.horizontal_flip(u)
        u = (u + torch.randn_like(u) * self.cfg.noise_std).clamp(0, 1)
        return (u - m) / s

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        with torch.no_grad():
            anchor_conf = self.logits(x, self.anchor).softmax(1).max(1).values  # (B,)
            standard = self.logits(x, self.teacher)  # (B, K)
            augmented = None
            if float(anchor_conf.mean()) < c.threshold:  # the N teacher passes only when their mean is used
                augmented = torch.stack([self.logits(self.augment(x), self.teacher) for _ in range(c.augmentations)])
                self.augmented_batches += 1
            teacher = losses.cotta_pseudo_logits(
                anchor_conf, c.threshold, standard, augmented if augmented is not None else standard[None]
            )
        with torch.enable_grad():
            loss = losses.soft_cross_entropy(self.logits(x), teacher).mean(0)
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for t, p in zip(self.teacher.parameters(), self.model.parameters()):
                t.copy_(losses.ema_tensor(t, p, c.ema))
            if c.restore > 0:
                for name, p in self.model.named_parameters():
                    mask = losses.restore_mask(p.shape, c.restore).to(p.device)
                    p.copy_(losses.stochastic_restore(p, self.source[name], mask))
        return teacher, {
            "loss": float(loss.detach()),
            "augmented": int(augmented is not None),
            "anchor_conf": float(anchor_conf.mean()),
        }

    def stats(self) -> dict[str, int]:
        return {"augmented_batches": self.augmented_batches}
