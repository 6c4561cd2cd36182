"""The batched data path (da/data/batches.py) and the trainer's no-idle-work loop (issue 12)."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import da.evaluator
import da.methods.base
import da.runtime
import da.train
from da.build import build_run
from da.data.base import LabelledTensors, Unlabelled, forever
from da.data.batches import CropFlipNormalize, TensorSplit, index_stream, resolve
from da.data.images import TensorTransform
from da.experiment import fit

from .conftest import tiny_cfg


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (9, 3), (5, 8), (16, 16)])
def test_index_stream_draws_the_batches_of_the_dataloader_it_replaces(n, batch_size):
    generator = torch.Generator().manual_seed(7)
    loader = DataLoader(
        TensorDataset(torch.arange(n)), batch_size, shuffle=True, drop_last=n > batch_size, generator=generator
    )
    expected = [b[0].tolist() for b in itertools.islice(forever(loader), 12)]
    ours = [b.tolist() for b in itertools.islice(index_stream(n, batch_size, 7), 12)]
    assert ours == expected


def test_labelled_and_unlabelled_batches():
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 3
    split = resolve(LabelledTensors(x, y))
    index = torch.tensor([4, 0, 17])
    xb, yb = split.batch(index, torch.device("cpu"))
    assert torch.equal(xb, x[index]) and torch.equal(yb, y[index])
    hidden = resolve(Unlabelled(LabelledTensors(x, y)))
    xb, ib = hidden.batch(index, torch.device("cpu"))
    assert hidden.labels is None and torch.equal(ib, index)  # the index, never the label
    assert [len(b[0]) for b in split.slices(8, torch.device("cpu"))] == [8, 8, 4]


def test_crop_flip_normalize_crops_and_mirrors_each_image_on_its_own():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = CropFlipNormalize(8, train=True, flip=True, mean=mean, std=std)(x)
    assert out.shape == (32, 3, 8, 8) and out.dtype == torch.float32
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    unit = (out * s + m) * 255  # back to pixel values
    offsets, mirrored = set(), 0
    for i in range(32):
        found = None
        for top, left, flip in itertools.product(range(5), range(5), (False, True)):
            crop = x[i, :, top : top + 8, left : left + 8].float()
            if torch.allclose(unit[i], crop.flip(-1) if flip else crop, atol=1e-3):
                found = (top, left, flip)
                break
        assert found is not None, f"image {i} is not a crop of its input"
        offsets.add(found[:2])
        mirrored += found[2]
    assert len(offsets) > 5 and 4 <= mirrored <= 28  # per-image offsets and flips
    centre = CropFlipNormalize(8, train=False, flip=True, mean=mean, std=std)(x)
    assert torch.equal(centre, (x[:, :, 2:10, 2:10].float() / 255.0 - m) / s)
    one = TensorTransform(8, train=False, mean=mean, std=std)(x[5])  # the per-sample path: same arithmetic
    assert torch.equal(one, centre[5])


def test_resolve_reads_subsets_and_transforms_and_leaves_other_datasets_to_a_loader(tmp_path):
    parts = build_run(tiny_cfg("method=finetune", "dataset.source=sklearn", "dataset.target=sklearn"))
    split = resolve(parts.task.source_train)  # Transformed(Subset(pool)) of the label budget
    assert split is not None and len(split) == len(parts.task.source_train)
    xb, yb = split.batch(torch.arange(4), torch.device("cpu"))
    assert xb.shape[1:] == parts.task.source_train[0][0].shape and yb.dtype == torch.long

    class Custom(Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1, 8, 8), 0

    assert resolve(Custom()) is None


def test_a_custom_dataset_still_trains_through_a_dataloader(tmp_path, monkeypatch):
    real = da.evaluator.resolve
    monkeypatch.setattr(da.evaluator, "resolve", lambda d: None)  # as if every split were a user's own Dataset
    loader_path = fit(tiny_cfg(), run_dir=str(tmp_path / "loader"), quiet=True)
    monkeypatch.setattr(da.evaluator, "resolve", real)
    batched = fit(tiny_cfg(), run_dir=str(tmp_path / "batched"), quiet=True)
    assert loader_path["target_acc"] == pytest.approx(batched["target_acc"], abs=1e-6)  # same batches, same numbers


def test_source_only_reads_no_target_batch_but_trains_as_many_steps(tmp_path):
    trainers = {}
    for method in ("source_only", "dann"):
        p = build_run(tiny_cfg(f"method={method}", "trainer.steps_per_epoch=null", "trainer.batch_size=8"))
        device = torch.device("cpu")
        trainers[method] = da.train.Trainer(p.configs.trainer, p.method, p.task, str(tmp_path / method), device, 0)
    src, tgt = trainers["source_only"]._streams(0)
    assert src is not None and tgt is None
    assert trainers["source_only"].steps_per_epoch == trainers["dann"].steps_per_epoch


def test_a_non_finite_loss_stops_the_run_before_anything_is_written(tmp_path, monkeypatch):
    from da.methods.source_only import SourceOnly

    real = SourceOnly.training_step
    calls = {"n": 0}

    def diverging(self, batch_s, batch_t, progress):
        out = real(self, batch_s, batch_t, progress)
        calls["n"] += 1
        if calls["n"] == 6:  # step 6 of 8: epoch 2, while the losses wait on the device
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SourceOnly, "training_step", diverging)
    with pytest.raises(FloatingPointError) as err:
        fit(tiny_cfg("trainer.log_every=100"), run_dir=str(tmp_path), quiet=True)
    assert "at step 5" in str(err.value) and "checkpoint of epoch 1 is kept" in str(err.value)
    assert not (tmp_path / "results.json").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_pseudo_labelling_reuses_the_validators_forward_pass(tmp_path, monkeypatch):
    sizes = []
    real = da.evaluator.predict

    def counting(method, dataset, device, batch_size=256, amp_dtype=None):
        sizes.append(len(dataset))
        return real(method, dataset, device, batch_size, amp_dtype)

    monkeypatch.setattr(da.evaluator, "predict", counting)
    monkeypatch.setattr(da.methods.base, "predict", counting)
    parts = build_run(tiny_cfg("method=self_training", "init=scratch"))
    n_target = len(parts.task.target_train)
    fit(tiny_cfg("method=self_training", "init=scratch", "trainer.epochs=3"), run_dir=str(tmp_path), quiet=True)
    # the starting model once (monitor + first relabelling), then once per epoch (validators + next relabelling)
    assert sizes.count(n_target) == 3 + 1


def test_channels_last_and_compile(tmp_path, monkeypatch):
    monkeypatch.setattr(da.runtime, "COMPILE_BACKEND", "eager")  # the branch, without a C++ toolchain
    results = fit(tiny_cfg("trainer.compile=true", "trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any("_orig_mod" in k for k in state)  # checkpoints keep the plain module's keys
    assert 0 <= results["target_acc"] <= 1
    parts = build_run(tiny_cfg())
    trainer = da.train.Trainer(
        parts.configs.trainer, parts.method, parts.task, str(tmp_path / "cl"), torch.device("cpu"), 0
    )
    conv = parts.method.model.backbone.features[0].weight
    assert trainer.evaluator.placement == "host" and conv.is_contiguous(memory_format=torch.channels_last)


def test_bad_data_on_device_value_is_one_config_error(tmp_path):
    from da.errors import ConfigError

    with pytest.raises(ConfigError, match="data_on_device"):
        fit(tiny_cfg("trainer.data_on_device=gpu"), run_dir=str(tmp_path), quiet=True)


def test_tensor_split_bytes():
    split = TensorSplit(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    assert split.nbytes == 48 + 32


@pytest.mark.parametrize(("mode", "where"), [("true", "meta"), ("auto", "meta"), ("false", "cpu")])
def test_placement_moves_shared_images_once(mode, where):
    x = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    train, view = TensorSplit(x, torch.arange(6)), TensorSplit(x, None)  # two views of one tensor
    placed, placement = da.runtime.place_splits({"a": train, "b": view, "c": None}, torch.device("meta"), mode)
    assert placed["a"].x.device.type == where and placed["a"].x is placed["b"].x and placed["c"] is None
    assert placement == ("device" if where == "meta" else "host")


def test_throughput_table_and_per_image_ratios(tmp_path):
    from benchmarks import throughput

    root = throughput.folder_task(str(tmp_path / "f"), size=8, n_source=4, n_target=2, classes=2)
    assert sorted(os.listdir(os.path.join(root, "source"))) == ["c0", "c1"]
    row = dict(eval_s=0.1, eval_fraction=0.1, data_mb=1.0, peak_mb=2.0, step_ms=1.0)
    parts = dict(train_s=2.0, forwards_s=0.3, validators_s=0.1)
    rows = [
        {"model": "m", "method": "source_only", "images_per_s": 1000.0, "precision": "bfloat16", **row, **parts},
        {"model": "m", "method": "dann", "images_per_s": 800.0, "speedup": 2.0, "vs_plain": 1.3, **row},
        {"model": "m", "method": "source_only (trainer.amp=false)", "images_per_s": 600.0, **row},
        {"model": "m", "method": "dann (trainer.amp=false)", "images_per_s": 400.0, **row},
    ]
    text = throughput.table(rows, baseline=True)
    assert "| m | source_only | bfloat16 | 1000 |" in text and "2.00x" in text and "1.30x" in text
    assert "| 10% | 15% / 5% |" in text  # eval / train, then its forwards and validators against training
    assert throughput._per_image_ratios(rows) == [
        "- m: cost per image relative to source_only: dann 1.25x, dann (trainer.amp=false) 1.50x"
    ]
    assert throughput._median([3.0, 1.0, 2.0]) == 2.0 and throughput._median([4.0, 1.0, 2.0, 3.0]) == 2.5


def test_the_trainer_uses_torchs_fused_sgd_with_the_per_tensor_update():
    parts = build_run(tiny_cfg())
    cfg = parts.configs.trainer
    fused = da.runtime.make_sgd(parts.method.param_groups(cfg.lr), cfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    start = [p.detach().clone() for p in params]
    a = da.runtime.make_sgd([{"params": params}], cfg, torch.device("cpu"))
    b = da.runtime.make_sgd([{"params": twins}], cfg, torch.device("mps"))  # no fused attempt off CPU/CUDA
    assert not b.defaults.get("fused")
    for step in range(5):
        for p, q in zip(params, twins, strict=True):
            p.grad = torch.full_like(p, 0.1 * (step + 1))
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, p0 in zip(params, twins, start, strict=True):
        assert torch.allclose(p, q, atol=1e-6) and not torch.allclose(p, p0, atol=1e-3)  # same update, and one
