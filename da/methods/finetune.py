"""Fine-tuning a pretrained backbone on a small labelled target (inductive transfer).

Strategies (``method.strategy``), after Yosinski et al., "How transferable are features in deep neural
networks?" (arXiv 1411.1792):

- ``feature_extraction``: the backbone is frozen (no gradient, and held in eval mode, so its BatchNorm
  statistics and dropout are frozen too); only the new head trains;
- ``partial``: the last ``unfreeze_blocks`` blocks of the backbone train, the earlier ones are frozen as above
  (blocks: LeNet's two conv stages; ResNet's stem, layer1..layer4; VGG's five conv blocks; the children of
  ``features`` for DenseNet / MobileNet / EfficientNet / ConvNeXt; ViT's encoder layers; otherwise the
  top-level children that hold parameters);
- ``full``: everything trains, the backbone at ``trainer.lr * backbone_lr_factor`` (discriminative learning
  rates, default factor 0.1).

The model's bottleneck and head are replaced by a new head: ``head_hidden`` Linear layers (each optionally
followed by BatchNorm, then ReLU and dropout) and a Linear classifier. Regularisers: ``trainer.weight_decay``
(L2 towards zero), ``l1``, and L2-SP (Li et al., ICML 2018, arXiv 1802.01483): α/2·||w − w0||² on the
pretrained backbone weights plus β/2·||w||² on the new layers (set ``trainer.weight_decay=0`` to use it as in
the paper). The task becomes a labelled target budget with a validation split (see ``da.data.budget``);
training early-stops on the validation split and restores the best weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from da import losses
from da.backbones import GreyToRGB, ImageClassifier, LeNet
from da.data.augment import build_augment, preset_names
from da.data.base import Task
from da.data.budget import label_budget
from da.errors import ConfigError
from da.methods.base import METHODS, Method, MethodConfig

STRATEGIES = ("feature_extraction", "partial", "full")


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _split_sequential(seq: nn.Sequential, boundary: type, after: bool) -> list[nn.Module]:
    """Split ``seq`` into blocks that start at (``after=False``) or end with (``after=True``) a ``boundary``."""
    blocks: list[list[nn.Module]] = [[]]
    for m in seq:
        if not after and isinstance(m, boundary) and blocks[-1]:
            blocks.append([])
        blocks[-1].append(m)
        if after and isinstance(m, boundary):
            blocks.append([])
    return [nn.ModuleList(b) for b in blocks if any(_has_params(m) for m in b)]


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks, input to output, as ``partial`` fine-tuning counts them."""
    net = backbone.net if isinstance(backbone, GreyToRGB) else backbone
    if isinstance(net, LeNet):  # conv stages: conv-pool-relu, conv-dropout-pool-relu
        return _split_sequential(net.features, nn.Conv2d, after=False)
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):  # resnet family: stem, layer1..layer4
        stem = nn.ModuleList([net.conv1, net.bn1])
        return [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    if (
        isinstance(net, nn.Sequential)
        and isinstance(net[0], nn.Sequential)
        and any(isinstance(m, nn.MaxPool2d) for m in net[0])
    ):  # VGG without its top: conv blocks end with a max-pool
        return _split_sequential(net[0], nn.MaxPool2d, after=True)
    if isinstance(getattr(net, "features", None), nn.Sequential):  # densenet, mobilenet, efficientnet, convnext
        return [m for m in net.features if _has_params(m)]
    encoder = getattr(net, "encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):  # vision transformer
        return [nn.ModuleList([net.conv_proj]), *encoder.layers, nn.ModuleList([encoder.ln])]
    children = [m for m in net.children() if _has_params(m)]
    while len(children) == 1:  # generic: descend through single wrappers
        children = [m for m in children[0].children() if _has_params(m)]
    if not children:
        raise ConfigError(f"cannot find blocks in {net.__class__.__name__} for strategy=partial")
    return children


def build_head(in_dim: int, hidden: list[int], dropout: float, batchnorm: bool) -> tuple[nn.Module, int]:
    """The new head's hidden layers (Linear[-BN]-ReLU[-Dropout] per width) and their output width."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width)]
        layers += [nn.BatchNorm1d(width)] if batchnorm else []
        layers += [nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        in_dim = width
    return (nn.Sequential(*layers) if layers else nn.Identity()), in_dim


def _backbone_dim(model: ImageClassifier) -> int:
    first = next((m for m in model.bottleneck.modules() if isinstance(m, nn.Linear)), None)
    return first.in_features if first is not None else model.features_dim


@METHODS.register("finetune")
class Finetune(Method):
    """Fine-tune a pretrained backbone with a new head on a labelled target budget (see the module docstring)."""

    @dataclass
    class Config(MethodConfig):
        name: str = "finetune"
        backbone_lr_factor: float = 0.1  # full / partial: backbone lr = trainer.lr * factor (discriminative lrs)
        strategy: str = "full"  # feature_extraction (frozen backbone, BN statistics too) | partial | full
        # partial: the last N blocks train (lenet: 2 conv stages; resnet: stem, layer1..4; vgg: 5)
        unfreeze_blocks: int = 1
        # hidden widths of the new head ([] = linear classifier on the backbone's features)
        head_hidden: list[int] = field(default_factory=lambda: [256])
        head_dropout: float = 0.5
        head_batchnorm: bool = True
        label_smoothing: float = 0.0
        l1: float = 0.0  # weight of the L1 norm of the trainable weights
        l2sp_alpha: float = 0.0  # L2-SP (arXiv 1802.01483): alpha/2 ||w - w0||^2 on the pretrained backbone
        l2sp_beta: float = 0.0  # L2-SP: beta/2 ||w||^2 on the new head (use with trainer.weight_decay=0)
        # labelled target images per class, validation included; null to use label_fraction
        labels_per_class: int | None = 10
        label_fraction: float | None = None  # or this fraction of each class of the target's train split
        val_fraction: float = 0.2  # of the label budget, for early stopping (0 = no validation, report the last epoch)
        # none | flip | crop | color | randaugment, or a list [crop, color] (da/data/augment.py); flip is refused
        # for digits
        augment: Any = "none"
        # epochs without validation improvement before stopping (best weights restored); null = never
        patience: int | None = 10

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.strategy not in STRATEGIES:
                raise ConfigError(f"unknown method.strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
            if self.unfreeze_blocks < 0:
                raise ConfigError(f"method.unfreeze_blocks must be >= 0, got {self.unfreeze_blocks}")
            if any(h < 1 for h in self.head_hidden):
                raise ConfigError(f"method.head_hidden widths must be >= 1, got {list(self.head_hidden)}")
            if not 0 <= self.head_dropout < 1 or not 0 <= self.val_fraction < 1:
                raise ConfigError("method.head_dropout and method.val_fraction must be in [0, 1)")
            if min(self.l1, self.l2sp_alpha, self.l2sp_beta, self.label_smoothing, self.backbone_lr_factor) < 0:
                raise ConfigError("method.l1, l2sp_alpha, l2sp_beta, label_smoothing, backbone_lr_factor must be >= 0")
            if (self.labels_per_class is None) == (self.label_fraction is None):
                raise ConfigError("set exactly one of method.labels_per_class and method.label_fraction (other null)")
            if self.labels_per_class is not None and self.labels_per_class < 1:
                raise ConfigError(f"method.labels_per_class must be >= 1, got {self.labels_per_class}")
            if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
                raise ConfigError(f"method.label_fraction must be in (0, 1], got {self.label_fraction}")
            if self.patience is not None and self.patience < 1:
                raise ConfigError(f"method.patience must be >= 1 or null, got {self.patience}")
            preset_names(self.augment)

    kind = "inductive"
    uses_target = False  # the labelled budget arrives as the labelled batch (batch_s); no unlabelled batch

    @classmethod
    def prepare_task(cls, task: Task, cfg: Config, seed: int) -> Task:  # type: ignore[override]
        augment = build_augment(cfg.augment, task.name, task.image_size, task.notes)
        return label_budget(task, cfg.labels_per_class, cfg.label_fraction, cfg.val_fraction, seed, augment)

    def __init__(self, model: ImageClassifier, cfg: Config, num_classes: int) -> None:
        super().__init__(model, cfg, num_classes)
        hidden, dim = build_head(_backbone_dim(model), list(cfg.head_hidden), cfg.head_dropout, cfg.head_batchnorm)
        model.bottleneck, model.head, model.features_dim = hidden, nn.Linear(dim, num_classes), dim
        self.patience = cfg.patience
        trainable = self._trainable_modules(cfg)
        inside = {id(m) for block in trainable for m in block.modules()}
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        for block in trainable:
            for p in block.parameters():
                p.requires_grad_(True)
        # frozen leaves are kept in eval mode: BatchNorm statistics and dropout do not change
        self.frozen = [m for m in model.backbone.modules() if not list(m.children()) and id(m) not in inside]
        self.anchor_names: list[tuple[str, str]] = []  # (backbone parameter name, buffer name of its w0)
        if cfg.l2sp_alpha > 0:
            for name, p in model.backbone.named_parameters():
                if p.requires_grad:
                    buffer = "w0_" + name.replace(".", "__")
                    self.register_buffer(buffer, p.detach().clone(), persistent=False)
                    self.anchor_names.append((name, buffer))

    def _trainable_modules(self, cfg: Config) -> list[nn.Module]:
        backbone = self.model.backbone
        if cfg.strategy == "full":
            return [backbone]
        if cfg.strategy == "feature_extraction":
            return []
        blocks = backbone_blocks(backbone)
        if cfg.unfreeze_blocks > len(blocks):
            raise ConfigError(
                f"method.unfreeze_blocks={cfg.unfreeze_blocks} but this backbone has {len(blocks)} blocks; "
                "use strategy=full to train all of them"
            )
        return blocks[len(blocks) - cfg.unfreeze_blocks :] if cfg.unfreeze_blocks else []

    def train(self, mode: bool = True) -> Finetune:
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def training_step(self, batch_s, batch_t, progress: float) -> dict[str, torch.Tensor]:
        x_s, y_s = batch_s  # the labelled target budget: (B, C, H, W), (B,)
        logits_s, _ = self.model(x_s)  # (B, K)
        cls = losses.cross_entropy(logits_s, y_s, self.cfg.label_smoothing)
        out = {"cls": cls.detach()}
        loss = cls
        cfg = self.cfg
        if cfg.l2sp_alpha > 0 or cfg.l2sp_beta > 0:
            params = dict(self.model.backbone.named_parameters())
            pretrained = [params[name] for name, _ in self.anchor_names]
            anchors = [getattr(self, buffer) for _, buffer in self.anchor_names]
            new = [p for m in (self.model.bottleneck, self.model.head) for p in m.parameters()]
            reg = losses.l2_sp(pretrained, anchors, new, cfg.l2sp_alpha, cfg.l2sp_beta)
            loss = loss + reg
            out["l2sp"] = reg.detach()
        if cfg.l1 > 0:
            reg = cfg.l1 * losses.l1_norm([p for p in self.model.parameters() if p.requires_grad])
            loss = loss + reg
            out["l1"] = reg.detach()
        out["loss"] = loss
        return out
