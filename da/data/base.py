"""The data contract: a Task holds a labelled source, an unlabelled target and labelled test splits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset


class LabelledTensors(Dataset):
    """Images held in memory as one tensor (N, C, H, W) with labels (N,); an optional per-sample transform."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y, self.transform = x, y.long(), transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        return (self.transform(x) if self.transform else x), self.y[i]


class Unlabelled(Dataset):
    """The target as a method sees it: ``(image, index)``; the labels of ``base`` are dropped here.

    This is where target labels are hidden from transductive and unsupervised methods: the loader built on
    it yields no label, so no training step can read one. The index lets methods keep per-sample state
    (pseudo-labels, memory banks).
    """

    is_unlabelled = True

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.base[i][0], i


@dataclass
class Task:
    """A transfer task: ``source -> target`` with the splits each stage may use.

    ``target_train`` is unlabelled (see :class:`Unlabelled`). ``target_test`` is for evaluation only.
    ``target_train_labels`` exists for analysis (e.g. pseudo-label accuracy in logs) and is never handed to
    a method nor used for model selection.
    """

    name: str
    source: str
    target: str
    source_train: Dataset
    source_test: Dataset
    target_train: Unlabelled
    target_test: Dataset
    class_names: list[str]
    in_channels: int
    image_size: int
    target_train_labels: torch.Tensor | None = None
    skipped_files: int = 0
    notes: dict[str, object] = field(default_factory=dict)
    #: Labelled validation split carved from the labelled target budget (inductive tasks only): the trainer
    #: early-stops on it and reports the best epoch. Transductive tasks leave it None.
    val: Dataset | None = None
    #: The unlabelled target training images under the *evaluation* transform (same order and indices as
    #: ``target_train``): what pseudo-labelling, validators and the collapse monitor predict on. None: the
    #: training transform is not random, ``target_train`` itself serves.
    target_train_eval: Unlabelled | None = None
    #: Every unreadable file that was skipped, as "path: reason" (``skipped_files`` is their count).
    skipped: list[str] = field(default_factory=list)
    #: Labelled source images held out of ``source_train`` for label-free validators (dev, devn, source_val),
    #: under the evaluation transform; see :func:`hold_out_source_val`. None: no such split.
    source_val: Dataset | None = None

    def __post_init__(self) -> None:
        if self.target_train_eval is None:
            self.target_train_eval = self.target_train

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def transductive_task(
    name: str,
    source: str,
    target: str,
    source_splits: tuple[LabelledTensors, LabelledTensors],
    target_splits: tuple[LabelledTensors, LabelledTensors],
    class_names: list[str],
    in_channels: int,
    image_size: int,
    **extra: object,
) -> Task:
    """A :class:`Task` from each domain's (train, test) splits: the target's training labels are dropped here
    (:class:`Unlabelled`) and kept aside only for analysis. ``extra``: ``skipped_files``, ``skipped``, ``notes``,
    ``target_train_eval`` (the target training images under the evaluation transform, labels dropped here too).
    """
    (source_train, source_test), (target_train, target_test) = source_splits, target_splits
    if extra.get("target_train_eval") is not None:
        extra["target_train_eval"] = Unlabelled(extra["target_train_eval"])  # type: ignore[arg-type]
    return Task(
        name=name,
        source=source,
        target=target,
        source_train=source_train,
        source_test=source_test,
        target_train=Unlabelled(target_train),
        target_test=target_test,
        class_names=class_names,
        in_channels=in_channels,
        image_size=image_size,
        target_train_labels=target_train.y.clone(),
        **extra,  # type: ignore[arg-type]
    )


def hold_out_source_val(task: Task, fraction: float, split_seed: int = 0) -> Task:
    """Move a stratified ``fraction`` of the labelled source training images into ``task.source_val`` (evaluation
    transform), fixed by ``split_seed`` — not by the run's seed, so every seed and method sees the same split.

    The source *test* split stays for reporting. A task whose source training set is not in memory as
    :class:`LabelledTensors`, or too small to stratify, keeps it whole.
    """
    from sklearn.model_selection import train_test_split

    source = task.source_train
    if fraction <= 0 or not isinstance(source, LabelledTensors):
        return task
    y = source.y.numpy()
    classes = len(set(y.tolist()))
    n_val = int(round(fraction * len(y)))
    if n_val < classes or len(y) - n_val < classes:
        return task
    train, val = train_test_split(range(len(y)), test_size=n_val, stratify=y, random_state=split_seed)
    train, val = torch.as_tensor(sorted(train)), torch.as_tensor(sorted(val))
    eval_transform = getattr(task.source_test, "transform", None)  # the source images' evaluation view
    return replace(  # a new Task: a cached one (da.plots) is never split twice
        task,
        source_train=LabelledTensors(source.x[train], source.y[train], source.transform),
        source_val=LabelledTensors(source.x[val], source.y[val], eval_transform),
        notes={**task.notes, "source_val": {"train": len(train), "val": len(val), "split_seed": split_seed}},
    )


def make_loader(dataset: Dataset, batch_size: int, train: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A loader; training loaders shuffle with their own seeded generator and drop the last partial batch."""
    generator = torch.Generator().manual_seed(seed)
    drop_last = train and len(dataset) > batch_size  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=drop_last,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def forever(loader: DataLoader) -> Iterator:
    """Cycle through a loader endlessly (a fresh shuffle each pass)."""
    while True:
        yield from loader
