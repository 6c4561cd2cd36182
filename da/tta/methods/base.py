"""The test-time method interface: predict a batch and adapt on it, with no label and no source data.

A method wraps a copy of the source model (:class:`da.backbones.ImageClassifier`). The runner (``da/tta/run.py``)
calls :meth:`TTAMethod.step` with the images of each batch of the stream — only the images: the labels stay with
the runner, which scores the returned logits online — and :meth:`TTAMethod.reset` where the protocol says so
(``protocol=reset``: before every domain). ``step`` returns the logits the method predicts for the batch *before
or as* it updates on it (the forward whose entropy it minimises, or CoTTA's teacher), never logits of a later
model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from da.errors import ConfigError
from da.registry import Registry

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TTAConfig:
    """Keys shared by every test-time method (``method.*``); each method nests a ``Config`` subclassing this, with
    its defaults cited from the paper and the official code. ``name`` is the registry's."""

    name: str


@dataclass
class GradientConfig(TTAConfig):
    """A method that takes gradient steps at test time: its optimiser (one update per batch, as every paper here)."""

    optimizer: str = "adam"  # adam or sgd
    lr: float = 1e-3
    beta: float = 0.9  # Adam's β1 (β2 = 0.999), as DequanWang/tent's setup_optimizer
    momentum: float = 0.9  # SGD's momentum
    nesterov: bool = False  # SGD's Nesterov momentum
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"method.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.lr > 0:
            raise ConfigError(f"method.lr must be > 0, got {self.lr}")
        if not (0 <= self.beta < 1 and 0 <= self.momentum < 1) or self.weight_decay < 0:
            raise ConfigError("method.beta and method.momentum must be in [0, 1), method.weight_decay >= 0")


@dataclass
class StreamContext:
    """What a method may know besides its batches: the number of classes, the images' normalisation (for
    augmentations in [0, 1]), the device, and clean unlabelled source images for EATA's Fisher (or None)."""

    num_classes: int
    mean: float
    std: float
    device: torch.device
    batch_size: int
    clean_images: torch.Tensor | None = None


TTA_METHODS: Registry[type[TTAMethod]] = Registry("tta method")


def norm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """The model's batch-norm layers (1d and 2d: the bottleneck's BatchNorm1d too), by name."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def use_batch_statistics(model: nn.Module) -> None:
    """Normalise with each test batch's statistics and drop the source's running ones (DequanWang/tent
    ``configure_model``: ``track_running_stats=False``, running mean/var None), in train and eval mode alike."""
    for _, m in norm_layers(model):
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
        m.num_batches_tracked = None


def affine_parameters(model: nn.Module, skip: tuple[str, ...] = ()) -> dict[str, nn.Parameter]:
    """The batch-norm scale and shift parameters (TENT's choice, ``collect_params``), except in modules whose name
    contains any of ``skip`` (SAR leaves ResNet's ``layer4`` alone)."""
    out = {}
    for name, m in norm_layers(model):
        if any(s in name for s in skip) or not m.affine:
            continue
        out[f"{name}.weight"], out[f"{name}.bias"] = m.weight, m.bias
    return out


def make_optimizer(params: list[nn.Parameter], cfg: GradientConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params`` (the official codes' ``setup_optimizer``)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta, 0.999), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )


class TTAMethod(nn.Module):
    """Base class: ``configure`` the model, pick the parameters to adapt, ``step`` on each batch, ``reset``."""

    Config = TTAConfig

    def __init__(self, model: nn.Module, cfg: TTAConfig, ctx: StreamContext) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)  # the source model itself is never changed
        self.cfg, self.ctx = cfg, ctx
        self.model.eval()  # dropout off; a method puts what it adapts in the mode it needs
        self.model.requires_grad_(False)
        self.configure()
        params = list(self.adapted_parameters().values())
        for p in params:
            p.requires_grad_(True)
        self.optimizer = make_optimizer(params, cfg) if params and isinstance(cfg, GradientConfig) else None
        if isinstance(cfg, GradientConfig) and not params:
            raise ConfigError(f"{cfg.name}: the model has no batch-norm parameters to adapt (use a backbone with BN)")
        self._model_state = copy.deepcopy(self.model.state_dict())  # what reset restores: the configured source
        self._optimizer_state = copy.deepcopy(self.optimizer.state_dict()) if self.optimizer else None

    def configure(self) -> None:
        """Set the model up for adaptation (batch-norm modes and statistics); the default changes nothing."""

    def adapted_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the optimiser updates, by name (none by default)."""
        return {}

    def step(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Logits (B, K) for the images ``x`` (B, C, H, W), predicted before or as the method adapts on them, and
        the step's label-free numbers for log.csv."""
        raise NotImplementedError

    def reset(self) -> None:
        """Back to the source model: weights, optimiser and any state of the method (``reset_state``)."""
        self.model.load_state_dict(self._model_state)
        if self.optimizer is not None:
            self.optimizer.load_state_dict(self._optimizer_state)
        self.reset_state()

    def reset_state(self) -> None:
        """Drop the method's own running state (moving averages); nothing by default."""

    def logits(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        return (model or self.model)(x)[0]  # ImageClassifier returns (logits, features)

    def stats(self) -> dict[str, Any]:
        """Counters over the whole stream for results.json (e.g. EATA's selected samples); none by default."""
        return {}
