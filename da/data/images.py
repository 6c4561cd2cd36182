"""Image folders decoded once into uint8 tensors, and the per-sample tensor transforms that train on them.

A domain is ``<domain_dir>/<class>/*`` (one sub-folder per class). Every image is decoded once, converted to
RGB and resized to ``resize`` x ``resize`` (the square ``ResizeImage(256)`` of the DANN / CDAN reference code,
Long et al. arXiv 1705.10667), and held as one uint8 tensor (N, 3, S, S). Training then only crops, flips,
converts and normalises tensors: no image is decoded inside the training loop.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from da.data.base import LabelledTensors
from da.data.decode import decode_image
from da.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MEMORY_WARNING_BYTES = 8 * 2**30  # decoded domains above this size get a warning (use a smaller resize)


def subfolders(folder: str) -> list[str]:
    """Sorted names of the visible sub-folders of ``folder``."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def image_files(folder: str) -> list[str]:
    """Sorted image files (by extension) anywhere under ``folder``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [
            os.path.join(dirpath, f)
            for f in filenames
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(out)


def scan_classes(domain_dir: str, what: str) -> dict[str, list[str]]:
    """``{class name: image paths}`` of a ``<domain_dir>/<class>/*`` tree; empty class folders are an error."""
    if not os.path.isdir(domain_dir):
        raise DataError(f"{what}: folder not found: {domain_dir}")
    classes = subfolders(domain_dir)
    if not classes:
        raise DataError(f"{what}: no class folders in {domain_dir} (expected {domain_dir}/<class>/<image>)")
    files = {c: image_files(os.path.join(domain_dir, c)) for c in classes}
    empty = [c for c, f in files.items() if not f]
    if empty:
        raise DataError(
            f"{what}: empty class folder(s) in {domain_dir}: {', '.join(empty)} "
            f"(no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS[:3])}/... images); remove them or add images"
        )
    return files


def check_same_classes(classes: dict[str, list[str]]) -> list[str]:
    """The class list shared by every domain in ``{domain: class names}``; an error names the differences."""
    names = list(classes)
    reference = set(classes[names[0]])
    for other in names[1:]:
        theirs = set(classes[other])
        if theirs != reference:
            # names that differ only in their Unicode form (NFC on Linux, NFD from a macOS copy) print alike:
            # show their code points, and how to make them one form
            alike = {unicodedata.normalize("NFC", n) for n in reference} == {
                unicodedata.normalize("NFC", n) for n in theirs
            }
            show = ascii if alike else str
            diffs = [
                f"only in {d}: {', '.join(show(n) for n in sorted(a - b))}"
                for d, a, b in ((names[0], reference, theirs), (other, theirs, reference))
                if a - b
            ]
            hint = (
                "; the same names in different Unicode normalisation (NFC / NFD, e.g. copied from macOS): rename "
                "one domain's class folders to the other's form (convmv -r --nfc -f utf8 -t utf8 --notest DIR)"
                if alike
                else ""
            )
            raise DataError(f"domains {names[0]} and {other} have different classes ({'; '.join(diffs)}){hint}")
    return sorted(reference)


@dataclass
class DecodedImages:
    x: torch.Tensor  # (N, 3, S, S) uint8 — or DiskImages (da.data.cache) when a cached set exceeds the memory budget
    y: torch.Tensor  # (N,) long
    skipped: list[str]  # "path: reason" of every file that could not be decoded


@dataclass
class CacheOptions:
    """Where decoded sets are cached and how much of them may be held in memory (see :mod:`da.data.cache`)."""

    root: str | None  # <root>/.da-cache; None: no cache
    mode: str = "auto"  # auto (sets of at least MIN_CACHED_BYTES), true, false
    budget: int | None = None  # bytes; None: half the machine's memory


def decode_folder(
    files: dict[str, list[str]], class_names: list[str], size: int, what: str, cache: CacheOptions | None = None
) -> DecodedImages:
    """Decode every image of ``{class: paths}`` once into a uint8 tensor; unreadable files are skipped."""
    paths = [p for c in class_names for p in files[c]]
    labels = [k for k, c in enumerate(class_names) for _ in files[c]]
    return decode_paths(paths, labels, class_names, size, what, cache)


def decode_paths(
    paths: list[str],
    labels: list[int],
    class_names: list[str],
    size: int,
    what: str,
    cache: CacheOptions | None = None,
) -> DecodedImages:
    """Decode ``paths`` (labels ``labels``) into (N, 3, S, S) uint8 — through the decoded-image cache when
    ``cache`` asks for it; unreadable files are skipped with their reason."""
    from da.data.cache import MIN_CACHED_BYTES, cached_decode, memory_budget

    estimate = len(paths) * 3 * size * size
    use_cache = (
        cache is not None
        and cache.root
        and (cache.mode == "true" or (cache.mode == "auto" and estimate >= MIN_CACHED_BYTES))
    )
    if use_cache:
        budget = memory_budget(None) if cache.budget is None else cache.budget  # type: ignore[union-attr]
        x, failed = cached_decode(paths, size, cache.root, budget, what)  # type: ignore[arg-type,union-attr]
    else:
        if estimate > MEMORY_WARNING_BYTES:
            log.warning(
                "%s: holding %d images at %dx%d takes %.1f GiB of memory; a smaller dataset.resize needs less",
                what,
                len(paths),
                size,
                size,
                estimate / 2**30,
            )
        x, failed = _decode_in_memory(paths, size)
    skipped = [f"{paths[i]}: {e}" for i, e in sorted(failed.items())]
    keep = [i for i in range(len(paths)) if i not in failed]
    if skipped:
        log.warning(
            "%s: skipped %d unreadable image(s), e.g. %s (all in skipped_files.txt)", what, len(skipped), skipped[0]
        )
        x = x[torch.tensor(keep)] if len(keep) else x[torch.tensor([], dtype=torch.long)]
    survivors = {labels[i] for i in keep}
    present = set(labels)
    lost = [c for k, c in enumerate(class_names) if k in present and k not in survivors]
    if lost:
        raise DataError(f"{what}: every image of class(es) {', '.join(lost)} is unreadable")
    y = torch.tensor([labels[i] for i in keep], dtype=torch.long)
    return DecodedImages(x, y, skipped)


def _decode_in_memory(paths: list[str], size: int) -> tuple[torch.Tensor, dict[int, str]]:
    """(N, 3, S, S) uint8 decoded by threads in this process (PIL releases the GIL); {row: reason} of failures."""
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)  # (N, S, S, 3), filled in place

    def work(i: int) -> str | None:
        out = decode_image(paths[i], size)
        if isinstance(out, str):
            return out
        pixels[i] = out
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(work, range(len(paths))))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S): 3x faster crops than a view
    return x, {i: e for i, e in enumerate(errors) if e is not None}


class TensorTransform:
    """uint8 (3, S, S) -> normalised float (3, C, C): random crop + horizontal flip when training, else centre crop.

    The crop of the standard Office-31 protocol (resize 256, crop 224; arXiv 1409.7495, 1705.10667). The work is
    done by its batched twin :class:`da.data.batches.CropFlipNormalize` (``batched()``), which the trainer
    applies to whole batches; calling this object transforms one image (the ``DataLoader`` path).
    """

    def __init__(
        self,
        crop: int,
        train: bool,
        flip: bool = True,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.crop, self.train, self.flip = crop, train, flip
        self.mean, self.std = tuple(mean), tuple(std)
        from da.data.batches import CropFlipNormalize

        self._batched = CropFlipNormalize(self.crop, self.train, self.flip, self.mean, self.std)

    def batched(self):
        """The batched twin (one object per transform: splits sharing this transform share it too)."""
        return self._batched

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._batched(x.unsqueeze(0))[0]


def train_and_eval(images: DecodedImages, crop: int, flip: bool = True) -> tuple[LabelledTensors, LabelledTensors]:
    """The same decoded tensor seen twice: with the training augmentation and with the evaluation crop."""
    return (
        LabelledTensors(images.x, images.y, TensorTransform(crop, train=True, flip=flip)),
        LabelledTensors(images.x, images.y, TensorTransform(crop, train=False)),
    )


def stratified_split(labels: torch.Tensor, seed: int, test_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) indices: ``test_fraction`` of each class (rounded) for test, drawn with ``seed``.

    Every class keeps at least one training image, and one test image when it has two images or more. Written
    here rather than with scikit-learn's ``train_test_split(stratify=...)``, which refuses a class of one image
    and may leave a small class out of the test split entirely (user folders often have such classes).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    y = labels.numpy()
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n_test = min(max(int(round(test_fraction * len(idx))), 1), len(idx) - 1)
        test += idx[:n_test].tolist()
        train += idx[n_test:].tolist()
    return torch.tensor(sorted(train), dtype=torch.long), torch.tensor(sorted(test), dtype=torch.long)


def subset(images: DecodedImages, index: torch.Tensor) -> DecodedImages:
    return DecodedImages(images.x[index], images.y[index], images.skipped)
