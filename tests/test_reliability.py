"""Issue 10: every fault leaves a consistent run folder, every bad input gets one clear line.

Numbers in the test names refer to the items of the issue. Subprocess tests (kill -9, two runs in one folder)
use the CLI on tiny budgets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error

import pytest
import torch

import da.experiment
import da.train
from da.errors import ConfigError
from da.experiment import fit

from .conftest import TINY, run_cli, tiny_cfg


def _one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# ------------------------------------------------------------------ run folder consistency
def test_01_refused_resume_leaves_config_yaml_untouched(tmp_path):
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="different config"):
        fit(tiny_cfg("trainer.epochs=1", "trainer.lr=0.5"), run_dir=str(tmp_path), quiet=True)
    assert (tmp_path / "config.yaml").read_text() == before


def test_02_resume_flag_is_not_fingerprinted_and_errors_name_the_key(tmp_path):
    first = fit(tiny_cfg("trainer.epochs=1", "trainer.resume=false"), run_dir=str(tmp_path), quiet=True)
    again = fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)  # resumes the finished run
    assert again["target_acc"] == first["target_acc"] and again["steps"] == first["steps"]
    with pytest.raises(ConfigError, match=r"trainer\.momentum"):
        fit(tiny_cfg("trainer.epochs=1", "trainer.momentum=0.5"), run_dir=str(tmp_path), quiet=True)


def test_03_changing_epochs_is_refused_not_silently_reported(tmp_path):
    fit(tiny_cfg("trainer.epochs=2"), run_dir=str(tmp_path), quiet=True)
    for epochs in (1, 3):  # shorter: would report the longer run; longer: another LR schedule than a fresh run
        with pytest.raises(ConfigError, match=r"trainer\.epochs"):
            fit(tiny_cfg(f"trainer.epochs={epochs}"), run_dir=str(tmp_path), quiet=True)
    assert json.loads((tmp_path / "results.json").read_text())["epochs"] == 2
    assert "epochs: 2" in (tmp_path / "config.yaml").read_text()


def test_04_a_failed_write_keeps_the_previous_results(tmp_path, monkeypatch):
    first = fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    monkeypatch.setattr(da.experiment, "versions", lambda: {"torch": object()})  # not serialisable: json fails
    with pytest.raises(TypeError):
        fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    assert json.loads((tmp_path / "results.json").read_text())["target_acc"] == first["target_acc"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_04_truncated_source_stage_results_are_retrained_not_a_traceback(tmp_path):
    cfg = tiny_cfg("method=shot", "method.source_epochs=1", "trainer.epochs=1")
    first = fit(cfg, run_dir=str(tmp_path), quiet=True)
    stage = tmp_path / "source_stage" / "results.json"
    stage.write_text(stage.read_text()[:40])  # as a crash in the middle of a plain open("w") write left it
    (tmp_path / "results.json").unlink()
    (tmp_path / "checkpoint.pt").unlink()
    again = fit(cfg, run_dir=str(tmp_path), quiet=True)
    assert again["target_acc"] == first["target_acc"]
    assert json.loads(stage.read_text())["method"] == "source_only"


def test_05_two_runs_in_one_folder_second_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.epochs=40", "trainer.steps_per_epoch=20", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.Popen([sys.executable, "-m", "da.run", *args], env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: (run_dir / "log.csv").is_file(), first)
        second = run_cli(*args, "seed=1")
        line = _one_line_error(second)
        assert "in use by another run" in line
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    assert "seed: 0" in (run_dir / "config.yaml").read_text()  # the second run wrote nothing
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["signature"]["seed"] == 0


def test_05_stale_temporary_files_are_removed(tmp_path):
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"x" * 1000)  # left by a failure of an earlier version
    (tmp_path / ".results.json.abc.tmp").write_text("{")
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_06_unreadable_checkpoint_is_one_clear_line(tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(ConfigError, match="trainer.resume=false"):
        fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    line = _one_line_error(run_cli(*TINY, f"hydra.run.dir={tmp_path}"))
    assert "checkpoint.pt" in line and "trainer.resume=false" in line
    fresh = fit(tiny_cfg("trainer.epochs=1", "trainer.resume=false"), run_dir=str(tmp_path), quiet=True)
    assert fresh["epochs"] == 1


# ------------------------------------------------------------------ bad values and paths
def test_07_bad_values_and_files_are_one_line(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a torch file")
    line = _one_line_error(run_cli(*TINY, f"backbone.checkpoint={junk}", cwd=str(tmp_path)))
    assert "junk.pt" in line
    line = _one_line_error(run_cli("-m", "method=dann,coral", "foo=1", cwd=str(tmp_path)))
    assert "foo" in line and "+foo" not in line
    line = _one_line_error(run_cli("foo=1", cwd=str(tmp_path)))
    assert "+foo" not in line and "valid keys" in line
    line = _one_line_error(run_cli("-m", "method=source_only,dann", "method.trade_off=2", cwd=str(tmp_path)))
    assert "method.trade_off" in line  # source_only has no trade_off: caught before any job starts
    assert not (tmp_path / "multirun").exists()


def test_08_run_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for run_dir in (blocker, blocker / "sub" / "run"):
        line = _one_line_error(run_cli(*TINY, f"hydra.run.dir={run_dir}", cwd=str(tmp_path)))
        assert str(blocker) in line
    if os.geteuid() != 0:  # root writes anywhere; a read-only mount is the same check (os.access)
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)
        line = _one_line_error(run_cli(*TINY, f"hydra.run.dir={locked / 'run'}", cwd=str(tmp_path)))
        assert "not writable" in line


def test_09_offline_weights_print_no_download_line(tmp_path, monkeypatch, capfd):
    from da.backbones import BACKBONES

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError, match="not on disk"):
        BACKBONES.get("resnet18")(weights="IMAGENET1K_V1")
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err


# ------------------------------------------------------------------ divergence
@pytest.mark.parametrize("epochs", [1, 2])
def test_10_non_finite_weights_after_the_last_step_stop_the_run(tmp_path, monkeypatch, epochs):
    steps = {"n": 0}
    real_step = torch.optim.SGD.step

    def poisoned(self, *args, **kwargs):  # the loss was finite, the update is not (last step of the run)
        out = real_step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 4 * epochs:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoned)
    with pytest.raises(FloatingPointError) as err:
        fit(tiny_cfg(f"trainer.epochs={epochs}"), run_dir=str(tmp_path), quiet=True)
    assert not (tmp_path / "results.json").exists()
    if epochs == 1:
        assert "no checkpoint was written" in str(err.value) and not (tmp_path / "checkpoint.pt").exists()
    else:
        assert "checkpoint of epoch 1 is kept" in str(err.value)
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_10_results_json_is_strict_json(tmp_path, monkeypatch):
    monkeypatch.setattr(da.experiment, "score_all", lambda *args: {"im": float("nan")})
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path), quiet=True)
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["validators"]["im"] is None


# ------------------------------------------------------------------ correctness found in review
def test_14_evaluation_uses_the_methods_own_predict(tmp_path):
    from da.evaluate import predict
    from da.methods import METHODS

    cfg = tiny_cfg("trainer.epochs=1")
    fit(cfg, run_dir=str(tmp_path), quiet=True)
    run = da.load_run(str(tmp_path))

    class Flipped(METHODS.get("source_only")):
        def predict(self, x):
            return -self.model(x)[0]

    method = Flipped(run.model, run.method.cfg, 10)
    ours = predict(method, run.task.target_test, torch.device("cpu"))
    plain = predict(run.method, run.task.target_test, torch.device("cpu"))
    torch.testing.assert_close(ours.logits, -plain.logits)
    torch.testing.assert_close(ours.features, plain.features)


def test_15_cuda_rng_state_is_saved_and_restored(monkeypatch):
    from da import checkpoint

    saved = [torch.ByteTensor([1, 2, 3])]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.append(states))
    state = checkpoint.rng_state()
    assert state["cuda"] is saved
    checkpoint.set_rng_state(state)
    assert torch.equal(restored[0][0], saved[0])


def test_15_deterministic_mode(tmp_path, monkeypatch):
    seen = []
    original = da.train.Trainer.train_epoch

    def spy(self):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self)

    monkeypatch.setattr(da.train.Trainer, "train_epoch", spy)
    a = fit(tiny_cfg("trainer.deterministic=true"), run_dir=str(tmp_path / "a"), quiet=True)
    assert seen and all(seen)
    b = fit(tiny_cfg(), run_dir=str(tmp_path / "b"), quiet=True)
    assert not torch.are_deterministic_algorithms_enabled()
    assert a["target_acc"] == b["target_acc"]  # on the CPU the default kernels are deterministic already


# ------------------------------------------------------------------ what a user of long runs expects
def test_model_pt_and_load_run_reproduce_the_reported_accuracy(tmp_path):
    from da.evaluate import accuracy, predict

    # float32 (trainer.amp=false): load_run's predict runs in float32, so a bf16 run's rounding is not compared
    result = fit(tiny_cfg("method=dann", "trainer.amp=false"), run_dir=str(tmp_path), quiet=True)
    state = torch.load(tmp_path / "model.pt", weights_only=True)  # plain weights: no pickle of numpy objects
    assert {k.split(".")[0] for k in state} == {"backbone", "bottleneck", "head"}
    run = da.load_run(str(tmp_path))
    assert run.cfg.method.name == "dann" and run.results["target_acc"] == result["target_acc"]
    x, y = next(iter(torch.utils.data.DataLoader(run.task.target_test, batch_size=len(run.task.target_test))))
    assert accuracy(run.predict(x), y) == result["target_acc"]
    assert accuracy(predict(run.method, run.task.target_test, torch.device("cpu")).logits, y) == result["target_acc"]


def test_init_from_a_run_folder_reads_model_pt(tmp_path):
    fit(tiny_cfg(), run_dir=str(tmp_path / "src"), quiet=True)
    out = fit(tiny_cfg("method=dann", f"init={tmp_path / 'src'}"), run_dir=str(tmp_path / "b"), quiet=True)
    assert out["init"] == str(tmp_path / "src" / "model.pt")


@pytest.mark.slow
def test_run_log_and_one_line_per_epoch_when_not_a_terminal(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(*TINY, "trainer.progress_bar=true", f"hydra.run.dir={out}", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stdout + proc.stderr
    assert "epoch 1/2" in proc.stdout and "epoch 2/2" in proc.stdout
    log = (out / "run.log").read_text()
    assert "epoch 2/2" in log and "target acc" in log
    bad = run_cli(*TINY, "trainer.steps_per_epoch=1", f"hydra.run.dir={out}", cwd=str(tmp_path))
    assert bad.returncode == 2
    assert "different config" in bad.stderr
    assert (out / "run.log").read_text() == log  # a refused run writes nothing into the run it was refused by


def test_run_log_in_a_notebook(tmp_path, capsys):
    fit(tiny_cfg("trainer.epochs=1"), run_dir=str(tmp_path))
    assert "target acc" in capsys.readouterr().out
    assert "target acc" in (tmp_path / "run.log").read_text()


def test_tensorboard_is_optional(tmp_path):
    pytest.importorskip("tensorboard")
    fit(tiny_cfg("trainer.tensorboard=true"), run_dir=str(tmp_path), quiet=True)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "epoch/target_acc" in tags
    assert len(acc.Scalars("train/loss")) == 8  # every step of 2 epochs x 4 steps


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path):
    args = [*TINY, "trainer.epochs=6", "trainer.steps_per_epoch=25"]
    fit(tiny_cfg(*args[len(TINY) :]), run_dir=str(tmp_path / "a"), quiet=True)  # in process: the CLI's numbers too
    run_dir = tmp_path / "b"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "da.run", *args, f"hydra.run.dir={run_dir}"], env=env)
    _wait_for(lambda: (run_dir / "log.csv").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()
    resumed = run_cli(*args, f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((run_dir / "results.json").read_text())
    assert (a["target_acc"], a["steps"]) == (b["target_acc"], b["steps"])
    assert len((run_dir / "log.csv").read_text().splitlines()) == 7


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the test could interrupt it"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


# ------------------------------------------------------------------ data
FOLDER = ["dataset=folder", "dataset.resize=32", "dataset.crop=28", "dataset.source=a", "dataset.target=b"]


def folder_cfg(*overrides: str):
    from da.config import compose

    plain = [o for o in TINY if not o.startswith("dataset.")]  # TINY's dataset keys are the digits task's
    return compose([*plain, *FOLDER, "backbone=lenet", "trainer.batch_size=4", *overrides])


def test_11_every_skipped_file_is_listed_in_the_run_folder(tmp_path):
    from .test_datasets import jpeg, write_tree

    data = tmp_path / "data"
    write_tree(data, ["a", "b"], ["cat", "dog"])
    (data / "a" / "cat" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "b" / "dog" / "truncated.jpg").write_bytes(jpeg((200, 0, 0), 0, (64, 64))[:300])
    (data / "b" / "cat" / "empty.png").write_bytes(b"")
    result = fit(folder_cfg(f"dataset.root={data}"), run_dir=str(tmp_path / "run"), quiet=True)
    listed = (tmp_path / "run" / "skipped_files.txt").read_text().splitlines()
    assert result["skipped_files"] == 3 and len(listed) == 3
    for name in ("corrupt.jpg", "truncated.jpg", "empty.png"):
        line = next(x for x in listed if name in x)
        assert ": " in line.split(name, 1)[1]  # "path: reason"


def test_12_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from .test_datasets import task_of, write_tree

    write_tree(tmp_path, ["a", "b"], ["cat", "dog"], per_class=2)
    grey16 = np.full((20, 20), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(grey16).save(tmp_path / "a" / "cat" / "grey16.png")
    task = task_of("dataset=folder", f"dataset.root={tmp_path}", "dataset.source=a", "dataset.target=b")
    decoded = task.source_test.x  # (N, 3, S, S) uint8, the evaluation split of source domain a
    values = {int(v) for img in decoded for v in img.unique()}
    assert 128 in values and task.skipped_files == 0  # 32768 / 257 = 127.5 -> 128, not 255


def test_13_relabelling_and_validators_read_the_evaluation_transform(tmp_path, monkeypatch):
    from da.methods.base import EpochContext

    from .test_datasets import task_of, write_tree

    write_tree(tmp_path / "data", ["a", "b"], ["cat", "dog"], per_class=4)
    task = task_of("dataset=folder", f"dataset.root={tmp_path / 'data'}", "dataset.source=a", "dataset.target=b")
    assert len(task.target_train_eval) == len(task.target_train)
    torch.manual_seed(0)
    a, b = task.target_train_eval[3][0], task.target_train_eval[3][0]
    assert torch.equal(a, b) and task.target_train_eval[3][1] == 3  # deterministic view, index not label
    train_views = [task.target_train[3][0] for _ in range(8)]
    assert any(not torch.equal(train_views[0], v) for v in train_views[1:])  # the training view is random
    seen = []
    original = EpochContext.predict_target

    def spy(self, method):
        seen.append(self.target_train)
        return original(self, method)

    monkeypatch.setattr(EpochContext, "predict_target", spy)
    cfg = folder_cfg(f"dataset.root={tmp_path / 'data'}", "method=self_training", "init=scratch")
    fit(cfg, run_dir=str(tmp_path / "run"), quiet=True)
    assert seen and all(getattr(s.base, "transform", None) is not None for s in seen)
    assert all(s.base.transform.train is False for s in seen)


# ------------------------------------------------------------------ issue 26: refused runs, full disk, Ctrl-C, torchrun
def _snapshot(folder) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m da.run`` on a tiny budget, started (several run at once on few cores: one thread each)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    flags = [a for a in args if a.startswith("-")]  # -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "da.run", *flags, *TINY, "trainer.epochs=1", "trainer.steps_per_epoch=2", *overrides]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _one_line(proc: subprocess.Popen, code: int = 2) -> str:
    _, stderr = proc.communicate(timeout=300)
    return _one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), code)


def test_26_5_a_refused_run_touches_nothing_in_the_existing_folder(tmp_path):
    """Lock conflict, resume refused for another config, a refused sweep job: each leaves every byte of the
    existing run folder as it was (Hydra's .hydra record included; before, it said the refused run's seed)."""
    from da.runfolder import RunLock

    runs = {name: tmp_path / name for name in ("locked", "mismatch", "sweep1")}
    fit(tiny_cfg("trainer.epochs=1", "trainer.steps_per_epoch=2"), run_dir=str(runs["locked"]), quiet=True)
    (runs["locked"] / ".hydra").mkdir()
    (runs["locked"] / ".hydra" / "config.yaml").write_text("seed: 0\n")  # the record the earlier command wrote
    for name in ("mismatch", "sweep1"):
        shutil.copytree(runs["locked"], runs[name])
    before = {name: _snapshot(run_dir) for name, run_dir in runs.items()}
    with RunLock(str(runs["locked"])):  # a run in progress holds the folder
        procs = {
            "locked": _cli(f"hydra.run.dir={runs['locked']}"),
            "mismatch": _cli("seed=1", f"hydra.run.dir={runs['mismatch']}"),
            "sweep1": _cli("-m", "seed=1", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=sweep${seed}"),
        }
        lines = {name: _one_line(proc) for name, proc in procs.items()}
    assert "in use by another run" in lines["locked"]
    assert "different config: seed" in lines["mismatch"] and "different config: seed" in lines["sweep1"]
    for name, run_dir in runs.items():
        assert _snapshot(run_dir) == before[name], name


def test_26_5_an_accepted_run_writes_hydras_record(tmp_path):
    proc = _cli("hydra.output_subdir=record", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.communicate(timeout=300)[0] and proc.returncode == 0
    record = tmp_path / "run" / "record"
    assert sorted(os.listdir(record)) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "seed: 0" in (record / "config.yaml").read_text()
    hydra_yaml = (record / "hydra.yaml").read_text()
    assert "output_subdir: record" in hydra_yaml and "output_subdir=null" not in hydra_yaml
    assert "- trainer.epochs=1" in (record / "overrides.yaml").read_text()
    assert not (tmp_path / "run" / ".hydra").exists()


# the disk of every file whose path holds DA_TEST_DISK_FULL is full: its writes fail with ENOSPC (as on a real
# full disk, opening and creating a file still works)
DISK_FULL = """import builtins, errno, os
PATTERN = os.environ.get("DA_TEST_DISK_FULL")


class Full:
    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def wrap(fh, path, mode):
    full = PATTERN and any(c in mode for c in "wax+") and PATTERN in os.fsdecode(path)
    return Full(fh) if full else fh


plain_open, plain_fdopen = builtins.open, os.fdopen


def full_open(file, mode="r", *args, **kwargs):
    fh = plain_open(file, mode, *args, **kwargs)
    return wrap(fh, file if not isinstance(file, int) else os.readlink(f"/proc/self/fd/{file}"), mode)


def full_fdopen(fd, mode="r", *args, **kwargs):
    return wrap(plain_fdopen(fd, mode, *args, **kwargs), os.readlink(f"/proc/self/fd/{fd}"), mode)


builtins.open, os.fdopen = full_open, full_fdopen
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="the full-disk hook finds paths through /proc")
def test_26_6_a_full_disk_is_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(DISK_FULL)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    start, later = tmp_path / "full_at_start", tmp_path / "full_at_checkpoint"
    procs = {
        start: _cli(f"hydra.run.dir={start}", env={"PYTHONPATH": path, "DA_TEST_DISK_FULL": str(start)}),
        later: _cli(f"hydra.run.dir={later}", env={"PYTHONPATH": path, "DA_TEST_DISK_FULL": "checkpoint.pt"}),
    }
    lines = {run_dir: _one_line(proc) for run_dir, proc in procs.items()}
    assert "No space left on device" in lines[start] and str(start / "config.yaml") in lines[start]
    assert not start.exists()  # no 0-byte .hydra/config.yaml or config.yaml: no stub folder at all
    assert "No space left on device" in lines[later] and str(later / "checkpoint.pt") in lines[later]
    assert not (later / "checkpoint.pt").exists() and not [p for p in os.listdir(later) if p.endswith(".tmp")]


def test_26_8_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    proc = _cli(f"hydra.run.dir={tmp_path / 'run'}")
    time.sleep(1.5)  # importing torch and Hydra, composing the config
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert "interrupted" in _one_line(proc, 130)


@pytest.mark.parametrize("broken", ["config.yaml", "model.pt"])
def test_26_8_load_run_of_a_corrupt_folder_is_one_line(tmp_path, broken):
    from da import load_run

    fit(tiny_cfg("trainer.epochs=1", "trainer.steps_per_epoch=2"), run_dir=str(tmp_path), quiet=True)
    (tmp_path / broken).write_bytes(b"method: [unclosed\n  - :" if broken == "config.yaml" else b"PK\x03\x04 cut")
    with pytest.raises(ConfigError) as err:
        load_run(str(tmp_path))
    assert broken in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ torchrun
def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _torchrun(tmp_path, *overrides: str) -> subprocess.Popen:
    """2 CPU ranks under torchrun; the system temp folder is ``tmp_path/tmp`` (where rank 1's Hydra folder goes)."""
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TMPDIR": str(tmp_path / "tmp")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "da.run"]
    args = [*TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.Popen([*cmd, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's ranks through /proc (Linux)")
def test_26_8_kill_9_of_torchrun_alone_stops_its_ranks(tmp_path):
    proc = _torchrun(tmp_path, "trainer.epochs=200", "trainer.steps_per_epoch=5")
    ranks: list[int] = []
    try:
        _wait_for(lambda: (tmp_path / "run" / "log.csv").is_file(), proc, timeout=180)  # both ranks training
        ranks += _children(proc.pid)
        assert len(ranks) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while any(_alive(p) for p in ranks) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in ranks), "the ranks outlived torchrun"
    finally:
        for pid in [proc.pid, *_children(proc.pid), *ranks]:  # leave no rank behind when the test fails
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert not list((tmp_path / "tmp").glob("da-rank*"))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's ranks through /proc (Linux)")
def test_26_8_a_stopped_torchrun_leaves_no_rank_folders(tmp_path):
    proc = _torchrun(tmp_path, "trainer.epochs=200", "trainer.steps_per_epoch=5")
    try:
        _wait_for(lambda: list((tmp_path / "tmp").glob("da-rank1-*")), proc, timeout=180)  # rank 1 starting up
        proc.send_signal(signal.SIGTERM)  # as Ctrl-C, a scheduler or `kill` stops torchrun: it stops its ranks
        proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while list((tmp_path / "tmp").glob("da-rank*")) and time.time() < deadline:
        time.sleep(0.1)
    assert not list((tmp_path / "tmp").glob("da-rank*"))
