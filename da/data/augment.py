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
- :class:`BatchAugment` (:func:`build_batch_augment`): a whole batch (B, C, H, W) on its device (CPU or CUDA) with
  batched tensor ops, each image with its own random parameters from torch's global RNG on that device (so a
  seeded run is reproducible and resumes from saved RNG states). It follows torchvision's definitions; what
  differs from the per-sample version:

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
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

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
# Every helper below takes a batch of [0, 1] images u (B, C, H, W) and, where it has them, per-image parameters (B,)
# on u's device. Random numbers come from torch's global RNG on that device.

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
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


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
                self.ops.append(batch_flip)
            elif name == "crop" and glyphs:
                self.ops.append(partial(batch_shift_crop, size=image_size, pad=max(1, image_size // 8)))
            elif name == "crop":
                self.ops.append(partial(batch_resized_crop, size=image_size))
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


def _uniform(b: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """(B,) uniform in [low, high) on ``like``'s device and dtype."""
    return low + (high - low) * torch.rand(b, device=like.device, dtype=like.dtype)


def _randint(b: int, high: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """(B,) integers uniform in [0, high) (``high`` an int or (B,) tensor of ints >= 1), on ``like``'s device."""
    u = torch.rand(b, device=like.device, dtype=torch.float64)
    return (u * high).long().clamp_max(torch.as_tensor(high, device=like.device) - 1)


def batch_flip(u: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    mirror = torch.rand(u.shape[0], device=u.device) < 0.5  # (B,)
    return torch.where(mirror.view(-1, 1, 1, 1), u.flip(-1), u)


def batch_shift_crop(u: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """torchvision's ``RandomCrop(size, padding=pad, fill=0)`` per image: pad every side with ``pad`` pixels of 0,
    cut a (size, size) window at a random integer offset per image (a shift of up to ``pad`` pixels when the
    side is ``size``). Exact: a gather, no interpolation. (B, C, H, W) -> (B, C, size, size)."""
    b, c, h, w = u.shape
    padded = F.pad(u, (pad, pad, pad, pad), value=0.0)  # (B, C, H + 2 pad, W + 2 pad)
    top = _randint(b, h + 2 * pad - size + 1, u)  # (B,)
    left = _randint(b, w + 2 * pad - size + 1, u)
    steps = torch.arange(size, device=u.device)
    rows = (top[:, None] + steps).view(b, 1, size, 1).expand(b, c, size, w + 2 * pad)
    cols = (left[:, None] + steps).view(b, 1, 1, size).expand(b, c, size, size)
    return padded.gather(2, rows).gather(3, cols)


def resized_crop_boxes(
    b: int,
    height: int,
    width: int,
    like: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """(B, 4) crop boxes (top, left, height, width) in whole pixels: torchvision's
    ``RandomResizedCrop.get_params`` per image, vectorised. Each image draws ``attempts`` (area, aspect ratio)
    pairs and keeps the first that fits; an image with none that fits gets torchvision's fallback, the largest
    centre crop whose aspect ratio is within ``ratio``."""
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, attempts, device=like.device))  # (B, A)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, attempts, device=like.device))  # (B, A)
    ws = torch.sqrt(target * aspect).round().long()  # torch.round and Python's round both round half to even
    hs = torch.sqrt(target / aspect).round().long()
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)  # (B, A)
    first = fits.int().argmax(1, keepdim=True)  # (B, 1): the first attempt that fits (0 if none)
    found = fits.any(1)  # (B,)
    in_ratio = width / height  # the fallback: the centre crop
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, ws.gather(1, first).squeeze(1), fw)  # (B,)
    h = torch.where(found, hs.gather(1, first).squeeze(1), fh)
    top = torch.where(found, _randint(b, height - h + 1, like), (height - fh) // 2)
    left = torch.where(found, _randint(b, width - w + 1, like), (width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


def batch_resized_crop(u: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` per image: boxes from
    :func:`resized_crop_boxes`, resampled to (size, size) by ``roi_align(aligned=True)`` (bilinear; averages
    ceil(box / size)² samples per output pixel when the box is larger). (B, C, H, W) -> (B, C, size, size)."""
    b, _, h, w = u.shape
    top, left, bh, bw = resized_crop_boxes(b, h, w, u).to(u.dtype).unbind(1)
    index = torch.arange(b, device=u.device, dtype=u.dtype)
    boxes = torch.stack([index, left, top, left + bw, top + bh], 1)  # (B, 5): image, x1, y1, x2, y2 (pixel edges)
    return roi_align(u, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def _grey(u: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images (torchvision's weights); a 1-channel image is its own grey."""
    if u.shape[1] == 1:
        return u
    weights = torch.tensor(_GREY_WEIGHTS, device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * weights).sum(1, keepdim=True)


def _blend(u: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``other + factor (u - other)`` clamped to [0, 1], ``factor`` (B,)."""
    return (other + factor.view(-1, 1, 1, 1) * (u - other)).clamp(0, 1)


def adjust_brightness(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (u * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the grey image (one value per image)."""
    return _blend(u, _grey(u).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image; grey (1-channel) images are returned as they are, as torchvision does."""
    return u if u.shape[1] == 1 else _blend(u, _grey(u), factor)


def adjust_hue(u: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (B,) turns in [-0.5, 0.5]; grey (1-channel) images are returned as they are."""
    if u.shape[1] == 1:
        return u
    h, s, v = rgb_to_hsv(u).unbind(1)
    return hsv_to_rgb(torch.stack([(h + shift.view(-1, 1, 1)) % 1.0, s, v], 1))


def adjust_sharpness(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with a 3x3 smoothed image (torchvision's kernel: 1s around a 5, /13); the 1-pixel border keeps its
    values, as in torchvision."""
    c, h, w = u.shape[1:]
    if h <= 2 or w <= 2:
        return u
    kernel = torch.ones(3, 3, device=u.device, dtype=u.dtype)
    kernel[1, 1] = 5.0
    blurred = F.conv2d(u, (kernel / 13).expand(c, 1, 3, 3), groups=c)  # (B, C, H - 2, W - 2)
    smooth = u.clone()
    smooth[..., 1:-1, 1:-1] = blurred
    return _blend(u, smooth, factor)


def rgb_to_hsv(u: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (hue in turns; hue and saturation 0 where grey)."""
    r, g, b = u.unbind(1)
    v, _ = u.max(1)  # (B, H, W)
    chroma = v - u.min(1).values
    grey = chroma == 0
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, 1.0), 0.0)
    c = torch.where(grey, 1.0, chroma)
    h = torch.where(v == r, (g - b) / c, torch.where(v == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    h = torch.where(grey, 0.0, (h / 6.0) % 1.0)
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV -> RGB in [0, 1]: channel n of (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1) with
    k = (n' + 6 h) mod 6, n' = 5, 3, 1."""
    h, s, v = hsv.unsqueeze(2).unbind(1)  # each (B, 1, H, W)
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + 6.0 * h) % 6.0  # (B, 3, H, W)
    return (v - v * s * torch.minimum(k, 4.0 - k).clamp(0, 1)).clamp(0, 1)


def batch_color_jitter(u: torch.Tensor, strength: tuple[float, float, float, float]) -> torch.Tensor:
    """torchvision's ``ColorJitter(brightness, contrast, saturation, hue)`` with ``strength`` = those four, per
    image factors (brightness, contrast, saturation in [1 - s, 1 + s], hue shift in [-s, s]). The operations run
    in one random order per batch (torchvision draws one per call, i.e. per image). Saturation and hue are left
    out on grey (1-channel) images."""
    b = u.shape[0]
    brightness, contrast, saturation, hue = strength
    jitters = [(adjust_brightness, max(0.0, 1 - brightness), 1 + brightness)]  # (operation, factor range)
    jitters += [(adjust_contrast, max(0.0, 1 - contrast), 1 + contrast)]
    if u.shape[1] == 3:
        jitters += [(adjust_saturation, max(0.0, 1 - saturation), 1 + saturation), (adjust_hue, -hue, hue)]
    jitters = [(fn, low, high) for fn, low, high in jitters if high > low]
    factors = [_uniform(b, low, high, u) for _, low, high in jitters]  # each (B,)
    for k in torch.randperm(len(jitters), device=u.device).tolist():
        u = jitters[k][0](u, factors[k])
    return u


def _warp_nearest(u: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Resample each image at ``matrix @ p + offset`` for every output pixel centre p, in pixels measured from
    the image centre (``matrix`` (B, 2, 2), ``offset`` (B, 2), (x, y) order): nearest neighbour, 0 outside."""
    b, _, h, w = u.shape
    to_unit = torch.tensor([2.0 / w, 2.0 / h], device=u.device, dtype=u.dtype)  # pixels -> grid units
    theta = torch.cat([matrix * to_unit.view(1, 2, 1) / to_unit.view(1, 1, 2), (offset * to_unit)[..., None]], 2)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(u, grid, mode="nearest", padding_mode="zeros", align_corners=False)


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
        return adjust_brightness(u, factor)
    if op == "color":
        return adjust_saturation(u, factor)
    if op == "contrast":
        return adjust_contrast(u, factor)
    if op == "sharpness":
        return adjust_sharpness(u, factor)
    if op == "posterize":  # keep 8 - round(4 level) bits
        return TF.posterize(u, bits=int(round(8 - 4 * level)))
    if op == "solarize":
        return TF.solarize(u, threshold=1.0 - level)
    if op == "autocontrast":  # per image and channel
        return TF.autocontrast(u)
    if op == "equalize":  # per image and channel, on 256 levels
        return TF.equalize(u)
    raise ValueError(op)


def batch_randaugment(u: torch.Tensor, num_ops: int = 2, magnitude: int = 9, bins: int = 31) -> torch.Tensor:
    """torchvision's ``RandAugment(num_ops, magnitude, bins)``: ``num_ops`` rounds, in each every image draws one
    of the 14 operations and a sign. The images of a round are grouped by operation (a loop over the 14, each on
    its images only)."""
    b = u.shape[0]
    level = magnitude / (bins - 1)
    for _ in range(num_ops):
        choice = torch.randint(len(RANDAUGMENT_OPS), (b,), device=u.device)  # (B,)
        sign = torch.where(torch.rand(b, device=u.device, dtype=u.dtype) <= 0.5, -1.0, 1.0).to(u.dtype)
        out = u.clone()
        for k, op in enumerate(RANDAUGMENT_OPS):
            rows = (choice == k).nonzero().squeeze(1)
            if op != "identity" and rows.numel():
                out[rows] = _randaugment_op(op, u[rows], sign[rows], level)
        u = out
    return u
