import json
import os
import subprocess
import sys

import pytest

from benchmarks.collect import load_results, write_tables
from benchmarks.run import missing_jobs, parse
from benchmarks.suite import SuiteError, load_suite

DATA = os.path.join(os.path.dirname(__file__), "data", "collector")
GOLDEN = os.path.join(DATA, "expected")


def test_collector_matches_golden_files(tmp_path):
    results = load_results(os.path.join(DATA, "runs"))
    assert len(results) == 12
    paths = write_tables(
        results,
        "mnist_usps",
        "Fixture suite",
        str(tmp_path),
        ["source_only", "dann", "coral"],
        ["mnist_to_usps", "usps_to_mnist"],
        published_path=os.path.join(DATA, "published.yaml"),
    )
    for path in paths:
        name = os.path.basename(path)
        expected = open(os.path.join(GOLDEN, name)).read()
        assert open(path).read() == expected, name


def test_collector_numbers_by_hand():
    from benchmarks.collect import load_published, rows

    published = load_published("mnist_usps", os.path.join(DATA, "published.yaml"))
    long = {(r["method"], r["task"]): r for r in rows(load_results(os.path.join(DATA, "runs")), published)}
    assert long[("source_only", "mnist_to_usps")]["mean"] == pytest.approx(81.0)
    assert long[("source_only", "mnist_to_usps")]["std"] == pytest.approx(1.0)
    assert long[("source_only", "avg")]["mean"] == pytest.approx((81.0 + 72.0) / 2)
    assert long[("source_only", "avg")]["published"] == pytest.approx((82.1 + 74.6) / 2)
    # paper_a lacks dann on U->M, so the average comes from the first reference with both tasks
    assert long[("dann", "avg")]["published_ref"] == "paper_b"
    assert long[("dann", "mnist_to_usps")]["published_ref"] == "paper_a"
    assert long[("dann", "avg")]["seeds"] == 2  # U->M has two seeds: the average uses the seeds both tasks have
    assert long[("coral", "avg")]["mean"] is None  # a task is missing: no average


def test_suites_load_and_bad_options_fail():
    suite = load_suite("digits")
    assert len(suite.seeds) >= 3 and "dann" in suite.methods
    for name in ("mnist_usps", "office31"):
        assert len(load_suite(name).seeds) >= 3
    with pytest.raises(SuiteError, match="valid suites"):
        load_suite("nope")
    with pytest.raises(SuiteError, match="unknown option"):
        parse(["suite=digits", "foo=1"])


@pytest.mark.slow
def test_sweep_skips_finished_jobs_and_resumes(tmp_path):
    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(
        "name: tiny\ntitle: tiny\nseeds: [0]\n"
        "tasks:\n  - {dataset: digits, source: fonts, target: sklearn}\n"
        "methods: [source_only, dann]\n"
        "overrides: [dataset.samples_per_class=12, trainer.epochs=1, trainer.steps_per_epoch=2, "
        "trainer.batch_size=16, device=cpu]\n"
    )
    suite = load_suite(str(suite_file))
    out = tmp_path / "out"
    assert sum(len(m) for m in missing_jobs(suite, str(out)).values()) == 2
    cmd = [sys.executable, "-m", "benchmarks.run", f"suite={suite_file}", f"out={out}", "stage=sweep"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "runs" / "fonts_to_sklearn" / "dann" / "seed0" / "results.json").is_file()
    assert not missing_jobs(suite, str(out))
    # an interrupted sweep: one job's results are gone; only that job runs again
    os.remove(out / "runs" / "fonts_to_sklearn" / "source_only" / "seed0" / "results.json")
    before = os.path.getmtime(out / "runs" / "fonts_to_sklearn" / "dann" / "seed0" / "results.json")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 jobs done (their results are reused; rerun=true runs them again), 1 to run" in proc.stdout
    assert os.path.getmtime(out / "runs" / "fonts_to_sklearn" / "dann" / "seed0" / "results.json") == before
    assert (out / "runs" / "fonts_to_sklearn" / "source_only" / "seed0" / "results.json").is_file()


def test_report_writes_tables_and_figures_and_redraws_without_checkpoints(tmp_path):
    from benchmarks.report import report
    from da import fit

    from .conftest import tiny_cfg

    suite_file = tmp_path / "tiny.yaml"
    suite_file.write_text(
        "name: tiny\ntitle: tiny\nseeds: [0]\ntasks:\n  - {dataset: digits, source: fonts, target: sklearn}\n"
        "methods: [source_only, dann]\nfigures: {before: source_only, after: dann}\n"
    )
    suite, out = load_suite(str(suite_file)), tmp_path / "out"
    for method in suite.methods:
        fit(tiny_cfg(f"method={method}"), str(out / "runs" / "fonts_to_sklearn" / method / "seed0"), quiet=True)
    names = {os.path.basename(p) for p in report(suite, str(out))}
    assert {"tiny.md", "tiny.tex", "tiny.csv", "accuracy.png", "curves.png", "tsne.png", "tsne_points.csv"} <= names
    assert {"proxy_a_distance.png", "proxy_a_distance.csv"} <= names
    pads = (out / "figures" / "proxy_a_distance.csv").read_text().splitlines()
    assert pads[0] == "method,seeds,mean,std" and len(pads) == 3
    # a clone holds no checkpoints: the figures are redrawn from the cached analysis and t-SNE points
    for path in (out / "runs").rglob("checkpoint.pt"):
        path.unlink()
    assert (out / "figures" / "proxy_a_distance.csv").read_text().splitlines() == pads
    names = {os.path.basename(p) for p in report(suite, str(out))}
    assert {"tsne.png", "proxy_a_distance.png"} <= names
    assert (out / "figures" / "proxy_a_distance.csv").read_text().splitlines() == pads


def test_collector_selection_columns_by_hand():
    """The fixtures' validator picks are the reported accuracy + 1 point, their oracles + 2 points."""
    from benchmarks.collect import load_published, markdown

    results = load_results(os.path.join(DATA, "runs"))
    published = load_published("mnist_usps", os.path.join(DATA, "published.yaml"))
    text = markdown(results, published, "t", ["source_only"], ["mnist_to_usps", "usps_to_mnist"])
    row = next(line for line in text.splitlines() if line.startswith("| source_only"))
    assert "| 76.5 ± 1.5 | 77.5 ± 1.5 | 78.5 ± 1.5 | 78.3 | oracle |" in row


def test_collect_refuses_to_average_runs_of_different_configs(tmp_path, capsys):
    from benchmarks.collect import CollectError, check_comparable
    from benchmarks.collect import main as collect_main

    def run(folder, seed, epochs, progress_bar=True):
        config = {"seed": seed, "data_root": f"/m{seed}", "trainer": {"epochs": epochs, "progress_bar": progress_bar}}
        r = {"method": "dann", "source": "a", "target": "b", "seed": seed, "target_acc": 0.5, "config": config}
        os.makedirs(tmp_path / "runs" / folder)
        (tmp_path / "runs" / folder / "results.json").write_text(json.dumps(r))
        return {**r, "_dir": folder}

    same = [run("s0", 0, 20), run("s1", 1, 20, progress_bar=False)]  # seed, data_root, progress bar: no number
    check_comparable(same)
    with pytest.raises(CollectError, match=r"differ in trainer\.epochs \(trainer\.epochs: 20 in s0; 2 in s2\)"):
        check_comparable([*same, run("s2", 2, 2)])
    with pytest.raises(SystemExit, match="trainer.epochs"):
        collect_main([str(tmp_path / "runs")])
    with pytest.raises(SystemExit) as exit_:
        collect_main(["--help"])
    assert exit_.value.code == 0 and "example" in capsys.readouterr().out


def test_runner_options_and_job_identity(capsys):
    from benchmarks.run import identity, main, select, variant_dir

    suite = load_suite("digits")
    assert select(suite, "dann,mcd", "0,5").methods == ["dann", "mcd"]
    assert select(suite, None, "0,5").seeds == [0, 5] and select(suite, None, None).methods == suite.methods
    with pytest.raises(SuiteError, match="unknown method 'nope'"):
        select(suite, "nope", None)
    launch = [
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "trainer.progress_bar=true",
        "trainer.tensorboard=true",
    ]
    assert identity(launch, ["dann"]) == [] and variant_dir("out", []) == "out"  # the committed layout
    own = identity([*launch, "trainer.epochs=1", "method.trade_off=0.3"], ["dann"])
    assert own == ["method.trade_off=0.3", "trainer.epochs=1"]
    assert variant_dir("out", own) == os.path.join("out", "variants", "method.trade_off-0.3__trainer.epochs-1")
    main(["--help"])
    assert "methods=" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="rerun must be true or false"):
        main(["suite=digits", "rerun=yes"])
