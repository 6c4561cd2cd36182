"""The decoded-image cache: decoded once, the same bytes as an uncached decode, shared by later runs, read from
disk above the memory budget, safe against a killed decode."""

from __future__ import annotations

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
