"""report.html and folder summaries: hostile names stay text, rows are settings (not pooled seeds of different
configs), test-time runs get a page and a table, bad run folders are one line, and a failing figure costs nothing.

Every run here is hand-made (results.json, log.csv, synthetic predictions): no training, well under a second each.
"""

from __future__ import annotations

import csv
import html.parser
import json
import os

import numpy as np
import pytest

from da import cli
from da.report import TestPredictions as Predictions
from da.report import write_report, write_summary

HOSTILE = {
    "dataset": '=HYPERLINK("http://evil.example","x")',
    "source": "<script>alert(1)</script>",
    "target": "<img src=x onerror=alert(1)>",
    "method": "a|b\x1b[31m",
    "backbone": "a\nb",
}


def _config(seed: int = 0, lr: float = 0.01, root: str = "/data/a", **trainer) -> dict:
    return {
        "method": {"name": "dann", "trade_off": 1.0},
        "backbone": {"name": "lenet"},
        "dataset": {"name": "folder", "root": root, "source": "src", "target": "tgt"},
        "seed": seed,
        "trainer": {"epochs": 2, "lr": lr, "progress_bar": True, **trainer},
    }


def _run(root, name: str, acc: float, seed: int = 0, config: dict | None = None, **keys) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    r = {"dataset": "folder", "source": "src", "target": "tgt", "method": "dann", "backbone": "lenet", **keys}
    r.update(seed=seed, epochs=2, target_acc=acc, source_acc=0.9)
    if config is not None:
        r["config"] = config
    (folder / "results.json").write_text(json.dumps(r))
    return str(folder)


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)


# ------------------------------------------------------------------------------------------- hostile names


def test_summary_keeps_hostile_names_inert(tmp_path, capsys):
    """summary.md rendered by Python-Markdown holds no tag but the table's, one row per setting; summary.csv has
    no formula; `da report` prints no escape sequence."""
    import markdown

    _run(tmp_path, "r0", 0.5, **HOSTILE)
    _run(tmp_path, "r1", 0.7, seed=1, **HOSTILE)
    _run(tmp_path, "r2", 0.4, **{**HOSTILE, "method": "source_only"})
    assert cli.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\\x1b" in printed
    page = markdown.markdown((tmp_path / "summary.md").read_text(), extensions=["tables"])
    parser = _Tags()
    parser.feed(page)
    assert set(parser.tags) <= {"table", "thead", "tbody", "tr", "th", "td", "p"}, set(parser.tags)
    assert parser.tags.count("tr") == 1 + 2  # the header and the two settings: no injected row
    assert "<script>" not in page and "&lt;script&gt;" in page
    with open(tmp_path / "summary.csv", newline="") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "@") or (c.startswith("-") and not c[1:2].isdigit())]


# -------------------------------------------------------------------------- rows: settings, not pooled runs


def test_summary_rows_are_settings_with_their_overrides(tmp_path):
    """Two points of an lr sweep and a second data set with the same domain names are three rows, each naming
    what sets it apart; seeds and keys that change no number (the progress bar) are pooled."""
    _run(tmp_path, "lr01_s0", 0.5, 0, _config(0, 0.01))
    _run(tmp_path, "lr01_s1", 0.7, 1, _config(1, 0.01, progress_bar=False))
    _run(tmp_path, "lr03_s0", 0.2, 0, _config(0, 0.03))
    _run(tmp_path, "other_data", 0.9, 0, _config(0, 0.01, root="/data/b"))
    table, rows = write_summary(str(tmp_path))
    got = {r["overrides"]: (r["runs"], r["target_acc"]) for r in rows}
    assert got == {
        "dataset.root=/data/a trainer.lr=0.01": (2, 60.0),
        "dataset.root=/data/a trainer.lr=0.03": (1, 20.0),
        "dataset.root=/data/b trainer.lr=0.01": (1, 90.0),
    }
    assert "| overrides |" in table and "trainer.lr=0.03" in table
    with open(tmp_path / "summary.csv", newline="") as fh:
        assert "overrides" in next(csv.reader(fh))


# ------------------------------------------------------------------------------------ bad run folders


def _tta_results(seed: int = 0, error: float = 0.3) -> dict:
    return {
        "kind": "test_time",
        "method": "tent",
        "protocol": {"name": "continual", "reset_each_domain": False, "batch_size": 2, "num_samples": 4},
        "data": "digits_c",
        "severity": 5,
        "seed": seed,
        "per_domain_error": {"gaussian_noise": error - 0.1, "fog": error + 0.1},
        "mean_error": error,
        "online_error": error,
        "samples": 8,
        "batches": 4,
        "collapse": {"epoch": 3, "marginal_entropy": 0.2, "largest_class_fraction": 0.9, "reference_entropy": 2.0},
        "source_run": "/somewhere/source",
        "source_target_acc": 0.8,
        "dataset": "digits",
        "backbone": "lenet",
        "device": "cpu",
        "precision": "float32",
        "seconds": 1.5,
        "config": {"method": {"name": "tent"}, "seed": seed, "run_dir": f"/runs/{seed}", "severity": 5},
    }


def _tta_run(root, name: str, seed: int = 0, error: float = 0.3) -> str:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(_tta_results(seed, error)))
    rows = [("gaussian_noise", 0.5), ("gaussian_noise", 0.0), ("fog", 0.5), ("fog", 0.5)]
    with open(folder / "log.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["batch", "domain", "n", "error", "online_error"])
        wrong = 0.0
        for b, (domain, err) in enumerate(rows):
            wrong += 2 * err
            w.writerow([b, domain, 2, err, wrong / (2 * (b + 1))])
    return str(folder)


def test_report_skips_bad_runs_with_a_note(tmp_path, capsys):
    """A folder holding a test-time run, a null target_acc, a list, {} and broken JSON beside a good run: one
    summary, one note per skipped folder, no traceback."""
    _run(tmp_path, "good", 0.5)
    _tta_run(tmp_path, "tta")
    _run(tmp_path, "null", None)
    for name, text in (("list", "[1, 2]"), ("empty", "{}"), ("broken", '{"target_acc": ')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    assert cli.main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipped ")]
    assert len(skipped) == 4 and all(f"{os.sep}{n}:" in " ".join(skipped) for n in ("null", "list", "empty", "broken"))
    assert "| tent | continual | digits_c | 5 | 1 (0) | 30.0 |" in out


@pytest.mark.parametrize(("text", "message"), [("[1, 2]", "holds no run record"), ("{}", "holds no run record")])
def test_report_of_a_bad_run_is_one_line(tmp_path, capsys, text, message):
    (tmp_path / "results.json").write_text(text)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_report_into_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """An unwritable folder (read-only, full disk: the writer's OSError) is one line, exit 2."""
    import tempfile

    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied", dir)

    _run(tmp_path, "a", 0.5)
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write into" in err[0] and "Permission denied" in err[0], err


# ------------------------------------------------------------------------------------------ test-time runs


def test_test_time_run_gets_a_page_and_a_table(tmp_path, capsys):
    run = _tta_run(tmp_path / "tta", "seed0")
    _tta_run(tmp_path / "tta", "seed1", seed=1, error=0.5)
    assert cli.main(["report", run]) == 0
    page = open(os.path.join(run, "report.html")).read()
    assert "<td>gaussian_noise</td><td>20.0%</td>" in page and "<td>fog</td><td>40.0%</td>" in page
    assert os.path.isfile(os.path.join(run, "figures", "online_error.png")) and "could not be drawn" not in page
    assert "at batch 3" in page and "{" not in page.split("<table>")[1].split("</table>")[0]
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path)]) == 0
    assert "| tent | continual | digits_c | 5 | 2 (0,1) | 40.0 ± 14.1 |" in capsys.readouterr().out
    assert (tmp_path / "summary_tta.csv").is_file()


def test_test_time_page_failure_only_warns(tmp_path, monkeypatch, caplog):
    from da.tta import report

    def broken(*args, **kwargs):
        raise RuntimeError("no page")

    monkeypatch.setattr(report, "write_test_time_report", broken)
    assert report.write_page(str(tmp_path), {}) is None
    assert "report.html not written: RuntimeError: no page" in caplog.text


# ---------------------------------------------------------------------------------------------- run pages


def _predictions(n_t: int = 540, n_s: int = 30, k: int = 3) -> Predictions:
    rng = np.random.default_rng(0)
    return Predictions(
        rng.normal(size=(n_t, k)), rng.integers(0, k, n_t), rng.normal(size=(n_t, 4)),
        rng.normal(size=(n_s, 4)), rng.integers(0, k, n_s),
    )  # fmt: skip


def _page_run(tmp_path) -> tuple[str, dict]:
    with open(tmp_path / "log.csv", "w") as fh:
        fh.write("epoch,loss,target_acc,im_score,snd_score\n1,1.0,,0.1,0.3\n2,0.8,0.5,0.2,0.2\n")
    results = {
        "method": "dann", "dataset": "folder", "source": "$s", "target": "t$", "backbone": "lenet", "seed": 0,
        "epochs": 2, "target_acc": 0.5, "source_acc": 0.9, "selection": {"rule": "last", "epoch": 2},
        "collapse": {"epoch": 2, "marginal_entropy": 0.3, "largest_class_fraction": 0.91, "reference_entropy": 1.1},
        "config": {"trainer": {"collapse_fraction": 0.85}},
    }  # fmt: skip
    return str(tmp_path), results


def test_page_draws_dollar_names_and_says_what_it_sampled(tmp_path):
    """`$` in class and domain names (matplotlib's mathtext) draws every figure; the PCA caption gives the real
    counts; the collapse warning is a sentence; the source-only baseline is shown."""
    run, results = _page_run(tmp_path)
    baseline = ({"target_acc": 0.42, "method": "source_only"}, os.path.join(run, "..", "so"))
    page = open(write_report(run, results, _predictions(), ["$", "a$b$c", r"$\frac{$"], baseline=baseline)).read()
    assert "could not be drawn" not in page
    for name in ("curves", "per_class", "confusion", "embedding", "reliability"):
        assert os.path.isfile(os.path.join(run, "figures", f"{name}.png")), name
    assert "30 of 30 source and 500 of 540 target test images" in page
    assert "at epoch 2 the target predictions" in page and "91% of target images" in page
    assert "{&quot;epoch&quot;" not in page and '{"epoch"' not in page
    assert "source-only baseline" in page and "42.0%" in page


def test_a_failing_figure_is_named_not_raised(tmp_path, monkeypatch):
    from da import report

    def broken(*args):
        raise ValueError("bad figure")

    monkeypatch.setattr(report, "_confusion", broken)
    monkeypatch.setattr(report, "_embedding", lambda *args: None)  # not drawn: time
    run, results = _page_run(tmp_path)
    page = open(write_report(run, results, _predictions(40, 10), ["a", "b", "c"])).read()
    assert "Confusion matrix (target test): ValueError: bad figure" in page
    assert os.path.isfile(os.path.join(run, "figures", "per_class.png"))


def test_curves_have_integer_epoch_ticks(tmp_path):
    from da import report

    plt = report.pyplot()
    rows = report.read_log(_page_run(tmp_path)[0])
    fig = report._curves(plt, rows, 2, "t")
    fig.canvas.draw()
    for ax in fig.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks())
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["Training losses", "Accuracy", "im", "snd"]  # one panel per validator, unscaled
    plt.close(fig)


def test_sweep_figures_draw_dollar_names(tmp_path):
    from da import plots

    results = [{"method": r"$\frac{$", "source": "a$", "target": "$b", "target_acc": 0.5}]
    assert os.path.isfile(plots.accuracy_bars(results, str(tmp_path / "bars.png")))
    assert os.path.isfile(plots.pad_bars({r"$\frac{$": [0.1, 0.2]}, str(tmp_path / "pad.png")))
