"""Corruption benchmarks: the 15 ImageNet-C corruptions of the embedded digits, and the CIFAR-10-C / CIFAR-100-C
files on disk.

``data=digits_c`` corrupts the source run's *target test split* (for ``dataset=digits``: the fixed split of
scikit-learn's handwritten digits, 28×28 grey, normalised with mean 0.5, std 0.5) with the 15 corruption types of
ImageNet-C (Hendrycks & Dietterich, ICLR 2019, arXiv 1903.12261) at the run's severity, through the
``imagecorruptions`` package (Michaelis et al., arXiv 1907.07484), which expects H×W×3 uint8 images of at least
32×32: each grey image is resized to ``data.work_size`` (32: the smallest it accepts, CIFAR's size), its channel
replicated, corrupted, the first channel kept (so the noise levels stay those of one channel) and resized back.
Three corruptions of imagecorruptions 1.1.2 are ported here with its parameters: ``glass_blur`` (scikit-image ≥ 0.19
dropped ``multichannel``), ``fog`` (NumPy 2 dropped ``np.float_``) and ``impulse_noise`` (scikit-image's
``random_noise`` draws from its own unseeded generator unless given ``rng=``). imagecorruptions draws from NumPy's
global generator: each image is corrupted under its own seed (the benchmark's ``data.corruption_seed``, the
corruption, the severity and the image's index), so an image is the same in every run, protocol and subset, and the
global state is restored afterwards. imagecorruptions imports ``pkg_resources`` (gone from setuptools ≥ 81) for its
frost images: it is imported with a stand-in for that one function (:func:`_import_imagecorruptions`), and
:func:`check_corruptions` applies every corruption of a run once to a small image before anything is written.
Corrupted images are cached in memory per process (the ``cache`` dict a caller passes to ``fit_stream``).

``data=cifar10c`` (and ``cifar100c``) reads ``<root>/CIFAR-10-C/<corruption>.npy`` — (5·n, 32, 32, 3) uint8, the
n images of severity s in rows (s−1)·n … s·n (n = 10,000 in the release) — and ``labels.npy``, as RobustBench's
``load_cifar10c`` does; the images are brought to the source model's channels, size and normalisation. Nothing is
downloaded: a missing file is one line naming the archive, its URL and its MD5 (:data:`ARCHIVES`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from da.errors import ConfigError, DataError

#: The 15 ImageNet-C / CIFAR-10-C corruptions in the order of every TTA paper's tables (tent, EATA, SAR, CoTTA).
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
# ported: imagecorruptions 1.1.2's versions fail on scikit-image >= 0.19 / NumPy 2, or ignore NumPy's seed
IN_HOUSE = ("glass_blur", "fog", "impulse_noise")
#: The source datasets whose normalisation is known here (mean, std of every channel).
NORMALISATION = {"digits": (0.5, 0.5), "mnist_usps": (0.5, 0.5)}


@dataclass(frozen=True)
class Archive:
    """A corruption benchmark's release: the archive, where it is, its MD5, and the folder it unpacks to."""

    file: str
    url: str
    md5: str
    folder: str


ARCHIVES = {
    "cifar10c": Archive(
        "CIFAR-10-C.tar",
        "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
        "56bf5dcef84df0e2308c6dcbcbbd8499",
        "CIFAR-10-C",
    ),
    "cifar100c": Archive(
        "CIFAR-100-C.tar",
        "https://zenodo.org/record/3555552/files/CIFAR-100-C.tar",
        "11f0ed0f1191edbf9fa23466ae6021d3",
        "CIFAR-100-C",
    ),
}


def _check_corruptions(names: list[str]) -> None:
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"data.corruptions: unknown {unknown or 'empty list'}; valid: {', '.join(CORRUPTIONS)}")


@dataclass
class DigitsCConfig:
    """``data=digits_c``: the embedded corruption benchmark (the schema of ``configs/tta/data/digits_c.yaml``)."""

    name: str = "digits_c"
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))  # the stream's domains, in order
    work_size: int = 32  # the size images are corrupted at (imagecorruptions needs >= 32)
    corruption_seed: int = 0  # fixed: the benchmark's images do not change with the run's seed

    def __post_init__(self) -> None:
        _check_corruptions(list(self.corruptions))
        if self.work_size < 32:
            raise ConfigError(f"data.work_size must be >= 32 (imagecorruptions' minimum), got {self.work_size}")


@dataclass
class CifarCConfig:
    """``data=cifar10c`` / ``cifar100c``: the released ``.npy`` files (``configs/tta/data/cifar10c.yaml``)."""

    name: str = "cifar10c"
    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS))
    root: str | None = None  # the folder holding CIFAR-10-C/; null = the top-level data_root

    def __post_init__(self) -> None:
        if self.name not in ARCHIVES:
            raise ConfigError(f"unknown data {self.name!r}; valid: digits_c, {', '.join(ARCHIVES)}")
        _check_corruptions(list(self.corruptions))


DATA_CONFIGS = {"digits_c": DigitsCConfig, "cifar10c": CifarCConfig, "cifar100c": CifarCConfig}


# ----------------------------------------------------------------------------------------------- the digits


def _resource_filename(package: str, name: str) -> str:
    """``pkg_resources.resource_filename``: ``name`` beside the module or package ``package``."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"no module {package!r} to find {name} beside")
    return os.path.join(os.path.dirname(spec.origin), name)


def _import_imagecorruptions():
    """imagecorruptions' ``corrupt``. Its module runs ``from pkg_resources import resource_filename`` (for its frost
    images), which setuptools 81 removed: that import is served by a stand-in holding only that function, present
    in ``sys.modules`` during the import alone, so the package behaves the same with or without setuptools."""
    import warnings

    if "imagecorruptions" not in sys.modules and sys.modules.get("pkg_resources") is None:
        missing = object()
        before = sys.modules.get("pkg_resources", missing)
        shim = types.ModuleType("pkg_resources")
        shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = shim
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy.ndimage.interpolation's deprecation warning
                import imagecorruptions
        finally:
            if before is missing:
                del sys.modules["pkg_resources"]
            else:
                sys.modules["pkg_resources"] = before
    import imagecorruptions

    return imagecorruptions.corrupt


def corruption_function(name: str):
    """``(H×W×3 uint8, severity) -> H×W×3 uint8``: imagecorruptions' ``corrupt`` or one of the ported three (whose
    output is quantised as ``corrupt`` does: ``np.uint8``)."""
    if name in IN_HOUSE:
        port = {"glass_blur": glass_blur, "fog": fog, "impulse_noise": impulse_noise}[name]
        return lambda image, severity: np.uint8(port(image, severity))
    corrupt = _import_imagecorruptions()
    return lambda image, severity: corrupt(image, severity=severity, corruption_name=name)


def check_corruptions(names: list[str], severity: int, work_size: int = 32) -> None:
    """Apply each corruption once to a small grey image (under a fixed seed; NumPy's global state is kept), so that a
    corruption this install cannot run is one ConfigError line before a run trains its source model."""
    probe = np.repeat(np.linspace(0, 255, work_size * work_size).reshape(work_size, work_size, 1), 3, axis=2)
    probe = probe.astype(np.uint8)
    for name in names:
        try:
            with _numpy_seed(0):
                out = np.asarray(corruption_function(name)(probe, severity))
        except Exception as err:  # an import or library failure of this install, named with its corruption
            raise ConfigError(f"corruption {name} fails in this install: {type(err).__name__}: {err}") from err
        if out.shape != probe.shape:
            raise ConfigError(f"corruption {name} returned shape {out.shape} for a {probe.shape} image")


def impulse_noise(x: np.ndarray, severity: int = 1) -> np.ndarray:
    """imagecorruptions 1.1.2's ``impulse_noise`` (salt and pepper, ImageNet-C's amounts), its generator seeded from
    NumPy's global one: scikit-image's ``random_noise`` otherwise draws from a fresh unseeded generator."""
    from skimage.util import random_noise

    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    rng = np.random.default_rng(np.random.randint(0, 2**32, dtype=np.uint64))  # noqa: NPY002 - the image's seed
    return np.clip(random_noise(np.array(x) / 255.0, mode="s&p", amount=amount, rng=rng), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int = 1) -> np.ndarray:
    """imagecorruptions 1.1.2's ``glass_blur`` (ImageNet-C's parameters), with scikit-image's ``channel_axis``."""
    from skimage.filters import gaussian

    sigma, delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=sigma, channel_axis=-1) * 255)
    h, w = x.shape[:2]
    for _ in range(iterations):  # locally shuffle pixels
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = np.random.randint(-delta, delta, size=(2,))  # noqa: NPY002 - the package's global RNG
                i2, j2 = i + dy, j + dx
                x[i, j], x[i2, j2] = x[i2, j2], x[i, j]
    return np.clip(gaussian(x / 255.0, sigma=sigma, channel_axis=-1), 0, 1) * 255


def plasma_fractal(mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """imagecorruptions' diamond-square height map in [0, 1] (float64 for NumPy 2)."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)  # noqa: NPY002

    while stepsize >= 2:
        corner = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corner + np.roll(corner, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(square)
        dr = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ul = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        lt = dr + np.roll(dr, 1, axis=0) + ul + np.roll(ul, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(lt)
        tt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=0)
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(tt)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: np.ndarray, severity: int = 1) -> np.ndarray:
    """imagecorruptions 1.1.2's ``fog`` (ImageNet-C's parameters) on H×W×3 uint8."""
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    h, w = x.shape[:2]
    size = 2 ** math.ceil(math.log2(max(h, w)))
    x = np.array(x) / 255.0
    max_val = x.max()
    x = x + c[0] * plasma_fractal(size, c[1])[:h, :w][..., None]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()  # noqa: NPY002 - imagecorruptions draws from the global generator
    np.random.seed(seed % 2**32)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def image_seed(corruption_seed: int, corruption: str, severity: int, index: int) -> int:
    return ((corruption_seed * 1_000_003 + CORRUPTIONS.index(corruption)) * 7 + severity) * 1_000_033 + index


def corrupt_digits(
    x: torch.Tensor, indices: np.ndarray, corruption: str, severity: int, cfg: DigitsCConfig, mean: float, std: float
) -> torch.Tensor:
    """``x[indices]`` (normalised (N, 1, H, W) grey images) under ``corruption`` at ``severity``, normalised the
    same way: each image at ``cfg.work_size``, replicated to 3 channels, corrupted, its first channel resized back."""
    fn = corruption_function(corruption)
    h, w = x.shape[-2:]
    unit = (x[torch.as_tensor(indices, dtype=torch.long)] * std + mean).clamp(0, 1)  # (n, 1, H, W) in [0, 1]
    big = F.interpolate(unit, size=(cfg.work_size, cfg.work_size), mode="bilinear", align_corners=False)
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()  # (n, S, S)
    out = np.empty(big.shape, dtype=np.float32)
    for k, (img, index) in enumerate(zip(big, indices)):
        with _numpy_seed(image_seed(cfg.corruption_seed, corruption, severity, int(index))):
            rgb = np.repeat(img[..., None], 3, axis=2)
            out[k] = np.asarray(fn(rgb, severity), dtype=np.float32)[..., 0]
    corrupted = torch.from_numpy(np.clip(out, 0, 255) / 255.0).unsqueeze(1)  # (n, 1, S, S)
    small = F.interpolate(corrupted, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return (small.clamp(0, 1) - mean) / std


# ----------------------------------------------------------------------------------------------- CIFAR-10-C


def cifar_c_folder(cfg: CifarCConfig, data_root: str) -> str:
    return os.path.join(os.path.expanduser(cfg.root or data_root), ARCHIVES[cfg.name].folder)


def check_cifar_c(cfg: CifarCConfig, data_root: str) -> str:
    """The benchmark's folder when every file the run reads is there; else one DataError line (no download)."""
    folder = cifar_c_folder(cfg, data_root)
    archive = ARCHIVES[cfg.name]
    for name in ("labels", *cfg.corruptions):
        path = os.path.join(folder, f"{name}.npy")
        if not os.path.isfile(path):
            raise DataError(
                f"{archive.folder} not found: {path} is missing; download {archive.file} ({archive.url}, md5 "
                f"{archive.md5}) and extract it into {os.path.dirname(folder)} (or set data.root)"
            )
    return folder


def load_cifar_c(folder: str, corruption: str, severity: int, indices: np.ndarray | None = None):
    """(images (n, 32, 32, 3) uint8, labels (n,) int64) of ``corruption`` at ``severity`` from the release's
    ``.npy`` files (memory-mapped: only the rows read are loaded); ``indices`` within the severity's block."""
    images = np.load(os.path.join(folder, f"{corruption}.npy"), mmap_mode="r")
    labels = np.load(os.path.join(folder, "labels.npy"), mmap_mode="r")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) % 5:
        raise DataError(f"{folder}/{corruption}.npy is not (5·n, H, W, 3) uint8: {images.shape} {images.dtype}")
    per = len(images) // 5
    if len(labels) < per:
        raise DataError(f"{folder}/labels.npy holds {len(labels)} labels for {per} images per severity")
    rows = np.arange(per) if indices is None else np.asarray(indices)
    start = (severity - 1) * per
    return np.asarray(images[start + rows]), np.asarray(labels[rows if len(labels) == per else start + rows]).astype(
        np.int64
    )


def to_model_input(images: np.ndarray, channels: int, size: int, mean: float, std: float) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, channels, size, size) normalised as the source model's data (grey by
    torchvision's luma weights for a one-channel model)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if channels == 1:
        x = (x * torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x.clamp(0, 1) - mean) / std
