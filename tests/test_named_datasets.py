"""The named datasets on fixtures written in their exact on-disk layouts (tiny images): layout, splits and counts,
a wrong md5 and missing files each one line (exit 2 through the CLI)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from da.data import digit5, listed
from da.errors import DataError


def _png(path, size=10, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _patch(monkeypatch, name, **changes):
    """The manifest ``name`` (a module constant) with ``changes`` (fixture counts, md5s)."""
    new = dataclasses.replace(getattr(listed, name), **changes)
    monkeypatch.setattr(listed, name, new)
    for key, value in list(listed.MANIFESTS.items()):
        if value.folder == new.folder:
            monkeypatch.setitem(listed.MANIFESTS, key, new)
    return new


def _build(cfg_cls, root, **keys):
    cfg = cfg_cls(resize=12, crop=8, cache="false", **keys)
    return listed.build_listed(cfg, 0, str(root))


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def _office_home(root):
    for d in ("Art", "Clipart"):
        for k, c in enumerate(("Alarm_Clock", "Backpack", "Zebra")[:3]):
            for i in range(2 + k):
                _png(str(root / "office_home" / d / c / f"{i:05d}.jpg"), value=10 * i)


def test_office_home_layout_and_counts(tmp_path, monkeypatch):
    _office_home(tmp_path)
    _patch(monkeypatch, "OFFICE_HOME", classes=3, counts={"Art/all": 9, "Clipart/all": 9})
    task = _build(listed.OfficeHomeConfig, tmp_path, source="Art", target="Clipart")
    assert len(task.source_train) == len(task.target_train) == len(task.target_test) == 9
    assert task.class_names == ["Alarm_Clock", "Backpack", "Zebra"] and task.target_train_labels.tolist()[-1] == 2
    _patch(monkeypatch, "OFFICE_HOME", classes=3, counts={"Art/all": 2427, "Clipart/all": 9})
    with pytest.raises(DataError) as err:
        _build(listed.OfficeHomeConfig, tmp_path, source="Art", target="Clipart")
    assert "9 images, the official Art/all split 2,427" in _one_line(err)
    _build(listed.OfficeHomeConfig, tmp_path, source="Art", target="Clipart", verify=False)  # as it is


def _visda(root, n=4):
    for folder, domain in (("train", "synthetic"), ("validation", "real")):
        lines = []
        for i in range(n):
            rel = f"{('aeroplane', 'truck')[i % 2]}/{domain}_{i}.png"
            _png(str(root / "visda2017" / folder / rel), value=i)
            lines.append(f"{rel} {11 * (i % 2)}")
        (root / "visda2017" / folder / "image_list.txt").write_text("\n".join(lines) + "\n")


def test_visda_lists_metric_and_missing_images(tmp_path, monkeypatch):
    _visda(tmp_path)
    _patch(monkeypatch, "VISDA2017", counts={"synthetic/all": 4, "real/all": 4})
    task = _build(listed.VisDA2017Config, tmp_path)
    assert task.notes["metric"] == "mean_class_accuracy" and task.num_classes == 12
    assert task.target_test.x is task.target_train_eval.base.x  # one forward: accuracy and validators
    assert sorted(set(task.source_train.y.tolist())) == [0, 11]
    assert task.class_names[0] == "aeroplane" and task.class_names[11] == "truck" and task.class_names[1] == "1"
    os.remove(tmp_path / "visda2017" / "validation" / "truck" / "real_1.png")
    with pytest.raises(DataError) as err:
        _build(listed.VisDA2017Config, tmp_path)
    assert "1 of the 4 images" in _one_line(err) and "real_1.png" in str(err.value)


def _domainnet(root, variant):
    lines = {}
    for d in ("real", "clipart"):
        for i in range(6):
            rel = f"{d}/{('aircraft_carrier', 'zigzag')[i % 2]}/{d}_{i:03d}.jpg"
            _png(str(root / "domainnet" / rel), value=i)
            lines.setdefault((d, "train" if i < 4 else "test"), []).append(f"{rel} {i % 2}")
    for (d, split), rows in lines.items():
        name = f"{d}_{split}.txt" if variant == 345 else f"labeled_source_images_{d}.txt"
        mode = "a" if variant == 126 else "w"
        with open(root / "domainnet" / name, mode) as fh:
            fh.write("\n".join(rows) + "\n")


@pytest.mark.parametrize("variant", [345, 126])
def test_domainnet_official_splits(tmp_path, monkeypatch, variant):
    _domainnet(tmp_path, variant)
    counts = {"real/train": 4, "real/test": 2, "clipart/train": 4, "clipart/test": 2} if variant == 345 else {}
    _patch(monkeypatch, "DOMAINNET", counts=counts)
    task = _build(listed.DomainNetConfig, tmp_path, variant=variant, source="real", target="clipart")
    if variant == 345:  # train on the train lists, report on the target's test list
        assert (len(task.source_train), len(task.target_train), len(task.target_test)) == (4, 4, 2)
    else:  # the whole 126-class list, transductive
        assert (len(task.source_train), len(task.target_train), len(task.target_test)) == (6, 6, 6)
        assert task.num_classes == 126


def test_missing_dataset_is_one_line_naming_files_and_folder(tmp_path):
    for cfg, file in (
        (listed.VisDA2017Config(download=False), "train.tar"),
        (listed.OfficeHomeConfig(download=False), "Art.tgz"),
        (listed.DomainNetConfig(variant=345, download=False), "real_train.txt"),
        (listed.MnistMConfig(download=False), "mnist_m.tar.gz"),
    ):
        with pytest.raises(DataError) as err:
            listed.build_listed(cfg, 0, str(tmp_path))
        assert file in _one_line(err) and str(tmp_path / listed.manifest_of(cfg).folder) in str(err.value)


def _mnist_m_archive(root):
    src = root / "src"
    lines = {"train": [], "test": []}
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            _png(str(src / "mnist_m" / f"mnist_m_{split}" / f"{i:08d}.png"), size=8, value=i)
            lines[split].append(f"{i:08d}.png {i % 10}")
        (src / "mnist_m" / f"mnist_m_{split}_labels.txt").write_text("\n".join(lines[split]) + "\n")
    os.makedirs(root / "mnist_m", exist_ok=True)
    path = root / "mnist_m" / "mnist_m.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src / "mnist_m", arcname="mnist_m")  # as the published archive: one top folder
    return path


def test_mnist_m_extracts_archive_and_checks_md5(tmp_path, monkeypatch):
    path = _mnist_m_archive(tmp_path)
    with pytest.raises(DataError) as err:  # the manifest's md5 is the published archive's, not this one's
        listed.build_listed(listed.MnistMConfig(download=False), 0, str(tmp_path))
    assert "does not match md5 859df31c91afe82e80e5012ba928f279" in _one_line(err)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    archive = listed.Archive("mnist_m.tar.gz", None, md5)
    _patch(monkeypatch, "MNIST_M", archives={"mnist_m": (archive,)}, counts={"mnist_m/train": 4, "mnist_m/test": 2})
    task = listed.build_listed(listed.MnistMConfig(download=False), 0, str(tmp_path))
    assert (len(task.source_train), len(task.target_test)) == (4, 2) and task.image_size == 32


def _svhn(root, n):
    from scipy.io import savemat

    os.makedirs(root / "svhn", exist_ok=True)
    for name, _ in digit5.SVHN_FILES.values():
        x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(root / "svhn" / name, {"X": x, "y": np.arange(1, n + 1).reshape(-1, 1) % 10 + 1})


def test_svhn_reads_mat_files_md5_and_counts(tmp_path, monkeypatch):
    with pytest.raises(DataError) as err:
        digit5.build_svhn(digit5.SvhnConfig(download=False), 0, str(tmp_path))
    assert "train_32x32.mat" in _one_line(err) and str(tmp_path / "svhn") in str(err.value)
    _svhn(tmp_path, 5)
    with pytest.raises(DataError) as err:
        digit5.build_svhn(digit5.SvhnConfig(download=False), 0, str(tmp_path))
    assert "does not match md5" in _one_line(err)
    task = digit5.build_svhn(digit5.SvhnConfig(download=False, verify=False), 0, str(tmp_path))
    assert task.source_train.x.shape == (5, 3, 32, 32) and task.source_train.y.max() <= 9
    assert float(task.source_train.x.min()) >= -1 and float(task.source_train.x.max()) <= 1


def _digit5(root, n=8):
    from scipy.io import savemat

    base = root / "digit5"
    os.makedirs(base, exist_ok=True)
    rng = np.random.default_rng(0)
    onehot = np.eye(10)[np.arange(n) % 10]
    savemat(
        base / "mnist_data.mat",
        {
            "train_32": rng.integers(0, 256, (n, 32, 32)),
            "test_32": rng.integers(0, 256, (n, 32, 32)),
            "label_train": onehot,
            "label_test": onehot,
        },
    )
    rgb = rng.integers(0, 256, (n, 28, 28, 3)).astype(np.uint8)
    savemat(base / "mnistm_with_label.mat", {"train": rgb, "test": rgb, "label_train": onehot, "label_test": onehot})
    for name in ("svhn_train_32x32.mat", "svhn_test_32x32.mat"):
        savemat(base / name, {"X": rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8), "y": np.full((n, 1), 10)})
    syn = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    savemat(
        base / "syn_number.mat",
        {
            "train_data": syn,
            "train_label": np.arange(n).reshape(-1, 1) % 10,
            "test_data": syn,
            "test_label": np.arange(n).reshape(-1, 1) % 10,
        },
    )
    usps = np.empty((2, 2), dtype=object)
    usps[0, 0], usps[0, 1] = rng.random((n, 1, 28, 28)), np.arange(n).reshape(-1, 1) % 10
    usps[1, 0], usps[1, 1] = rng.random((3, 1, 28, 28)), np.arange(3).reshape(-1, 1)
    savemat(base / "usps_28x28.mat", {"dataset": usps})


def test_digit5_every_domain_and_protocol(tmp_path, monkeypatch):
    _digit5(tmp_path)
    monkeypatch.setattr(digit5, "PROTOCOL", (6, 4))
    sizes = {}
    for d in digit5.DIGIT5_DOMAINS:
        train, test = digit5.digit5_domain(d, str(tmp_path / "digit5"), 0)
        assert train.x.shape[1:] == (3, 32, 32) and train.x.dtype == torch.float32
        sizes[d] = (len(train), len(test))
    assert sizes == {"mnist": (6, 4), "mnistm": (6, 4), "svhn": (6, 4), "syn": (6, 4), "usps": (8, 3)}
    assert digit5.digit5_domain("svhn", str(tmp_path / "digit5"), 0)[0].y.unique().tolist() == [0]  # 10 is 0
    task = digit5.build_digit5(digit5.Digit5Config(source="mnist", target="usps"), 0, str(tmp_path))
    assert len(task.target_test) == 3
    os.remove(tmp_path / "digit5" / "syn_number.mat")
    with pytest.raises(DataError) as err:
        digit5.build_digit5(digit5.Digit5Config(source="syn", target="usps"), 0, str(tmp_path))
    assert "syn_number.mat not found in" in _one_line(err)


def test_cli_missing_dataset_exits_2_with_one_line(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli(
        "dataset=visda2017",
        f"data_root={tmp_path}",
        "dataset.download=false",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "train.tar" in lines[0], proc.stderr


def test_visda_run_reports_mean_per_class_accuracy_as_its_headline(tmp_path, monkeypatch):
    from da.config import compose
    from da.experiment import fit, summary

    _visda(tmp_path, n=12)
    _patch(monkeypatch, "VISDA2017", counts={"synthetic/all": 12, "real/all": 12})
    overrides = ["dataset=visda2017", f"data_root={tmp_path}", "dataset.resize=16", "dataset.crop=16"]
    overrides += ["dataset.cache=false", "backbone=lenet", "method=source_only", "trainer.epochs=1"]
    overrides += ["trainer.batch_size=4", "trainer.report=false", "trainer.progress_bar=false", "device=cpu"]
    r = fit(compose(overrides), run_dir=str(tmp_path / "run"), quiet=True)
    present = [a for a in r["per_class_acc"].values() if a is not None]
    assert r["metric"] == "mean_class_accuracy" and len(present) == 2  # the fixture holds aeroplane and truck
    assert r["mean_class_acc"] == pytest.approx(sum(present) / 2)
    line = summary(r, str(tmp_path / "run"))
    assert f"target mean per-class acc {100 * r['mean_class_acc']:.1f}%" in line
    assert f"(overall {100 * r['target_acc']:.1f}%)" in line
