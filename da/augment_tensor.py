"""Batched image augmentations on the device: the package's one implementation of each operation.

Every operation takes a batch (B, C, H, W) and per-image parameters (B,) on the batch's device; random numbers
come from torch's global RNG on that device (seeded by the trainer, saved in checkpoints). Two callers compose
them: FixMatch/AdaMatch's views, :func:`weak` and :func:`strong` below, and the fine-tuning presets'
:class:`da.data.augment.BatchAugment`. Where the two recipes define an operation differently, the operation
takes the difference as an argument (``luma`` of :func:`adjust_contrast`, ``border`` of :func:`adjust_sharpness`,
``spread`` of :func:`posterize`), so that each recipe keeps its numbers.

The views work on normalised images (any mean/std): geometric ops warp them bilinearly on one affine grid per
sample; photometric ops work on each image rescaled to [0, 1] by its own min/max (:func:`to_unit`) and are mapped
back, so they do not depend on the dataset's normalisation. ``weak`` is FixMatch's flip-and-shift (Sohn et al.,
arXiv 2001.07685, Sec. 2.3; no horizontal flip for digits); ``strong`` is RandAugment (Cubuk et al., arXiv
1909.13719) with a random magnitude per sample as in FixMatch's RandAugment variant, followed by Cutout (DeVries
& Taylor, arXiv 1708.04552). The presets work on [0, 1] images and follow torchvision's definitions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale

# --- Random parameters, one per image ----------------------------------------------------------------------------


def uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """(n,) uniform in [low, high) on ``like``'s device and dtype."""
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


def randint(n: int, high: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """(n,) integers uniform in [0, high) (``high`` an int or (n,) tensor of ints >= 1), on ``like``'s device."""
    u = torch.rand(n, device=like.device, dtype=torch.float64)
    return (u * high).long().clamp_max(torch.as_tensor(high, device=like.device) - 1)


def random_sign(n: int, like: torch.Tensor, half_negative: bool = False) -> torch.Tensor:
    """(n,) of ±1 in ``like``'s dtype: −1 where a uniform draw is below 0.5 (or equal to it, ``half_negative``:
    the presets' convention)."""
    draw = torch.rand(n, device=like.device, dtype=like.dtype)
    negative = draw <= 0.5 if half_negative else draw < 0.5
    return torch.where(negative, -1.0, 1.0).to(like.dtype)


# --- Geometry ----------------------------------------------------------------------------------------------------


def affine(
    x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "reflection", mode: str = "bilinear"
) -> torch.Tensor:
    """Warp (B, C, H, W) images by per-sample (B, 2, 3) affine matrices in normalised coordinates."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def identity_theta(b: int, x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, dtype=x.dtype, device=x.device).repeat(b, 1, 1)  # (B, 2, 3)


def pixel_theta(matrix: torch.Tensor, offset: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) normalised affine matrices that sample each output pixel centre p at ``matrix @ p + offset``, in
    pixels from the image centre (``matrix`` (B, 2, 2), ``offset`` (B, 2), (x, y) order)."""
    scale = torch.tensor([2.0 / width, 2.0 / height], device=matrix.device, dtype=matrix.dtype)  # pixels -> grid
    return torch.cat([matrix * scale.view(1, 2, 1) / scale.view(1, 1, 2), (offset * scale)[..., None]], 2)


def random_hflip(u: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 0.5."""
    mirror = torch.rand(u.shape[0], device=u.device) < 0.5  # (B,)
    return torch.where(mirror.view(-1, 1, 1, 1), u.flip(-1), u)


def shift_crop(u: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """torchvision's ``RandomCrop(size, padding=pad, fill=0)`` per image: pad every side with ``pad`` pixels of 0,
    cut a (size, size) window at a random integer offset per image (a shift of up to ``pad`` pixels when the
    side is ``size``). Exact: a gather, no interpolation. (B, C, H, W) -> (B, C, size, size)."""
    b, c, h, w = u.shape
    padded = F.pad(u, (pad, pad, pad, pad), value=0.0)  # (B, C, H + 2 pad, W + 2 pad)
    top = randint(b, h + 2 * pad - size + 1, u)  # (B,)
    left = randint(b, w + 2 * pad - size + 1, u)
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
    top = torch.where(found, randint(b, height - h + 1, like), (height - fh) // 2)
    left = torch.where(found, randint(b, width - w + 1, like), (width - fw) // 2)
    return torch.stack([top, left, h, w], 1)


def resized_crop(u: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` per image: boxes from
    :func:`resized_crop_boxes`, resampled to (size, size) by ``roi_align(aligned=True)`` (bilinear; averages
    ceil(box / size)² samples per output pixel when the box is larger). (B, C, H, W) -> (B, C, size, size)."""
    b, _, h, w = u.shape
    top, left, bh, bw = resized_crop_boxes(b, h, w, u).to(u.dtype).unbind(1)
    index = torch.arange(b, device=u.device, dtype=u.dtype)
    boxes = torch.stack([index, left, top, left + bw, top + bh], 1)  # (B, 5): image, x1, y1, x2, y2 (pixel edges)
    from torchvision.ops import roi_align  # torchvision on first use: importing it costs ~2 s of start-up

    return roi_align(u, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def cutout(x: torch.Tensor, size: float = 0.5) -> torch.Tensor:
    """Fill one random square of side ``size`` × image side per image with the image's mean value."""
    b, _, h, w = x.shape
    side_h, side_w = max(1, round(size * h)), max(1, round(size * w))
    cy = (uniform(b, 0, 1, x) * h).long().view(-1, 1, 1)  # (B, 1, 1) centres
    cx = (uniform(b, 0, 1, x) * w).long().view(-1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, -1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, -1)
    inside = ((ys - cy).abs() <= side_h // 2) & ((xs - cx).abs() <= side_w // 2)  # (B, H, W)
    fill = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    return torch.where(inside.unsqueeze(1), fill, x)


# --- Intensities: images in [0, 1], factors (B,) -----------------------------------------------------------------


def to_unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image rescaled to [0, 1] by its own min/max; returns (x01, low, span) to map back."""
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-6)
    return (x - low) / span, low, span


def grey(u: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images (torchvision's weights); a 1-channel image is its own grey."""
    if u.shape[1] == 1:
        return u
    weights = torch.tensor(_GREY_WEIGHTS, device=u.device, dtype=u.dtype).view(1, 3, 1, 1)
    return (u * weights).sum(1, keepdim=True)


def blend(u: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's (and PIL's ImageEnhance) blend: ``other + factor (u - other)`` clamped to [0, 1]."""
    return (other + factor.view(-1, 1, 1, 1) * (u - other)).clamp(0, 1)


def adjust_brightness(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black."""
    return (u * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(u: torch.Tensor, factor: torch.Tensor, luma: bool = True) -> torch.Tensor:
    """Blend with one grey value per image: the mean of its luma (torchvision) or, ``luma=False``, of all its
    channels alike (FixMatch's views)."""
    return blend(u, (grey(u) if luma else u).mean(dim=(1, 2, 3), keepdim=True), factor)


def adjust_saturation(u: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grey image; grey (1-channel) images are returned as they are, as torchvision does."""
    return u if u.shape[1] == 1 else blend(u, grey(u), factor)


def adjust_hue(u: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``shift`` (B,) turns in [-0.5, 0.5]; grey (1-channel) images are returned as they are."""
    if u.shape[1] == 1:
        return u
    h, s, v = rgb_to_hsv(u).unbind(1)
    return hsv_to_rgb(torch.stack([(h + shift.view(-1, 1, 1)) % 1.0, s, v], 1))


def adjust_sharpness(u: torch.Tensor, factor: torch.Tensor, border: str = "keep") -> torch.Tensor:
    """Blend with a 3x3 smoothed image (torchvision's kernel: 1s around a 5, /13). ``border="keep"``: the 1-pixel
    border keeps its values, as in torchvision; ``"replicate"``: it is smoothed too, over replicated edges
    (FixMatch's views)."""
    c, h, w = u.shape[1:]
    kernel = torch.ones(3, 3, device=u.device, dtype=u.dtype)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13).expand(c, 1, 3, 3)
    if border == "replicate":
        return blend(u, F.conv2d(F.pad(u, (1, 1, 1, 1), mode="replicate"), kernel, groups=c), factor)
    if h <= 2 or w <= 2:
        return u
    smooth = u.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(u, kernel, groups=c)  # (B, C, H - 2, W - 2)
    return blend(u, smooth, factor)


def posterize(u: torch.Tensor, bits: torch.Tensor | int, spread: bool = False) -> torch.Tensor:
    """Keep ``bits`` (an int or (B,)) bits: torchvision's float posterize, floor(u 2^bits) / 2^bits, or,
    ``spread``, the nearest of 2^bits levels spread over [0, 1], both ends included (FixMatch's views)."""
    levels = 2**bits if isinstance(bits, int) else (2**bits).view(-1, 1, 1, 1)
    if spread:
        return torch.floor(u * (levels - 1) + 0.5) / (levels - 1)
    kept = (u * levels).floor().clamp_min(0)
    return torch.where(kept > levels - 1, levels - 1, kept) * (1.0 / levels)


def solarize(u: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (a float or (B,))."""
    if isinstance(threshold, torch.Tensor):
        threshold = threshold.view(-1, 1, 1, 1)
    return torch.where(u >= threshold, 1 - u, u)


def autocontrast(u: torch.Tensor) -> torch.Tensor:
    """Stretch each image and channel to [0, 1] (torchvision's)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.autocontrast(u)


def equalize(u: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise each image and channel on 256 levels (torchvision's, PIL's look-up table)."""
    from torchvision.transforms.v2 import functional as TF

    return TF.equalize(u)


def rgb_to_hsv(u: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (hue in turns; hue and saturation 0 where grey)."""
    r, g, b = u.unbind(1)
    v, _ = u.max(1)  # (B, H, W)
    chroma = v - u.min(1).values
    is_grey = chroma == 0
    s = torch.where(v > 0, chroma / torch.where(v > 0, v, 1.0), 0.0)
    c = torch.where(is_grey, 1.0, chroma)
    h = torch.where(v == r, (g - b) / c, torch.where(v == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    h = torch.where(is_grey, 0.0, (h / 6.0) % 1.0)
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) HSV -> RGB in [0, 1]: channel n of (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1) with
    k = (n' + 6 h) mod 6, n' = 5, 3, 1."""
    h, s, v = hsv.unsqueeze(2).unbind(1)  # each (B, 1, H, W)
    n = torch.tensor([5.0, 3.0, 1.0], device=hsv.device, dtype=hsv.dtype).view(1, 3, 1, 1)
    k = (n + 6.0 * h) % 6.0  # (B, 3, H, W)
    return (v - v * s * torch.minimum(k, 4.0 - k).clamp(0, 1)).clamp(0, 1)


# --- FixMatch/AdaMatch's views -----------------------------------------------------------------------------------

PHOTOMETRIC = ("autocontrast", "brightness", "contrast", "sharpness", "solarize", "posterize")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPS = ("identity", *PHOTOMETRIC, *GEOMETRIC)


def weak(x: torch.Tensor, max_shift: float = 0.125, hflip: bool = False) -> torch.Tensor:
    """FixMatch's weak view: random translation up to ``max_shift`` of the side (reflect-padded) and, if
    ``hflip``, a horizontal flip with probability 0.5 (never for digits: a flipped 2 is not a 2)."""
    b = x.shape[0]
    theta = identity_theta(b, x)
    theta[:, :, 2] = uniform(2 * b, -2 * max_shift, 2 * max_shift, x).view(b, 2)  # grid spans [-1, 1]: side = 2
    if hflip:
        flip = uniform(b, 0, 1, x) < 0.5
        theta[flip, 0, 0] = -1.0
    return affine(x, theta)


def _photometric(op: str, x01: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One photometric op of the strong view on images in [0, 1] with magnitudes ``m`` (B,) in [0, 1]; the
    blends draw a sign per image (factor 1 ± 0.9 m)."""
    if op == "autocontrast":
        return x01  # already stretched to [0, 1] by to_unit
    if op == "brightness":
        return adjust_brightness(x01, 1 + 0.9 * m * random_sign(len(m), m))
    if op == "contrast":
        return adjust_contrast(x01, 1 + 0.9 * m * random_sign(len(m), m), luma=False)
    if op == "sharpness":
        return adjust_sharpness(x01, 1 + 0.9 * m * random_sign(len(m), m), border="replicate")
    if op == "solarize":
        return solarize(x01, 1 - m)  # magnitude 1 inverts everything
    if op == "posterize":
        return posterize(x01, 8 - (4 * m).round(), spread=True)  # 8 .. 4 bits
    raise ValueError(op)


def _geometric_theta(op: str, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine matrices for rotate (±30°), shear (±0.3) and translate (±30% of the side)."""
    theta = identity_theta(len(m), x)
    s = m * random_sign(len(m), m)  # (B,) in [-1, 1]
    if op == "rotate":
        a = s * math.radians(30)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(a), -torch.sin(a)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(a), torch.cos(a)
    elif op == "shear_x":
        theta[:, 0, 1] = 0.3 * s
    elif op == "shear_y":
        theta[:, 1, 0] = 0.3 * s
    elif op == "translate_x":
        theta[:, 0, 2] = 0.6 * s
    elif op == "translate_y":
        theta[:, 1, 2] = 0.6 * s
    else:
        raise ValueError(op)
    return theta


def strong(x: torch.Tensor, num_ops: int = 2, cutout_size: float = 0.5) -> torch.Tensor:
    """RandAugment with ``num_ops`` random ops per image, each with a random magnitude in [0, 1] (FixMatch's
    RandAugment variant, arXiv 2001.07685 Sec. 2.3 and Table 12), then Cutout."""
    b = x.shape[0]
    out = x
    for _ in range(num_ops):
        choice = torch.randint(len(OPS), (b,), device=x.device)  # (B,) op per image
        m = uniform(b, 0.05, 1.0, x)  # (B,) magnitude per image
        new = out.clone()
        x01, low, span = to_unit(out)
        for k, op in enumerate(OPS):
            rows = (choice == k).nonzero().flatten()
            if op == "identity" or len(rows) == 0:
                continue
            if op in PHOTOMETRIC:
                new[rows] = _photometric(op, x01[rows], m[rows]) * span[rows] + low[rows]
            else:
                new[rows] = affine(out[rows], _geometric_theta(op, m[rows], out), padding_mode="border")
        out = new
    return cutout(out, cutout_size) if cutout_size > 0 else out
