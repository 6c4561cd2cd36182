"""Backbones: name -> (feature extractor, feature dim), plus the model every method trains.

The model is feature extractor -> bottleneck -> classifier head (TLlib's ``ImageClassifier`` layout).
``lenet`` is the digits CNN used by DANN-style digit benchmarks (arXiv 1505.07818; TLlib's LeNet);
torchvision models come through torchvision's ``weights=`` API with their classification top removed; any timm
model comes by name with ``library: timm`` (``configs/backbone/timm.yaml``; :func:`timm_backbone`).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from da.errors import ConfigError
from da.registry import Registry

BACKBONES: Registry[Callable[..., tuple[nn.Module, int]]] = Registry("backbone")


@dataclass
class BackboneConfig:
    """``backbone.*``: the schema of ``configs/backbone/<name>.yaml`` (each sets its name and what differs)."""

    name: str
    # torchvision weights enum name, e.g. IMAGENET1K_V1; None = random init; offline, put the file in
    # $TORCH_HOME/hub/checkpoints
    weights: str | None = None
    # deprecated: use the top-level init=<run folder or file> (da/build.py); a run folder or checkpoint.pt of an
    # earlier run, or a state_dict file (the backbone's weights alone)
    checkpoint: str | None = None
    bottleneck_dim: int = 256  # 0 = no bottleneck
    bottleneck_dropout: float = 0.0
    # null: ``name`` is one of this package's backbones (lenet, the torchvision names); timm: ``name`` is any timm
    # model (timm.list_models()) and ``weights`` a timm pretrained tag (e.g. augreg_in21k_ft_in1k; default: timm's
    # default tag; null: random init), fetched into the Hugging Face Hub cache
    library: str | None = None


class LeNet(nn.Module):
    """LeNet for 28x28 grey digits: conv(20,5)-pool-relu-conv(50,5)-dropout-pool-relu -> 800 features."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(20, 50, kernel_size=5),
            nn.Dropout2d(p=0.5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 800) for 28x28 input


@BACKBONES.register("lenet")
def lenet(in_channels: int = 1, image_size: int = 28, weights: str | None = None, **_: object) -> tuple[nn.Module, int]:
    if weights:
        raise ConfigError("lenet has no published weights; use init=<run folder or checkpoint file>")
    if image_size < 16:
        raise ConfigError(f"lenet needs images of at least 16x16, got {image_size}")
    net = LeNet(in_channels)
    with torch.no_grad():
        dim = net(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
    return net, dim


class GreyToRGB(nn.Module):
    """Repeat a single grey channel to the three channels an ImageNet model expects."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)


def _strip_top(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace a torchvision classifier's last layer(s) by identity; return (model, feature dim)."""
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):  # resnet, resnext, wide_resnet, regnet
        dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, dim
    if model.__class__.__name__ == "VGG":  # "VGG16 without its top": conv base + global average pool
        return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 512
    if hasattr(model, "classifier"):  # densenet (Linear), mobilenet / efficientnet / convnext (Sequential)
        head = model.classifier
        if isinstance(head, nn.Linear):
            model.classifier = nn.Identity()
            return model, head.in_features
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            dim = head[-1].in_features
            head[-1] = nn.Identity()
            return model, dim
    if hasattr(model, "heads"):  # vision transformer
        dim = model.heads[-1].in_features
        model.heads = nn.Identity()
        return model, dim
    raise ConfigError(f"cannot remove the classification top of {model.__class__.__name__}")


def torchvision_backbone(name: str, weights: str | None, **_: object) -> tuple[nn.Module, int]:
    """A torchvision classification model by name, with ``weights`` from its weights enum."""
    import torchvision

    try:
        with _deferred_download_line():  # torch.hub prints "Downloading: ..." before it knows it is offline
            model = torchvision.models.get_model(name, weights=weights)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        if weights is None or not _is_download_error(err):
            raise
        enum = torchvision.models.get_model_weights(name)[weights]
        filename = os.path.basename(enum.url)
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise ConfigError(
            f"weights {name}.{weights} are not on disk and could not be downloaded: put {filename} "
            f"(from {enum.url}) in {folder}, or set backbone.weights=null to train from scratch"
        ) from err
    except (KeyError, ValueError) as err:
        raise ConfigError(f"invalid weights {weights!r} for {name}: {err}") from err
    model, dim = _strip_top(model)
    return GreyToRGB(model), dim


class _deferred_download_line(contextlib.AbstractContextManager):
    """Hold torch.hub's "Downloading: ..." line (written to stdout) until the download has succeeded; drop it if
    the download fails, so an offline run shows only the one-line error. The progress bar (stderr) is untouched."""

    def __init__(self) -> None:
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith("Downloading") and not self.held:
            self.held.append(text)
        else:
            self.flush_held()
            self.saved.write(text)
        return len(text)

    def flush_held(self) -> None:
        for text in self.held:
            self.saved.write(text)
        self.held.clear()

    def flush(self) -> None:
        self.saved.flush()

    def __getattr__(self, name: str):
        return getattr(self.saved, name)

    def __enter__(self) -> _deferred_download_line:
        self.saved, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        sys.stdout = self.saved
        if exc_type is None:
            self.flush_held()


def _is_download_error(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return isinstance(err, urllib.error.URLError) or any(
        word in text for word in ("urlopen", "name resolution", "connection", "network", "temporary failure")
    )


TORCHVISION_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg11",
    "vgg16",
    "vgg19",
    "vgg16_bn",
    "densenet121",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
)
for _name in TORCHVISION_NAMES:
    BACKBONES.register(_name)(lambda _n=_name, **kw: torchvision_backbone(_n, **kw))


def timm_backbone(name: str, weights: str | None, in_channels: int = 3, image_size: int = 224) -> tuple[nn.Module, int]:
    """Any timm model by name with its classifier removed (``num_classes=0``): its pooled features, pooled as
    timm's default ``global_pool`` says (a ViT's class token, as TLlib/SDAT/MIC use it), dimension measured by
    one forward pass at ``image_size``. ``weights``: a pretrained tag of ``name`` (``default``: timm's default
    tag), loaded through timm's own ``pretrained`` mechanics and the Hugging Face Hub cache; None: random init.
    The image size goes to models that take ``img_size`` (ViT, DeiT, Swin, DINOv2: position embeddings are
    resampled) and the task's channels to ``in_chans`` (timm adapts a pretrained first layer)."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise ConfigError(f"unknown timm model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    full = name if weights in (None, "default") else f"{name}.{weights}"
    kwargs = {"pretrained": weights is not None, "num_classes": 0, "in_chans": in_channels}
    try:
        with _quiet_loggers("huggingface_hub", "timm"):  # its retries offline would print before the one line
            try:
                model = timm.create_model(full, img_size=image_size, **kwargs)
            except TypeError as err:  # a model without an image size (ConvNeXt, ResNets): built for any
                if "img_size" not in str(err):
                    raise
                model = timm.create_model(full, **kwargs)
    except RuntimeError as err:
        if "pretrained tag" not in str(err):
            raise
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        raise ConfigError(
            f"invalid weights {weights!r} for timm model {name}; valid: default, {', '.join(tags)}"
        ) from err
    except OSError as err:
        if not _weights_missing(err):
            raise
        raise ConfigError(_timm_missing_message(timm.models.get_pretrained_cfg(full), full)) from err
    model.eval()
    try:
        with torch.no_grad():
            dim = model(torch.zeros(1, in_channels, image_size, image_size)).shape[-1]
    except (AssertionError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"timm model {name} cannot take {image_size}x{image_size} images: {first}") from err
    return model.train(), dim


def _weights_missing(err: BaseException) -> bool:
    """Whether ``err`` says the weights are neither cached nor downloadable (offline, no such network)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(err, LocalEntryNotFoundError) or _is_download_error(err)


def _timm_missing_message(cfg, full: str) -> str:
    """One line: which file is missing and where timm looks for it (Hub cache, else torch.hub's folder)."""
    end = "or set backbone.weights=null to train from scratch"
    full = f"{full.split('.')[0]}.{cfg.tag}" if cfg is not None and cfg.tag else full  # the default tag, named
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import constants

        repo = cfg.hf_hub_id.split("@")[0]
        return (
            f"weights {full} are not on disk and could not be downloaded: put the Hugging Face Hub repo {repo} "
            f"({cfg.hf_hub_filename or 'model.safetensors'}) in the Hub cache {constants.HF_HUB_CACHE} (online: "
            f"`hf download {repo}`, then copy models--{repo.replace('/', '--')} there), {end}"
        )
    url = getattr(cfg, "url", None) or "?"
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    name = os.path.basename(url)
    return f"weights {full} are not on disk and could not be downloaded: put {name} (from {url}) in {folder}, {end}"


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Raise these loggers to ERROR for the duration (restored after)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class ImageClassifier(nn.Module):
    """backbone -> bottleneck (Linear-BN-ReLU[-Dropout]) -> head; ``forward`` returns (logits, features)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        bottleneck_dim: int = 256,
        bottleneck_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if bottleneck_dim > 0:
            layers: list[nn.Module] = [
                nn.Linear(feature_dim, bottleneck_dim),
                nn.BatchNorm1d(bottleneck_dim),
                nn.ReLU(),
            ]
            if bottleneck_dropout > 0:
                layers.append(nn.Dropout(bottleneck_dropout))
            self.bottleneck: nn.Module = nn.Sequential(*layers)
            self.features_dim = bottleneck_dim
        else:
            self.bottleneck = nn.Identity()
            self.features_dim = feature_dim
        self.head = nn.Linear(self.features_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.bottleneck(self.backbone(x))  # (B, D)
        if torch.is_autocast_enabled(x.device.type):
            # Under mixed precision the head alone runs in float32: bfloat16 logits (8 significant bits) would
            # round close classes to ties in argmax, softmax thresholds and entropies. It costs D x K MACs.
            with torch.autocast(x.device.type, enabled=False):
                return self.head(f.float()), f  # (B, K) float32, (B, D) in the autocast dtype
        return self.head(f), f  # (B, K), (B, D)


def backbone_label(cfg: BackboneConfig) -> str:
    """The backbone as results.json and the closing line name it: ``resnet18`` (this package's, torchvision's)
    and ``timm/resnet18`` (timm's model of that name) are different networks."""
    return f"{cfg.library}/{cfg.name}" if cfg.library else cfg.name


def build_model(cfg: BackboneConfig, num_classes: int, in_channels: int, image_size: int) -> ImageClassifier:
    if cfg.library == "timm":
        backbone, dim = timm_backbone(cfg.name, cfg.weights, in_channels, image_size)
    elif cfg.library is None:
        factory = BACKBONES.get(cfg.name)
        backbone, dim = factory(weights=cfg.weights, in_channels=in_channels, image_size=image_size)
    else:
        raise ConfigError(f"unknown backbone.library {cfg.library!r}; valid: null (lenet, torchvision names), timm")
    return ImageClassifier(backbone, dim, num_classes, cfg.bottleneck_dim, cfg.bottleneck_dropout)
