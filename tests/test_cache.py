"""The decoded-image cache: decoded once, the same bytes as an uncached decode, shared by later runs, read from
disk above the memory budget, safe against a killed decode."""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from da.data import cache
from da.data.batches import TensorSplit
from da.data.images import CacheOptions, decode_paths


def _images(folder, n=6, size=12):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size + i, size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_cache_equals_memory_decode_and_is_reused(tmp_path, monkeypatch):
    paths = _images(tmp_path / "img")
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    paths.append(str(tmp_path / "img" / "bad.png"))
    labels = [0, 1, 0, 1, 0, 1, 1]
    plain = decode_paths(paths, labels, ["a", "b"], 10, "t")
    opts = CacheOptions(str(tmp_path / "root"), "true")
    first = decode_paths(paths, labels, ["a", "b"], 10, "t", opts)
    assert torch.equal(first.x, plain.x) and torch.equal(first.y, plain.y) and first.skipped == plain.skipped
    assert len(first.skipped) == 1 and "bad.png" in first.skipped[0]
    monkeypatch.setattr(cache, "decode_to_file", lambda *a, **k: pytest.fail("decoded again"))
    again = decode_paths(paths, labels, ["a", "b"], 10, "t", opts)  # a later run: read, not decoded
    assert torch.equal(again.x, plain.x)
    disk = decode_paths(paths, labels, ["a", "b"], 10, "t", CacheOptions(opts.root, "true", budget=0))
    assert isinstance(disk.x, cache.DiskImages) and len(disk.x) == 6
    index = torch.tensor([4, 0, 1, 5])
    assert torch.equal(disk.x.read(index), plain.x[index]) and torch.equal(disk.x[3], plain.x[3])
    view = disk.x[torch.tensor([5, 2])]  # a view (a split of the set): no copy until read
    assert torch.equal(view.read(torch.tensor([1, 0])), plain.x[torch.tensor([2, 5])])
    split = TensorSplit(disk.x, disk.y)
    x, y = split.batch(index, torch.device("cpu"))
    assert torch.equal(x, plain.x[index]) and torch.equal(y, plain.y[index])
    assert torch.equal(torch.cat([b for b, _ in split.slices(4, torch.device("cpu"))]), plain.x)


def test_changed_file_is_another_key_and_stale_tmp_is_removed(tmp_path):
    paths = _images(tmp_path / "img", n=3)
    root = str(tmp_path / "root")
    key = cache.cache_key(paths, 8)
    os.makedirs(os.path.join(root, cache.CACHE_DIR))
    stale = os.path.join(root, cache.CACHE_DIR, f"{key}.u8.tmp-999")
    open(stale, "wb").close()  # what a killed decode left
    opts = CacheOptions(root, "true")
    decode_paths(paths, [0, 1, 0], ["a", "b"], 8, "t", opts)
    assert not os.path.exists(stale)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))
    assert cache.cache_key(paths, 8) != key
    out = decode_paths(paths, [0, 1, 0], ["a", "b"], 8, "t", opts)
    assert int(out.x[0].sum()) == 0


def test_auto_caches_only_large_sets(tmp_path):
    paths = _images(tmp_path / "img", n=2)
    decode_paths(paths, [0, 1], ["a", "b"], 8, "t", CacheOptions(str(tmp_path / "root"), "auto"))
    assert not os.path.exists(tmp_path / "root" / cache.CACHE_DIR)


def test_folder_task_trains_from_disk(tmp_path):
    import da
    from da.build import typed_configs
    from da.config import compose
    from da.data import build_task

    for domain in ("s", "t"):
        for c in ("a", "b"):
            _images(tmp_path / "tree" / domain / c, n=4, size=10)
    over = [
        "dataset=folder",
        f"dataset.root={tmp_path / 'tree'}",
        "dataset.source=s",
        "dataset.target=t",
        "dataset.resize=20",
        "dataset.crop=16",
        "dataset.cache=true",
        "dataset.memory_budget_gb=0",
        "backbone=lenet",
        f"data_root={tmp_path / 'root'}",
        "trainer.epochs=1",
        "trainer.steps_per_epoch=2",
        "trainer.batch_size=4",
        "method=source_only",
        "device=cpu",
        "trainer.progress_bar=false",
    ]
    cfg = compose(over)
    task = build_task(typed_configs(cfg).dataset, 0, str(tmp_path / "root"))
    assert isinstance(task.source_train.x, cache.DiskImages)
    results = da.fit(cfg, run_dir=str(tmp_path / "run"), quiet=True)
    assert results["splits"]["target_test"] == 8 and 0 <= results["target_acc"] <= 1


def test_throughput_cache_rows_on_a_tiny_folder(tmp_path, monkeypatch):
    from benchmarks import throughput

    monkeypatch.setattr(
        throughput, "measure", lambda spec, tree, cache=False: throughput.cache_worker(spec)
    )  # in-process
    lines = throughput.cache_rows(str(tmp_path), images=40, size=20, budget_gb=1e-5, steps=2)
    table = "\n".join(lines)
    assert "40 JPEGs at 20x20" in table and "first run: decode (parallel)" in table
    assert table.count("DiskImages") == 3  # over the budget: every phase reads the cache file
    assert "faster than the first" in table


def _entry(root: str, paths: list[str], size: int) -> str:
    return os.path.join(root, cache.CACHE_DIR, cache.cache_key(paths, size))


@pytest.mark.parametrize("record", ['{"shape": [3, 3, 8, 8]}', "[1, 2]", '{"shape": [3, 3, 8, 8], "errors": {"x": 1}}'])
def test_malformed_record_is_decoded_again(tmp_path, record):
    paths = _images(tmp_path / "img", n=3)
    opts = CacheOptions(str(tmp_path / "root"), "true")
    plain = decode_paths(paths, [0, 1, 0], ["a", "b"], 8, "t")
    decode_paths(paths, [0, 1, 0], ["a", "b"], 8, "t", opts)
    meta = _entry(opts.root, paths, 8) + ".json"
    with open(meta, "w") as fh:
        fh.write(record)
    again = decode_paths(paths, [0, 1, 0], ["a", "b"], 8, "t", opts)
    assert torch.equal(again.x, plain.x) and again.skipped == []
    assert isinstance(json.load(open(meta))["errors"], dict)  # rewritten whole


def test_overwritten_bytes_are_detected_and_decoded_again(tmp_path, monkeypatch, caplog):
    paths = _images(tmp_path / "img", n=4)
    opts = CacheOptions(str(tmp_path / "root"), "true")
    plain = decode_paths(paths, [0, 1, 0, 1], ["a", "b"], 8, "t")
    decode_paths(paths, [0, 1, 0, 1], ["a", "b"], 8, "t", opts)
    data = _entry(opts.root, paths, 8) + ".u8"
    stat = os.stat(data)
    with open(data, "r+b") as fh:
        fh.seek(200)
        fh.write(bytes(64))  # a few bytes of a row zeroed in place; size and mtime kept
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    for budget in (None, 0):  # held in memory (even with the time kept), read from disk (after a later write)
        monkeypatch.setattr(cache, "_VERIFIED", {}, raising=False)  # a new process
        with caplog.at_level("WARNING", logger="da.data.cache"):
            out = decode_paths(paths, [0, 1, 0, 1], ["a", "b"], 8, "t", CacheOptions(opts.root, "true", budget))
        x = out.x.load() if isinstance(out.x, cache.DiskImages) else out.x
        assert torch.equal(x, plain.x)
        stat = os.stat(data)
        with open(data, "r+b") as fh:
            fh.seek(200)
            fh.write(bytes(64))
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a write a second later
    assert sum("does not match its checksum" in r.getMessage() for r in caplog.records) == 2


def _decode_tree(root, n: int = 2000) -> list[str]:
    """One domain of ``n`` images (two classes), copies of one 256x256 PNG: written in a blink, decoded slowly
    enough (~2 ms each) to be caught mid-decode."""
    import io

    y, x = np.mgrid[0:256, 0:256]
    buf = io.BytesIO()
    Image.fromarray(np.dstack([x, y, (x + y) % 256]).astype(np.uint8)).save(buf, "PNG", compress_level=1)
    paths = []
    for i in range(n):
        folder = os.path.join(root, "d", f"c{i % 2}")
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i:04d}.png"))
        with open(paths[-1], "wb") as fh:
            fh.write(buf.getvalue())
    return paths


def _held(path: str) -> bool:
    import fcntl

    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return False


def _in_sessions(sessions: set[int], kill: bool = False) -> list[list[str]]:
    """The command lines of the processes in ``sessions`` (killed with ``kill``)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(p.pid) in sessions:
                found.append(p.cmdline())
                if kill:
                    p.kill()
    return found


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux: flock, process sessions")
def test_kill_during_decode_leaves_no_worker_and_no_lock(tmp_path, monkeypatch):
    """kill -9 and SIGTERM while the cache's workers decode 2,000 images: no process of the run is left, no lock
    is held, SIGTERM prints one line and exits 143, and a rerun decodes at once."""
    import signal
    import subprocess
    import sys
    import time

    _decode_tree(str(tmp_path / "tree"))
    procs = {}
    for sig in (signal.SIGKILL, signal.SIGTERM):  # both at once: one start-up's time
        name = sig.name.lower()
        args = [
            *("method=source_only", "dataset=folder", f"dataset.root={tmp_path / 'tree'}", "dataset.source=d"),
            *("dataset.target=d", "dataset.resize=28", "dataset.crop=28", "dataset.cache=true", "backbone=lenet"),
            *(f"data_root={tmp_path / name}", f"hydra.run.dir={tmp_path / name / 'run'}", "device=cpu"),
            *("trainer.epochs=1", "trainer.steps_per_epoch=1", "trainer.progress_bar=false", "trainer.report=false"),
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        err = open(tmp_path / f"{name}.err", "w")
        procs[sig] = subprocess.Popen(
            [sys.executable, "-m", "da.run", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    pending = dict(procs)
    while pending and time.monotonic() < deadline:  # kill each once its workers are decoding
        for sig, proc in list(pending.items()):
            cache_dir = tmp_path / sig.name.lower() / cache.CACHE_DIR
            tmp = [f for f in cache_dir.iterdir() if ".u8.tmp-" in f.name] if cache_dir.is_dir() else []
            assert proc.poll() is None, open(tmp_path / f"{sig.name.lower()}.err").read()[-2000:]
            if tmp and os.stat(tmp[0]).st_blocks > 0:  # workers are writing rows
                os.kill(proc.pid, sig)
                del pending[sig]
        time.sleep(0.02)
    assert not pending, "decoding never began"
    codes = {sig: proc.wait(timeout=60) for sig, proc in procs.items()}
    sessions = {proc.pid for proc in procs.values()}
    deadline = time.monotonic() + 5  # a worker that outlives its run is still here then
    while (left := _in_sessions(sessions)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in _in_sessions(sessions, kill=True):  # what a failed check left behind goes now
        left.append(p)
    assert not left
    assert codes[signal.SIGKILL] == -signal.SIGKILL and codes[signal.SIGTERM] == 143
    err = open(tmp_path / "sigterm.err").read().strip().splitlines()
    assert err[-1] == "error: terminated during start-up; nothing was trained", err[-5:]
    assert not [line for line in err if line.startswith(("error", "Traceback"))][:-1], err
    root = str(tmp_path / "sigkill")
    paths = sorted(str(p) for p in (tmp_path / "tree" / "d").rglob("*.png"))
    key = os.path.join(root, cache.CACHE_DIR, cache.cache_key(paths, 28))
    assert not _held(f"{key}.lock") and not _held(str(tmp_path / "sigkill" / "run" / ".lock"))
    monkeypatch.setattr(cache, "POOL_MIN_IMAGES", 10**9, raising=False)  # the rerun decodes here: no start-up
    start = time.perf_counter()
    decoded = decode_paths(paths, [int("c1" in p) for p in paths], ["c0", "c1"], 28, "t", CacheOptions(root, "true"))
    assert len(decoded.x) == 2000 and time.perf_counter() - start < 10
