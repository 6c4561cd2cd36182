"""Inductive transfer: fine-tuning strategies, L2-SP, label budget, augmentation, early stopping, offline weights."""

import csv
import os
import urllib.error

import pytest
import torch

import da.selection
from da.backbones import BACKBONES, BackboneConfig, build_model
from da.build import load_backbone
from da.callbacks import Callback
from da.config import TrainerConfig, compose, to_dataclass
from da.data import DATASETS, build_task
from da.data.augment import build_augment
from da.data.base import LabelledTensors, Task, Unlabelled
from da.data.budget import split_budget
from da.errors import ConfigError
from da.experiment import fit
from da.losses import l2_sp
from da.methods.finetune import Finetune
from da.train import Trainer

from .conftest import tiny_cfg

FT = (
    "method=finetune",
    "method.labels_per_class=4",
    "method.val_fraction=0.25",
    "trainer.batch_size=8",
    "trainer.steps_per_epoch=3",
    "trainer.lr=0.05",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tiny models run faster so, above all on a CPU shared with other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _backbone_state(path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=False)["method"]
    return {k[len("model.backbone.") :]: v for k, v in state.items() if k.startswith("model.backbone.")}


def synthetic_task(size: int = 32, per_class: int = 12, classes: int = 3) -> Task:
    """A small separable 3-class task in memory (no rendering, tiny test set): the trainer runs in a second."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(per_class)
    x = torch.randn(len(y), 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float()  # (N, 1, S, S)
    pool, test = LabelledTensors(x, y), LabelledTensors(x[::4], y[::4])
    names = [str(k) for k in range(classes)]
    return Task("synthetic", "a", "b", pool, test, Unlabelled(pool), test, names, 1, size, target_train_labels=y)


def finetune_trainer(run_dir, backbone: BackboneConfig, epochs: int = 2, **method) -> Trainer:
    cfg = Finetune.Config(labels_per_class=8, val_fraction=0.25, **method)
    task = Finetune.prepare_task(synthetic_task(), cfg, seed=0)
    model = build_model(backbone, task.num_classes, task.in_channels, task.image_size)
    if backbone.checkpoint:
        load_backbone(model, backbone.checkpoint)
    trainer_cfg = TrainerConfig(epochs=epochs, steps_per_epoch=3, batch_size=6, lr=0.05, progress_bar=False)
    return Trainer(trainer_cfg, Finetune(model, cfg, task.num_classes), task, str(run_dir), torch.device("cpu"), 0)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A resnet18 feature extractor (random, BatchNorm included) saved as a state_dict: the "pretrained" start."""
    torch.manual_seed(0)
    backbone, _ = BACKBONES.get("resnet18")(weights=None)
    with torch.no_grad():  # non-default BN statistics, so that a frozen BN is told apart from a reset one
        for m in backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.9, 1.1)
    path = tmp_path_factory.mktemp("pretrained") / "resnet18.pt"
    torch.save(backbone.state_dict(), path)
    return path, {k: v.clone() for k, v in backbone.state_dict().items()}


@pytest.mark.parametrize(("strategy", "trained"), [("feature_extraction", ()), ("partial", ("net.layer4.",))])
def test_frozen_parts_stay_bit_identical(tmp_path, resnet_file, strategy, trained):
    path, before = resnet_file
    backbone = BackboneConfig(name="resnet18", weights=None, checkpoint=str(path))
    trainer = finetune_trainer(tmp_path, backbone, strategy=strategy, unfreeze_blocks=1, backbone_lr_factor=1.0)
    trainer.fit()
    after = trainer.method.model.backbone.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert all(k.startswith(trained) for k in changed), sorted(changed)[:5]  # weights AND BN statistics
    if trained:  # the unfrozen block did train, its BN statistics included
        assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    else:
        assert not changed
    assert trainer.step == 6 and trainer.history[-1]["loss"] > 0


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A tiny source_only LeNet run: the first of the two commands "train on source, then fine-tune"."""
    run = tmp_path_factory.mktemp("source")
    fit(tiny_cfg(), run_dir=str(run), quiet=True)
    return run


def test_partial_lenet_from_a_source_run_folder(tmp_path, source_run):
    cfg = tiny_cfg(*FT, f"backbone.checkpoint={source_run}", "method.strategy=partial", "method.unfreeze_blocks=1")
    results = fit(cfg, run_dir=str(tmp_path), quiet=True)
    before, after = _backbone_state(source_run / "checkpoint.pt"), _backbone_state(tmp_path / "checkpoint.pt")
    for k in before:  # lenet blocks: features.0 (conv1 stage), features.3 (conv2 stage)
        assert torch.equal(before[k], after[k]) == k.startswith("features.0"), k
    assert results["method"] == "finetune" and results["budget"]["train"] == 30 and results["budget"]["val"] == 10


def test_l2sp_is_zero_at_the_pretrained_weights_and_grows_away():
    torch.manual_seed(0)
    w0 = [torch.randn(4, 3), torch.randn(5)]
    delta = [torch.randn(4, 3), torch.randn(5)]
    assert l2_sp([w.clone() for w in w0], w0, [], alpha=0.1, beta=0.0).item() == 0.0
    sq = sum((d**2).sum() for d in delta).item()
    values = []
    for t in (0.5, 1.0, 2.0):
        moved = [(w + t * d).requires_grad_() for w, d in zip(w0, delta)]
        value = l2_sp(moved, w0, [], alpha=0.1, beta=0.0)
        assert value.item() == pytest.approx(0.05 * t**2 * sq, rel=1e-5)
        value.backward()
        torch.testing.assert_close(moved[0].grad, 0.1 * t * delta[0])  # alpha (w - w0), not alpha w
        values.append(value.item())
    assert values == sorted(values)
    new = [torch.full((3,), 2.0)]  # beta/2 ||w||^2 on the new layers: 0.5 * 0.01 * 12
    assert l2_sp(w0, w0, new, alpha=0.1, beta=0.01).item() == pytest.approx(0.06)


def test_early_stopping_restores_the_best_epoch(tmp_path, monkeypatch):
    scripted = iter([0.2, 0.6, 0.4, 0.3, 0.5, 0.9])  # best at epoch 2; patience 3 stops after epoch 5
    real = da.selection.accuracy
    monkeypatch.setattr(  # the validation split has 6 images (2 per class); the val accuracy is scripted
        da.selection, "accuracy", lambda logits, labels: next(scripted) if len(labels) == 6 else real(logits, labels)
    )
    snapshots = []

    class Snapshot(Callback):  # the weights at each epoch's end, as a user's listener sees them
        def on_epoch_end(self, trainer, row):
            snapshots.append({k: v.clone() for k, v in trainer.method.model.state_dict().items()})

    lenet = BackboneConfig(name="lenet", bottleneck_dim=0)
    trainer = finetune_trainer(tmp_path, lenet, epochs=6, patience=3)
    trainer.callbacks.append(Snapshot())
    trainer.fit()
    assert trainer.epoch == 5 and (trainer.selection["rule"], trainer.selection["epoch"]) == ("val_acc", 2)
    with open(tmp_path / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["val_acc"]) for r in rows] == [0.2, 0.6, 0.4, 0.3, 0.5]
    final = trainer.method.model.state_dict()
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)  # the weights after epoch 2
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)
    again = finetune_trainer(tmp_path, lenet, epochs=6, patience=3)  # resuming a stopped run trains no more
    again.fit()
    assert again.epoch == 5 and again.selection == trainer.selection
    assert all(torch.equal(again.method.model.state_dict()[k], final[k]) for k in final)


def test_label_budget_sizes():
    labels = torch.arange(10).repeat_interleave(30)  # 10 classes x 30
    train, val, rest = split_budget(labels, 10, 10, None, 0.2, seed=0)
    assert len(train) == 80 and len(val) == 20 and len(rest) == 200
    assert set(train) | set(val) | set(rest) == set(range(300)) and not set(train) & set(val)
    assert all((labels[train] == k).sum() == 8 and (labels[val] == k).sum() == 2 for k in range(10))
    other = split_budget(labels, 10, 10, None, 0.2, seed=1)[0]
    assert set(other) != set(train)  # the draw follows the seed
    train, val, rest = split_budget(labels, 10, None, 0.1, 0.0, seed=0)
    assert len(train) == 30 and len(val) == 0 and len(rest) == 270
    with pytest.raises(ConfigError, match="only 30 images"):
        split_budget(labels, 10, 31, None, 0.2, seed=0)


def test_digits_budget_is_k_per_class_and_the_rest_is_test():
    dataset = to_dataclass(compose(["dataset.source=sklearn"]).dataset, DATASETS.get("digits").config, "dataset")
    task = build_task(dataset, 0, "")
    budget = Finetune.prepare_task(task, Finetune.Config(labels_per_class=10, val_fraction=0.2), seed=0)
    n_pool, n_test = len(task.target_train), len(task.target_test)
    assert len(budget.source_train) == 80 and len(budget.val) == 20 and budget.target_train_labels is None
    assert len(budget.target_test) == n_test + n_pool - 100  # the rest of the target is the test set
    train_idx, val_idx = budget.source_test.indices, budget.val.indices  # indices into the target's train split
    assert not set(train_idx) & set(val_idx) and not set(train_idx) & set(budget.target_train.base.indices)
    counts = torch.bincount(torch.stack([budget.source_train[i][1] for i in range(80)]), minlength=10)
    assert counts.tolist() == [8] * 10
    frac = Finetune.prepare_task(task, Finetune.Config(labels_per_class=None, label_fraction=0.5), seed=0)
    assert abs(len(frac.source_train) + len(frac.val) - n_pool / 2) <= 10


def test_augment_presets_fit_the_data():
    with pytest.raises(ConfigError, match="flip"):
        build_augment("flip", "digits", 28)
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        build_augment(["crop", "blur"], "digits", 28)
    assert build_augment("none", "digits", 28) is None
    torch.manual_seed(0)
    x = torch.rand(1, 28, 28) * 2 - 1  # a normalised grey image
    for preset in ("crop", "color", "randaugment", ["crop", "color"]):
        out = build_augment(preset, "digits", 28)(x)
        assert out.shape == x.shape and out.min() >= -1 - 1e-6 and out.max() <= 1 + 1e-6
        assert not torch.equal(out, x)
    rgb = torch.randn(3, 32, 32)
    assert build_augment("flip,crop,color", "folder", 32)(rgb).shape == rgb.shape


def test_bad_finetune_options_fail_in_one_line():
    for override, match in [
        ("method.strategy=deep", "valid: feature_extraction, partial, full"),
        ("method.label_fraction=0.5", "exactly one of"),
        ("method.augment=flip", "mirrors glyphs"),
        ("method.unfreeze_blocks=3", "has 2 blocks"),
    ]:
        with pytest.raises(ConfigError, match=match):
            fit(tiny_cfg(*FT, "method.strategy=partial", override), run_dir=None, quiet=True)


def test_imagenet_weights_load_offline_from_torch_home(tmp_path, monkeypatch):
    import torchvision

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    with pytest.raises(ConfigError, match=os.path.basename(url)) as err:
        BACKBONES.get("resnet18")(weights="IMAGENET1K_V1")
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value) and "\n" not in str(err.value)
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()  # random weights under the exact expected file name
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / os.path.basename(url))
    backbone, dim = BACKBONES.get("resnet18")(weights="IMAGENET1K_V1")  # torchvision's own loader runs
    loaded = backbone.net.state_dict()
    assert dim == 512 and set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)


def test_finetune_on_a_two_class_folder_tree(tmp_path):
    from PIL import Image

    for k, (name, colour) in enumerate((("cats", (200, 80, 60)), ("dogs", (60, 90, 200)))):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(8):
            noise = torch.randint(0, 40, (30, 40, 3), generator=torch.Generator().manual_seed(10 * k + i))
            pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "pets" / name / f"{i}.jpg")
    cfg = compose(
        [
            *FT,
            "trainer.epochs=2",
            "trainer.progress_bar=false",
            "device=cpu",
            "dataset=folder",
            f"dataset.root={tmp_path / 'pets'}",
            "dataset.layout=classes",
            "dataset.resize=36",
            "dataset.crop=32",
            "backbone=lenet",
            "method.labels_per_class=3",
            "method.val_fraction=0.34",
            "method.augment=[flip,color]",
        ]
    )
    results = fit(cfg, run_dir=str(tmp_path / "run"), quiet=True)
    assert results["budget"]["train"] == 4 and results["budget"]["val"] == 2 and results["budget"]["test"] == 10
    assert results["selection"]["rule"] == "val_acc" and 0 <= results["target_acc"] <= 1
    dataset = to_dataclass(cfg.dataset, DATASETS.get("folder").config, "dataset")
    budget = Finetune.prepare_task(build_task(dataset, 0, ""), to_dataclass(cfg.method, Finetune.Config, "m"), 0)
    assert not budget.val.dataset.transform.train  # validation images get the test split's centre crop
    assert budget.source_train.base.dataset.transform.train  # training images keep the random crop
