"""Protocols: how the test domains become one stream of batches, and where the model is reset.

Every choice is a key of ``protocol.*`` and is written to results.json — nothing is implicit:

- ``reset``: one domain at a time, the model reset to the source before each (TENT's CIFAR-10-C example,
  EATA's ``each_shift_reset``);
- ``continual``: the domains one after another without reset (CoTTA's protocol, EATA's ``continual``);
- ``mixed``: the samples of all domains shuffled together into one stream, no reset (mariodoebler/test-time-
  adaptation's ``mixed_domains``);
- ``label_shift``: ``continual`` with each domain's samples in a class-correlated order drawn from a Dirichlet
  distribution of concentration ``protocol.dirichlet`` (NOTE, Gong et al., NeurIPS 2022, arXiv 2208.05117; the
  ``sort_by_dirichlet`` of mariodoebler/test-time-adaptation); small values give long runs of one class.

``protocol.batch_size`` is the batch the method sees; ``protocol.num_samples`` the samples drawn from each domain
(null = all). Which samples and their order follow the run's seed. The labels are read here only to build the
label-shifted order; the runner keeps them and the method never receives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from da.errors import ConfigError

PROTOCOLS = ("reset", "continual", "mixed", "label_shift")


@dataclass
class ProtocolConfig:
    """``protocol.*``: the schema of ``configs/tta/protocol/<name>.yaml``."""

    name: str = "continual"  # reset, continual, mixed or label_shift
    # the batch the method adapts on: 64 as EATA/SAR's ImageNet-C runs (TENT/CoTTA use 200 on CIFAR-10-C, whose
    # domains hold 10,000 images; the embedded benchmark's hold 540)
    batch_size: int = 64
    num_samples: int | None = None  # samples drawn from each domain (null = all), in a seeded order
    dirichlet: float = 0.1  # label_shift: concentration δ of the class order (NOTE's and RoTTA's 0.1)

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.name!r}; valid protocols: {', '.join(PROTOCOLS)}")
        if self.batch_size < 2:
            raise ConfigError(f"protocol.batch_size must be >= 2 (batch statistics), got {self.batch_size}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"protocol.num_samples must be >= 1 or null, got {self.num_samples}")
        if not self.dirichlet > 0:
            raise ConfigError(f"protocol.dirichlet must be > 0, got {self.dirichlet}")

    @property
    def resets(self) -> bool:
        return self.name == "reset"


@dataclass
class Domain:
    """One test domain: its name (``gaussian_noise``), images (N, C, H, W) as the model takes them, labels (N,)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor


@dataclass
class StreamBatch:
    """One batch of the stream: images, labels (for scoring only), the domain index of each sample, and whether the
    model is reset before it."""

    x: torch.Tensor
    y: torch.Tensor
    domain: torch.Tensor  # (B,) index into the run's domains
    reset: bool = False


def domain_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of domain ``index``'s sample choice and order: the same for every protocol of a seed."""
    return np.random.default_rng([seed, index])


def sample_indices(n: int, num_samples: int | None, seed: int, index: int) -> np.ndarray:
    """The images of domain ``index`` a run uses, in stream order: a seeded permutation of its ``n``, cut to
    ``num_samples``."""
    order = domain_rng(seed, index).permutation(n)
    return order if num_samples is None else order[: min(num_samples, n)]


def dirichlet_order(labels: np.ndarray, concentration: float, rng: np.random.Generator) -> np.ndarray:
    """A class-correlated order of ``labels`` (N,) (NOTE, arXiv 2208.05117; ``sort_by_dirichlet``): K chunks; each
    class's samples are split across the chunks in Dirichlet(δ) proportions (a chunk already holding N / K takes no
    more); the chunks follow each other, each class's part of a chunk contiguous, classes in a random order."""
    n = len(labels)
    classes = np.unique(labels)
    chunks = len(classes)
    min_size = min(10, n // (2 * chunks))  # NOTE's 10, lowered for the small domains of tests
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(chunks)]
        sizes = np.zeros(chunks, dtype=int)
        for k in classes:
            idx = rng.permutation(np.flatnonzero(labels == k))
            p = rng.dirichlet(np.full(chunks, concentration))
            p = p * (sizes < n / chunks)
            p = p / p.sum() if p.sum() > 0 else np.full(chunks, 1 / chunks)
            cuts = (np.cumsum(p) * len(idx)).astype(int)[:-1]
            for c, piece in enumerate(np.split(idx, cuts)):
                parts[c].append(piece)
                sizes[c] += len(piece)
        if sizes.min() >= min_size:
            break
    else:
        raise ConfigError(f"protocol.dirichlet={concentration}: no class order with chunks of >= {min_size} samples")
    order = []
    for chunk in parts:
        for c in rng.permutation(len(chunk)):
            order.extend(chunk[c].tolist())
    return np.asarray(order, dtype=np.int64)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) of batches over ``n`` samples; a last batch of one sample joins the one before
    (batch statistics of one sample are undefined)."""
    bounds = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def build_stream(cfg: ProtocolConfig, domains: list[Domain], seed: int) -> list[StreamBatch]:
    """The batches of the protocol over ``domains`` (each already cut and ordered by :func:`sample_indices`)."""
    batches = []
    if cfg.name == "mixed":
        x = torch.cat([d.x for d in domains])
        y = torch.cat([d.y for d in domains])
        tag = torch.cat([torch.full((len(d.y),), i, dtype=torch.long) for i, d in enumerate(domains)])
        order = torch.from_numpy(domain_rng(seed, len(domains)).permutation(len(y)))
        x, y, tag = x[order], y[order], tag[order]
        return [StreamBatch(x[a:b], y[a:b], tag[a:b]) for a, b in batch_bounds(len(y), cfg.batch_size)]
    for i, d in enumerate(domains):
        x, y = d.x, d.y
        if cfg.name == "label_shift":
            order = torch.from_numpy(dirichlet_order(y.numpy(), cfg.dirichlet, domain_rng(seed, 1000 + i)))
            x, y = x[order], y[order]
        for j, (a, b) in enumerate(batch_bounds(len(y), cfg.batch_size)):
            tag = torch.full((b - a,), i, dtype=torch.long)
            batches.append(StreamBatch(x[a:b], y[a:b], tag, reset=cfg.resets and j == 0))
    return batches
