"""`da select` on pools a rule cannot trust: non-finite or out-of-range predictions, two data sets sharing domain
names, broken predictions.npz files, an --out that is a file or unwritable, a single run (no self-link).

Pools are hand-made run folders (predictions.npz + results.json): no training."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from da import crossrun, predictions
from da.validators import ValidationData

from .test_crossrun import _pool, _write_pool


def _folder_pool(tmp_path, n_runs: int = 3):
    cands = _pool(np.random.default_rng(5), n_runs=n_runs)
    for c in cands:
        c.info["collapse"] = None
    _write_pool(tmp_path, cands)
    return cands


def test_nan_run_is_unscoreable_and_ranked_last(tmp_path):
    cands = _pool(np.random.default_rng(0))
    for c in cands:
        c.info["collapse"] = None
    d = cands[1].data
    cands[1].data = ValidationData(
        torch.full_like(d.logits_t, float("nan")), d.features_t, d.logits_s, d.features_s, d.labels_s
    )
    for rule in ("ensv", "entropy", "im"):
        sel = crossrun.rank_candidates(cands, rule)
        assert sel.chosen != "run1", rule
        last = sel.rows[-1]
        assert last["run"] == "run1" and last["score"] is None and last["rank"] is None
        assert "non-finite" in last["note"] and "unscoreable" in sel.table().splitlines()[-1]
    sel = crossrun.rank_candidates(cands, "ensv")
    clean = crossrun.rank_candidates([c for i, c in enumerate(cands) if i != 1], "ensv")
    assert [r["score"] for r in sel.rows[:-1]] == [r["score"] for r in clean.rows]  # the NaN run changes no score


def test_logits_beyond_float16_are_saved_as_they_are(tmp_path):
    """float16 stores |x| > 65504 as inf; such an array is kept in float32, the others stay float16."""
    small = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    big = torch.tensor([[70000.0, 80000.0], [-1e5, 0.5]])
    predictions.save(str(tmp_path), ValidationData(big, small))
    with np.load(tmp_path / predictions.FILE) as z:
        assert z["logits_t"].dtype == np.float32 and z["features_t"].dtype == np.float16
    got = predictions.load(str(tmp_path))
    assert torch.isfinite(got.logits_t).all() and torch.equal(got.logits_t, big)


def test_two_data_sets_with_the_same_domain_names_are_not_one_pool():
    cands = _pool(np.random.default_rng(2))
    for i, c in enumerate(cands):
        c.info["config"] = {"dataset": {"name": "folder", "root": f"/data/{'a' if i < 2 else 'b'}"}}
    with pytest.raises(crossrun.ConfigError, match=r"different dataset configs \(dataset\.root differ"):
        crossrun.rank_candidates(cands)
    for c in cands:  # a key that changes no number (the decoded cache) keeps one pool
        c.info["config"]["dataset"] = {"name": "folder", "root": "/data/a", "cache": str(c.run_dir)}
    crossrun.rank_candidates(cands)


def _bad(folder, kind: str) -> None:
    path = folder / predictions.FILE
    if kind == "random bytes":
        path.write_bytes(os.urandom(300))
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "no logits_t":
        np.savez(path, features_t=np.zeros((60, 4), np.float16))
    elif kind == "object array":
        np.savez(path, logits_t=np.array([{"a": 1}] * 60, dtype=object))
    elif kind == "feature rows":
        with np.load(path) as z:
            arrays = dict(z)
        arrays["features_t"] = arrays["features_t"][:10]
        np.savez(path, **arrays)


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "no logits_t", "object array", "feature rows"])
def test_broken_predictions_file_is_skipped_with_a_note(tmp_path, capsys, kind):
    cands = _folder_pool(tmp_path)
    _bad(tmp_path / cands[1].run_dir, kind)
    assert crossrun.main_select([str(tmp_path), "--rule", "reverse", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 1 and f"{cands[1].run_dir}{os.sep}{predictions.FILE}" in skipped[0], out
    assert json.loads((tmp_path / "out" / "selection.json").read_text())["chosen"] is not None


def test_out_that_is_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    _folder_pool(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert crossrun.main_select([str(tmp_path), "--out", str(tmp_path / "afile")]) == 2
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert crossrun.main_select([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is a file" in err[0] and "Permission denied" in err[1], err


def test_single_run_gets_no_link_to_itself(tmp_path, capsys):
    cands = _folder_pool(tmp_path, n_runs=1)
    run = tmp_path / cands[0].run_dir
    assert crossrun.main_select([str(run)]) == 0
    assert not os.path.lexists(run / "chosen") and (run / "selection.json").is_file()
    assert "no 'chosen' link" in capsys.readouterr().out


def test_table_shows_control_characters_as_escapes():
    cands = _pool(np.random.default_rng(0), n_runs=2)
    cands[0].info["method"] = "evil\x1b[31m"
    cands[1].run_dir = "run\x1b]0;title\x07"
    table = crossrun.rank_candidates(cands).table()
    assert "\x1b" not in table and "\x07" not in table and "evil\\x1b[31m" in table
