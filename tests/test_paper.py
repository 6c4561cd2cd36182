import importlib.util
import os

from benchmarks.collect import load_results, write_tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(__file__), "data", "collector")


def _build_module():
    spec = importlib.util.spec_from_file_location("paper_build", os.path.join(REPO, "paper", "build.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_builds_with_the_generated_tables(tmp_path):
    results = tmp_path / "results"
    write_tables(
        load_results(os.path.join(DATA, "runs")),
        "mnist_usps",
        "Fixture suite",
        str(results / "mnist_usps" / "tables"),
        published_path=os.path.join(DATA, "published.yaml"),
    )
    (results / "digits" / "figures").mkdir(parents=True)
    (results / "digits" / "figures" / "accuracy.png").write_bytes(b"\x89PNG fixture")
    paths = _build_module().build(out=str(tmp_path / "out"), results=str(results), pdf=False)
    html = open(paths[1]).read()
    assert "<table>" in html and "Fixture suite" in html and "M→U" in html and "81.0 ± 1.0" in html
    assert "figures/digits_accuracy.png" in html and (tmp_path / "out" / "figures" / "digits_accuracy.png").is_file()
    # a suite without results says how to produce them instead of failing
    assert "python -m benchmarks.run suite=office31" in html


def test_readme_and_paper_tables_are_generated():
    """README.md's and paper.md's table blocks, and every suite's tables, equal what `make tables` writes from the
    committed results (python -m benchmarks.report --write)."""
    from benchmarks.report import fill_blocks, planned

    stale = planned()
    assert not stale, f"run `make tables`: {sorted(os.path.relpath(p, REPO) for p in stale)}"
    # the check can fail: a hand-edited number inside a block is put back
    text = open(os.path.join(REPO, "paper", "paper.md")).read()
    block = text.index("<!-- table:digits -->")
    row = text.index("\n| ", block) + 1
    edited = text[:row] + "| edited by hand |\n" + text[row:]
    assert fill_blocks(edited, {}) != edited and fill_blocks(text, {}) == text
