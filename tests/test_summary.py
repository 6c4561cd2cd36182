"""Folder summaries pool the seeds of one setting: seed-matched source runs (``init``) and keys an older run's
config lacks do not split a row; a real difference (another source setting, two values of a new key) still does.

Every run is a hand-made results.json: no training.
"""

from __future__ import annotations

import json

from da.summary import summarise


def _run(root, name: str, acc: float, seed: int, init: str | None = None, **trainer) -> None:
    config = {
        "method": {"name": "shot"},
        "backbone": {"name": "lenet"},
        "dataset": {"name": "folder", "root": "/data/a", "source": "src", "target": "tgt"},
        "seed": seed,
        "trainer": {"epochs": 2, "lr": 0.01, **trainer},
    }
    if init is not None:
        config["init"] = init
    r = {"dataset": "folder", "source": "src", "target": "tgt", "method": "shot", "backbone": "lenet"}
    r.update(seed=seed, epochs=2, target_acc=acc, source_acc=0.9, config=config)
    (root / name).mkdir(parents=True)
    (root / name / "results.json").write_text(json.dumps(r))


def _rows(root) -> dict[str, tuple[int, str]]:
    return {r["overrides"]: (r["runs"], r["seeds"]) for r in summarise(str(root))}


def test_seed_matched_source_runs_are_one_setting(tmp_path):
    """Each seed starts from its own seed's source run: one row of three seeds; another source setting is its own."""
    for seed in range(3):
        _run(tmp_path, f"a{seed}", 0.5 + seed / 10, seed, init=f"/sweep/source_only/lr0.01/seed{seed}")
    _run(tmp_path, "b0", 0.2, 0, init="/sweep/source_only/lr0.03/seed0")
    assert _rows(tmp_path) == {
        "init=/sweep/source_only/lr0.01/seed*": (3, "0,1,2"),
        "init=/sweep/source_only/lr0.03/seed*": (1, "0"),
    }


def test_a_key_an_older_run_lacks_does_not_split_its_seeds(tmp_path):
    """Seed 0 was written before trainer.eval_every existed, seeds 1 and 2 set it: one row of three seeds."""
    _run(tmp_path, "s0", 0.7, 0)
    _run(tmp_path, "s1", 0.3, 1, eval_every=1)
    _run(tmp_path, "s2", 0.3, 2, eval_every=1)
    assert _rows(tmp_path) == {"": (3, "0,1,2")}


def test_two_values_of_a_new_key_stay_apart(tmp_path):
    """Where the runs that have the key hold two values, a run without it is a third setting."""
    _run(tmp_path, "s0", 0.7, 0)
    _run(tmp_path, "s1", 0.3, 1, eval_every=1)
    _run(tmp_path, "s2", 0.3, 2, eval_every=2)
    assert _rows(tmp_path) == {
        "trainer.eval_every=-": (1, "0"),
        "trainer.eval_every=1": (1, "1"),
        "trainer.eval_every=2": (1, "2"),
    }


def test_the_chart_keeps_its_bars_readable_beside_long_overrides(tmp_path):
    """Rows told apart by long overrides: the bars still fill most of summary.png's height, not a strip above
    the labels."""
    from da.summary import pyplot, write_summary

    for i in range(10):
        _run(tmp_path, f"lr{i}", 0.5, 0, init=f"/a/long/path/to/the/source/runs/of/this/sweep/lr{i}/seed0", lr=i + 1)
    write_summary(str(tmp_path))
    image = pyplot().imread(str(tmp_path / "summary.png"))[..., :3]
    blue = (abs(image - [0.122, 0.467, 0.706]) < 0.02).all(axis=-1)  # tab:blue, the bars' colour
    rows = blue.any(axis=1).nonzero()[0]
    assert rows.max() - rows.min() > 0.5 * len(image), (rows.min(), rows.max(), len(image))


def test_the_table_rounds_once(tmp_path):
    """A std of 4.4457 reads 4.4, as the README's tables print it; rounding to 0.01 first gave 4.45, then 4.5."""
    from da.summary import write_summary

    for seed, correct in enumerate((400, 443, 440)):  # of 540 target images
        _run(tmp_path, f"s{seed}", correct / 540, seed)
    table, _ = write_summary(str(tmp_path))
    assert "| 79.2 ± 4.4 |" in table, table


def test_test_time_rows_of_two_source_models_read_apart(tmp_path):
    """Two backbones adapted the same way are two rows, and the table says which is which (a source model column
    where the rows differ in it)."""
    from da.summary import write_summary

    for backbone, error in (("lenet", 0.3), ("resnet18", 0.2)):
        r = {"kind": "test_time", "method": "tent", "protocol": {"name": "continual"}, "data": "digits_c"}
        r.update(severity=5, seed=0, mean_error=error, dataset="digits", backbone=backbone)
        r["config"] = {"method": {"name": "tent"}, "seed": 0, "init": f"/runs/{backbone}/seed0"}
        (tmp_path / backbone).mkdir()
        (tmp_path / backbone / "results.json").write_text(json.dumps(r))
    table, _ = write_summary(str(tmp_path))
    rows = [line for line in table.splitlines() if line.startswith("| tent ")]
    assert len(rows) == 2 and len(set(rows)) == 2 and "lenet" in table and "resnet18" in table, table


def test_a_key_left_out_at_its_default_is_not_filled_in(tmp_path):
    """trainer.threads is left out of the fingerprint at its default (1), not missing: 1 and 4 are two settings,
    and a run that predates the key computed what 1 computes."""
    _run(tmp_path, "s0", 0.7, 0, threads=1)
    _run(tmp_path, "s1", 0.3, 1, threads=4)
    _run(tmp_path, "s2", 0.3, 2)
    assert _rows(tmp_path) == {"trainer.threads=1": (2, "0,2"), "trainer.threads=4": (1, "1")}
