"""The source-only baseline beside a run: a source-free run that starts from a source_only run (``init``) is
compared with that run, which the sibling search (configs equal but the method) cannot find."""

from __future__ import annotations

import json
import os

from da.experiment import find_baseline


def _results(root, folder: str, method: str, acc: float, **config) -> dict:
    r = {"dataset": "digits", "source": "fonts", "target": "sklearn", "backbone": "lenet", "seed": 0, "epochs": 2}
    r.update(method=method, target_acc=acc, config={"dataset": {"name": "digits"}, "seed": 0, **config})
    os.makedirs(root / folder)
    (root / folder / "results.json").write_text(json.dumps(r))
    return r


def test_a_source_free_run_is_compared_with_the_run_it_started_from(tmp_path):
    _results(tmp_path, "runs/source_only/lr0.01/seed0", "source_only", 0.51)
    shot = _results(
        tmp_path, "runs/shot/lr0.01/seed0", "shot", 0.63, init=str(tmp_path / "runs/source_only/lr0.01/seed0")
    )
    other, folder = find_baseline(shot, str(tmp_path / "runs/shot/lr0.01/seed0"))
    assert other["target_acc"] == 0.51 and folder == str(tmp_path / "runs/source_only/lr0.01/seed0")


def test_an_init_of_another_task_or_method_is_no_baseline(tmp_path):
    _results(tmp_path, "a/dann", "dann", 0.4)
    shot = _results(tmp_path, "b/shot", "shot", 0.63, init=str(tmp_path / "a/dann"))
    assert find_baseline(shot, str(tmp_path / "b/shot")) is None
