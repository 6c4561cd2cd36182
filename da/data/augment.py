"""Augmentation presets for the labelled target data of inductive transfer: per sample and per batch.

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

Two implementations of the same presets:

- :class:`Augment` (:func:`build_augment`): one image (C, H, W) at a time, torchvision's own transforms, for a
  DataLoader's workers.
- :class:`BatchAugment` (:func:`build_batch_augment`): a whole batch (B, C, H, W) on its device (CPU or CUDA),
  composed of the batched operations of :mod:`da.augment_tensor` (the ones FixMatch's views use), each image with
  its own random parameters from torch's global RNG on that device (so a seeded run is reproducible and resumes
  from saved RNG states). It follows torchvision's definitions; what differs from the per-sample version:

  - ``crop`` (natural images): the boxes are torchvision's (its 10-attempt rejection sampling, vectorised, with
    its centre-crop fallback), but the resampling is ``torchvision.ops.roi_align(aligned=True)`` with adaptive
    sampling: bilinear, averaging ceil(box / size)² samples per output pixel when the box is larger than the
    output (a box filter in place of torchvision's antialiased resize; identical to plain bilinear when the box
    is not larger), and samples at the box's edge read the neighbouring pixels outside the box instead of
    repeating the box's edge.
  - ``color``: torchvision draws a new random order of the jitter operations per image; the batch version draws
    one order per batch (the factors are still per image).
  - ``randaugment``: the same 14 operations as torchvision's (identity, shear x/y, translate x/y, rotate,
    brightness, color, contrast, sharpness, posterize, solarize, autocontrast, equalize), magnitudes and
    nearest-neighbour geometry with black fill (computed with ``F.grid_sample`` on per-image affine grids; on
    float images they agree pixel for pixel with torchvision's ``affine``/``rotate``), but on the float image,
    not on a uint8 copy: no rounding to 256 levels before and between the operations (equalize still bins
    into 256 levels, as torchvision does for float images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from da import augment_tensor as AT
from da.errors import ConfigError

PRESETS = ("none", "flip", "crop", "color", "randaugment")
GLYPH_DATASETS = ("digits", "mnist", "usps", "mnist_usps", "svhn", "svhn_mnist")
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FLIP_ON_GLYPHS = "augment=flip mirrors glyphs into other symbols; use crop, color or randaugment"
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
        self._args = (names, image_size, tuple(mean), tuple(std), glyphs)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.ops: list[tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = []  # (op, needs uint8)
        from torchvision.transforms import v2 as T  # on first use: importing torchvision costs ~2 s of start-up

        for name in names:
            if name == "flip":
                if glyphs:
                    raise ConfigError(FLIP_ON_GLYPHS)
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

    def batched(self) -> BatchAugment:
        """The same presets on whole batches (the trainer's batched data path, :mod:`da.data.batches`)."""
        return BatchAugment(*self._args)

    def __repr__(self) -> str:
        return f"Augment({'+'.join(self.names) or 'none'})"


class _ColorJitter:
    """Colour jitter that leaves out saturation and hue on grey (1-channel) images."""

    def __init__(self, brightness: float, contrast: float, saturation: float = 0.0, hue: float = 0.0) -> None:
        from torchvision.transforms import v2 as T

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


# --- Batched presets ---------------------------------------------------------------------------------------------
#
# Compositions of da.augment_tensor's operations on a batch of [0, 1] images u (B, C, H, W), per-image parameters
# (B,) on u's device, random numbers from torch's global RNG on that device.

RANDAUGMENT_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)  # torchvision's RandAugment space, in its order


class BatchAugment:
    """Callable on a normalised batch (B, C, H, W) -> augmented normalised batch (B, C, size, size), same dtype and
    device (``size`` = ``image_size``, the input's side in this package). Each image gets its own parameters.

    Same presets, arguments and refusals as :class:`Augment`; the module docstring lists what differs.
    """

    def __init__(
        self, names: list[str], image_size: int, mean: Sequence[float], std: Sequence[float], glyphs: bool
    ) -> None:
        if "flip" in names and glyphs:
            raise ConfigError(FLIP_ON_GLYPHS)
        self.names = names
        self.image_size = image_size
        self.glyphs = glyphs
        self.mean = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.ops: list[Callable[[torch.Tensor], torch.Tensor]] = []  # each (B, C, H, W) in [0, 1] -> same range
        for name in names:
            if name == "flip":
                self.ops.append(AT.random_hflip)
            elif name == "crop" and glyphs:
                self.ops.append(partial(AT.shift_crop, size=image_size, pad=max(1, image_size // 8)))
            elif name == "crop":
                self.ops.append(partial(AT.resized_crop, size=image_size))
            elif name == "color":
                strength = (0.4, 0.4, 0.0, 0.0) if glyphs else (0.4, 0.4, 0.4, 0.1)
                self.ops.append(partial(batch_color_jitter, strength=strength))
            elif name == "randaugment":
                self.ops.append(partial(batch_randaugment, num_ops=2, magnitude=9))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)  # half precision is computed in float32
        mean = self.mean.to(x.device, work)
        std = self.std.to(x.device, work)
        u = (x.to(work) * std + mean).clamp(0, 1)  # (B, C, H, W) in [0, 1]
        for op in self.ops:
            u = op(u)
        return ((u - mean) / std).to(x.dtype)

    def __repr__(self) -> str:
        return f"BatchAugment({'+'.join(self.names) or 'none'})"


def build_batch_augment(
    augment: str | Sequence[str] | None, dataset: str, image_size: int, notes: dict | None = None
) -> BatchAugment | None:
    """The batched augmentation for ``dataset``'s images, or None for ``none``."""
    per_sample = build_augment(augment, dataset, image_size, notes)
    return None if per_sample is None else per_sample.batched()


def batch_color_jitter(u: torch.Tensor, strength: tuple[float, float, float, float]) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` with ``strength`` = those four, per
    image factors (brightness, contrast, saturation in [1 - s, 1 + s], hue shift in [-s, s]). The operations run
    in one random order per batch (torchvision draws one per call, i.e. per image). Saturation and hue are left
    out on grey (1-channel) images."""
    b = u.shape[0]
    brightness, contrast, saturation, hue = strength
    jitters = [(AT.adjust_brightness, max(0.0, 1 - brightness), 1 + brightness)]  # (operation, factor range)
    jitters += [(AT.adjust_contrast, max(0.0, 1 - contrast), 1 + contrast)]
    if u.shape[1] == 3:
        jitters += [(AT.adjust_saturation, max(0.0, 1 - saturation), 1 + saturation), (AT.adjust_hue, -hue, hue)]
    jitters = [(fn, low, high) for fn, low, high in jitters if high > low]
    factors = [AT.uniform(b, low, high, u) for _, low, high in jitters]  # each (B,)
    for k in torch.randperm(len(jitters), device=u.device).tolist():
        u = jitters[k][0](u, factors[k])
    return u


def _warp_nearest(u: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Resample each image at ``matrix @ p + offset`` (pixels from the centre; :func:`AT.pixel_theta`): nearest
    neighbour, 0 outside, as torchvision's ``affine``/``rotate`` on tensors."""
    theta = AT.pixel_theta(matrix, offset, u.shape[2], u.shape[3])  # (B, 2, 3)
    return AT.affine(u, theta, padding_mode="zeros", mode="nearest")


def _randaugment_op(op: str, u: torch.Tensor, sign: torch.Tensor, level: float) -> torch.Tensor:
    """One RandAugment operation on (B, C, H, W) images in [0, 1] at ``level`` = magnitude / 30 of its maximum,
    signed per image by ``sign`` (B,) of ±1 for the signed operations, as torchvision's ``RandAugment`` does."""
    b, _, h, w = u.shape
    eye = torch.eye(2, device=u.device, dtype=u.dtype).repeat(b, 1, 1)  # (B, 2, 2)
    zero = torch.zeros(b, 2, device=u.device, dtype=u.dtype)  # (B, 2)
    if op == "identity":
        return u
    if op in ("shear_x", "shear_y"):  # about the top-left corner, by up to 0.3
        shear, matrix, offset = 0.3 * level * sign, eye.clone(), zero.clone()
        i, j, corner = (0, 1, -h / 2) if op == "shear_x" else (1, 0, -w / 2)
        matrix[:, i, j] = shear
        offset[:, i] = -shear * corner
        return _warp_nearest(u, matrix, offset)
    if op in ("translate_x", "translate_y"):  # whole pixels, up to 150/331 of the side
        axis, side = (0, w) if op == "translate_x" else (1, h)
        offset = zero.clone()
        offset[:, axis] = -int(150.0 / 331.0 * side * level) * sign
        return _warp_nearest(u, eye, offset)
    if op == "rotate":  # about the centre, by up to 30 degrees
        angle = math.radians(30.0 * level) * sign
        cos, sin = torch.cos(angle), torch.sin(angle)
        matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B, 2, 2)
        return _warp_nearest(u, matrix, zero)
    factor = 1.0 + 0.9 * level * sign  # (B,) for the blends
    if op == "brightness":
        return AT.adjust_brightness(u, factor)
    if op == "color":
        return AT.adjust_saturation(u, factor)
    if op == "contrast":
        return AT.adjust_contrast(u, factor)
    if op == "sharpness":
        return AT.adjust_sharpness(u, factor)
    if op == "posterize":  # keep 8 - round(4 level) bits
        return AT.posterize(u, int(round(8 - 4 * level)))
    if op == "solarize":
        return AT.solarize(u, 1.0 - level)
    if op == "autocontrast":  # per image and channel
        return AT.autocontrast(u)
    if op == "equalize":  # per image and channel, on 256 levels
        return AT.equalize(u)
    raise ValueError(op)


def batch_randaugment(u: torch.Tensor, num_ops: int = 2, magnitude: int = 9, bins: int = 31) -> torch.Tensor:
    """torchvision's ``RandAugment(num_ops, magnitude, bins)``: ``num_ops`` rounds, in each every image draws one
    of the 14 operations and a sign. The images of a round are grouped by operation (a loop over the 14, each on
    its images only)."""
    b = u.shape[0]
    level = magnitude / (bins - 1)
    for _ in range(num_ops):
        choice = torch.randint(len(RANDAUGMENT_OPS), (b,), device=u.device)  # (B,)
        sign = AT.random_sign(b, u, half_negative=True)  # (B,)
        out = u.clone()
        for k, op in enumerate(RANDAUGMENT_OPS):
            rows = (choice == k).nonzero().squeeze(1)
            if op != "identity" and rows.numel():
                out[rows] = _randaugment_op(op, u[rows], sign[rows], level)
        u = out
    return u
