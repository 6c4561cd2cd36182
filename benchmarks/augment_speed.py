"""Batched augmentation speed, in-house vs kornia: ``python -m benchmarks.augment_speed [key=value ...]``.

Times, on CPU with ``threads`` torch threads, the median (and the fastest) of ``repeats`` calls (after ``warmup``
calls; the cases interleaved, so drift and the load of other processes hit all alike) of:

- ``strong``: FixMatch/AdaMatch's strong view (RandAugment, two ops per image, + Cutout) of a normalised batch,
  on (64, 1, 32, 32) and (64, 3, 64, 64) (``da.augment_tensor.strong``). kornia's counterpart: per-image min/max
  to [0, 1], RandAugment, ``RandomErasing`` of a square of a quarter of the area, and back.
- ``preset``: the fine-tuning preset ``flip,crop,color,randaugment`` on a normalised (64, 3, 64, 64) batch
  (``build_batch_augment``). kornia's counterpart: un-normalise, ``RandomHorizontalFlip``,
  ``RandomResizedCrop(scale=(0.08, 1))``, ``ColorJitter(0.4, 0.4, 0.4, 0.1)``, RandAugment, normalise.

kornia's RandAugment comes in two forms. ``kornia RandAugment`` is ``kornia.augmentation.auto.RandAugment`` (n=2;
m=10 for the view, 9 for the preset; its default policy, without ``color`` on 1-channel images, which it
refuses): it draws its two operations once per batch, so every image of a batch gets the same ones, at one
magnitude (with a sign per image). ``kornia ops per image`` is the in-house semantics built from kornia: each
image draws its operation per round (grouped by operation, as the in-house code does) and kornia's
single-operation modules (``RandomRotation``, ``RandomShear``, ``RandomPosterize``, ...) draw a magnitude per
image. The ratio columns are kornia's time over the in-house time, measured in the same run. kornia is not a
dependency of ``da``: install it to run this (``pip install kornia``).

Options: ``threads`` (2), ``repeats`` (40), ``warmup`` (3), ``batch`` (64).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from da.augment_tensor import strong
from da.data.augment import IMAGENET_NORM, build_batch_augment


def _unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-6)
    return (x - low) / span, low, span


def _per_image(ops: list, num_ops: int):
    """RandAugment with an operation per image, as the in-house code does: in each of ``num_ops`` rounds every
    image draws one of ``ops`` (None = identity; kornia modules that draw their magnitude per image), and each
    operation runs on its images only."""

    def run(u: torch.Tensor) -> torch.Tensor:
        for _ in range(num_ops):
            choice = torch.randint(len(ops), (u.shape[0],))
            out = u.clone()
            for k, op in enumerate(ops):
                rows = (choice == k).nonzero().squeeze(1)
                if op is not None and rows.numel():
                    out[rows] = op(u[rows])
            u = out
        return u

    return run


def _kornia_ops(preset: bool) -> list:
    """kornia's single operations over the strong view's RandAugment space (FixMatch's ranges), each with p = 1;
    ``preset``: torchvision's space (+ equalize and colour)."""
    import kornia.augmentation as K

    ops = [None, K.RandomAutoContrast(p=1.0), K.RandomBrightness((0.1, 1.9), p=1.0)]
    ops += [K.RandomContrast((0.1, 1.9), p=1.0), K.RandomSharpness((0.1, 1.9), p=1.0)]
    ops += [K.RandomSolarize(0.5, 0.0, p=1.0), K.RandomPosterize((4.0, 8.0), p=1.0)]
    ops += [K.RandomRotation(30.0, p=1.0), K.RandomShear((-17.0, 17.0, 0.0, 0.0), p=1.0)]
    ops += [K.RandomShear((0.0, 0.0, -17.0, 17.0), p=1.0), K.RandomTranslate((-0.3, 0.3), (0.0, 0.0), p=1.0)]
    ops += [K.RandomTranslate((0.0, 0.0), (-0.3, 0.3), p=1.0)]
    return ops + ([K.RandomEqualize(p=1.0), K.RandomSaturation((0.1, 1.9), p=1.0)] if preset else [])


def kornia_strong(channels: int, per_image: bool):
    """kornia's RandAugment (or its single operations per image) + random erasing on a normalised batch, through
    [0, 1] and back."""
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment
    from kornia.augmentation.auto.rand_augment.rand_augment import default_policy

    policy = [sub for sub in default_policy if channels == 3 or sub[0][0] != "color"]
    randaugment = _per_image(_kornia_ops(preset=False), 2) if per_image else RandAugment(n=2, m=10, policy=policy)
    erase = K.RandomErasing(scale=(0.25, 0.25), ratio=(1.0, 1.0), p=1.0)

    def run(x: torch.Tensor) -> torch.Tensor:
        u, low, span = _unit(x)
        return erase(randaugment(u)) * span + low

    return run


def kornia_preset(size: int, per_image: bool):
    """kornia's flip, resized crop, colour jitter and RandAugment (or its single operations per image) on a
    normalised batch, through [0, 1]."""
    import kornia.augmentation as K
    from kornia.augmentation.auto import RandAugment

    mean, std = (torch.tensor(v) for v in IMAGENET_NORM)
    head = torch.nn.Sequential(
        K.Denormalize(mean, std),
        K.RandomHorizontalFlip(),
        K.RandomResizedCrop((size, size), scale=(0.08, 1.0)),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1.0),
    )
    randaugment = _per_image(_kornia_ops(preset=True), 2) if per_image else RandAugment(n=2, m=9)
    tail = K.Normalize(mean, std)
    return lambda x: tail(randaugment(head(x)))


def main(argv: list[str]) -> None:
    opts = {"threads": 2, "repeats": 40, "warmup": 3, "batch": 64}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in opts:
            raise SystemExit(f"unknown option {key!r}; valid: {', '.join(opts)}")
        opts[key] = int(value)
    torch.set_num_threads(opts["threads"])
    torch.manual_seed(0)
    b = opts["batch"]
    grey = torch.randn(b, 1, 32, 32)
    rgb = torch.randn(b, 3, 64, 64)
    preset = build_batch_augment("flip,crop,color,randaugment", "folder", 64)
    cases = [  # (name, shape, in-house, kornia's RandAugment, kornia's operations per image, input)
        ("strong", "(64,1,32,32)", strong, kornia_strong(1, False), kornia_strong(1, True), grey),
        ("strong", "(64,3,64,64)", strong, kornia_strong(3, False), kornia_strong(3, True), rgb),
        ("preset", "(64,3,64,64)", preset, kornia_preset(64, False), kornia_preset(64, True), rgb),
    ]
    times: dict[tuple[int, int], list[float]] = {(i, j): [] for i in range(len(cases)) for j in range(3)}
    for step in range(opts["warmup"] + opts["repeats"]):
        for i, (_, _, *fns, x) in enumerate(cases):
            for j, fn in enumerate(fns):
                start = time.perf_counter()
                with torch.no_grad():
                    fn(x)
                if step >= opts["warmup"]:
                    times[i, j].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {opts['threads']} threads, {opts['repeats']} calls each: median (fastest) ms")
    print("| case | batch | in-house | kornia RandAugment | ratio | kornia ops per image | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for i, (name, shape, *_) in enumerate(cases):
        med = [1000 * statistics.median(times[i, j]) for j in range(3)]
        low = [1000 * min(times[i, j]) for j in range(3)]
        cells = [f"{med[j]:.1f} ({low[j]:.1f})" for j in range(3)]
        ratios = [f"{med[j] / med[0]:.2f} ({low[j] / low[0]:.2f})" for j in (1, 2)]
        print(f"| {name} | {shape} | {cells[0]} | {cells[1]} | {ratios[0]} | {cells[2]} | {ratios[1]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
