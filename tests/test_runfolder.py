"""What a run folder holds and who may write into it: one kind of run (training or test-time) and, once finished,
one config; ``trainer.resume=false`` moves the earlier run aside; model.pt is the file its run wrote; the lock
names who holds it; folder names beyond the file system's limit are one line; the baseline beside a run's closing
line is a comparable source_only run, chosen by a stable rule."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from da.callbacks import Callback
from da.errors import ConfigError, DataError
from da.experiment import find_baseline, fit, summary
from da.runfolder import LOCK_NAME, RunLock, atomic_write

from .conftest import TINY, tiny_cfg

RUN = ["trainer.epochs=1", "trainer.steps_per_epoch=2"]
TTA = ["device=cpu", "quiet=true", "protocol.num_samples=8", "protocol.batch_size=8", "data.corruptions=[fog]"]
TTA += ["method=source"]


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished training run, a copy of it holding other weights of the same architecture (``train1``: not
    its own), and a finished test-time run from the first."""
    from da.tta.run import fit_stream

    root = tmp_path_factory.mktemp("runs")
    fit(tiny_cfg(*RUN), run_dir=str(root / "train0"), quiet=True)
    shutil.copytree(root / "train0", root / "train1")
    state = torch.load(root / "train0" / "model.pt", weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, root / "train1" / "model.pt")
    fit_stream([*TTA, f"init={root / 'train0'}"], run_dir=str(root / "tta"))
    return root


def _copy(runs, name, dest):
    shutil.copytree(runs / name, dest)
    return dest


# ------------------------------------------------------------------ one kind, one config
def test_a_test_time_run_never_writes_into_a_training_run(runs, tmp_path):
    """``init=R run_dir=R`` and ``run_dir=`` another finished training run: refused, every byte kept."""
    from da.tta.run import fit_stream

    own, other = _copy(runs, "train0", tmp_path / "own"), _copy(runs, "train0", tmp_path / "other")
    before = {p: _snapshot(p) for p in (own, other)}
    for run_dir in (own, other):
        with pytest.raises(ConfigError, match="holds a training run") as err:
            fit_stream([*TTA, f"init={own}"], run_dir=str(run_dir))
        assert "\n" not in str(err.value)
    assert {p: _snapshot(p) for p in (own, other)} == before


def test_a_training_run_never_writes_into_a_test_time_run(runs, tmp_path):
    """``da train hydra.run.dir=`` (refused before Hydra opens its run.log there) and ``da.fit(run_dir=)`` a
    finished test-time run: one line, nothing written."""
    from da.run import check_overrides

    folder = _copy(runs, "tta", tmp_path / "tta")
    before = _snapshot(folder)
    with pytest.raises(ConfigError, match="holds a test-time run"):
        fit(tiny_cfg(*RUN), run_dir=str(folder), quiet=True)
    with pytest.raises(ConfigError, match="holds a test-time run") as err:
        check_overrides([*TINY, *RUN, f"hydra.run.dir={folder}"])  # what `da train` checks before Hydra starts
    assert str(folder) in str(err.value)
    assert _snapshot(folder) == before


def test_a_finished_run_of_another_config_is_refused(runs, tmp_path):
    """A test-time run into a finished one of another seed, a training run into a finished one of another lr
    whose checkpoint.pt was deleted: refused; the same config reruns."""
    from da.tta.run import fit_stream

    tta = _copy(runs, "tta", tmp_path / "tta")
    before = _snapshot(tta)
    with pytest.raises(ConfigError, match="finished test-time run .* different config: seed"):
        fit_stream([*TTA, f"init={runs / 'train0'}", "seed=1"], run_dir=str(tta))
    assert _snapshot(tta) == before
    again = fit_stream([*TTA, f"init={runs / 'train0'}"], run_dir=str(tta))
    assert again["mean_error"] == json.loads((runs / "tta" / "results.json").read_text())["mean_error"]
    train = _copy(runs, "train0", tmp_path / "train")
    (train / "checkpoint.pt").unlink()  # a finished run kept without its resume state
    before = _snapshot(train)
    with pytest.raises(ConfigError, match=r"different config: trainer\.lr.*trainer\.resume=false"):
        fit(tiny_cfg(*RUN, "trainer.lr=0.5"), run_dir=str(train), quiet=True)
    assert _snapshot(train) == before


class _Seen(Callback):
    """What the run folder holds when training starts."""

    def __init__(self, run_dir) -> None:
        self.run_dir, self.entries = run_dir, None

    def on_fit_start(self, trainer) -> None:
        self.entries = sorted(os.listdir(self.run_dir))


def test_resume_false_moves_the_earlier_run_aside_before_training(runs, tmp_path):
    import da

    folder = _copy(runs, "train0", tmp_path / "run")
    earlier = json.loads((folder / "results.json").read_text())
    seen = _Seen(folder)
    fresh = fit(tiny_cfg(*RUN, "seed=2", "trainer.resume=false"), run_dir=str(folder), quiet=True, callbacks=[seen])
    for name in ("results.json", "model.pt", "predictions.npz", "checkpoint.pt"):
        assert name not in seen.entries, seen.entries  # the old weights are never served under the new config
    (moved,) = os.listdir(folder / "replaced")
    old = folder / "replaced" / moved
    assert json.loads((old / "results.json").read_text()) == earlier
    assert da.load_run(str(old)).results["seed"] == 0
    assert fresh["seed"] == 2 and da.load_run(str(folder)).results["seed"] == 2
    from da.summary import find_runs

    assert find_runs(str(tmp_path)) == [str(folder)]  # da report counts the run once, not its replaced one


# ------------------------------------------------------------------ model.pt is its run's
def test_a_model_pt_copied_from_another_run_is_refused(runs, tmp_path):
    import da

    folder = _copy(runs, "train0", tmp_path / "run")
    digest = json.loads((folder / "results.json").read_text())["model_sha256"]
    assert len(digest) == 64
    shutil.copy(runs / "train1" / "model.pt", folder / "model.pt")  # same architecture, other weights
    with pytest.raises(ConfigError, match="sha256") as err:
        da.load_run(str(folder))
    assert "\n" not in str(err.value)
    older = _copy(runs, "train0", tmp_path / "older")  # written before the field: loads as before
    results = json.loads((older / "results.json").read_text())
    del results["model_sha256"]
    (older / "results.json").write_text(json.dumps(results))
    assert da.load_run(str(older)).results["seed"] == 0


def test_a_refused_test_time_run_writes_no_config_yaml(runs, tmp_path):
    from da.tta.run import fit_stream

    source = _copy(runs, "train0", tmp_path / "source")
    (source / "model.pt").write_bytes(b"not a torch file")  # load_run refuses it, after the folder is taken
    with pytest.raises(ConfigError, match="cannot read"):
        fit_stream([*TTA, f"init={source}"], run_dir=str(tmp_path / "tta"))
    assert not (tmp_path / "tta" / "config.yaml").exists()


# ------------------------------------------------------------------ the lock
HOLDER = """
import fcntl, os, subprocess, sys
fh = open(os.path.join(sys.argv[1], ".lock"), "a+b", buffering=0)
fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
fh.truncate(0)
fh.write(f"pid {os.getpid()}".encode())
# a worker that outlives the run
child = subprocess.Popen(["sleep", "60"], pass_fds=[fh.fileno()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the holder through /proc")
def test_a_lock_left_to_a_dead_runs_child_names_that_child(tmp_path):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(HOLDER), str(tmp_path)], capture_output=True, text=True)
    child = int(out.stdout.split()[0])
    try:
        with pytest.raises(ConfigError) as err:
            RunLock(str(tmp_path)).acquire()
        message = str(err.value)
        assert f"pid {child} still holds {LOCK_NAME}" in message and "no longer running" in message, message
    finally:
        os.kill(child, 9)


def _sleep(started) -> None:
    started.set()
    time.sleep(30)


def test_a_forked_process_does_not_keep_the_lock(tmp_path):
    lock = RunLock(str(tmp_path)).acquire()
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    worker = fork.Process(target=_sleep, args=(started,))
    worker.start()
    try:
        assert started.wait(30)
        lock.release()
        RunLock(str(tmp_path)).acquire().release()  # the worker holds no copy of the lock
    finally:
        worker.kill()
        worker.join()


# ------------------------------------------------------------------ names beyond the file system's limit
def test_a_300_character_folder_name_is_one_line(tmp_path):
    """``da train`` checks the folder's name before Hydra creates it (a ConfigError there is the CLI's one line,
    exit 2), and so does every write."""
    from da.run import check_overrides

    long = tmp_path / ("r" * 300)
    with pytest.raises(ConfigError, match="is 300 bytes long; the file system allows 255"):
        check_overrides([*TINY, *RUN, f"hydra.run.dir={long}"])
    atomic_write(str(tmp_path / ("f" * 250)), lambda fh: fh.write(b"x"))  # its temporary name fits too
    assert (tmp_path / ("f" * 250)).read_bytes() == b"x"
    with pytest.raises(ConfigError, match="allows 255"):
        atomic_write(str(tmp_path / ("f" * 300)), lambda fh: fh.write(b"x"))
    assert os.listdir(tmp_path) == ["f" * 250]  # no folder, no temporary file left


# ------------------------------------------------------------------ class names in two Unicode forms
def test_class_names_equal_but_for_their_unicode_form_are_shown_apart():
    from da.data.images import check_same_classes

    with pytest.raises(DataError) as err:
        check_same_classes({"mac": ["cafe\u0301", "tea"], "linux": ["caf\u00e9", "tea"]})
    message = str(err.value)
    assert "'cafe\\u0301'" in message and "'caf\\xe9'" in message and "NFC / NFD" in message, message


# ------------------------------------------------------------------ the baseline beside the closing line
def _results(tmp_path, folder, method, acc, **config):
    cfg = {"dataset": {"name": "digits"}, "backbone": {"name": "lenet"}, "seed": 0, "trainer": {"lr": 0.01}}
    cfg["method"] = {"name": method}
    cfg["trainer"].update(config)
    r = {"dataset": "digits", "source": "fonts", "target": "sklearn", "backbone": "lenet", "seed": 0, "epochs": 20}
    r.update(method=method, target_acc=acc, source_acc=0.9, train_seconds=1.0, config=cfg)
    os.makedirs(tmp_path / folder, exist_ok=True)
    (tmp_path / folder / "results.json").write_text(json.dumps(r))
    return r


def test_the_baseline_is_a_comparable_run_chosen_by_a_stable_rule(tmp_path):
    run = _results(tmp_path, "task/dann/seed0_b", "dann", 0.7)
    _results(tmp_path, "task/source_only/seed0_b", "source_only", 0.6)
    line = summary(run, str(tmp_path / "task" / "dann" / "seed0_b"))
    time.sleep(0.05)  # newer runs lying around: another lr, and a second comparable one
    _results(tmp_path, "task/source_only/seed0_c", "source_only", 0.2, lr=0.1)
    _results(tmp_path, "task/source_only/seed0_d", "source_only", 0.3)
    assert summary(run, str(tmp_path / "task" / "dann" / "seed0_b")) == line
    other, folder = find_baseline(run, str(tmp_path / "task" / "dann" / "seed0_b"))
    assert other["target_acc"] == 0.6 and folder.endswith("seed0_b")
    assert "60.0%" in line and os.path.join("source_only", "seed0_b") in line
    alone = _results(tmp_path / "other", "task/dann/seed0_a", "dann", 0.7)
    _results(tmp_path / "other", "task/source_only/seed0_a", "source_only", 0.2, lr=0.1)
    assert find_baseline(alone, str(tmp_path / "other" / "task" / "dann" / "seed0_a")) is None
