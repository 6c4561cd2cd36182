"""Dataset registry: ``dataset.name`` -> (typed config, builder returning a :class:`Task`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from da.data.base import LabelledTensors, Task, Unlabelled, forever, make_loader
from da.errors import ConfigError
from da.registry import Registry


@dataclass
class DatasetEntry:
    config: type
    build: Callable[..., Task]


DATASETS: Registry[DatasetEntry] = Registry("dataset")


DIGIT_DOMAINS = ("fonts", "sklearn", "sklearn_inverted")


@dataclass
class DigitsConfig:
    name: str = "digits"
    source: str = "fonts"  # fonts | sklearn | sklearn_inverted
    target: str = "sklearn"  # sklearn | fonts | sklearn_inverted (the hard shift: inverted intensities)
    image_size: int = 28  # both domains are 8x8 and resized to this size
    samples_per_class: int = 500  # synthetic images per digit, generated from the seed
    target_test_fraction: float = 0.3  # fixed, stratified split of load_digits held out for evaluation
    source_test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in DIGIT_DOMAINS:
                valid = ", ".join(DIGIT_DOMAINS)
                raise ConfigError(f"dataset.{key} for digits must be one of {valid}, got {getattr(self, key)!r}")
        if self.image_size < 8:
            raise ConfigError(f"dataset.image_size must be >= 8, got {self.image_size}")
        if self.samples_per_class < 2:
            raise ConfigError(f"dataset.samples_per_class must be >= 2, got {self.samples_per_class}")
        for key in ("target_test_fraction", "source_test_fraction"):
            if not 0 < getattr(self, key) < 1:
                raise ConfigError(f"dataset.{key} must be in (0, 1), got {getattr(self, key)}")


def _build_digits(cfg: DigitsConfig, seed: int, data_root: str) -> Task:
    from da.data.digits import build_digits

    return build_digits(seed=seed, **vars(cfg))


DATASETS.register("digits")(DatasetEntry(DigitsConfig, _build_digits))

# Real data: each module holds its typed config and builder.
from da.data.folder import FolderConfig, build_folder  # noqa: E402
from da.data.mnist_usps import MnistUspsConfig, build_mnist_usps  # noqa: E402
from da.data.office31 import Office31Config, build_office31  # noqa: E402

DATASETS.register("mnist_usps")(DatasetEntry(MnistUspsConfig, build_mnist_usps))
DATASETS.register("office31")(DatasetEntry(Office31Config, build_office31))
DATASETS.register("folder")(DatasetEntry(FolderConfig, build_folder))

# Today's benchmarks: official layouts and lists, manifests (da/data/listed.py, da/data/digit5.py).
from da.data.digit5 import Digit5Config, SvhnConfig, build_digit5, build_svhn  # noqa: E402
from da.data.listed import (  # noqa: E402
    DomainNetConfig,
    MnistMConfig,
    OfficeHomeConfig,
    VisDA2017Config,
    build_listed,
)

for _name, _config in (
    ("office_home", OfficeHomeConfig),
    ("visda2017", VisDA2017Config),
    ("domainnet", DomainNetConfig),
    ("mnist_m", MnistMConfig),
):
    DATASETS.register(_name)(DatasetEntry(_config, build_listed))
DATASETS.register("svhn")(DatasetEntry(SvhnConfig, build_svhn))
DATASETS.register("digit5")(DatasetEntry(Digit5Config, build_digit5))


def build_task(cfg: object, seed: int, data_root: str) -> Task:
    entry = DATASETS.get(cfg.name)  # type: ignore[attr-defined]
    return entry.build(cfg, seed, data_root)


__all__ = ["DATASETS", "DatasetEntry", "LabelledTensors", "Task", "Unlabelled", "build_task", "forever", "make_loader"]
