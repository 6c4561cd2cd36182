"""DDP under torchrun on the CPU (gloo): gradient equivalence, one run folder, resume after a kill (issue 13)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .conftest import TINY, tiny_cfg

METHODS = ("source_only", "dann", "cdan")
BATCH = 8  # per rank; the one-process reference reads 2 x BATCH


def _step_gradients(method_name: str, rank: int, world: int, run_dir: str) -> dict[str, torch.Tensor]:
    """Gradients of one training step of ``method_name`` through the trainer's own wrapping (DDP when ``world``
    > 1), on rank ``rank``'s shard of a fixed global batch. Dropout is off, so every process draws alike, and
    BatchNorm normalises with its running statistics: batch statistics over every rank's images need
    ``trainer.sync_bn=true``, i.e. torch's SyncBatchNorm, which runs on CUDA only."""
    from da.build import build_run
    from da.data.batches import resolve
    from da.runtime import Step
    from da.train import Trainer

    cfg = tiny_cfg(f"method={method_name}", "backbone.bottleneck_dropout=0", "trainer.amp=false")  # float32 sums
    parts = build_run(cfg)
    for module in parts.method.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
    trainer = Trainer(parts.configs.trainer, parts.method, parts.task, run_dir, torch.device("cpu"), 0)
    index = torch.arange(2 * BATCH)
    shard = index[len(index) * rank // world : len(index) * (rank + 1) // world]
    cpu = torch.device("cpu")
    batch_s = resolve(parts.task.source_train).batch(shard, cpu)
    batch_t = resolve(parts.task.target_train).batch(shard, cpu) if parts.method.uses_target else None
    parts.method.train()
    for module in parts.method.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    out = Step(trainer.runtime, parts.method, trainer.optimizers).forward(batch_s, batch_t, 0.3)  # DDP when wrapped
    out["loss"].backward()
    return {n: p.grad.clone() for n, p in parts.method.named_parameters() if p.grad is not None}


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in METHODS:
            grads = _step_gradients(name, rank, world, os.path.join(out_dir, f"rank{rank}"))
            if rank == 0:
                torch.save(grads, os.path.join(out_dir, f"{name}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_give_the_gradients_of_one_process_on_the_concatenated_batch(tmp_path):
    mp.spawn(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in METHODS:
        reference = _step_gradients(name, 0, 1, str(tmp_path / "single"))
        ddp = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert set(ddp) == set(reference), name
        for key, grad in reference.items():
            assert torch.allclose(ddp[key], grad, atol=1e-5, rtol=1e-4), f"{name}: {key}"
        assert any(g.abs().sum() > 0 for g in reference.values())


def _torchrun(run_dir, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "da.run"]
    args = [*TINY, "method=dann", *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its ranks in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in tree[1:]:  # the ranks are not our children: wait until they are gone
        while os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's ranks through /proc (Linux)")
def test_torchrun_writes_one_run_folder_and_resumes_after_a_kill(tmp_path):
    run_dir = tmp_path / "run"
    proc = _torchrun(run_dir, "trainer.epochs=12", "trainer.steps_per_epoch=2")
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (run_dir / "checkpoint.pt").exists(), proc.communicate()[0][-3000:]
    _kill_tree(proc.pid)  # torchrun and both ranks at once, mid-run (as a cluster ends a job)
    proc.wait()
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=False)["epoch"]
    assert not (run_dir / "results.json").exists() and killed_at < 12
    rerun = _torchrun(run_dir, "trainer.epochs=12", "trainer.steps_per_epoch=2")
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert f"resumed from {run_dir / 'checkpoint.pt'} after epoch" in (run_dir / "run.log").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["epochs"] == 12 and results["steps"] == 24
    rows = (run_dir / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 12 and [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 13))
    assert sorted(os.listdir(run_dir)) == sorted(
        [".hydra", ".lock", "checkpoint.pt", "config.yaml", "log.csv", "model.pt", "predictions.npz"]
        + ["preprocessing.json", "results.json", "run.log"]
    )
    # the reported accuracy is model.pt's: every rank evaluates with rank 0's BatchNorm statistics (issue 26)
    from da.build import load_run
    from da.evaluate import accuracy, predict

    run = load_run(str(run_dir))
    dtype = None if results["precision"] == "float32" else getattr(torch, results["precision"])
    pred = predict(run.method, run.task.target_test, torch.device("cpu"), 256, dtype)
    assert accuracy(pred.logits, pred.labels) == results["target_acc"]


@pytest.mark.parametrize("world", [1, 3])
def test_ranks_read_disjoint_shards_of_the_one_process_batches(world):
    from da.data.base import LabelledTensors
    from da.data.batches import batches, resolve

    split = resolve(LabelledTensors(torch.arange(50).float().view(50, 1, 1, 1), torch.arange(50)))
    cpu = torch.device("cpu")
    single = batches(split, 4 * world, seed=3, device=cpu)
    ranks = [batches(split, 4, seed=3, device=cpu, rank=r, world=world) for r in range(world)]
    for _ in range(15):
        expected = next(single)[1]
        shards = [next(r)[1] for r in ranks]
        assert torch.equal(torch.cat(shards), expected) and all(len(s) == 4 for s in shards)
