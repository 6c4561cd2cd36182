"""Issue 26.1: no code runs from a weights file.

A pickle whose ``__reduce__`` would create a marker file goes through every path that reads saved weights:
``init=<file>``, ``init=<folder>`` (its model.pt; its checkpoint.pt when there is no model.pt),
``backbone.checkpoint=<file>``, a resumed ``checkpoint.pt``, ``source_stage/checkpoint.pt`` (``init=source``),
``da.plots.restore`` and ``da.load_run``. Each creates nothing and is refused with one line (exit 2 on the CLI).
The CLI cases run as concurrent subprocesses on copies of one tiny finished run folder.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from da.errors import ConfigError
from da.experiment import fit
from da.stages import SOURCE_STAGE_DIR, source_stage_config

from .conftest import TINY, tiny_cfg

RUN = ["trainer.epochs=1", "trainer.steps_per_epoch=2", "init=source"]
REFUSED = "holds objects other than tensors"
CASES = ("init_file", "init_folder_model", "init_folder_checkpoint", "backbone_checkpoint", "resume", "source_stage")
CLI_CASES = ("init_file", "source_stage")  # through the CLI (exit 2, one line); the others through da.fit


class RunsCode:
    """Unpickling this runs ``touch <marker>``: what a malicious weights file does to whoever loads it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def poisoned(state: dict, marker: str) -> dict:
    """``state`` (a state_dict or a checkpoint) with one tensor replaced by the payload."""
    out = dict(state)
    if isinstance(out.get("method"), dict):  # a trainer checkpoint: poison the method's weights
        out["method"] = poisoned(out["method"], marker)
        return out
    out[next(iter(out))] = RunsCode(marker)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny finished run: the source stage ``init=source`` trains (a complete run folder of its own, with
    model.pt and checkpoint.pt), in ``<root>/source_stage`` where the ``init=source`` case reuses it."""
    root = tmp_path_factory.mktemp("security")
    stage = root / SOURCE_STAGE_DIR
    fit(source_stage_config(tiny_cfg(*RUN)), run_dir=str(stage), quiet=True)
    return stage


def _copy(finished, dest, keep=("config.yaml", "results.json", "model.pt", "checkpoint.pt")):
    os.makedirs(dest)
    for name in keep:
        src = finished / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def _write(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


def _cases(finished, root) -> dict[str, tuple[list[str], str]]:
    """{case: (CLI arguments, marker path)}, each case with its own poisoned files and its own marker."""
    model = torch.load(finished / "model.pt", weights_only=True)
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=False)  # our own file, written by the fixture
    marker = {name: str(root / f"{name}.marker") for name in CASES}
    files = root / "files"
    files.mkdir()
    weights = _write(files / "weights.pt", poisoned(model, marker["init_file"]))
    backbone = _write(files / "backbone.pt", poisoned(model, marker["backbone_checkpoint"]))
    with_model = _copy(finished, root / "init_folder_model", keep=("config.yaml", "results.json", "model.pt"))
    _write(with_model / "model.pt", poisoned(model, marker["init_folder_model"]))
    checkpoint_only = _copy(finished, root / "init_folder_checkpoint", keep=("config.yaml", "checkpoint.pt"))
    _write(checkpoint_only / "checkpoint.pt", poisoned(ckpt, marker["init_folder_checkpoint"]))
    resumed = _copy(finished, root / "resume")
    _write(resumed / "checkpoint.pt", poisoned(ckpt, marker["resume"]))
    staged = root / "source_stage_run"  # a run folder holding only a finished source stage, reused by init=source
    shutil.copytree(finished, staged / SOURCE_STAGE_DIR)
    _write(staged / SOURCE_STAGE_DIR / "checkpoint.pt", poisoned(ckpt, marker["source_stage"]))
    args = {
        "init_file": [f"init={weights}"],
        "init_folder_model": [f"init={with_model}"],
        "init_folder_checkpoint": [f"init={checkpoint_only}"],
        "backbone_checkpoint": ["init=scratch", f"backbone.checkpoint={backbone}"],
        "resume": [f"hydra.run.dir={resumed}"],
        "source_stage": ["init=source", f"hydra.run.dir={staged}"],
    }
    out = {}
    for name in CASES:
        run_dir = [] if any(a.startswith("hydra.run.dir=") for a in args[name]) else [f"hydra.run.dir={root / name}"]
        out[name] = ([*TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2", *args[name], *run_dir], marker[name])
    return out


@pytest.fixture(scope="module")
def cli_runs(finished, tmp_path_factory):
    """Every CLI case started at once (they are independent): {case: (Popen, marker)}."""
    root = tmp_path_factory.mktemp("poisoned")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # several at once on few cores
    procs = {}
    for name, (args, marker) in _cases(finished, root).items():
        if name not in CLI_CASES:
            continue
        cmd = [sys.executable, "-m", "da.run", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        procs[name] = (proc, marker)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("case", CLI_CASES)
def test_a_pickle_that_runs_code_is_refused_through_the_cli(cli_runs, case):
    proc, marker = cli_runs[case]
    _, stderr = proc.communicate(timeout=240)
    assert not os.path.exists(marker), f"{case}: unpickling ran code"
    lines = stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in stderr, (proc.returncode, stderr)
    assert REFUSED in lines[0] and "only weights files are read" in lines[0], lines[0]


@pytest.mark.parametrize("case", [c for c in CASES if c not in CLI_CASES])
def test_a_pickle_that_runs_code_is_refused_through_fit(finished, tmp_path, case):
    from da.config import compose

    args, marker = _cases(finished, tmp_path)[case]
    run_dir = next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)
    with pytest.raises(ConfigError, match=REFUSED) as err:
        fit(compose([a for a in args if not a.startswith("hydra.")]), run_dir=run_dir, quiet=True)
    assert not os.path.exists(marker), f"{case}: unpickling ran code"
    assert "only weights files are read" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("reader", ["plots.restore", "load_run"])
def test_a_poisoned_run_folder_is_refused_by_the_python_api(finished, tmp_path, reader):
    import da
    import da.plots

    marker = str(tmp_path / "marker")
    folder = _copy(finished, tmp_path / "run", keep=("config.yaml", "results.json"))
    _write(folder / "model.pt", poisoned(torch.load(finished / "model.pt", weights_only=True), marker))
    ckpt = torch.load(finished / "checkpoint.pt", weights_only=False)
    _write(folder / "checkpoint.pt", poisoned(ckpt, marker))
    read = da.plots.restore if reader == "plots.restore" else da.load_run
    with pytest.raises(ConfigError, match=REFUSED) as err:
        read(str(folder))
    assert not os.path.exists(marker)
    assert "\n" not in str(err.value)


def test_a_real_checkpoint_loads_as_plain_weights(finished):
    for path in ("checkpoint.pt", "model.pt"):
        torch.load(finished / path, weights_only=True)  # no NumPy objects, nothing but tensors and containers


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    from da import checkpoint

    checkpoint.save({"rng": checkpoint.rng_state()}, str(tmp_path / "rng.pt"))
    first = (np.random.rand(3), random.random(), torch.rand(3))  # noqa: NPY002
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (np.random.rand(3), random.random(), torch.rand(3))  # noqa: NPY002
    assert np.array_equal(first[0], again[0]) and first[1] == again[1] and torch.equal(first[2], again[2])
