"""The batched data path: training batches drawn by index from in-memory tensors and transformed as a batch.

Every data set of this package holds its images in memory as one tensor (uint8 for decoded folders, normalised
float for the digit sets). A :class:`TensorSplit` is such a split seen as ``(images, labels or indices,
batch transform)``; :func:`resolve` builds one from the ``Dataset`` objects a :class:`~da.data.base.Task` holds
(``LabelledTensors``, ``Unlabelled``, ``Subset``, the budget's ``Transformed``). A training batch is then one
index-select and one batched transform (random crop with per-image offsets, flip, uint8 -> float, normalisation,
augmentation presets), on the device when the data live there: no per-sample ``__getitem__``, no collate.

The order of the batches is the one the ``DataLoader`` of earlier versions drew: the same seeded generator,
the same permutations (see :func:`index_stream`), so a run with a deterministic transform (the digit sets)
reproduces bit for bit, and a resumed run draws the batches an uninterrupted one would.

A data set :func:`resolve` does not know (a user's own ``Dataset``) keeps the ``DataLoader`` path
(:func:`da.data.base.make_loader`), as does ``trainer.num_workers > 0``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch.utils.data import Dataset, Subset

from da.data.base import LabelledTensors, Unlabelled

BatchTransform = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) -> (B, C', H', W'), on any device


@dataclass
class TensorSplit:
    """A split held as tensors: ``x`` (N, C, H, W), ``labels`` (N,) or None for an unlabelled split (its batches
    carry the sample indices instead, as :class:`~da.data.base.Unlabelled` does), and a batch transform."""

    x: torch.Tensor
    labels: torch.Tensor | None
    transform: BatchTransform | None = None

    def __len__(self) -> int:
        return len(self.x)

    @property
    def nbytes(self) -> int:
        return self.x.nelement() * self.x.element_size() + (0 if self.labels is None else self.labels.nelement() * 8)

    def to(self, device: torch.device, pin: bool = False) -> TensorSplit:
        """The split with its tensors on ``device`` (``pin``: in pinned host memory, for non-blocking copies)."""
        if pin:
            x = self.x if self.x.is_pinned() else self.x.pin_memory()
            return replace(self, x=x)
        labels = None if self.labels is None else self.labels.to(device)
        return replace(self, x=self.x.to(device), labels=labels)

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` or ``(images, index)`` of the samples ``index`` (B,), transformed, on ``device``."""
        index = index.to(self.x.device)
        if not isinstance(self.x, torch.Tensor):  # rows on disk (da.data.cache.DiskImages): read into a buffer
            x = self.x.read(index, pin=device.type == "cuda")
        elif self.x.device != device and self.x.is_pinned():  # gather into pinned memory: an asynchronous copy
            x = torch.empty((len(index), *self.x.shape[1:]), dtype=self.x.dtype, pin_memory=True)
            torch.index_select(self.x, 0, index, out=x)
        else:
            x = self.x.index_select(0, index)
        if x.device != device:
            x = x.to(device, non_blocking=x.is_pinned())  # host -> accelerator
        if self.transform is not None:
            x = self.transform(x)
        second = index if self.labels is None else self.labels.index_select(0, index.to(self.labels.device))
        return x, second.to(device, non_blocking=True)

    def slices(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole split in order, ``batch_size`` at a time (evaluation)."""
        for start in range(0, len(self), batch_size):
            index = torch.arange(start, min(start + batch_size, len(self)))
            yield self.batch(index, device)


def resolve(dataset: Dataset | TensorSplit | None) -> TensorSplit | None:
    """``dataset`` as a :class:`TensorSplit`, or None when it is not made of in-memory tensors with transforms
    that have a batched form (then the caller falls back to a ``DataLoader``)."""
    if dataset is None or isinstance(dataset, TensorSplit):
        return dataset
    from da.data.budget import Transformed

    if isinstance(dataset, LabelledTensors):
        transform = batch_transform(dataset.transform)
        if transform is False:
            return None
        return TensorSplit(dataset.x, dataset.y, transform)  # type: ignore[arg-type]
    if isinstance(dataset, Unlabelled):
        base = resolve(dataset.base)
        return None if base is None else replace(base, labels=None)
    if isinstance(dataset, Subset):
        base = resolve(dataset.dataset)
        if base is None or base.labels is None:
            return None
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return replace(base, x=base.x[index], labels=base.labels[index])
    if isinstance(dataset, Transformed):
        base = resolve(dataset.base)
        extra = batch_transform(dataset.transform)
        if base is None or extra is False:
            return None
        return replace(base, transform=compose(base.transform, extra))  # type: ignore[arg-type]
    return None


def batch_transform(transform: Callable | None) -> BatchTransform | None | bool:
    """The batched form of a per-sample transform: None for none, False when there is no batched form."""
    if transform is None:
        return None
    batched = getattr(transform, "batched", None)  # per-sample transforms of this package name their twin
    return batched() if callable(batched) else False


def compose(first: BatchTransform | None, second: BatchTransform | None) -> BatchTransform | None:
    if first is None or second is None:
        return first or second
    return lambda x: second(first(x))


class CropFlipNormalize:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, C, C): a random crop per image (its own offsets) and a
    random horizontal flip per image when training, else the centre crop; then ``x / 255``, ``(x - mean) / std``.

    :class:`da.data.images.TensorTransform` applies it to one image (the ``DataLoader`` path). Runs on the
    images' device; its random numbers come from torch's generator of that device.
    """

    def __init__(self, crop: int, train: bool, flip: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.crop, self.train, self.flip = crop, train, flip
        self.mean, self.std = mean, std
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # (1, C, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._stats[device] = (mean, std)
        return self._stats[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        size = self.crop
        if self.train and (h > size or w > size):
            top = torch.randint(0, h - size + 1, (b,), device=x.device)  # (B,) per-image offsets
            left = torch.randint(0, w - size + 1, (b,), device=x.device)
            steps = torch.arange(size, device=x.device)
            rows = (top[:, None] + steps)[:, None, :, None]  # (B, 1, C, 1)
            cols = (left[:, None] + steps)[:, None, None, :]  # (B, 1, 1, C)
            batch = torch.arange(b, device=x.device)[:, None, None, None]
            channel = torch.arange(c, device=x.device)[None, :, None, None]
            x = x[batch, channel, rows, cols]  # (B, C, size, size)
        elif h > size or w > size:
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's centre crop
            x = x[:, :, top : top + size, left : left + size]
        if self.train and self.flip:
            mirror = torch.rand(b, device=x.device) < 0.5  # (B,)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        mean, std = self._mean_std(x.device)
        return (x.float() / 255.0 - mean) / std

    def __repr__(self) -> str:
        return f"CropFlipNormalize(crop={self.crop}, train={self.train}, flip={self.flip})"


def index_stream(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Batches of indices (B,) of an ``n``-sample split, endlessly: one seeded permutation per pass, the last
    partial batch dropped when ``n > batch_size``.

    The random draws are exactly those of ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``
    cycled pass after pass (each pass draws the loader's base seed, then the sampler's permutation, then, on
    finishing the pass, the permutation ``RandomSampler`` computes for its empty remainder), so runs of the
    batched path repeat those of the loader path batch for batch.
    """
    generator = torch.Generator().manual_seed(seed)
    drop_last = n > batch_size
    stop = n - n % batch_size if drop_last else n
    while True:
        torch.empty((), dtype=torch.int64).random_(generator=generator)  # the DataLoader iterator's base seed
        perm = torch.randperm(n, generator=generator)
        for start in range(0, stop, batch_size):
            yield perm[start : start + batch_size]
        torch.randperm(n, generator=generator)  # RandomSampler's remainder permutation (empty slice)


def batches(
    split: TensorSplit, batch_size: int, seed: int, device: torch.device, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches of ``split`` on ``device``, endlessly (see :func:`index_stream`).

    Under DDP (``world`` > 1) each step draws one global batch of ``world x batch_size`` indices and this
    rank reads the ``rank``-th contiguous slice of it: disjoint shards that together are one process's batch.
    """
    for index in index_stream(len(split), batch_size * world, seed):
        if world > 1:
            index = index[len(index) * rank // world : len(index) * (rank + 1) // world]
        yield split.batch(index, device)
