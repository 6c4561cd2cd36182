"""The method interface every transfer method implements (ARCHITECTURE.md, "Contracts": Method)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
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
    # SDAT (Rangwani et al., ICML 2022, arXiv 2206.08213): SAM's radius rho on the source CE alone; 0 = off.
    # val-iisc/SDAT: 0.02 for Office-Home ViT-B (run_office_home.sh), VisDA 0.005 (CDAN) / 0.02 (CDAN+MCC)
    sdat_rho: float = 0.0
    # MIC (Hoyer et al., CVPR 2023, arXiv 2212.01322): weight of the masked-image consistency loss; 0 = off
    # (lhoyer/MIC cls/ adds it with weight 1 to the transfer loss)
    mic_weight: float = 0.0
    mic_mask_ratio: float = 0.7  # fraction of masked blocks: lhoyer/MIC cls/experiments.py mask_ratio 0.7
    # masked block side in pixels; null = 64/224 of the image side (MIC cls: 64-pixel blocks at 224 pixels)
    mic_block_size: int | None = None
    mic_alpha: float = 0.9  # the EMA teacher's momentum: lhoyer/MIC cls/experiments.py alpha 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.trade_off < 0:
            raise ConfigError(f"method.trade_off must be >= 0, got {self.trade_off}")
        if self.sdat_rho < 0 or self.mic_weight < 0:
            raise ConfigError("method.sdat_rho and method.mic_weight must be >= 0 (0 = off)")
        if not 0.0 <= self.mic_mask_ratio < 1.0 or not 0.0 <= self.mic_alpha < 1.0:
            raise ConfigError("method.mic_mask_ratio and method.mic_alpha must be in [0, 1)")
        if self.mic_block_size is not None and self.mic_block_size < 1:
            raise ConfigError(f"method.mic_block_size must be >= 1 or null, got {self.mic_block_size}")


def check_source_stage(cfg) -> None:
    """The checks of a method that trains from a source stage (``source_epochs``, ``source_label_smoothing``)."""
    if not 0.0 <= cfg.source_label_smoothing < 1.0:
        raise ConfigError(f"method.source_label_smoothing must be in [0, 1), got {cfg.source_label_smoothing}")
    if cfg.source_epochs is not None and cfg.source_epochs < 1:
        raise ConfigError(f"method.source_epochs must be >= 1 or null, got {cfg.source_epochs}")


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


def sam_step(step: Step, batch_s, batch_t, progress: float, rho: float, first: str = "sdat_task_loss") -> dict:
    """One SAM update (Foret et al., arXiv 2010.01412, Alg. 1) as SDAT runs it (Rangwani et al., arXiv 2206.08213;
    val-iisc/SDAT ``cdan_sdat.py``): the gradient g of the ``first`` phase's loss (SDAT: the source CE alone)
    moves the parameters it reaches by ε = ρ g / ‖g‖; the step's whole loss is back-propagated at w + ε, the
    parameters go back to w and every optimiser steps with that gradient (a discriminator, which the first loss
    does not reach, is never moved: its gradient is the one at the perturbed model). Returns the second pass's
    losses. Under fp16's gradient scaler the scale cancels in g / ‖g‖."""
    step.zero_grad()
    step.backward(step.forward(batch_s, batch_t, progress, phase=first))
    params = [p for opt in step.optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
    with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        moves = [p.grad * (rho / (norm + 1e-12)) for p in params]
        torch._foreach_add_(params, moves)
    step.zero_grad()
    out = step.forward(batch_s, batch_t, progress)
    step.backward(out["loss"])
    with torch.no_grad():
        torch._foreach_sub_(params, moves)
    step.step()
    return out


def block_mask(x: torch.Tensor, ratio: float, block: int) -> torch.Tensor:
    """MIC's random patch mask (B, 1, H, W) for images ``x`` (B, C, H, W): a grid of round(H/block) ×
    round(W/block) cells, each kept (1) with probability 1 − ``ratio``, upsampled to the image (nearest), as in
    lhoyer/MIC ``cls/dalib/modules/masking.py``. Draws from torch's global RNG (on the images' device)."""
    b, _, h, w = x.shape
    cells = torch.rand(b, 1, max(1, round(h / block)), max(1, round(w / block)), device=x.device)
    return F.interpolate((cells > ratio).to(x.dtype), size=(h, w), mode="nearest")


class JointAdaptation(Method):
    """The family "source cross-entropy + trade_off × transfer loss on one joint batch" (DANN, CDAN, Deep CORAL,
    DAN, MCC, BNM, MDD): source and target go through the network as one concatenated batch (BatchNorm sees both
    domains); a subclass defines only :meth:`transfer_loss` and its extra modules.

    Two options over every member (:class:`AdaptationConfig`), off by default (the step is then
    :meth:`Method.optimization_step` unchanged): ``sdat_rho`` > 0 is SDAT, SAM on the source cross-entropy
    (:func:`sam_step`, first pass :meth:`sdat_task_loss`); ``mic_weight`` > 0 is MIC: an EMA teacher of the model
    (``mic_teacher``, a submodule without gradients, so checkpointed) labels the target batch and the model is
    trained on the same images masked by :func:`block_mask` (:func:`da.losses.masked_consistency`). The
    teacher predicts in eval mode with the model's BatchNorm statistics copied at each update (lhoyer/MIC
    averages the parameters alone and runs its teacher's BatchNorm on the batch); MIC's colour jitter and blur
    of the masked images are left out (its code draws them once, at start-up).
    """

    Config: ClassVar[type[MethodConfig]] = AdaptationConfig

    def __init__(self, model: ImageClassifier, cfg: AdaptationConfig, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        self.mic_teacher = copy.deepcopy(model).requires_grad_(False) if cfg.mic_weight > 0 else None
        if self.mic_teacher is not None:
            self.register_buffer("mic_updates", torch.zeros((), dtype=torch.long))  # EMA updates so far
        if cfg.sdat_rho > 0:
            self.find_unused_parameters = True  # SDAT's first pass reaches no discriminator (DDP)

    def train(self, mode: bool = True) -> JointAdaptation:
        super().train(mode)
        if self.mic_teacher is not None:
            self.mic_teacher.eval()  # the teacher never trains: dropout off, BatchNorm on its running statistics
        return self

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, f = self.model(torch.cat([x_s, x_t]))  # (B_s + B_t, K), (B_s + B_t, D)
        n_s = len(x_s)
        cls = losses.cross_entropy(logits[:n_s], y_s)
        transfer, extra = self.transfer_loss(logits, f, n_s, progress)
        loss = cls + self.cfg.trade_off * transfer
        if self.mic_teacher is not None:
            mic = self.mic_loss(x_t)
            loss = loss + self.cfg.mic_weight * mic
            extra = {**extra, "mic": mic.detach()}
        return {"loss": loss, "cls": cls.detach(), "transfer": transfer.detach(), **extra}

    def sdat_task_loss(self, batch_s, batch_t, progress: float) -> torch.Tensor:
        """SDAT's first pass: the source cross-entropy of the joint batch alone (arXiv 2206.08213, Sec. 4)."""
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        logits, _ = self.model(torch.cat([x_s, x_t]))
        return losses.cross_entropy(logits[: len(x_s)], y_s)

    def mic_loss(self, x_t: torch.Tensor) -> torch.Tensor:
        """MIC's loss: the model on masked target images against the EMA teacher's labels of the whole ones."""
        c = self.cfg
        block = c.mic_block_size or max(1, round(x_t.shape[-1] * 64 / 224))
        with torch.no_grad():
            logits_teacher, _ = self.mic_teacher(x_t)  # (B, K)
            x_masked = x_t * block_mask(x_t, c.mic_mask_ratio, block)
        return losses.masked_consistency(self.model(x_masked)[0], logits_teacher)

    def optimization_step(self, batch_s, batch_t, progress: float, step: Step) -> dict[str, torch.Tensor]:
        if self.cfg.sdat_rho > 0:
            out = sam_step(step, batch_s, batch_t, progress, self.cfg.sdat_rho)
        else:
            out = super().optimization_step(batch_s, batch_t, progress, step)
        if self.mic_teacher is not None:
            self.update_mic_teacher()
        return out

    @torch.no_grad()
    def update_mic_teacher(self) -> None:
        """teacher ← α_t teacher + (1 − α_t) model, α_t = min(1 − 1/(t + 1), mic_alpha) after the t-th step (MIC's
        ``EMATeacher``: a fast start); the BatchNorm statistics are copied."""
        self.mic_updates += 1
        keep = torch.clamp(1.0 - 1.0 / (self.mic_updates + 1).float(), max=self.cfg.mic_alpha)
        for t, s in zip(self.mic_teacher.parameters(), self.model.parameters(), strict=True):
            t.lerp_(s, 1.0 - keep)
        for t, s in zip(self.mic_teacher.buffers(), self.model.buffers(), strict=True):
            t.copy_(s)

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
