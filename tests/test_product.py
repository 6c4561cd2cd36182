"""A researcher's first hour (issue 23): the `da` command, report.html, self-contained run folders, export.

One tiny run (1 epoch of 2 steps, report on) is shared by every test here; the `da` command is called in-process.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import da
from da import cli
from da.callbacks import Callback
from da.errors import ConfigError

from .conftest import TINY


class _KeepTask(Callback):
    def on_fit_start(self, trainer) -> None:
        self.task = trainer.task


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """(run folder, its task, the run's logits on the target test images)."""
    keep = _KeepTask()
    folder = str(tmp_path_factory.mktemp("product") / "run")
    overrides = [*TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2", "trainer.report=true"]
    result = da.fit(overrides, run_dir=folder, callbacks=[keep])
    assert result.run_dir == os.path.abspath(folder) and result["epochs"] == 1
    x = keep.task.target_test.x  # (N, 1, 28, 28) normalised
    logits = da.load_run(folder).predict(x)
    return folder, keep.task, x, logits


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_report_html_shows_every_figure(run):
    folder = run[0]
    page = open(os.path.join(folder, "report.html")).read()
    shown = re.findall(r'<img src="([^"]+)"', page)
    assert {os.path.basename(s) for s in shown} == {
        "curves.png",
        "per_class.png",
        "confusion.png",
        "embedding.png",
        "reliability.png",
    }
    for src in shown:
        with Image.open(os.path.join(folder, src)) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    results = json.load(open(os.path.join(folder, "results.json")))
    assert f"{100 * results['target_acc']:.1f}%" in page and "epoch 1 of 1 (last)" in page
    assert "<title>source_only on digits fonts → sklearn</title>" in page


def test_calibration_by_hand():
    from da.report import calibration, confusion

    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 1])  # confidences 0.9 (right), 0.8 (wrong), 0.7 (right), 0.55 (right)
    ece, table = calibration(probs, labels, bins=2)  # (0, .5]: empty; (.5, 1]: conf .7375, acc .75
    assert ece == pytest.approx(abs(0.75 - 0.7375))
    assert table[0]["count"] == 0 and table[1]["count"] == 4
    ece4, _ = calibration(probs, labels, bins=4)  # (.5,.75]: .7 ok, .55 ok -> |1-.625|; (.75,1]: |.5-.85|
    assert ece4 == pytest.approx(0.5 * 0.375 + 0.5 * 0.35)
    assert confusion(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist() == [[1, 0], [1, 1]]


def test_load_run_needs_no_dataset(run, monkeypatch):
    folder, task, x, logits = run

    def no_data(*args, **kwargs):
        raise AssertionError("load_run built the dataset")

    monkeypatch.setattr("da.build.build_task", no_data)
    loaded = da.load_run(folder)
    assert loaded.class_names == [str(d) for d in range(10)]
    assert torch.allclose(loaded.predict(x), logits)
    with pytest.raises(ConfigError, match=r"prepared images \(B, 1, 28, 28\), got \(2, 3, 64, 64\)"):
        loaded.predict(torch.zeros(2, 3, 64, 64))  # a raw image: one line saying what predict takes
    pil = Image.fromarray(np.full((64, 64, 3), 255, dtype=np.uint8))  # any size and mode: predict_images prepares it
    probs = loaded.predict_images([pil])
    white = torch.softmax(loaded.predict(torch.ones(1, 1, 28, 28)), 1).numpy()  # 255 -> (1 - 0.5) / 0.5
    assert probs.shape == (1, 10) and np.abs(probs - white).max() < 1e-5


def test_predict_writes_a_csv_of_probabilities(run, tmp_path, capsys):
    folder, task, x, _ = run
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.rint((x[:3, 0].numpy() * 0.5 + 0.5) * 255).clip(0, 255).astype(np.uint8)  # back to 8-bit images
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(images / f"{i}.png")
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", folder, str(images), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [os.path.basename(r["file"]) for r in rows] == ["0.png", "1.png", "2.png"]
    probs = np.array([[float(r[str(k)]) for k in range(10)] for r in rows])
    quantised = (torch.from_numpy(pixels).float()[:, None] / 255 - 0.5) / 0.5  # what the PNGs hold
    expected = torch.softmax(da.load_run(folder).predict(quantised), 1).numpy()
    assert np.abs(probs - expected).max() < 1e-3
    assert [r["prediction"] for r in rows] == [str(k) for k in expected.argmax(1)]
    capsys.readouterr()
    assert cli.main(["predict", folder, str(tmp_path / "missing")]) == 2
    assert "missing: no such file or folder" in _one_line(capsys)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_runs_logits(run, tmp_path, fmt):
    folder, _, x, logits = run
    path = str(tmp_path / f"model.{fmt}")
    assert cli.main(["export", folder, "--format", fmt, "-o", path]) == 0
    if fmt == "torchscript":
        got = torch.jit.load(path)(x)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    assert got.shape == logits.shape and (got - logits).abs().max() < 1e-4


def test_list_and_bad_input(capsys):
    from da.methods import METHODS

    assert cli.main(["list", "methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in METHODS.names():
        line = next(ln for ln in lines if ln.split()[:1] == [name])
        assert line.split()[1] == METHODS.get(name).kind and len(line.split()) > 3
    assert cli.main(["list", "datasets"]) == 0 and "digits" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["list", "nope"])
    assert exit_.value.code == 2 and "invalid choice" in _one_line(capsys)
    assert cli.main(["export", "/no/such/run", "--format", "onnx"]) == 2
    assert "model.pt" in _one_line(capsys)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["predict", "--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out


def test_fit_arguments_and_public_names():
    from da.config import compose
    from da.experiment import as_config

    assert as_config({"method": "dann", "trainer.epochs": 2, "trainer.steps_per_epoch": None}) == compose(
        ["method=dann", "trainer.epochs=2", "trainer.steps_per_epoch=null"]
    )
    assert as_config({"trainer": {"epochs": 2}}) == compose(["trainer.epochs=2"])
    with pytest.raises(ConfigError, match="list of overrides"):
        da.fit("method=dann")
    with pytest.raises(ConfigError, match="unknown method"):
        da.fit(["method=nope"])
    assert {"fit", "load_run", "compose", "list_methods", "list_validators"} <= set(dir(da))


def test_sweep_summary_table(tmp_path):
    from da.report import write_summary

    for i, (method, seed, acc) in enumerate([("dann", 0, 0.5), ("dann", 1, 0.7), ("source_only", 0, 0.4)]):
        d = tmp_path / f"{i}_{method}"
        d.mkdir()
        r = {"dataset": "digits", "source": "fonts", "target": "sklearn", "method": method, "backbone": "lenet"}
        (d / "results.json").write_text(
            json.dumps({**r, "seed": seed, "epochs": 2, "target_acc": acc, "source_acc": 1})
        )
    table, rows = write_summary(str(tmp_path))
    assert "| digits fonts→sklearn | dann | lenet | 2 (0,1) | 2 | 60.0 ± 14.1 | 100.0 |" in table
    assert [r["method"] for r in rows] == ["dann", "source_only"] and (tmp_path / "summary.png").is_file()


def test_every_package_folder_is_listed_in_pyproject():
    import tomllib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    listed = set(tomllib.load(open(os.path.join(repo, "pyproject.toml"), "rb"))["tool"]["setuptools"]["packages"])
    found = set()
    for top, prefix in (("da", "da"), ("configs", "da.configs")):
        for root, dirs, _files in os.walk(os.path.join(repo, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(root, os.path.join(repo, top))
            found.add(prefix if rel == "." else f"{prefix}.{rel.replace(os.sep, '.')}")
    assert found == listed


def test_readme_quickstart_commands_parse(monkeypatch):
    """Every `da ...` line of README's quickstart is a valid command: its subcommand and options parse, and a
    `da train` line's overrides pass the CLI's checks (the commands themselves run in the quickstart of a fresh
    clone; this guards the README against drifting from the CLI)."""
    import shlex

    from da.run import check_overrides

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(repo, "README.md")).read()
    quick = text[text.index("## Quickstart") :]
    block = quick[quick.index("```bash") : quick.index("```\n", quick.index("```bash") + 7)]
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.startswith("da ")]
    assert len(lines) >= 6 and any(ln.startswith("da predict") for ln in lines)
    monkeypatch.chdir(repo)
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "train":
            check_overrides(argv[1:])
        else:
            args = cli.parser().parse_args(argv)
            assert callable(args.handler), line
    assert os.path.isdir(os.path.join(repo, "docs", "examples", "digits"))  # what `da predict` reads there


def test_folder_preprocessing_is_the_runs_test_transform(tiny_folder):
    """For a decoded image folder, an image file read as preprocessing.json says (resize, centre crop, ImageNet
    statistics) is the very tensor the run's target test split evaluated."""
    from da.build import build_run
    from da.config import compose
    from da.data.images import scan_classes
    from da.inference import describe, load_image

    root = next(o.split("=", 1)[1] for o in tiny_folder if o.startswith("dataset.root="))
    cfg = compose(["method=source_only", *tiny_folder, "dataset.resize=32", "dataset.crop=24", "device=cpu"])
    task = build_run(cfg, pretrained=False).task
    prep = describe(task, "folder")
    assert (prep["channels"], prep["resize"], prep["crop"]) == (3, 32, 24) and prep["class_names"] == task.class_names
    files = scan_classes(os.path.join(root, "tgt"), "tgt")
    paths = [p for c in task.class_names for p in files[c]]  # da.data.images.decode_folder's order
    for i in (0, 17, len(paths) - 1):
        x, _ = task.target_test[i]  # (3, 24, 24) under the evaluation transform
        assert torch.allclose(load_image(paths[i], prep), x, atol=1e-5)
