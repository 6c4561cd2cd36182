"""The one image decoder: a file (or PIL image) -> uint8 pixels at the network's resize, for training and inference.

Decoded folders (:mod:`da.data.images`, the decoded-image cache's worker processes) and ``da predict`` /
``LoadedRun.predict_images`` (:mod:`da.inference`) call :func:`to_pixels`, so an image gives the same bytes in both.
Pillow's ``convert`` clips wider-than-8-bit pixels (a 16-bit grey PNG becomes white, a float image in [0, 1]
black); :func:`to_8bit` scales them to 8 bits first. Every other mode (1, L, P, LA, PA, RGB, RGBA, CMYK, YCbCr)
is Pillow's own conversion: alpha is dropped, a palette is looked up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer grey images scaled to 8 bits (``I;16``: by 65535; ``I``: by 65535, or by its
    maximum above that); float images (``F``) in [0, 1] scaled by 255, other float images clipped to [0, 255]."""
    if img.mode in WIDE_INTEGER_MODES:
        arr = np.asarray(img).astype(np.float64)
        full = 65535.0 if img.mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        return Image.fromarray(np.clip(np.rint(arr * 255.0 / full), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    return img


def to_pixels(img: Image.Image, size: int, channels: int = 3) -> np.ndarray:
    """(S, S, C) uint8 pixels of ``img``: scaled to 8 bits, converted to grey (C = 1) or RGB (C = 3), resized
    (bilinear) to ``size`` x ``size`` — the square ``ResizeImage`` of the DANN / CDAN reference code."""
    img = to_8bit(img).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def decode(image: Any, size: int, channels: int = 3) -> np.ndarray:
    """:func:`to_pixels` of a file path or a PIL image; Pillow's errors propagate."""
    if isinstance(image, Image.Image):
        return to_pixels(image, size, channels)
    with Image.open(image) as img:
        return to_pixels(img, size, channels)


def decode_image(path: str, size: int) -> np.ndarray | str:
    """(S, S, 3) uint8 pixels of one image file, or the reason it cannot be read."""
    try:
        return decode(path, size)
    except Exception as err:  # a corrupt or truncated file of any kind is skipped, never fatal
        return f"{type(err).__name__}: {err}"
