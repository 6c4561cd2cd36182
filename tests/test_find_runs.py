"""Which runs ``da select`` pools (finished runs, not a run's source stage nor runs moved aside to replaced/) and
which ``da portfolio`` trains (the methods it names)."""

from __future__ import annotations

import json
import os

from da.crossrun import find_runs

# what a job would train on code that let method= through: a second's work, not the default budget
TINY_JOB = ["dataset.samples_per_class=12", "trainer.epochs=1", "trainer.steps_per_epoch=1", "device=cpu"]
TINY_JOB += ["trainer.report=false", "trainer.progress_bar=false"]


def _finished(folder) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w") as fh:
        json.dump({"method": "source_only"}, fh)
    return os.path.normpath(str(folder))


def test_runs_moved_aside_are_not_pooled(tmp_path):
    """A run restarted with ``trainer.resume=false`` and interrupted (its earlier run in ``<run>/replaced/<time>``)
    and a benchmark's ``<out>/replaced/<time>/`` after ``rerun=true``: only the current runs are candidates."""
    (tmp_path / "restarted").mkdir()
    (tmp_path / "restarted" / "config.yaml").write_text("method: {}\n")
    _finished(tmp_path / "restarted" / "replaced" / "20261208-000000")
    kept = _finished(tmp_path / "bench" / "runs" / "t" / "dann" / "seed0")
    _finished(tmp_path / "bench" / "replaced" / "20261208-000000" / "t" / "dann" / "seed0")
    other = _finished(tmp_path / "other")
    _finished(tmp_path / "other" / "source_stage")
    assert find_runs([str(tmp_path)]) == sorted([kept, other])
    moved = str(tmp_path / "restarted" / "replaced")  # named on purpose: what it holds is pooled
    assert find_runs([moved]) == [os.path.join(moved, "20261208-000000")]


def test_portfolio_refuses_a_method_override(tmp_path, capsys):
    """``method=`` after ``--`` would train that one method in every job's folder, filed under the others' names."""
    from da.crossrun import main_portfolio

    out = tmp_path / "pf"
    assert (
        main_portfolio(["--methods", "source_only,dann", "--out", str(out), "--", "method=source_only", *TINY_JOB]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--methods" in err[0] and not out.exists(), err
