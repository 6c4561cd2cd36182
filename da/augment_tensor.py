"""Batched image augmentations on tensors, for methods that make their own views per batch (FixMatch).

Images arrive already normalised (any mean/std), shape (B, C, H, W). Geometric ops use one affine grid per
sample; photometric ops work on each image rescaled to [0, 1] by its own min/max and are mapped back, so they
do not depend on the dataset's normalisation. ``weak`` is FixMatch's flip-and-shift (Sohn et al., arXiv
2001.07685, Sec. 2.3; no horizontal flip for digits); ``strong`` is RandAugment (Cubuk et al., arXiv
1909.13719) with a random magnitude per sample as in FixMatch's RandAugment variant, followed by Cutout
(DeVries & Taylor, arXiv 1708.04552).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """(n,) uniform in [low, high) from torch's global RNG (seeded by the trainer), on ``like``'s device."""
    return low + (high - low) * torch.rand(n, device=like.device, dtype=like.dtype)


def affine(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "reflection") -> torch.Tensor:
    """Warp (B, C, H, W) images by per-sample (B, 2, 3) affine matrices in normalised coordinates."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _identity_theta(b: int, x: torch.Tensor) -> torch.Tensor:
    return torch.eye(2, 3, dtype=x.dtype, device=x.device).repeat(b, 1, 1)  # (B, 2, 3)


def weak(x: torch.Tensor, max_shift: float = 0.125, hflip: bool = False) -> torch.Tensor:
    """FixMatch's weak view: random translation up to ``max_shift`` of the side (reflect-padded) and, if
    ``hflip``, a horizontal flip with probability 0.5 (never for digits: a flipped 2 is not a 2)."""
    b = x.shape[0]
    theta = _identity_theta(b, x)
    theta[:, :, 2] = _rand(2 * b, -2 * max_shift, 2 * max_shift, x).view(b, 2)  # grid spans [-1, 1]: side = 2
    if hflip:
        flip = _rand(b, 0, 1, x) < 0.5
        theta[flip, 0, 0] = -1.0
    return affine(x, theta)


def _to_unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each image rescaled to [0, 1] by its own min/max; returns (x01, low, span) to map back."""
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-6)
    return (x - low) / span, low, span


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance blend: b + factor (a − b), clipped to [0, 1]; ``factor`` (B,)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _photometric(op: str, x01: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """One photometric op on (B, C, H, W) images in [0, 1] with per-sample magnitudes ``m`` (B,) in [0, 1]."""
    if op == "autocontrast":
        return x01  # already stretched to [0, 1] by _to_unit
    if op == "brightness":
        return _blend(x01, torch.zeros_like(x01), 1 + 0.9 * m * _sign(m))
    if op == "contrast":
        mean = x01.mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x01, mean.expand_as(x01), 1 + 0.9 * m * _sign(m))
    if op == "sharpness":
        c = x01.shape[1]
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x01.dtype, device=x01.device) / 13
        blurred = F.conv2d(F.pad(x01, (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3), groups=c)
        return _blend(x01, blurred, 1 + 0.9 * m * _sign(m))
    if op == "solarize":
        threshold = (1 - m).view(-1, 1, 1, 1)  # magnitude 1 inverts everything
        return torch.where(x01 >= threshold, 1 - x01, x01)
    if op == "posterize":
        levels = (2 ** (8 - (4 * m).round())).view(-1, 1, 1, 1)  # 8 .. 4 bits
        return torch.floor(x01 * (levels - 1) + 0.5) / (levels - 1)
    raise ValueError(op)


def _sign(m: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.rand_like(m) < 0.5, -torch.ones_like(m), torch.ones_like(m))


def _geometric_theta(op: str, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine matrices for rotate (±30°), shear (±0.3) and translate (±30% of the side)."""
    theta = _identity_theta(len(m), x)
    s = m * _sign(m)  # (B,) in [-1, 1]
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


PHOTOMETRIC = ("autocontrast", "brightness", "contrast", "sharpness", "solarize", "posterize")
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPS = ("identity", *PHOTOMETRIC, *GEOMETRIC)


def cutout(x: torch.Tensor, size: float = 0.5) -> torch.Tensor:
    """Fill one random square of side ``size`` × image side per image with the image's mean value."""
    b, _, h, w = x.shape
    side_h, side_w = max(1, round(size * h)), max(1, round(size * w))
    cy = (_rand(b, 0, 1, x) * h).long().view(-1, 1, 1)  # (B, 1, 1) centres
    cx = (_rand(b, 0, 1, x) * w).long().view(-1, 1, 1)
    ys = torch.arange(h, device=x.device).view(1, -1, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, -1)
    inside = ((ys - cy).abs() <= side_h // 2) & ((xs - cx).abs() <= side_w // 2)  # (B, H, W)
    fill = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    return torch.where(inside.unsqueeze(1), fill, x)


def strong(
    x: torch.Tensor,
    num_ops: int = 2,
    cutout_size: float = 0.5,
) -> torch.Tensor:
    """RandAugment with ``num_ops`` random ops per image, each with a random magnitude in [0, 1] (FixMatch's
    RandAugment variant, arXiv 2001.07685 Sec. 2.3 and Table 12), then Cutout."""
    b = x.shape[0]
    out = x
    for _ in range(num_ops):
        choice = torch.randint(len(OPS), (b,), device=x.device)  # (B,) op per image
        m = _rand(b, 0.05, 1.0, x)  # (B,) magnitude per image
        new = out.clone()
        x01, low, span = _to_unit(out)
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
