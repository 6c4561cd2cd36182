"""The method interface every transfer method implements (ARCHITECTURE.md, "Contracts": Method)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from da import losses
from da.backbones import ImageClassifier
from da.errors import ConfigError
from da.evaluate import Predictions, predict
from da.registry import Registry

if TYPE_CHECKING:
    from da.data.base import Task, Unlabelled
    from da.runtime import Step


@dataclass
class MethodConfig:
    """Hyper-parameters shared by every method. Each method nests its own ``Config`` dataclass subclassing this
    (or :class:`AdaptationConfig`): its keys in the order ``--cfg job`` prints them, their defaults with their
    sources, and its value checks in ``__post_init__`` (one ``ConfigError`` line each). It is the method's
    structured config (``schema/method/<name>``, ``da.config.register_configs``): ``configs/method/<name>.yaml``
    names it and holds no values. ``name`` is the registry's."""

    name: str
    backbone_lr_factor: float = 1.0  # the backbone's lr = trainer.lr * factor (0.1 for pretrained backbones)

    def __post_init__(self) -> None:
        if self.backbone_lr_factor < 0:
            raise ConfigError(f"method.backbone_lr_factor must be >= 0, got {self.backbone_lr_factor}")


@dataclass
class AdaptationConfig(MethodConfig):
    """The config of a :class:`JointAdaptation` method: its transfer-loss weight."""

    trade_off: float = 1.0  # weight of the transfer loss

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trade_off < 0:
            raise ConfigError(f"method.trade_off must be >= 0, got {self.trade_off}")


class Method(nn.Module):
    """A transfer method: owns the model and any extra modules (discriminators), and defines one step.

    ``training_step(batch_s, batch_t, progress)`` gets a labelled source batch ``(x_s, y_s)``, an unlabelled
    target batch ``(x_t, index_t)`` and the training progress in [0, 1]; it returns named losses with the
    total under ``"loss"``. By default the trainer back-propagates that total once and steps the optimiser
    (:meth:`optimization_step`). A method whose paper runs several passes (SAM), phases with several optimisers
    (MCD) or updates a teacher after each step overrides :meth:`optimization_step` (and
    :meth:`configure_optimizers`), using the :class:`~da.runtime.Step` it is handed, so precision, DDP,
    schedules, logging and the non-finite check still apply. State that changes its numbers beyond parameters
    and buffers (counters, banks, pseudo-labels) goes in :meth:`get_extra_state` / :meth:`set_extra_state`
    (tensors and plain containers): it is part of ``state_dict`` and therefore of the checkpoint.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    kind: ClassVar[str] = "transductive"  # or "inductive" / "unsupervised"
    uses_source: ClassVar[bool] = True  # False: the trainer builds no source loader and passes batch_s=None
    uses_target: ClassVar[bool] = True  # False: no target loader, batch_t=None
    default_init: ClassVar[str | None] = None  # the starting model when `init` is null (e.g. "source"; da/stages.py)

    #: Optional per-target-sample pseudo-labels (N,), -1 where none; the trainer logs their coverage and, for
    #: analysis only, their accuracy against the held-out target labels, which the method never sees.
    pseudo_labels: torch.Tensor | None = None

    #: Early stopping on the task's labelled validation split (``Task.val``, inductive tasks only): stop after
    #: this many epochs without improvement and restore the best weights. None: no early stopping.
    patience: int | None = None

    #: Attributes (tensors or None) beyond parameters and buffers that change the method's numbers, e.g.
    #: pseudo-labels or FlexMatch's counts: saved in ``state_dict`` (its extra state, so in the checkpoint) and
    #: restored on resume. A tensor saved from an accelerator goes back to the model's device.
    extra_state: ClassVar[tuple[str, ...]] = ("pseudo_labels",)

    #: Under DDP: whether some parameters get no gradient in a pass (a multi-phase step such as MCD's).
    find_unused_parameters: ClassVar[bool] = False

    #: Sums a tensor over torchrun's ranks, set by the runtime under DDP (None in one process): what a loss
    #: needs for a statistic of the global batch (e.g. CDAN's entropy weights).
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(self, model: ImageClassifier, cfg: MethodConfig, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes

    @classmethod
    def prepare_task(cls, task: Task, cfg: MethodConfig, seed: int) -> Task:
        """Reshape the task before training (an inductive method draws its labelled target budget here)."""
        return task

    def training_step(
        self,
        batch_s: tuple[torch.Tensor, torch.Tensor],
        batch_t: tuple[torch.Tensor, torch.Tensor],
        progress: float,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, *args, phase: str = "training_step"):
        """``self.<phase>(*args)``: what ``DistributedDataParallel`` calls under torchrun (:meth:`Step.forward`),
        so a multi-phase step's passes each go through it."""
        return getattr(self, phase)(*args)

    def optimization_step(self, batch_s, batch_t, progress: float, step: Step) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the named losses to log (total under ``"loss"``). The default: one
        forward of :meth:`training_step`, one backward of its total, one step of every optimiser."""
        out = step.forward(batch_s, batch_t, progress)
        step.zero_grad()
        step.backward(out["loss"])
        step.step()
        return out

    def configure_optimizers(self, make: Callable[[list[dict]], torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
        """The optimisers, built by ``make(param_groups)`` (the run's SGD); the trainer sets each group's lr to
        the schedule's × its ``lr_factor``. Default: one optimiser over :meth:`param_groups`."""
        return [make(self.param_groups(1.0))]

    def epoch_length(self, task: Task) -> int:
        """Images in one epoch: the larger training domain the method reads. A transductive method that reads
        no target batch (source only) still counts the target, so every method of a task trains the same
        number of steps."""
        counts_target = self.uses_target or (self.kind == "transductive" and self.uses_source)
        used = ((task.source_train, self.uses_source), (task.target_train, counts_target))
        return max([len(d) for d, on in used if on] or [0])  # type: ignore[arg-type]

    def get_extra_state(self) -> dict[str, Any]:
        """The :attr:`extra_state` attributes as ``{name: (tensor or None, saved on an accelerator)}``."""
        out = {}
        for name in self.extra_state:
            value = getattr(self, name, None)
            out[name] = (None, False) if value is None else (value.detach().clone(), value.device.type != "cpu")
        return out

    def set_extra_state(self, state: dict[str, Any]) -> None:
        device = next(self.parameters()).device
        for name, (value, on_device) in state.items():
            setattr(self, name, value if value is None else value.to(device if on_device else "cpu"))

    def on_epoch_start(self, ctx: EpochContext) -> dict[str, float]:
        """Called before each training epoch (e.g. to re-label the target); returns extra metrics for log.csv."""
        return {}

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) for evaluation."""
        return self.model(x)[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck features (B, D), used by validators and figures."""
        return self.model(x)[1]

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predict(x), features(x))`` in one forward pass unless a method overrides either of them;
        evaluation, validators and figures read a model through this."""
        if type(self).predict is Method.predict and type(self).features is Method.features:
            return self.model(x)
        return self.predict(x), self.features(x)

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser groups: the backbone at ``lr * backbone_lr_factor``, everything else at ``lr``."""
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        ids = {id(p) for p in self.model.backbone.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [
            {"params": backbone, "lr": lr * self.cfg.backbone_lr_factor, "lr_factor": self.cfg.backbone_lr_factor}
        ]
        groups.append({"params": rest, "lr": lr, "lr_factor": 1.0})
        return [g for g in groups if g["params"]]


class JointAdaptation(Method):
    """The family "source cross-entropy + trade_off × transfer loss on one joint batch" (DANN, CDAN, Deep CORAL,
    DAN, MCC, BNM): source and target go through the network as one concatenated batch (BatchNorm sees both
    domains); a subclass defines only :meth:`transfer_loss` and its extra modules."""

    Config: ClassVar[type[MethodConfig]] = AdaptationConfig

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # (B_s + B_t, K), (B_s + B_t, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        transfer, extra = self.transfer_loss(logits, f, n_s, progress)
        loss = cls + self.cfg.trade_off * transfer
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach(), **extra}

    def transfer_loss(
        self, logits: torch.Tensor, features: torch.Tensor, n_s: int, progress: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The transfer loss of the joint batch (rows ``[:n_s]`` are the source) and extra metrics to log."""
        raise NotImplementedError


@dataclass
class EpochContext:
    """What a method may read between epochs: the unlabelled target set, never its labels."""

    epoch: int  # epochs completed so far
    progress: float  # training progress in [0, 1]
    device: torch.device
    target_train: Unlabelled
    batch_size: int
    #: A call returning the trainer's predictions of the current weights on ``target_train``, computed once per
    #: set of weights (the last epoch's validators already read them), so no forward pass is repeated.
    cached: Callable[[], Predictions] | None = None

    def predict_target(self, method: Method) -> Predictions:
        """Logits and features of ``method`` (eval mode) for every target training image, in index order."""
        if self.cached is not None:
            return self.cached()
        return predict(method, self.target_train, self.device, self.batch_size)


METHODS: Registry[type[Method]] = Registry("method")
