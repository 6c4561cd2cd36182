"""Where and how a run computes, kept out of the training loop: device, precision (autocast and the gradient
scaler), seeds and determinism, where the images live, the DDP wrap, compile and channels-last.

:class:`Runtime` prepares the method once (:meth:`Runtime.prepare`); :class:`Step` is what the loop hands a
method's :meth:`~da.methods.base.Method.optimization_step`: autocast, the scaler, the optimisers and the
gradient sync under DDP, so a method that owns its step (SAM, several optimisers, an EMA teacher) still runs
under the run's precision, schedules and DDP.
"""

from __future__ import annotations

import os
import random
from contextlib import AbstractContextManager

import numpy as np
import torch

from da import distributed
from da.config import TrainerConfig, cpu_threads
from da.data.batches import TensorSplit
from da.errors import ConfigError

DEVICE_MEMORY_FRACTION = 0.5  # data_on_device=auto: the data move to the accelerator if they take at most this
COMPILE_BACKEND = "inductor"  # torch.compile's backend for trainer.compile=true (tests use "aot_eager")
_CPU_BF16: bool | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code that uses the global RNG
    torch.manual_seed(seed)


def set_threads(threads: int | str) -> int:
    """PyTorch's CPU threads for this process (``trainer.threads``), in place of what ``OMP_NUM_THREADS`` or the
    core count gave it, so a seed gives the same numbers on a machine whatever the environment; returns the count."""
    n = cpu_threads(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # torch allows it once, before the first inter-op parallel work of the process
            pass
    return n


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (``trainer.deterministic``): torch raises on an op that has no deterministic version."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS for determinism
    if on or torch.are_deterministic_algorithms_enabled():  # the call imports torch._inductor (~2 s): only on change
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on  # autotuned convolutions when exact reruns are not asked for


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} requested but CUDA is not available; use device=auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {name!r}: use auto, cpu, cuda, cuda:N or mps") from err


def make_sgd(groups: list[dict], cfg: TrainerConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum over ``groups``; torch's fused kernel (one pass over every parameter per step) on the
    CPU and CUDA, where torch has one: 1.1-1.25x faster LeNet steps on 2 CPU cores than the per-tensor loop,
    with the same update up to float rounding."""
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.SGD(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch, or parameters it cannot fuse
            pass
    return torch.optim.SGD(groups, **kwargs)


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16, Linux's /proc/cpuinfo flags).
    There CPU autocast runs LeNet's training step 1.4x faster than float32; elsewhere oneDNN emulates bfloat16
    and is slower than float32, so mixed precision stays off."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open("/proc/cpuinfo") as fh:
                flags = set(next((line for line in fh if line.startswith("flags")), "").split())
        except OSError:
            flags = set()
        _CPU_BF16 = bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
    return _CPU_BF16


def amp_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``trainer.amp`` on ``device``; None: float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return None


def has_conv(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def place_splits(
    splits: dict[str, TensorSplit | None], device: torch.device, mode: str
) -> tuple[dict[str, TensorSplit | None], str]:
    """The splits on ``device`` (``trainer.data_on_device``), and where their images live: on an accelerator
    they move there when they fit (``auto``: at most half its free memory), else stay in pinned host memory and
    are copied a batch at a time. Views sharing one image tensor (a folder's training and evaluation views)
    share it on the device too."""
    present = {k: v for k, v in splits.items() if v is not None}
    if device.type == "cpu" or not present:
        return splits, "host"
    unique = {id(s.x): s.nbytes for s in present.values()}
    total = sum(unique.values())
    resident = mode == "true"
    if mode == "auto":
        free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        resident = device.type != "cuda" or total <= DEVICE_MEMORY_FRACTION * free
    moved: dict[int, torch.Tensor] = {}
    out: dict[str, TensorSplit | None] = dict(splits)
    for key, split in present.items():
        if id(split.x) not in moved:
            if resident:
                moved[id(split.x)] = split.to(device).x
            else:  # host memory (pinned for CUDA's asynchronous copies); batches are copied as they are drawn
                moved[id(split.x)] = split.to(device, pin=True).x if device.type == "cuda" else split.x
        labels = split.labels.to(device) if resident and split.labels is not None else split.labels
        out[key] = TensorSplit(moved[id(split.x)], labels, split.transform)
    return out, ("device" if resident else "pinned host" if device.type == "cuda" else "host")


class Runtime:
    """Device, precision, processes and memory format of one run (``trainer.*`` keys that say where and how)."""

    def __init__(self, cfg: TrainerConfig, device: torch.device, seed: int) -> None:
        self.cfg, self.device, self.seed = cfg, device, seed
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.main = self.rank == 0  # the process that writes the run folder
        self.amp_dtype = amp_dtype(cfg.amp, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.channels_last = False
        self.ddp: torch.nn.Module | None = None  # under torchrun: the method in DistributedDataParallel

    @property
    def precision(self) -> str:
        """results.json ``precision``: the autocast dtype (``float32`` without one)."""
        return str(self.amp_dtype or torch.float32).removeprefix("torch.")

    def autocast(self) -> AbstractContextManager:
        """The run's mixed precision for a forward pass (a no-op context without one)."""
        on = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=on)

    def prepare(self, method: torch.nn.Module) -> list[torch.optim.Optimizer]:
        """Put ``method`` on the device (SyncBatchNorm, channels-last, compile, DDP as configured) and build its
        optimisers (:meth:`~da.methods.base.Method.configure_optimizers`)."""
        cfg = self.cfg
        if self.world > 1 and cfg.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("trainer.sync_bn=true needs CUDA: torch's SyncBatchNorm does not run on the CPU")
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)  # replaces the BatchNorm layers in place
        method.to(self.device)
        optimizers = method.configure_optimizers(lambda groups: make_sgd(groups, cfg, self.device))
        self.channels_last = cfg.channels_last and has_conv(method)  # the model's and the batches' format
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        if cfg.compile:
            method.model.compile(backend=COMPILE_BACKEND)  # in place: state_dict keys stay the same
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            unused = bool(getattr(method, "find_unused_parameters", False))
            self.ddp = DistributedDataParallel(
                method, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=unused
            )
            method.reduce_sum = distributed.all_reduce_sum  # cross-rank statistics for the method's losses
            torch.manual_seed(self.seed + 1_000_003 * self.rank)  # each rank its own dropout masks and augmentations
        return optimizers

    def batch(self, batch):
        """A batch with its images in channels-last memory format when the model is (4-D images only)."""
        if batch is None:
            return None
        x = batch[0]
        if self.channels_last and x.dim() == 4:
            return (x.contiguous(memory_format=torch.channels_last), *batch[1:])
        return batch


class Step:
    """What the loop hands a method's optimisation step (:meth:`~da.methods.base.Method.optimization_step`).

    ``forward(*args, phase=...)`` runs ``method.<phase>(*args)`` under the run's autocast and, under torchrun,
    through ``DistributedDataParallel`` (so each backward averages gradients over the ranks); ``backward``
    scales the loss for fp16's gradient scaler; ``step`` steps optimisers through the scaler. ``optimizers``
    are the method's, in the order ``configure_optimizers`` returned them; the loop sets their learning rates.
    """

    def __init__(self, runtime: Runtime, method: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> None:
        self.runtime, self.method, self.optimizers = runtime, method, optimizers

    def forward(self, *args, phase: str = "training_step"):
        with self.runtime.autocast():
            if self.runtime.ddp is not None:
                return self.runtime.ddp(*args, phase=phase)  # gradients averaged over ranks in backward
            return getattr(self.method, phase)(*args)

    def zero_grad(self, *optimizers: torch.optim.Optimizer) -> None:
        for opt in optimizers or self.optimizers:
            opt.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.runtime.scaler.scale(loss).backward(retain_graph=retain_graph)

    def step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step ``optimizers`` (default: all) through the scaler, then update the scaler once."""
        for opt in optimizers or self.optimizers:
            self.runtime.scaler.step(opt)
        self.runtime.scaler.update()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` averaged over the ranks (itself in one process): a cross-rank statistic for a method."""
        world = self.runtime.world
        return distributed.all_reduce_sum(t) / world if world > 1 else t
