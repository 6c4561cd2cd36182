"""``dataset=folder``: any tree of image folders as a transfer task.

Two layouts:

- ``layout=domains`` (default): ``<root>/<domain>/<class>/<image>`` (Office-Home, PACS, DomainNet, your own).
  ``source`` != ``target``: the transductive protocol of Office-31 (Ganin et al. arXiv 1409.7495): every
  source image labelled, every target image unlabelled for training, accuracy reported on every target image.
  ``source`` == ``target``: one domain with a seeded stratified train/test split (inductive fine-tuning).
- ``layout=classes``: ``<root>/<class>/<image>`` (e.g. cats vs dogs) served as one domain with that split.

Images are decoded once into uint8 tensors (see :mod:`da.data.images`); training crops and flips tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from da.data.base import LabelledTensors, Task, transductive_task
from da.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CacheOptions,
    DecodedImages,
    check_same_classes,
    decode_folder,
    scan_classes,
    stratified_split,
    subfolders,
    subset,
    train_and_eval,
)
from da.errors import ConfigError, DataError

LAYOUTS = ("domains", "classes")
CACHE_MODES = ("auto", "true", "false")


def unfingerprinted(default: object) -> object:
    """A key that changes no number (``da.config.unfingerprinted``, which imports this package: not imported)."""
    return field(default=default, metadata={"fingerprint": False})


def check_cache(cache: object) -> str:
    mode = str(cache).lower()
    if mode not in CACHE_MODES:
        raise ConfigError(f"dataset.cache must be auto, true or false, got {cache!r}")
    return mode


@dataclass
class FolderConfig:
    name: str = "folder"
    root: str | None = None  # required: the tree; a relative path is tried against the cwd, then data_root
    source: str | None = None  # a domain folder under root (layout=domains)
    target: str | None = None  # == source: one domain split into train/test
    layout: str = "domains"  # domains: <root>/<domain>/<class>/*; classes: <root>/<class>/* (one domain)
    resize: int = 256  # every image is decoded once to resize x resize (uint8, held in memory)
    crop: int = 224  # random crop (training) / centre crop (evaluation) of that size
    flip: bool = True  # random horizontal flip when training
    test_fraction: float = 0.2  # one-domain tasks: stratified fraction held out for evaluation
    split_seed: int = 0  # one-domain tasks: the split is fixed by this, not by the run's seed
    # decoded images cached in <data_root>/.da-cache and shared by runs: auto (sets of 256 MiB or more), true, false
    cache: str = unfingerprinted("auto")
    # a cached set larger than this (GiB) stays on disk and batches are read from it; null: half the memory
    memory_budget_gb: float | None = unfingerprinted(None)

    def __post_init__(self) -> None:
        self.cache = check_cache(self.cache)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"dataset.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        check_sizes(self.resize, self.crop)
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"dataset.test_fraction must be in (0, 1), got {self.test_fraction}")


def check_sizes(resize: int, crop: int) -> None:
    if crop < 8 or resize < crop:
        raise ConfigError(f"need 8 <= dataset.crop <= dataset.resize, got crop={crop}, resize={resize}")


def resolve_root(root: str | None, data_root: str) -> str:
    if not root:
        raise DataError("dataset.root is required for dataset=folder: a folder holding <domain>/<class>/<image>")
    path = os.path.expanduser(root)
    if not os.path.isabs(path) and not os.path.exists(path) and os.path.exists(os.path.join(data_root, path)):
        path = os.path.join(data_root, path)
    if not os.path.isdir(path):
        raise DataError(f"dataset.root {root!r} is not a folder (looked in {os.path.abspath(path)})")
    return path


def cache_options(cfg: object, data_root: str) -> CacheOptions:
    """The decoded-image cache a dataset config asks for (``dataset.cache``, ``dataset.memory_budget_gb``)."""
    budget = getattr(cfg, "memory_budget_gb", None)
    root = os.path.expanduser(data_root) if data_root else None
    return CacheOptions(root, getattr(cfg, "cache", "auto"), None if budget is None else int(budget * 2**30))


def two_domain_task(
    name: str,
    source: str,
    target: str,
    dirs: dict[str, str],
    resize: int,
    crop: int,
    flip: bool = True,
    cache: CacheOptions | None = None,
) -> Task:
    """All source labelled + all target unlabelled for training; evaluation on all target images."""
    files = {d: scan_classes(dirs[d], f"{name} domain {d}") for d in (source, target)}
    class_names = check_same_classes({d: list(f) for d, f in files.items()})
    decoded = {d: decode_folder(files[d], class_names, resize, f"{name} domain {d}", cache) for d in (source, target)}
    target_splits = train_and_eval(decoded[target], crop, flip)  # (augmented, evaluation view) of one tensor
    return transductive_task(
        name,
        source,
        target,
        train_and_eval(decoded[source], crop, flip),
        target_splits,
        class_names,
        3,
        crop,
        skipped_files=sum(len(d.skipped) for d in decoded.values()),
        skipped=[p for d in decoded.values() for p in d.skipped],
        notes={"normalization": (IMAGENET_MEAN, IMAGENET_STD)},
        target_train_eval=target_splits[1],  # the target training images without augmentation
    )


def one_domain_task(
    name: str,
    domain: str,
    folder: str,
    cfg: FolderConfig,
    cache: CacheOptions | None = None,
) -> Task:
    """One domain split (stratified, seeded by ``cfg.split_seed``) into a labelled train and a test set.

    The train split is both the labelled source and the unlabelled target training set; both are evaluated
    on the held-out test split (as ``dataset=digits`` with ``source=target=sklearn``).
    """
    files = scan_classes(folder, f"{name} domain {domain}")
    class_names = sorted(files)
    decoded = decode_folder(files, class_names, cfg.resize, f"{name} domain {domain}", cache)
    train_idx, test_idx = stratified_split(decoded.y, cfg.split_seed, cfg.test_fraction)
    if len(test_idx) == 0:
        raise DataError(f"{name} domain {domain}: too few images for a test split ({len(decoded.y)} in all)")
    train: DecodedImages = subset(decoded, train_idx)
    test: DecodedImages = subset(decoded, test_idx)
    train_set, _ = train_and_eval(train, cfg.crop, cfg.flip)
    _, test_set = train_and_eval(test, cfg.crop, cfg.flip)
    return transductive_task(
        name,
        domain,
        domain,
        (train_set, test_set),
        (train_set, test_set),
        class_names,
        3,
        cfg.crop,
        skipped_files=len(decoded.skipped),
        skipped=decoded.skipped,
        notes={"normalization": (IMAGENET_MEAN, IMAGENET_STD)},
        target_train_eval=LabelledTensors(train.x, train.y, test_set.transform),  # without augmentation
    )


def build_folder(cfg: FolderConfig, seed: int, data_root: str) -> Task:
    root = resolve_root(cfg.root, data_root)
    if cfg.layout == "classes":
        if cfg.source and cfg.target and cfg.source != cfg.target:
            raise ConfigError("dataset.layout=classes is one domain: leave dataset.source/target unset or equal")
        domain = cfg.source or cfg.target or os.path.basename(os.path.normpath(root))
        return one_domain_task("folder", domain, root, cfg, cache_options(cfg, data_root))
    domains = subfolders(root)
    if not domains:
        raise DataError(f"no domain folders in {root} (expected {root}/<domain>/<class>/<image>)")
    for key in ("source", "target"):
        value = getattr(cfg, key)
        if not value:
            raise DataError(
                f"dataset.{key} is required for dataset=folder; domains found in {root}: {', '.join(domains)}"
            )
        if value not in domains:
            raise DataError(f"domain {value!r} not found in {root}; domains found: {', '.join(domains)}")
    if cfg.source == cfg.target:
        cache = cache_options(cfg, data_root)
        return one_domain_task("folder", cfg.source, os.path.join(root, cfg.source), cfg, cache)  # type: ignore[arg-type]
    dirs = {d: os.path.join(root, d) for d in (cfg.source, cfg.target)}  # type: ignore[misc]
    cache = cache_options(cfg, data_root)
    return two_domain_task("folder", cfg.source, cfg.target, dirs, cfg.resize, cfg.crop, cfg.flip, cache)  # type: ignore[arg-type]
