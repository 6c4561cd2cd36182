"""Real-data loaders (mnist_usps, office31, folder) on fixtures written here in the exact on-disk formats.

No test touches the network: in this process every socket connection raises, and CLI subprocesses run with a
``sitecustomize`` that does the same (plus dead proxies), so the real download code paths fail as offline.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from PIL import Image

from da.config import compose, to_dataclass
from da.data import DATASETS, build_task
from da.data.base import Unlabelled
from da.errors import ConfigError, DataError
from da.methods import METHODS

TINY_RUN = ["trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.batch_size=4", "trainer.progress_bar=false"]
TINY_RUN += ["device=cpu", "trainer.eval_batch_size=64"]
SMALL_IMAGES = ["dataset.resize=32", "dataset.crop=28", "backbone=lenet"]  # LeNet takes 3-channel 28x28 too
OFFICE_CLASSES = ["back_pack", "bike", "mug"]
BLOCK_NETWORK = """import socket
def _offline(*args, **kwargs):
    raise OSError("network disabled by the test suite")
socket.socket.connect = _offline
socket.create_connection = _offline
socket.getaddrinfo = _offline
"""


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network disabled by the test suite")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)


def offline_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """``python -m da.run`` in a subprocess that cannot reach the network."""
    site = tmp_path / "offline_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_NETWORK)
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "no_proxy": "", "NO_PROXY": ""}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env.update({k: dead for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")})
    cmd = [sys.executable, "-m", "da.run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300)


def one_line_error(proc) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ---------------------------------------------------------------- fixtures in the real formats
def glyphs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images in [0, 1] of shape (size, size): class k is a bright bar at a class-dependent row, + noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    x = rng.uniform(0.0, 0.1, size=(n, size, size))
    for i, k in enumerate(labels):
        row = 1 + (k * (size - 3)) // 9
        x[i, row : row + 2, 1:-1] = 1.0
    x[0] = 0.0
    x[0, 0, 0] = 1.0  # one image spans exactly [0, 1]
    return x, labels


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    """An IDX file as MNIST ships it: magic (0, 0, type 0x08 = uint8, ndim), big-endian int32 dims, data."""
    data = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)


def write_mnist(root, n_train: int = 40, n_test: int = 20, gz: bool = True) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = glyphs(n, 28, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.round(x * 255), gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)


def write_usps(folder, n_train: int = 30, n_test: int = 20) -> None:
    """libsvm lines ``label index:value ...`` with labels 1..10 and 256 values in [-1, 1], bz2-compressed."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("usps.bz2", n_train, 2), ("usps.t.bz2", n_test, 3)):
        x, y = glyphs(n, 16, seed)
        lines = [
            f"{k + 1} " + " ".join(f"{j + 1}:{2 * v - 1:.6f}" for j, v in enumerate(img.ravel()))
            for img, k in zip(x, y)
        ]
        with bz2.open(folder / name, "wb") as fh:
            fh.write(("\n".join(lines) + "\n").encode())


def jpeg(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def write_tree(root, domains, classes, per_class: int = 3, images: str = "") -> None:
    """``<root>/<domain>/[images/]<class>/frame_000i.jpg``; a class has a colour, a domain shifts brightness."""
    for d, domain in enumerate(domains):
        for k, cls in enumerate(classes):
            folder = root / domain / images / cls if images else root / domain / cls
            folder.mkdir(parents=True)
            colour = tuple(int(c) for c in np.clip(np.eye(3)[k % 3] * 200 + 30 * d, 0, 255))
            for i in range(per_class):
                (folder / f"frame_{i:04d}.jpg").write_bytes(jpeg(colour, seed=100 * d + 10 * k + i))


def task_of(*overrides: str):
    cfg = compose(list(overrides))
    return build_task(to_dataclass(cfg.dataset, DATASETS.get(cfg.dataset.name).config, "dataset"), 0, cfg.data_root)


# ---------------------------------------------------------------- mnist_usps
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_load_gzipped_or_raw(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    write_usps(tmp_path / "USPS")
    task = task_of("dataset=mnist_usps", f"data_root={tmp_path}")
    x, y = task.source_train[5]
    assert x.shape == (1, 28, 28) and int(y) == 5
    assert len(task.source_train) == 40 and len(task.source_test) == 20  # full train set; test split
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()  # what torchvision reads


def test_mnist_and_usps_share_one_intensity_scale(tmp_path):
    write_mnist(tmp_path)
    write_usps(tmp_path)  # where USPS(root=data_root) puts its files
    task = task_of("dataset=mnist_usps", f"data_root={tmp_path}")
    mnist, usps = task.source_train.x, task.target_test.x
    assert usps.shape[1:] == mnist.shape[1:] == (1, 28, 28)
    for x in (mnist, usps):  # [0, 255] -> [0, 1] -> normalised (x - 0.5) / 0.5, in both domains
        assert x.min().item() == pytest.approx(-1.0, abs=1e-6)
        assert x.max().item() == pytest.approx(1.0, abs=1e-2)
    assert abs(mnist.mean().item() - usps.mean().item()) < 0.2  # same glyph generator, same scale
    assert torch.equal(task.target_train_labels, torch.arange(30) % 10)


def test_mnist_usps_protocol_target_train_unlabelled_and_target_test_split(tmp_path):
    write_mnist(tmp_path)
    write_usps(tmp_path / "USPS")
    task = task_of("dataset=mnist_usps", "dataset.source=usps", "dataset.target=mnist", f"data_root={tmp_path}")
    assert (task.source, task.target) == ("usps", "mnist")
    assert isinstance(task.target_train, Unlabelled) and len(task.target_train) == 40
    _, index = task.target_train[7]
    assert index == 7  # an index, never the label
    assert len(task.target_test) == 20 and len(task.source_train) == 30


@pytest.mark.parametrize("download", ["true", "false"])
def test_mnist_usps_missing_files_say_what_to_put_where(tmp_path, download):
    with pytest.raises(DataError) as err:
        task_of("dataset=mnist_usps", f"data_root={tmp_path}", f"dataset.download={download}")
    message = str(err.value)
    assert "MNIST" in message and str(tmp_path / "MNIST" / "raw") in message and "\n" not in message
    assert ("download failed" if download == "true" else "download is off") in message
    write_mnist(tmp_path)
    with pytest.raises(DataError, match=r"USPS.*usps\.bz2.*usps\.t\.bz2"):
        task_of("dataset=mnist_usps", f"data_root={tmp_path}", f"dataset.download={download}")
    assert not (tmp_path / "USPS" / "usps.bz2").exists()  # no partial download left behind


def test_corrupt_mnist_archive_is_one_clear_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    write_usps(tmp_path / "USPS")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        task_of("dataset=mnist_usps", f"data_root={tmp_path}", "dataset.download=false")
    (tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(DataError, match="cannot read the MNIST file .*t10k-images-idx3-ubyte "):
        task_of("dataset=mnist_usps", f"data_root={tmp_path}", "dataset.download=false")


def test_mnist_usps_rejects_unknown_domain():
    with pytest.raises(ConfigError, match="svhn"):
        to_dataclass(
            compose(["dataset=mnist_usps", "dataset.target=svhn"]).dataset, DATASETS.get("mnist_usps").config, "dataset"
        )


# ---------------------------------------------------------------- office31
def test_office31_tree_transductive_protocol(tmp_path):
    write_tree(tmp_path / "office31", ["amazon", "dslr", "webcam"], OFFICE_CLASSES, images="images")
    task = task_of("dataset=office31", f"data_root={tmp_path}", "dataset.resize=36", "dataset.crop=32")
    assert task.class_names == OFFICE_CLASSES and task.in_channels == 3 and task.image_size == 32
    assert len(task.source_train) == len(task.source_test) == 9  # all source images
    assert len(task.target_train) == len(task.target_test) == 9  # all target images, unlabelled for training
    assert task.source_train.x.dtype == torch.uint8 and task.source_train.x.shape == (9, 3, 36, 36)
    torch.manual_seed(0)
    crops = torch.stack([task.source_train[0][0] for _ in range(8)])  # (8, 3, 32, 32) random crops / flips
    assert crops.shape == (8, 3, 32, 32) and crops.std(0).max() > 0
    assert torch.equal(task.target_test[0][0], task.target_test[0][0])  # evaluation: deterministic centre crop
    red = task.source_test[0][0]  # class back_pack is red: the ImageNet-normalised red channel is the largest
    assert red[0].mean() > 1.0 and red[1].mean() < 0 and task.source_test[0][1] == 0


def office31_archive(tmp_path, per_class: int = 2):
    """``<tmp>/data/office31/domain_adaptation_images.tar.gz`` in the real layout (``<domain>/images/<class>``),
    amazon then webcam; returns (data_root, base folder, archive)."""
    staging = tmp_path / "staging"
    write_tree(staging, ["amazon", "webcam"], OFFICE_CLASSES, per_class=per_class, images="images")
    base = tmp_path / "data" / "office31"
    base.mkdir(parents=True)
    archive = base / "domain_adaptation_images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for domain in ("amazon", "webcam"):
            tar.add(staging / domain, arcname=domain)
    return tmp_path / "data", base, archive


def office31_task(data_root, *overrides: str):
    return task_of("dataset=office31", f"data_root={data_root}", "dataset.resize=36", "dataset.crop=32", *overrides)


def test_office31_extracts_a_local_archive_checked_by_md5(tmp_path):
    data_root, base, archive = office31_archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="md5"):
        office31_task(data_root, "dataset.md5=0123456789abcdef0123456789abcdef")
    task = office31_task(data_root, f"dataset.md5={md5}")
    assert len(task.source_train) == 6 and (base / "amazon" / "images" / "mug").is_dir()
    assert json.loads((base / ".extracted.json").read_text())["counts"] == {"amazon": 6, "webcam": 6}
    assert not list(base.glob(".extract-*"))  # the temporary folder is gone


@pytest.mark.parametrize("lost", ["some_images", "a_class"])
def test_office31_partial_extraction_is_extracted_again(tmp_path, lost):
    """Issue 26.2: what a kill during an in-place extraction left (no record of a complete one) is never used."""
    data_root, base, archive = office31_archive(tmp_path, per_class=3)
    with tarfile.open(archive) as tar:
        tar.extractall(base, filter="data")
    doomed = sorted((base / "webcam" / "images").rglob("*.jpg"))[-4:] if lost == "some_images" else []
    for path in doomed:
        path.unlink()
    if lost == "a_class":  # killed earlier: a class folder not there yet ("different classes" before)
        shutil.rmtree(base / "webcam" / "images" / "mug")
    task = office31_task(data_root, "dataset.md5=null")
    assert len(task.target_train) == len(task.target_test) == 9 and len(task.source_train) == 9
    assert json.loads((base / ".extracted.json").read_text())["counts"] == {"amazon": 9, "webcam": 9}


def test_office31_images_lost_after_a_complete_extraction(tmp_path):
    data_root, base, archive = office31_archive(tmp_path)
    office31_task(data_root, "dataset.md5=null")
    next((base / "webcam" / "images" / "bike").glob("*.jpg")).unlink()
    assert len(office31_task(data_root, "dataset.md5=null").target_test) == 6  # re-extracted from the archive
    next((base / "webcam" / "images" / "bike").glob("*.jpg")).unlink()
    archive.unlink()
    with pytest.raises(DataError) as err:  # no archive to extract again: one line, never used silently
        office31_task(data_root, "dataset.md5=null")
    message = str(err.value)
    assert "5 of 6 images" in message and "interrupted extraction" in message and "\n" not in message


SLOW_EXTRACTION = """import sys, tarfile, time
member = tarfile.TarFile._extract_member
def slow(self, *args, **kwargs):
    time.sleep(0.03)
    return member(self, *args, **kwargs)
tarfile.TarFile._extract_member = slow
from da.data.office31 import Office31Config, ensure_domains
ensure_domains(sys.argv[1], Office31Config(md5=None, download=False))
"""


def test_office31_extraction_killed_mid_way_is_never_used(tmp_path):
    """Issue 26.2: kill -9 while the last domain is being extracted, then a rerun: every image is there."""
    data_root, base, _ = office31_archive(tmp_path, per_class=4)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACTION, str(base)], env=env)
    try:
        deadline = time.time() + 120
        while not any("webcam" in p.parts for p in base.rglob("*.jpg")):  # amazon done, webcam under way
            assert proc.poll() is None and time.time() < deadline, "the extraction ended before the kill"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    task = office31_task(data_root, "dataset.md5=null")
    assert len(task.source_train) == len(task.target_train) == 12
    assert not list(base.glob(".extract-*"))


def test_office31_missing_domain_lists_found_and_says_what_to_download(tmp_path):
    write_tree(tmp_path / "office31", ["amazon"], OFFICE_CLASSES, per_class=1, images="images")
    with pytest.raises(DataError) as err:  # download on, network off: the real download path fails
        task_of("dataset=office31", f"data_root={tmp_path}", "dataset.target=dslr")
    message = str(err.value)
    assert "dslr" in message and "domains found: amazon" in message and "download failed" in message
    assert "domain_adaptation_images.tar.gz" in message and str(tmp_path / "office31") in message
    assert not (tmp_path / "office31" / "domain_adaptation_images.tar.gz").exists()


# ---------------------------------------------------------------- folder
def test_folder_two_domains_and_bad_images_are_skipped_and_counted(tmp_path, caplog):
    write_tree(tmp_path, ["a", "b"], ["cat", "dog"])
    (tmp_path / "a" / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = jpeg((200, 0, 0), 0, (64, 64))
    (tmp_path / "b" / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "dog" / "notes.txt").write_text("not an image: ignored")
    with caplog.at_level(logging.WARNING, logger="da.data.images"):
        task = task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=a", "dataset.target=b")
    assert task.skipped_files == 2
    assert "corrupt.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert task.class_names == ["cat", "dog"] and len(task.source_train) == 6 and len(task.target_test) == 6
    assert task.image_size == 224 and task.source_test[0][0].shape == (3, 224, 224)


def test_folder_class_lists_must_match(tmp_path):
    write_tree(tmp_path, ["a"], ["cat", "dog"], per_class=1)
    write_tree(tmp_path, ["b"], ["cat", "cow"], per_class=1)
    with pytest.raises(DataError, match=r"only in a: dog; only in b: cow"):
        task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=a", "dataset.target=b")


def test_folder_missing_domain_lists_domains_found(tmp_path):
    write_tree(tmp_path, ["art", "photo"], ["cat"], per_class=1)
    with pytest.raises(DataError, match=r"'sketch' not found .*domains found: art, photo"):
        task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=art", "dataset.target=sketch")
    with pytest.raises(DataError, match=r"dataset.source is required.*art, photo"):
        task_of("dataset=folder", f"dataset.root={tmp_path}")


def test_folder_empty_class_folder_is_reported(tmp_path):
    write_tree(tmp_path, ["a", "b"], ["cat", "dog"], per_class=1)
    (tmp_path / "b" / "emu").mkdir()
    (tmp_path / "a" / "emu").mkdir()
    (tmp_path / "a" / "emu" / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"empty class folder.*emu"):
        task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=a", "dataset.target=b")
    (tmp_path / "b" / "emu" / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"every image of class\(es\) emu is unreadable"):
        task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=a", "dataset.target=b")


@pytest.mark.parametrize("mode", ["classes", "same_domain"])
def test_folder_one_domain_split_is_stratified_and_fixed(tmp_path, mode):
    if mode == "classes":
        write_tree(tmp_path, ["cats_vs_dogs"], ["cat", "dog"], per_class=10)
        root, extra = tmp_path / "cats_vs_dogs", ["dataset.layout=classes"]
    else:
        write_tree(tmp_path, ["pets"], ["cat", "dog"], per_class=10)
        root, extra = tmp_path, ["dataset.source=pets", "dataset.target=pets"]
    common = ["dataset=folder", f"dataset.root={root}", "dataset.resize=36", "dataset.crop=32", *extra]
    task = task_of(*common)
    assert task.source == task.target and len(task.source_train) == 16 and len(task.target_test) == 4
    assert torch.bincount(task.target_test.y).tolist() == [2, 2]  # 20% of each class
    assert torch.equal(task.target_train_labels, task.source_train.y)
    train_x = task.source_train.x
    assert not any(torch.equal(t, s) for t in task.target_test.x for s in train_x)  # disjoint
    again = task_of(*common)
    other = task_of(*common, "dataset.split_seed=1")
    assert torch.equal(again.target_test.x, task.target_test.x)
    assert not torch.equal(other.target_test.x, task.target_test.x)


# ---------------------------------------------------------------- end to end, offline
CLI_METHOD = "dann" if "dann" in METHODS else "source_only"  # the "Done when" names method=dann


def write_data(root, dataset: str) -> list[str]:
    """A fixture tree for ``dataset`` under ``root`` and the overrides that run on it (small, fast images)."""
    if dataset == "mnist_usps":
        write_mnist(root)
        write_usps(root / "USPS")
        return ["dataset=mnist_usps", f"data_root={root}"]
    if dataset == "office31":
        write_tree(root / "office31", ["amazon", "webcam"], OFFICE_CLASSES, per_class=2, images="images")
        return ["dataset=office31", f"data_root={root}", *SMALL_IMAGES]
    write_tree(root / "tree", ["a", "b"], ["cat", "dog"], per_class=2)
    (root / "tree" / "b" / "cat" / "bad.jpg").write_bytes(b"broken")
    return ["dataset=folder", f"dataset.root={root / 'tree'}", "dataset.source=a", "dataset.target=b", *SMALL_IMAGES]


@pytest.mark.parametrize("dataset", ["mnist_usps", "office31", "folder"])
def test_fit_source_only_end_to_end(tmp_path, dataset):
    from da import fit

    overrides = write_data(tmp_path / "data", dataset)
    results = fit(compose(["method=source_only", *overrides, *TINY_RUN]), run_dir=str(tmp_path / "run"), quiet=True)
    assert results["dataset"] == dataset and results["steps"] == 2 and 0 <= results["target_acc"] <= 1
    assert results["skipped_files"] == (1 if dataset == "folder" else 0)
    assert (tmp_path / "run" / "log.csv").is_file()


@pytest.mark.parametrize("dataset", ["office31"])  # the others end to end in process (above): the same code path
def test_cli_end_to_end_offline(tmp_path, dataset):
    overrides = write_data(tmp_path / "data", dataset)
    out = tmp_path / "run"
    proc = offline_cli(tmp_path, f"method={CLI_METHOD}", *overrides, *TINY_RUN, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert (results["method"], results["dataset"], results["steps"]) == (CLI_METHOD, dataset, 2)
    classes = {"mnist_usps": [str(d) for d in range(10)], "office31": OFFICE_CLASSES, "folder": ["cat", "dog"]}
    assert sorted(results["per_class_acc"]) == sorted(classes[dataset])


@pytest.mark.parametrize("dataset", ["mnist_usps", "office31"])
def test_cli_no_data_no_network_fails_with_one_line(tmp_path, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_line_error(offline_cli(tmp_path, f"dataset={dataset}", f"data_root={empty}", *TINY_RUN))
    expected = {"mnist_usps": "MNIST", "office31": "domain_adaptation_images.tar.gz"}[dataset]
    assert expected in line and str(empty) in line and "download failed" in line


def test_folder_without_root_is_a_clear_error():
    with pytest.raises(DataError, match="dataset.root is required"):
        task_of("dataset=folder")


def test_this_module_cannot_reach_the_network():
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("example.com", 80))
