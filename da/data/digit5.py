"""``dataset=svhn`` and ``dataset=digit5``: digit domains stored as MATLAB files, held as normalised tensors.

- ``svhn``: SVHN (Netzer et al., 2011) in torchvision's layout, ``<data_root>/svhn/{train,test}_32x32.mat``
  (73,257 / 26,032 images; label 10 is the digit 0), downloaded with their md5s from the authors' site.
- ``digit5``: Digit-Five as Peng et al.'s M3SDA code reads it (arXiv 1812.01754), the five files of its archive in
  ``<data_root>/digit5/``: ``mnist_data.mat``, ``mnistm_with_label.mat``, ``svhn_train_32x32.mat`` +
  ``svhn_test_32x32.mat``, ``syn_number.mat``, ``usps_28x28.mat``. Protocol: 25,000 training and 9,000 test
  images per domain (USPS: its 7,438 / 1,860), drawn once with ``split_seed`` (the reference code draws them
  unseeded). The archive lives on Google Drive only: a missing file is one line naming it and the folder.

Every image is 32x32 RGB (grey domains replicated), scaled to [0, 1] and normalised with mean 0.5, std 0.5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from da.data.base import LabelledTensors, Task, transductive_task
from da.errors import ConfigError, DataError, one_line

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES = {
    "train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d0373"),
    "test": ("test_32x32.mat", "eb5a983be6a315427106f1b69d0d4b5f"),
}  # torchvision's md5s
SVHN_COUNTS = {"train": 73_257, "test": 26_032}
DIGIT5_DOMAINS = ("mnist", "mnistm", "svhn", "syn", "usps")
DIGIT5_FILES = {
    "mnist": ("mnist_data.mat",),
    "mnistm": ("mnistm_with_label.mat",),
    "svhn": ("svhn_train_32x32.mat", "svhn_test_32x32.mat"),
    "syn": ("syn_number.mat",),
    "usps": ("usps_28x28.mat",),
}
DIGIT5_HOME = "https://drive.google.com/file/d/1QvC6mDVN25VArmTuSHqgd7Cf9CoiHvVt (Digit-Five, from ai.bu.edu/M3SDA)"
PROTOCOL = (25_000, 9_000)  # training / test images per domain (M3SDA)


@dataclass
class SvhnConfig:
    name: str = "svhn"
    source: str = "svhn"  # one domain: its train split labelled (and unlabelled), its test split reported
    target: str = "svhn"
    download: bool = True
    verify: bool = True  # the files' md5s and image counts

    def __post_init__(self) -> None:
        if self.source != "svhn" or self.target != "svhn":
            raise ConfigError("dataset=svhn is one domain; for SVHN as a source or target use dataset=digit5")


@dataclass
class Digit5Config:
    name: str = "digit5"
    source: str = "mnist"  # mnist | mnistm | svhn | syn | usps
    target: str = "mnistm"
    split_seed: int = 0  # the 25,000 / 9,000 images drawn per domain

    def __post_init__(self) -> None:
        for key in ("source", "target"):
            if getattr(self, key) not in DIGIT5_DOMAINS:
                valid = ", ".join(DIGIT5_DOMAINS)
                raise ConfigError(f"dataset.{key} for digit5 must be one of {valid}, got {getattr(self, key)!r}")


def load_mat(path: str) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as err:  # a truncated or foreign file
        raise DataError(f"cannot read {path} ({one_line(err)[:120]}): delete it and download it again") from err


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) or (N, C, H, W) pixels in [0, 255] (or [0, 1]) -> (N, 3, 32, 32) float, normalised."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.max() > 1.5:
        x = x / 255.0
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if x.shape[-1] != 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return ((x - 0.5) / 0.5).contiguous()


def svhn_arrays(mat: dict) -> tuple[np.ndarray, np.ndarray]:
    x = np.transpose(mat["X"], (3, 0, 1, 2))  # (32, 32, 3, N) -> (N, 32, 32, 3)
    y = mat["y"].reshape(-1).astype(np.int64) % 10  # 10 is the digit 0
    return x, y


def build_svhn(cfg: SvhnConfig, seed: int, data_root: str) -> Task:
    from torchvision.datasets.utils import check_integrity, download_url

    base = os.path.join(os.path.expanduser(data_root), "svhn")
    splits = []
    for split, (name, md5) in SVHN_FILES.items():
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            place = f"put {name} (md5 {md5}, from {SVHN_URL}) in {base}/"
            if not cfg.download:
                raise DataError(f"SVHN {split} file not found and dataset.download is off: {place}")
            try:
                download_url(SVHN_URL + name, base, name, md5=md5)
            except Exception as err:
                if os.path.isfile(path):
                    os.remove(path)
                raise DataError(
                    f"SVHN {name} not found and the download failed ({one_line(err)[:120]}): {place}"
                ) from err
        if cfg.verify and not check_integrity(path, md5):
            raise DataError(
                f"{path} does not match md5 {md5} (a partial or different download): delete it and download it again"
            )
        x, y = svhn_arrays(load_mat(path))
        if cfg.verify and len(y) != SVHN_COUNTS[split]:
            raise DataError(f"{path} holds {len(y):,} images, the official {split} split {SVHN_COUNTS[split]:,}")
        splits.append(LabelledTensors(to_tensor(x), torch.as_tensor(y)))
    pair = (splits[0], splits[1])
    return transductive_task(
        "svhn",
        "svhn",
        "svhn",
        pair,
        pair,
        [str(d) for d in range(10)],
        3,
        32,
        notes={"normalization": ((0.5,) * 3, (0.5,) * 3)},
    )


def digit5_arrays(domain: str, base: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y) of one Digit-Five domain, as its files hold them."""
    paths = [os.path.join(base, f) for f in DIGIT5_FILES[domain]]
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        names = ", ".join(os.path.basename(p) for p in absent)
        raise DataError(
            f"Digit-Five {domain}: {names} not found in {base}/: put the archive's .mat files there ({DIGIT5_HOME})"
        )
    mat = load_mat(paths[0])
    try:
        if domain == "mnist":
            return mat["train_32"], mat["label_train"].argmax(1), mat["test_32"], mat["label_test"].argmax(1)
        if domain == "mnistm":
            return mat["train"], mat["label_train"].argmax(1), mat["test"], mat["label_test"].argmax(1)
        if domain == "svhn":
            (xtr, ytr), (xte, yte) = svhn_arrays(mat), svhn_arrays(load_mat(paths[1]))
            return xtr, ytr, xte, yte
        if domain == "syn":
            return mat["train_data"], mat["train_label"].reshape(-1), mat["test_data"], mat["test_label"].reshape(-1)
        data = mat["dataset"]  # usps: [[train x, train y], [test x, test y]]
        return data[0][0], data[0][1].reshape(-1), data[1][0], data[1][1].reshape(-1)
    except (KeyError, IndexError, ValueError) as err:
        raise DataError(
            f"{paths[0]} is not the Digit-Five {domain} file ({one_line(err)[:80]}): {DIGIT5_HOME}"
        ) from err


def digit5_domain(domain: str, base: str, split_seed: int) -> tuple[LabelledTensors, LabelledTensors]:
    xtr, ytr, xte, yte = digit5_arrays(domain, base)
    rng = np.random.default_rng(split_seed)
    out = []
    for x, y, n in ((xtr, ytr, PROTOCOL[0]), (xte, yte, PROTOCOL[1])):
        y = np.asarray(y).astype(np.int64) % 10
        keep = np.sort(rng.permutation(len(y))[:n]) if domain != "usps" else np.arange(len(y))
        out.append(LabelledTensors(to_tensor(np.asarray(x)[keep]), torch.as_tensor(y[keep])))
    return out[0], out[1]


def build_digit5(cfg: Digit5Config, seed: int, data_root: str) -> Task:
    base = os.path.join(os.path.expanduser(data_root), "digit5")
    domains = {d: digit5_domain(d, base, cfg.split_seed) for d in dict.fromkeys((cfg.source, cfg.target))}
    return transductive_task(
        "digit5",
        cfg.source,
        cfg.target,
        domains[cfg.source],
        domains[cfg.target],
        [str(d) for d in range(10)],
        3,
        32,
        notes={"normalization": ((0.5,) * 3, (0.5,) * 3)},
    )
