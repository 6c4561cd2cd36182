"""``dataset=mnist_usps``: MNIST <-> USPS digits through torchvision's ``MNIST`` and ``USPS`` classes.

Protocol (as in Long et al. arXiv 1705.10667 and TLlib's digits benchmark): the full training set of each
domain (MNIST 60,000, USPS 7,291), the source labelled and the target unlabelled; accuracy on the target's test
split (MNIST 10,000, USPS 2,007). Both domains are 28x28 grey on one intensity scale: MNIST is uint8 in
[0, 255]; torchvision's USPS maps the libsvm values in [-1, 1] to uint8 [0, 255] as well, at 16x16. Both are
divided by 255, USPS is resized (bilinear) to 28x28, and both are normalised with mean 0.5, std 0.5 -- the
pitfall this avoids is USPS in [0, 255] against MNIST in [0, 1].

Files (torchvision's layouts): ``<data_root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``;
``<data_root>/USPS/usps.bz2`` and ``usps.t.bz2`` (or directly in ``<data_root>``, where ``USPS(root=data_root)``
puts them). Downloaded when missing and ``dataset.download`` is true.
"""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from da.data.base import LabelledTensors, Task, transductive_task
from da.errors import ConfigError, DataError, one_line

DOMAINS = ("mnist", "usps")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
USPS_FILES = {True: "usps.bz2", False: "usps.t.bz2"}  # train -> file
USPS_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/multiclass/"


@dataclass
class MnistUspsConfig:
    name: str = "mnist_usps"
    source: str = "mnist"  # mnist | usps
    target: str = "usps"  # usps | mnist; == source: train-on-target reference on the same test split
    image_size: int = 28  # both domains are resized to this (MNIST is 28x28, USPS 16x16)
    download: bool = True  # fetch missing files (torchvision's mirrors); offline: one line says what to put where

    def __post_init__(self) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in DOMAINS:
                raise ConfigError(f"dataset.{key} for mnist_usps must be mnist or usps, got {getattr(self, key)!r}")
        if self.image_size < 8:
            raise ConfigError(f"dataset.image_size must be >= 8, got {self.image_size}")


def _gunzip_missing(raw: str) -> None:
    """Decompress ``X.gz`` to ``X`` in MNIST/raw when only the archive is there (torchvision reads ``X``)."""
    for name in MNIST_FILES:
        path, packed = os.path.join(raw, name), os.path.join(raw, name + ".gz")
        if not os.path.isfile(path) and os.path.isfile(packed):
            try:
                with gzip.open(packed, "rb") as src, open(path + ".tmp", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(path + ".tmp", path)
            except (OSError, EOFError) as err:
                raise DataError(
                    f"cannot decompress {packed} ({one_line(err)}): delete it and download it again"
                ) from err


def load_mnist(data_root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) uint8 images and (N,) labels of one MNIST split."""
    from torchvision.datasets import MNIST

    raw = os.path.join(data_root, "MNIST", "raw")
    if os.path.isdir(raw):
        _gunzip_missing(raw)
    where = f"put {', '.join(f + '.gz' for f in MNIST_FILES)} (from {MNIST_URL}; gzipped or not) in {raw}/"
    if not all(os.path.isfile(os.path.join(raw, f)) for f in MNIST_FILES):
        if not download:
            raise DataError(f"MNIST not found and dataset.download is off: {where}")
        try:
            MNIST(data_root, train=train, download=True)
        except Exception as err:  # no network, a dead mirror, a bad checksum
            raise DataError(f"MNIST not found and the download failed ({_reason(err)}): {where}") from err
    names = MNIST_FILES[:2] if train else MNIST_FILES[2:]  # (images, labels) of the split
    images, labels = (_read_mnist_file(raw, name) for name in names)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(
            f"MNIST files {names[0]} ({tuple(images.shape)}) and {names[1]} ({tuple(labels.shape)}) in {raw} do not "
            f"match: delete them; {where}"
        )
    return images, labels.long()


def _read_mnist_file(raw: str, name: str) -> torch.Tensor:
    """One MNIST idx file (torchvision's reader), or a DataError naming the file that cannot be read."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor

    path = os.path.join(raw, name)
    try:
        return read_sn3_pascalvincent_tensor(path, strict=False)
    except Exception as err:  # a truncated or foreign file
        raise DataError(f"cannot read the MNIST file {path} ({_reason(err)}): delete it and download it again") from err


def load_usps(data_root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 16, 16) uint8 images and (N,) labels of one USPS split."""
    from torchvision.datasets import USPS

    name = USPS_FILES[train]
    home = os.path.join(data_root, "USPS")
    where = f"put {USPS_FILES[True]} and {USPS_FILES[False]} (from {USPS_URL}) in {home}/"
    root = next((r for r in (home, data_root) if os.path.isfile(os.path.join(r, name))), None)
    if root is None:
        if not download:
            raise DataError(f"USPS not found and dataset.download is off: {where}")
        try:
            USPS(home, train=train, download=True)
        except Exception as err:
            partial = os.path.join(home, name)
            if os.path.isfile(partial):
                os.remove(partial)  # never leave a partial file that would be read next time
            raise DataError(f"USPS not found and the download failed ({_reason(err)}): {where}") from err
        root = home
    try:
        ds = USPS(root, train=train, download=False)
    except (OSError, EOFError, ValueError, IndexError) as err:
        raise DataError(f"cannot read {os.path.join(root, name)} ({one_line(err)}): {where}") from err
    return torch.from_numpy(ds.data), torch.tensor(ds.targets, dtype=torch.long)


def _reason(err: BaseException) -> str:
    return one_line(err)[:160]


def to_tensor(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, H, W) uint8 in [0, 255] -> (N, 1, S, S) float, [0, 1] then normalised with mean 0.5, std 0.5."""
    x = images.float().div(255.0).unsqueeze(1)  # (N, 1, H, W) in [0, 1]
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.5


def load_domain(name: str, data_root: str, image_size: int, download: bool) -> tuple[LabelledTensors, LabelledTensors]:
    """(train, test) of ``name`` as normalised tensors."""
    loader = load_mnist if name == "mnist" else load_usps
    splits = []
    for train in (True, False):
        images, labels = loader(data_root, train, download)
        splits.append(LabelledTensors(to_tensor(images, image_size), labels.long()))
    return splits[0], splits[1]


def build_mnist_usps(cfg: MnistUspsConfig, seed: int, data_root: str) -> Task:
    domains = {
        d: load_domain(d, data_root, cfg.image_size, cfg.download) for d in dict.fromkeys((cfg.source, cfg.target))
    }
    return transductive_task(
        "mnist_usps",
        cfg.source,
        cfg.target,
        domains[cfg.source],
        domains[cfg.target],
        [str(d) for d in range(10)],
        1,
        cfg.image_size,
        notes={"normalization": ((0.5,), (0.5,))},
    )
