"""Sweeps on Hydra launchers: joblib (parallel jobs on one machine) and submitit (SLURM; run here through its
``submitit_local`` launcher), the shipped configs/hydra/launcher/ options, and the run-folder rules under them."""

import csv
import json
import os
import subprocess
import sys

import pytest

from benchmarks.run import batches, sweep
from benchmarks.suite import load_suite
from da.errors import ConfigError
from da.run import check_overrides
from da.runfolder import RunLock

from .conftest import TINY

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

JOB = [
    "source_val=0",
    "dataset.samples_per_class=12",
    "trainer.epochs=1",
    "trainer.steps_per_epoch=2",
    "trainer.batch_size=16",
]


def _suite(tmp_path, methods="[source_only]", seeds="[0, 1]", method_overrides="{}"):
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"name: tiny\ntitle: tiny\nseeds: {seeds}\ntasks:\n  - {{dataset: digits, source: fonts, target: sklearn}}\n"
        f"methods: {methods}\noverrides: [{', '.join([*JOB, 'device=cpu'])}]\nmethod_overrides: {method_overrides}\n"
    )
    return load_suite(str(path))


def _numbers(run_dir):
    """What a report reads of a run: results.json's accuracies and log.csv without its timings."""
    results = json.loads((run_dir / "results.json").read_text())
    with open(run_dir / "log.csv") as fh:
        log = [{k: v for k, v in row.items() if k != "train_seconds"} for row in csv.DictReader(fh)]
    return results["target_acc"], results["source_acc"], results["per_class_acc"], log


@pytest.mark.slow
def test_joblib_runs_a_suite_two_at_a_time_with_the_sequential_numbers_and_a_rerun_skips_it(tmp_path, capsys):
    import torch
    from threadpoolctl import threadpool_limits

    from da import compose, fit

    suite, out = _suite(tmp_path), tmp_path / "out"
    assert sweep(suite, str(out), ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], threads=1) == 2
    runs = {s: out / "runs" / "fonts_to_sklearn" / "source_only" / f"seed{s}" for s in (0, 1)}
    pids = {(runs[s] / ".lock").read_text() for s in (0, 1)}  # each run's lock names the process that ran it
    assert len(pids) == 2 and f"pid {os.getpid()}" not in pids  # two joblib workers, not one after the other
    # the sequential launcher's numbers (seed 1): the same config in this process, one thread as the runner gives
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            cfg = compose(["method=source_only", "seed=1", *suite.overrides, "trainer.progress_bar=false"])
            fit(cfg, run_dir=str(tmp_path / "sequential"), quiet=True)
    finally:
        torch.set_num_threads(threads)
    assert _numbers(tmp_path / "sequential") == _numbers(runs[1])
    assert _numbers(runs[0]) != _numbers(runs[1])  # (the seeds differ: the comparison can tell runs apart)
    # a second identical command skips every job and touches no run folder
    stamps = {s: os.path.getmtime(runs[s] / "results.json") for s in runs}
    capsys.readouterr()
    assert sweep(suite, str(out), ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], threads=1) == 0
    said = capsys.readouterr().out
    assert "2 jobs done" in said and "0 to run" in said
    assert stamps == {s: os.path.getmtime(runs[s] / "results.json") for s in runs}


def test_submitit_local_jobs_and_a_folder_held_by_another_job_fail_with_one_line(tmp_path):
    """Two jobs in submitit processes; the second one's folder is held by another run (here: this test), as by a
    job of a second command. That job stops with one line and writes none of da's files; the other one finishes."""
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "seed1").mkdir(parents=True)
    args = ["-m", *TINY, *JOB, "seed=0,1", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}"]
    with RunLock(str(sweep_dir / "seed1")):
        proc = subprocess.run(
            [sys.executable, "-m", "da.run", *args, "hydra.sweep.subdir=seed${seed}"],
            capture_output=True,
            text=True,
            cwd=str(tmp_path),
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            timeout=300,
        )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(sweep_dir / "seed1") in lines[0] and "in use by another run" in lines[0]
    assert (sweep_dir / "seed0" / "results.json").is_file()  # the other job ran to the end
    assert not {"config.yaml", "checkpoint.pt", "results.json"} & set(os.listdir(sweep_dir / "seed1"))
    assert (sweep_dir / "seed1" / "run.log").read_text() == ""  # a refused job writes nothing into the other run
    assert list((sweep_dir / ".submitit").glob("*/*_log.err"))  # the jobs ran in submitit's processes


def _error(args):
    with pytest.raises(ConfigError) as err:
        check_overrides(args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_launcher_and_sweep_folder_pre_checks_are_one_line(tmp_path, monkeypatch):
    assert "parallel, slurm" in _error(["-m", "hydra/launcher=nope"])
    assert "add -m" in _error(["hydra/launcher=parallel"])
    assert "hydra/launcher=<" in _error(["-m", "hydra.launcher.n_jobs=2"])  # no launcher chosen
    assert "valid keys: n_jobs" in _error(["-m", "hydra/launcher=parallel", "hydra.launcher.n_job=2"])
    line = _error(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=two"])
    assert line.startswith("invalid value for hydra.launcher.n_jobs") and "Integer" in line
    # two jobs of one sweep never share a run folder: every swept key must name the folder
    assert "share a run folder" in _error(["-m", "seed=0,1", "hydra.sweep.subdir=same"])
    line = _error(["-m", "method=dann,coral", "seed=0,1", "hydra.sweep.subdir=seed${seed}"])
    assert "method" in line and "${method.name}" in line
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert "sbatch" in _error(["-m", "hydra/launcher=slurm", "seed=0,1"])
    # accepted: the shipped joblib config with its keys, the benchmark runner's folders
    sweep_dir = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    check_overrides(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1", sweep_dir])
    subdir = "hydra.sweep.subdir=${dataset.source}_to_${dataset.target}/${method.name}/seed${seed}"
    check_overrides(["-m", "hydra/launcher=joblib", "method=dann,coral", "seed=0,1", sweep_dir, subdir])


def test_shipped_slurm_config_writes_the_sbatch_script_a_user_expects(tmp_path, monkeypatch):
    """configs/hydra/launcher/slurm.yaml through the plugin's own parameter mapping into submitit's sbatch script
    (fake sbatch/srun on PATH: no cluster here)."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from da.config import compose

    for command in ("sbatch", "srun"):
        (tmp_path / command).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    check_overrides(["-m", *overrides, "seed=0,1"])
    params = instantiate(compose(overrides, return_hydra_config=True).hydra.launcher).params
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"))
    params.pop("max_num_timeout")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})  # checks names
    script = executor._executor._make_submission_file_text("python -m da.run", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=1", "--time=240", "--cpus-per-task=8", "--mem=32GB"):
        assert f"#SBATCH {line}\n" in script, script
    assert "#SBATCH --job-name=da\n" in script and "#SBATCH --ntasks-per-node=1\n" in script


def test_missing_jobs_go_to_as_few_multiruns_as_possible(tmp_path):
    suite = _suite(tmp_path, "[source_only, dann, coral, shot]", "[0, 1, 2]", "{shot: [method.source_epochs=1]}")
    out = tmp_path / "out"

    def finish(method, seed):
        run = out / "runs" / "fonts_to_sklearn" / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text("{}")

    plan = [(methods, seeds, own) for _, methods, seeds, own in batches(suite, str(out))]
    assert plan == [
        (["source_only", "dann", "coral"], [0, 1, 2], []),
        (["shot"], [0, 1, 2], ["method.source_epochs=1"]),
    ]
    done = {("source_only", 2), ("dann", 2), ("coral", 2), ("shot", 2), ("source_only", 1), ("coral", 0)}
    for method, seed in done:
        finish(method, seed)
    # missing: source_only {0}, dann {0, 1}, coral {1}: by missing seeds 3 multiruns, by missing methods 2
    plan = [(methods, seeds, own) for _, methods, seeds, own in batches(suite, str(out))]
    assert plan == [
        (["source_only", "dann"], [0], []),
        (["dann", "coral"], [1], []),
        (["shot"], [0, 1], ["method.source_epochs=1"]),
    ]
    jobs = [(m, s) for methods, seeds, _ in plan for m in methods for s in seeds]
    assert sorted(jobs) == sorted({(m, s) for m in suite.methods for s in suite.seeds} - done)  # each once


def test_a_second_runner_on_the_same_results_is_refused_with_one_line(tmp_path):
    suite, out = _suite(tmp_path), tmp_path / "out"
    out.mkdir()
    with RunLock(str(out)), pytest.raises(SystemExit) as stop:  # a first runner still sweeping
        sweep(suite, str(out), [])
    assert f"{out} is being swept by another command (pid {os.getpid()})" in str(stop.value)
    assert not (out / "runs").exists()
