"""``trainer.threads``: PyTorch's CPU threads, set by the run whatever ``OMP_NUM_THREADS`` says, so the same seed
gives the same number on a machine; folders written before the key resume; the benchmark runner passes it on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import da
from benchmarks.run import parse, sweep
from benchmarks.suite import load_suite
from da.checkpoint import check_resumable, fingerprint
from da.config import compose, to_run_config
from da.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(ROOT, "benchmarks", "results", "digits", "runs", "fonts_to_sklearn", "dann", "seed0")


def _resolved(*overrides: str) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=True)


@pytest.mark.slow(seconds=40)
def test_the_default_command_gives_the_committed_seed0_number_whatever_the_environment(tmp_path):
    """``da train method=dann seed=0`` with OMP_NUM_THREADS unset (torch would take one thread per core) equals
    the committed digits-suite run, which ran single-threaded."""
    committed = json.loads(open(os.path.join(COMMITTED, "results.json")).read())
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONWARNINGS"] = "ignore"
    cmd = [sys.executable, "-m", "da.run", "method=dann", "seed=0", f"hydra.run.dir={tmp_path / 'run'}"]
    cmd += ["trainer.progress_bar=false", "trainer.report=false"]  # neither changes a number
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = json.loads((tmp_path / "run" / "results.json").read_text())
    assert ours["target_acc"] == committed["target_acc"]
    assert ours["config"]["trainer"]["threads"] == 1


def test_fit_sets_the_thread_count_it_is_given(tiny, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        da.fit(tiny("trainer.threads=1", "trainer.epochs=1", "trainer.steps_per_epoch=1"), run_dir=str(tmp_path / "r"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-2", "many", "true", "1.5"])
def test_a_bad_thread_count_is_one_line(value):
    with pytest.raises(ConfigError, match="trainer.threads must be a positive integer or auto"):
        to_run_config(compose([f"trainer.threads={value}"]))


def test_auto_is_one_thread_per_usable_core():
    cfg = to_run_config(compose(["trainer.threads=AUTO"]))
    assert cfg.trainer.threads == "auto"
    from da.config import cpu_threads

    assert cpu_threads("auto") == len(os.sched_getaffinity(0))


def test_a_folder_written_before_the_key_resumes_and_another_count_is_refused():
    old = _resolved()
    del old["trainer"]["threads"]  # a config.yaml / checkpoint of a version without trainer.threads
    state = {"signature": fingerprint(old)}
    check_resumable(state, fingerprint(_resolved()), "run/checkpoint.pt")  # the default: resumes
    with pytest.raises(ConfigError, match=r"trainer\.threads"):
        check_resumable(state, fingerprint(_resolved("trainer.threads=2")), "run/checkpoint.pt")
    with pytest.raises(ConfigError, match=r"trainer\.threads"):
        check_resumable({"signature": fingerprint(_resolved())}, fingerprint(_resolved("trainer.threads=auto")), "x")


def test_the_benchmark_runner_gives_every_job_its_thread_count(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    opts, _ = parse(["suite=digits"])
    assert opts["threads"] == "1", "the runner's default is the package's, not the environment's"
    calls = []

    def run(cmd, env):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr("benchmarks.run.subprocess.run", run)
    suite = load_suite("digits")
    suite.methods, suite.seeds = ["dann"], [0]
    assert sweep(suite, str(tmp_path), [], threads=2) == 1
    (cmd, env), *_ = calls
    assert "trainer.threads=2" in cmd and env["OMP_NUM_THREADS"] == "2"
