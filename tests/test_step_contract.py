"""The step contract (issue 20): methods that own their optimisation step — SAM's two passes, MCD's three phases
with two optimisers, an EMA teacher — train under bf16 autocast on the CPU, under 2-rank gloo DDP, and resume
after kill -9 to the uninterrupted result; FixMatch's FlexMatch counts resume exactly. The methods are defined
outside the package (``tests/step_methods.py``), as a user would write them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_STEP = ("test_sam", "test_mcd", "test_ema")


def _driver(run_dir, kill: int | None, *overrides: str, torchrun: bool = False, bf16: bool = True):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    cmd = [sys.executable, *launcher, "-m", "tests.step_methods", str(run_dir), str(kill or "-"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DA_TEST_BF16": "1" if bf16 else ""}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _log(run_dir) -> list[dict[str, str]]:
    with open(os.path.join(run_dir, "log.csv")) as fh:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(fh)]


def _same_weights(a, b) -> bool:
    sa = torch.load(os.path.join(a, "model.pt"), weights_only=True)
    sb = torch.load(os.path.join(b, "model.pt"), weights_only=True)
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _resume_equals_uninterrupted(tmp_path, *overrides: str) -> dict:
    whole = _driver(tmp_path / "whole", None, *overrides)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _driver(tmp_path / "killed", 1, *overrides)
    assert killed.returncode == -9 and not (tmp_path / "killed" / "results.json").exists(), killed.stderr[-2000:]
    resumed = _driver(tmp_path / "killed", None, *overrides)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (tmp_path / "killed" / "run.log").read_text()
    assert _log(tmp_path / "killed") == _log(tmp_path / "whole")
    assert _same_weights(tmp_path / "killed", tmp_path / "whole")
    return json.loads((tmp_path / "killed" / "results.json").read_text())


def _start(run_dir, kill: int | None, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.step_methods", str(run_dir), str(kill or "-"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DA_TEST_BF16": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_own_step_methods_train_in_bf16_and_resume_after_kill_9(tmp_path, tiny_folder):
    """The uninterrupted runs of the three methods share one process; each is killed in its own process (a kill
    ends the process), the three side by side; one process resumes them all."""
    common = (*tiny_folder, "trainer.epochs=3")
    procs = [_start(tmp_path / "whole", None, *common, f"methods={','.join(OWN_STEP)}")]
    procs += [_start(tmp_path / "killed" / name, 1, *common, f"method={name}") for name in OWN_STEP]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    (whole, *killed) = [(p.returncode, out) for p, out in zip(procs, outs, strict=True)]
    assert whole[0] == 0, whole[1][-3000:]
    for name, (rc, out) in zip(OWN_STEP, killed, strict=True):
        assert rc == -9 and not (tmp_path / "killed" / name / "results.json").exists(), (name, out[-2000:])
    resumed = _driver(tmp_path / "killed", None, *common, f"methods={','.join(OWN_STEP)}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for name in OWN_STEP:
        a, b = tmp_path / "killed" / name, tmp_path / "whole" / name
        assert "resumed from" in (a / "run.log").read_text(), name
        assert _log(a) == _log(b), name
        assert _same_weights(a, b), name
        results = json.loads((a / "results.json").read_text())
        assert results["precision"] == "bfloat16" and results["method"] == name and results["steps"] == 12
        assert 0 <= results["target_acc"] <= 1


@pytest.mark.slow
def test_flexmatch_counts_resume_exactly(tmp_path):
    results = _resume_equals_uninterrupted(
        tmp_path,
        "method=fixmatch",
        "method.class_thresholds=true",
        "method.threshold=0.5",  # low enough that the tiny run learns classes whose counts a resume must keep
        "init=scratch",
        "trainer.epochs=3",
    )
    rows = _log(tmp_path / "killed")
    assert float(rows[1]["pl_coverage"]) > 0  # the resumed epoch starts from the saved pseudo-labels
    assert results["method"] == "fixmatch"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="torchrun with gloo on Linux")
def test_own_step_methods_under_two_rank_ddp_keep_the_ranks_equal(tmp_path, tiny_folder):
    names = f"methods={','.join(OWN_STEP)}"
    out = _driver(tmp_path, None, *tiny_folder, names, "trainer.epochs=2", torchrun=True, bf16=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    for name in OWN_STEP:
        run = tmp_path / name
        assert json.loads((run / "results.json").read_text())["world_size"] == 2
        r0 = torch.load(run / "rank0.pt", weights_only=True)
        r1 = torch.load(run / "rank1.pt", weights_only=True)
        weights = [k for k, v in r0.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert weights and all(torch.equal(r0[k], r1[k]) for k in weights if "running_" not in k), name
        saved = torch.load(run / "model.pt", weights_only=True)  # rank 0's model
        assert all(torch.equal(saved[k], r0[f"model.{k}"]) for k in saved), name
