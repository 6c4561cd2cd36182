"""Which folders ``da select`` pools: finished runs, not a run's source stage nor runs moved aside to replaced/."""

from __future__ import annotations

import json
import os

from da.crossrun import find_runs


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
