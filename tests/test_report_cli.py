"""`da report` on finished runs without their model.pt (committed benchmark runs): the run is not called
unfinished, and the summary does not suggest a page it cannot write."""

from __future__ import annotations

import json

from da import cli


def _finished_without_model(folder) -> None:
    folder.mkdir(parents=True)
    r = {"dataset": "digits", "source": "fonts", "target": "sklearn", "method": "dann", "backbone": "lenet"}
    r.update(seed=0, epochs=2, target_acc=0.5, source_acc=0.9, config={"method": {"name": "dann"}})
    (folder / "results.json").write_text(json.dumps(r))


def test_a_run_without_its_weights_is_finished_and_gets_no_page_hint(tmp_path, capsys):
    _finished_without_model(tmp_path / "runs" / "dann" / "seed0")
    assert cli.main(["report", str(tmp_path / "runs" / "dann" / "seed0")]) == 2
    err = capsys.readouterr().err
    assert "not finished" not in err and "model.pt" in err and "results.json" in err
    assert cli.main(["report", str(tmp_path / "runs")]) == 0
    assert "`da report <run>` writes one" not in capsys.readouterr().out
