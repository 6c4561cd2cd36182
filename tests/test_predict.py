"""What ``da predict`` and ``da export`` write: never over the run's own files, one line for a bad output path,
unreadable images skipped and listed as training lists them, names escaped in the CSV."""

from __future__ import annotations

import csv
import io
import os

import numpy as np
import pytest
from PIL import Image

import da
from da import cli
from da.inference import write_predictions_csv

from .conftest import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("predict") / "run")
    da.fit([*TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2"], run_dir=folder, quiet=True)
    return folder


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((28, 28), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _snapshot(folder: str) -> dict[str, bytes]:
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder)) if n != ".lock"}


@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pt", "results.json", "config.yaml", "preprocessing.json"])
def test_outputs_never_replace_the_runs_own_files(run, images, tmp_path, capsys, name):
    before = _snapshot(run)
    link = tmp_path / "link.pt"
    target = os.path.join(run, name)
    if os.path.exists(target):
        link.symlink_to(target)
    for out in (target, os.path.join(run, ".", name), *([str(link)] if os.path.exists(target) else [])):
        assert cli.main(["export", run, "--format", "torchscript", "-o", out]) == 2
        assert "one of the run's own files" in _one_line(capsys)
        assert cli.main(["predict", run, str(images), "-o", out]) == 2
        assert "one of the run's own files" in _one_line(capsys)
    assert _snapshot(run) == before


def test_output_onto_a_folder_or_into_a_missing_one_is_one_line(run, images, tmp_path, capsys):
    for command in (["export", run, "--format", "torchscript"], ["predict", run, str(images)]):
        assert cli.main([*command, "-o", str(tmp_path)]) == 2
        assert "is a folder" in _one_line(capsys)
        assert cli.main([*command, "-o", str(tmp_path / "missing" / "out.csv")]) == 2
        assert "does not exist" in _one_line(capsys)


def test_export_into_a_read_only_run_folder_names_it_and_suggests_o(run, capsys, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if mode & os.W_OK else real(p, mode, **k))
    assert cli.main(["export", run, "--format", "torchscript"]) == 2
    line = _one_line(capsys)
    assert os.path.realpath(run) in line or run in line
    assert "-o" in line and not os.path.exists(os.path.join(run, "model.torchscript.pt"))


def test_predict_skips_unreadable_files_and_lists_them(run, images, tmp_path, capsys):
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", run, str(images), "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [os.path.basename(r["file"]) for r in rows] == ["0.png", "1.png"]
    listed = open(tmp_path / "pred.skipped.txt").read().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{images / 'broken.png'}: ")
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s)" in err and "pred.skipped.txt" in err
    assert cli.main(["predict", run, str(images)]) == 0  # to standard output: listed on standard error
    captured = capsys.readouterr()
    assert len(list(csv.DictReader(io.StringIO(captured.out)))) == 2
    assert f"skipped {images / 'broken.png'}: " in captured.err


def test_predict_on_a_missing_run_folder_says_it_is_missing(images, tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "no_run"), str(images)]) == 2
    assert "no such run folder" in _one_line(capsys)


def test_prediction_csv_escapes_formula_names():
    buf = io.StringIO()
    classes = ["=cmd|' /C calc'!A0", "+A1", "-x", "@SUM(A1)"]
    write_predictions_csv(buf, ["=HYPERLINK(1).png"], np.array([[0.1, 0.2, 0.3, 0.4]]), classes)
    header, row = list(csv.reader(io.StringIO(buf.getvalue())))
    assert header[3:] == ["'" + c for c in classes]
    assert row[:3] == ["'=HYPERLINK(1).png", "'@SUM(A1)", "0.4000"]
