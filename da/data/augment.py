"""Per-sample augmentation presets for the labelled target data of inductive transfer.

Presets (``method.augment``: one name or a list, applied in the order given):

- ``none``: no augmentation.
- ``flip``: random horizontal flip. Natural images only: a mirrored digit is another glyph (or none), so the
  preset is refused for glyph data sets (``digits``, MNIST, USPS, SVHN).
- ``crop``: natural images: random resized crop to the image size, scale (0.08, 1) (the ImageNet recipe, Szegedy
  et al., arXiv 1409.4842); glyphs: a random shift of up to 1/8 of the side (pad with background, crop), since
  cutting off a stroke can change the class.
- ``color``: natural images: colour jitter (brightness, contrast, saturation 0.4, hue 0.1; grey images get
  brightness and contrast only); glyphs: brightness and contrast 0.4.
- ``randaugment``: RandAugment (Cubuk et al., arXiv 1909.13719), two operations at magnitude 9; it contains no
  flip, so it suits glyphs as well.

Images arrive normalised (``(x - mean) / std``, as every data set of this package stores them); the presets work
on the [0, 1] image and normalise again, so colour operations see real intensities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2 as T

from da.errors import ConfigError

PRESETS = ("none", "flip", "crop", "color", "randaugment")
GLYPH_DATASETS = ("digits", "mnist", "usps", "mnist_usps", "svhn", "svhn_mnist")
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DATASET_NORM = {"digits": ((0.5,), (0.5,)), "mnist_usps": ((0.5,), (0.5,))}


def normalisation(dataset: str, notes: dict | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a data set normalised its images with: ``notes["normalization"]`` if the Task declares it,
    else this package's known data sets, else ImageNet's statistics (the torchvision convention)."""
    if notes and "normalization" in notes:
        mean, std = notes["normalization"]
        return tuple(mean), tuple(std)
    return DATASET_NORM.get(dataset, IMAGENET_NORM)


def preset_names(augment: str | Sequence[str] | None) -> list[str]:
    """The preset names of ``method.augment`` (a name, a comma-separated string or a list), validated."""
    if augment is None:
        return []
    names = [augment] if isinstance(augment, str) else list(augment)
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    for name in names:
        if name not in PRESETS:
            raise ConfigError(f"unknown augmentation preset {name!r}; valid: {', '.join(PRESETS)}")
    return [n for n in names if n != "none"]


class Augment:
    """Callable on one normalised image (C, H, W) -> augmented normalised image (C, H, W)."""

    def __init__(
        self, names: list[str], image_size: int, mean: Sequence[float], std: Sequence[float], glyphs: bool
    ) -> None:
        self.names = names
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.ops: list[tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = []  # (op, needs uint8)
        for name in names:
            if name == "flip":
                if glyphs:
                    raise ConfigError("augment=flip mirrors glyphs into other symbols; use crop, color or randaugment")
                self.ops.append((T.RandomHorizontalFlip(), False))
            elif name == "crop":
                if glyphs:
                    pad = max(1, image_size // 8)
                    self.ops.append((T.RandomCrop(image_size, padding=pad, fill=0.0), False))
                else:
                    self.ops.append((T.RandomResizedCrop(image_size, scale=(0.08, 1.0), antialias=True), False))
            elif name == "color":
                strength = (0.4, 0.4) if glyphs else (0.4, 0.4, 0.4, 0.1)
                self.ops.append((_ColorJitter(*strength), False))
            elif name == "randaugment":
                self.ops.append((T.RandAugment(num_ops=2, magnitude=9), True))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = (x * self.std + self.mean).clamp(0, 1)  # (C, H, W) in [0, 1]
        for op, needs_uint8 in self.ops:
            if needs_uint8:
                u = op((u * 255).round().to(torch.uint8)).float() / 255
            else:
                u = op(u)
        return (u - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Augment({'+'.join(self.names) or 'none'})"


class _ColorJitter:
    """Colour jitter that leaves out saturation and hue on grey (1-channel) images."""

    def __init__(self, brightness: float, contrast: float, saturation: float = 0.0, hue: float = 0.0) -> None:
        self.grey = T.ColorJitter(brightness, contrast)
        self.rgb = T.ColorJitter(brightness, contrast, saturation, hue)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.grey(u) if u.shape[0] == 1 else self.rgb(u)


def build_augment(
    augment: str | Sequence[str] | None, dataset: str, image_size: int, notes: dict | None = None
) -> Augment | None:
    """The augmentation for ``dataset``'s images, or None for ``none``."""
    names = preset_names(augment)
    if not names:
        return None
    mean, std = normalisation(dataset, notes)
    return Augment(names, image_size, mean, std, glyphs=dataset in GLYPH_DATASETS)
