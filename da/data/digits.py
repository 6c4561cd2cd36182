"""The embedded offline task: digits rendered from matplotlib's fonts -> scikit-learn's handwritten digits.

Source ("fonts"): the digits 0-9 drawn from every TrueType font that matplotlib ships and that has real
digit glyphs, each under a random affine transform, stroke width, blur and pixel noise, generated
deterministically from the seed, then reduced to 8x8 the way the target was made (area sums over a
32x32 bitmap).
Target ("sklearn"): ``sklearn.datasets.load_digits`` (1,797 real handwritten digits, 8x8, 17 grey
levels; UCI "Optical Recognition of Handwritten Digits"), with a fixed stratified test split that does
not depend on the seed.
Both domains are scaled to [0, 1], resized to ``image_size`` and normalised with mean 0.5, std 0.5.
The renderings are cached (``$XDG_CACHE_HOME/da/digits/``, else ``~/.cache/da/digits/``), keyed by everything
they depend on: matplotlib's, Pillow's and NumPy's versions, the font files' bytes, the rendering code, the seed
and the number per class.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import marshal
import os
import tempfile
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from da.data.base import LabelledTensors, Task, transductive_task

log = logging.getLogger(__name__)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TARGET_SPLIT_SEED = 20161  # fixed: the target test split is the same for every run and seed


@lru_cache(maxsize=1)
def digit_fonts() -> tuple[str, ...]:
    """Paths of matplotlib's TrueType fonts whose glyphs for '0'-'9' are real digits.

    Symbol fonts (cmex10, cmsy10, STIX size variants) map the digit code points to other glyphs, and the
    last-resort font maps them all to one box; glyph names tell them apart.
    """
    import matplotlib
    from matplotlib import ft2font

    folder = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    fonts = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".ttf"):
            continue
        path = os.path.join(folder, name)
        font = ft2font.FT2Font(path)
        glyphs = [font.get_glyph_name(font.get_char_index(ord(str(d)))) for d in range(10)]
        if all(g.startswith(d) for g, d in zip(glyphs, DIGIT_NAMES)):
            fonts.append(path)
    if not fonts:
        raise RuntimeError(f"no font with digit glyphs found in {folder}")
    return tuple(fonts)


def _fit_box(img: Image.Image, box: int) -> Image.Image:
    """Crop to the ink and scale it to fit a ``box`` x ``box`` square, centred (as NIST's preprocessing)."""
    bbox = img.getbbox()
    if bbox is None:
        return Image.new("L", (box, box))
    img = img.crop(bbox)
    w, h = img.size
    scale = (box - 2) / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    out = Image.new("L", (box, box))
    out.paste(img, ((box - img.size[0]) // 2, (box - img.size[1]) // 2))
    return out


def render_digit(digit: int, font_path: str, rng: np.random.Generator) -> np.ndarray:
    """One synthetic digit as an 8x8 float array in [0, 1]."""
    canvas = 96
    font = ImageFont.truetype(font_path, size=int(rng.integers(44, 60)))
    img = Image.new("L", (canvas, canvas))
    draw = ImageDraw.Draw(img)
    stroke = int(rng.integers(0, 5))
    draw.text(
        (canvas / 2, canvas / 2), str(digit), fill=255, font=font, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    angle = float(rng.uniform(-15, 15))
    shear = float(rng.uniform(-0.3, 0.3))
    sx, sy = rng.uniform(0.75, 1.15, size=2)
    # inverse affine map (output -> input) about the centre: rotation * shear * anisotropic scale
    c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
    forward = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    inv = np.linalg.inv(forward)
    centre = np.array([canvas / 2, canvas / 2])
    offset = centre - inv @ centre
    img = img.transform(
        img.size,
        Image.AFFINE,
        (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1]),
        resample=Image.BILINEAR,
    )
    img = _fit_box(img, 32)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 1.5))))
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (32, 32)
    arr = arr.reshape(8, 4, 8, 4).mean(axis=(1, 3))  # (8, 8) area average, as load_digits' 4x4 blocks
    arr = arr + rng.normal(0.0, float(rng.uniform(0.0, 0.08)), size=arr.shape)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def render_digits(samples_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples_per_class`` renderings of each digit, fonts cycled; (N, 8, 8) images and (N,) labels."""
    rng = np.random.default_rng(seed)
    fonts = digit_fonts()
    images, labels = [], []
    for digit in range(10):
        for k in range(samples_per_class):
            images.append(render_digit(digit, fonts[k % len(fonts)], rng))
            labels.append(digit)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def render_cache_dir() -> str:
    """Where rendered digits are cached: ``$XDG_CACHE_HOME/da/digits``, else ``~/.cache/da/digits``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "da", "digits")


def render_key(samples_per_class: int, seed: int) -> str:
    """A digest of everything :func:`render_digits` depends on: the libraries that draw and draw at random, the
    fonts' bytes, this module's rendering code and the arguments."""
    import matplotlib
    import PIL

    h = hashlib.sha256()
    for part in (matplotlib.__version__, PIL.__version__, np.__version__, samples_per_class, seed):
        h.update(f"{part}\0".encode())
    for fn in (render_digits, render_digit, _fit_box):
        try:
            h.update(inspect.getsource(fn).encode())
        except (OSError, TypeError):  # an install without the .py files: the bytecode stands for the code
            h.update(marshal.dumps(fn.__code__))
    for path in digit_fonts():
        with open(path, "rb") as fh:
            h.update(os.path.basename(path).encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()[:32]


def cached_render(samples_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_digits`, read from the cache when an earlier run rendered the same (the rendering takes
    seconds; the file is read in milliseconds), else rendered and written there atomically. An unreadable cache
    file is rendered again; an unwritable cache folder only costs the rendering next time."""
    folder = render_cache_dir()
    path = os.path.join(folder, f"fonts-{samples_per_class}-{seed}-{render_key(samples_per_class, seed)}.npz")
    try:
        with np.load(path) as data:
            return data["images"], data["labels"]
    except (OSError, KeyError, ValueError, EOFError):  # absent, truncated or another format: render it
        pass
    images, labels = render_digits(samples_per_class, seed)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, images=images, labels=labels)
            os.replace(tmp, path)  # atomic: a concurrent run reads the old file or the whole new one
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        log.debug("digits: not caching the renderings in %s: %s", folder, err)
    return images, labels


def _to_tensor(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(N, 8, 8) in [0, 1] -> (N, 1, S, S) normalised to mean 0.5, std 0.5."""
    x = torch.from_numpy(images).float().unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def _domain(
    name: str, seed: int, image_size: int, samples_per_class: int, test_fraction: float
) -> tuple[LabelledTensors, LabelledTensors]:
    """(train, test) splits of one domain; the sklearn split is fixed, the fonts split follows the seed."""
    from sklearn.model_selection import train_test_split

    if name == "fonts":
        images, labels = cached_render(samples_per_class, seed)
        split_seed = seed
    else:  # sklearn, or sklearn_inverted: the same images with inverted intensities (the hard shift)
        images, labels = load_sklearn_digits()
        if name == "sklearn_inverted":
            images = 1.0 - images
        split_seed = TARGET_SPLIT_SEED
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=split_seed
    )
    x, y = _to_tensor(images, image_size), torch.from_numpy(labels)
    return LabelledTensors(x[train], y[train]), LabelledTensors(x[test], y[test])


def build_digits(
    seed: int,
    source: str = "fonts",
    target: str = "sklearn",
    image_size: int = 28,
    samples_per_class: int = 500,
    target_test_fraction: float = 0.3,
    source_test_fraction: float = 0.2,
    **_: object,
) -> Task:
    """The digits task. ``source=target=sklearn`` trains on the target's labelled train split: the
    train-on-target upper bound, evaluated on the same fixed target test split."""
    fractions = {source: source_test_fraction, target: target_test_fraction}  # same domain: the target's
    domains = {name: _domain(name, seed, image_size, samples_per_class, fractions[name]) for name in {source, target}}
    return transductive_task(
        "digits", source, target, domains[source], domains[target], [str(d) for d in range(10)], 1, image_size
    )
