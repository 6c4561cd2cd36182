"""Multi-process training with ``torchrun`` (torch.distributed, DistributedDataParallel).

``torchrun --nproc_per_node=N -m da.run ...`` starts N copies of the CLI; each finds its rank in the
environment torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``) and joins
one process group: NCCL on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on the CPU. A run started
without torchrun has a world of one and none of this code does anything.

What each part does under DDP (see :mod:`da.train`):

- batches: every step draws one global batch of ``world x batch_size`` indices from the permutation stream a
  single process would use, and rank r takes the r-th slice: the ranks' shards are disjoint, and together they
  are the batch one process with ``batch_size x world`` would read;
- the method (model and extra modules: discriminators, bottlenecks) is wrapped in ``DistributedDataParallel``;
  ``trainer.sync_bn=true`` turns its BatchNorm layers into ``SyncBatchNorm``;
- evaluation and the per-epoch target predictions (validators, monitor, pseudo-labels): each rank predicts a
  contiguous shard of the split, the shards are gathered in order, and every rank holds the predictions of the
  whole split, each image predicted exactly once;
- rank 0 alone writes the run folder (config, checkpoint, log, results, model); the others read it (resume,
  ``init=source``) and wait for it at barriers.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def exit_with_launcher(poll_seconds: float = 1.0) -> None:
    """Under torchrun: end this process when torchrun itself dies. torchrun stops its ranks when it is stopped,
    but a ``kill -9`` of torchrun alone would leave every rank training to the end, holding the run folder's
    lock. A daemon thread watches the parent process (torchrun's agent) and sends this process SIGTERM once it is
    gone (re-parented). Portable where ``PR_SET_PDEATHSIG`` is not, and unlike it not tied to the thread of the
    parent that started us."""
    import signal
    import threading
    import time

    if "TORCHELASTIC_RUN_ID" not in os.environ:  # set by torchrun's agent, our parent
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="da-exit-with-launcher", daemon=True).start()


def init_from_env(device_name: str = "auto") -> None:
    """Join the process group torchrun describes in the environment (once); a no-op without torchrun."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))


def device_for_rank(device: torch.device) -> torch.device:
    """A CUDA device becomes this process's GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if world_size() > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over the ranks (``t`` itself in one process); differentiable inputs are detached."""
    if world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, in place: each rank's last training
    forward updated its own; evaluation must use the ones rank 0 saves in model.pt."""
    if world_size() == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def shard_range(n: int, r: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s (this rank's by default) contiguous share [start, stop) of ``n`` items (sizes differ by at
    most one)."""
    w, r = world_size(), rank() if r is None else r
    return n * r // w, n * (r + 1) // w


def gather_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's rows of ``t`` (rank order; rank r holds :func:`shard_range` of ``n`` rows)."""
    w = world_size()
    if w == 1:
        return t
    sizes = [stop - start for start, stop in (shard_range(n, r) for r in range(w))]
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:size] for p, size in zip(parts, sizes, strict=True)])


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def predict_sharded(method, dataset, device: torch.device, batch_size: int, amp_dtype: torch.dtype | None = None):
    """:func:`da.evaluate.predict` over a whole split, each rank predicting its :func:`shard_range`."""
    from torch.utils.data import Subset

    from da.data.batches import TensorSplit, resolve
    from da.evaluate import Predictions, predict

    n = len(dataset)
    start, stop = shard_range(n)
    split = resolve(dataset)
    if split is not None:
        labels = None if split.labels is None else split.labels[start:stop]
        shard = TensorSplit(split.x[start:stop], labels, split.transform)
    else:
        shard = Subset(dataset, range(start, stop))
    mine = predict(method, shard, device, batch_size, amp_dtype)
    has_labels = mine.labels is not None and not getattr(dataset, "is_unlabelled", False)  # a Subset hides it

    def gather(t: torch.Tensor) -> torch.Tensor:
        return gather_rows(t.to(device), n).cpu()

    labels = gather(mine.labels) if has_labels else None
    return Predictions(gather(mine.logits), gather(mine.features), labels)
