"""The benchmark runs committed to git (results, no weights) used as run folders: one line that says why."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from da import cli

RUNS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")


def _committed_run() -> str:
    for root, _, files in sorted(os.walk(RUNS)):
        if "results.json" in files and "config.yaml" in files and "model.pt" not in files:
            return root
    pytest.skip("no committed benchmark run without weights")


@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_finished_run_without_weights_is_not_called_unfinished(command, tmp_path, capsys):
    run = shutil.copytree(_committed_run(), tmp_path / "run")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    args = [str(run), str(tmp_path / "x.png"), "-o", str(tmp_path / "p.csv")] if command == "predict" else []
    args = args or [str(run), "--format", "torchscript", "-o", str(tmp_path / "m.pt")]
    assert cli.main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finished run but no model.pt" in err[0] and "not finished" not in err[0], err
