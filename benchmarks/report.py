"""Tables and figures of a suite from its run folders, and the tables README.md and paper/paper.md show.

``report(suite, out)`` is called by ``python -m benchmarks.run``. As a command (``make tables``)::

    python -m benchmarks.report --write   # regenerate the suites' tables from their committed runs, then fill
                                          # README.md's and paper.md's table blocks from the generated tables
    python -m benchmarks.report --check   # exit 1, naming the files, if anything would change (tests/test_paper.py)

A table block in a Markdown file is ``<!-- table:KEY -->`` ... ``<!-- /table -->``; KEY names
``benchmarks/results/<KEY>/tables/<KEY>.md`` (a suite's, the selection's, the hard shift's, cross-run choices'), or,
when KEY holds a ``/``, ``benchmarks/results/<KEY>.md`` (``tta/tta``; a ``*`` in it joins every match, in name
order: ``crossrun/tables/*``). Everything between the markers is generated:
edit the results, never the block.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

from benchmarks.collect import CollectError, load_results, write_tables
from benchmarks.suite import HERE, Suite, SuiteError, job_dir, load_suite, task_key

RESULTS = os.path.join(HERE, "results")
REPO = os.path.dirname(HERE)
DOCUMENTS = ("README.md", os.path.join("paper", "paper.md"))  # and every docs/*.md
BLOCK = re.compile(r"(<!-- table:([^ >]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def report(suite: Suite, out: str) -> list[str]:
    """Write ``<out>/tables/<suite>.{md,tex,csv}`` and ``<out>/figures/*.png``; return the paths written."""
    tasks = [task_key(t) for t in suite.tasks]
    # only the suite's own job folders (not, e.g., a method's source_stage/ sub-run)
    expected = {os.path.abspath(job_dir(out, t, m, s)) for t in suite.tasks for m in suite.methods for s in suite.seeds}
    results = [r for r in load_results(os.path.join(out, "runs")) if os.path.abspath(r["_dir"]) in expected]
    if not results:
        raise SystemExit(f"error: no results.json for suite {suite.name} under {out}/runs; run stage=sweep first")
    written = write_tables(results, suite.name, suite.title, os.path.join(out, "tables"), suite.methods, tasks)
    written += figures(suite, results, os.path.join(out, "figures"))
    return written


def figures(suite: Suite, results: list[dict], folder: str) -> list[str]:
    from da import plots

    order = [m for m in suite.methods if any(r["method"] == m for r in results)]
    written = [plots.accuracy_bars(results, os.path.join(folder, "accuracy.png"), order)]
    first_task = task_key(suite.tasks[0])
    dirs: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if f"{r['source']}_to_{r['target']}" == first_task:
            dirs[r["method"]].append(r["_dir"])
    written.append(plots.training_curves({m: dirs[m] for m in order if m in dirs}, os.path.join(folder, "curves.png")))
    # proxy A-distance per method and t-SNE before/after adaptation, on the first task. Both need the runs'
    # checkpoints (not committed); what they computed is cached (analysis.json per run, tsne_points.csv) so the
    # figures can be redrawn from a clone that has only the small files.
    pads: dict[str, list[float]] = {}
    features: dict[str, tuple] = {}
    tasks: dict = {}
    want_tsne = [m for m in (suite.figures.get("before"), suite.figures.get("after")) if m]
    for m in order:
        for d in sorted(dirs.get(m, [])):
            cached = _load_json(os.path.join(d, "analysis.json"))
            need_features = m in want_tsne and m not in features
            if "proxy_a_distance" in cached and not need_features:
                pads.setdefault(m, []).append(cached["proxy_a_distance"])
                continue
            if not os.path.isfile(os.path.join(d, "checkpoint.pt")):
                if "proxy_a_distance" in cached:
                    pads.setdefault(m, []).append(cached["proxy_a_distance"])
                continue
            method, task = plots.restore(d, tasks=tasks)
            if not method.uses_source:  # a source-free run never read source data; its analysis doesn't either
                continue
            f_s, f_t = plots.domain_features(method, task)
            pad = plots.proxy_a_distance(f_s, f_t)
            _dump_json(os.path.join(d, "analysis.json"), {**cached, "proxy_a_distance": pad})
            pads.setdefault(m, []).append(pad)
            if need_features:
                features[m] = (f_s, f_t)
    if pads:
        written.append(plots.pad_bars(pads, os.path.join(folder, "proxy_a_distance.png")))
        path = os.path.join(folder, "proxy_a_distance.csv")
        with open(path, "w") as fh:
            fh.write("method,seeds,mean,std\n")
            for m, vals in pads.items():
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                fh.write(f"{m},{len(vals)},{statistics.mean(vals):.3f},{sd:.3f}\n")
        written.append(path)
    points = os.path.join(folder, "tsne_points.csv")
    if len(features) == len(want_tsne) and features:
        titles = {m: f"{'before' if m == suite.figures.get('before') else 'after'} adaptation ({m})" for m in features}
        written += plots.tsne_panels(
            {titles[m]: f for m, f in features.items()}, os.path.join(folder, "tsne.png"), points_csv=points
        )
    elif os.path.isfile(points):
        written.append(plots.tsne_from_points(points, os.path.join(folder, "tsne.png")))
    return written


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _dump_json(path: str, data: dict) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2)


def suite_tables(results_root: str = RESULTS) -> dict[str, str]:
    """{path: text} of every suite's tables (``benchmarks/suites/<name>.yaml`` with runs under
    ``<results_root>/<name>/runs``), generated from the runs' results.json files alone."""
    out: dict[str, str] = {}
    for name in sorted(f[:-5] for f in os.listdir(os.path.join(HERE, "suites")) if f.endswith(".yaml")):
        runs = os.path.join(results_root, name, "runs")
        if not os.path.isdir(runs):
            continue
        try:
            suite = load_suite(name)
        except (SuiteError, TypeError):  # another kind of suite (benchmarks.selection's grids) writes its own tables
            continue
        expected = {
            os.path.abspath(job_dir(os.path.join(results_root, name), t, m, s))
            for t in suite.tasks
            for m in suite.methods
            for s in suite.seeds
        }
        results = [r for r in load_results(runs) if os.path.abspath(r["_dir"]) in expected]
        if not results:
            continue
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tasks = [task_key(t) for t in suite.tasks]
            for path in write_tables(results, suite.name, suite.title, tmp, suite.methods, tasks):
                with open(path) as fh:
                    out[os.path.join(results_root, name, "tables", os.path.basename(path))] = fh.read()
    return out


def table_text(key: str, generated: dict[str, str], results_root: str = RESULTS) -> str:
    """The Markdown of table KEY: freshly generated when it is a suite's, else the committed file."""
    if "*" in key:  # every matching table, in name order (e.g. crossrun/tables/*)
        paths = sorted(glob.glob(os.path.join(results_root, f"{key}.md")))
        if not paths:
            return f"*Table not generated yet: run `{producer(key)}`.*\n"
        return "\n".join(table_text(os.path.relpath(p, results_root)[:-3], generated, results_root) for p in paths)
    path = (
        os.path.join(results_root, f"{key}.md")
        if "/" in key
        else os.path.join(results_root, key, "tables", f"{key}.md")
    )
    if path in generated:
        return generated[path]
    if not os.path.isfile(path):
        return f"*Table not generated yet: run `{producer(key)}`.*\n"
    with open(path) as fh:
        return fh.read()


def producer(key: str) -> str:
    """The command that writes table KEY."""
    name = key.split("/")[0]
    suite = os.path.join(HERE, "suites", f"{name}.yaml")
    if os.path.isfile(suite):
        with open(suite) as fh:
            grids = "grids:" in fh.read()
        return "python -m benchmarks.selection" if grids else f"python -m benchmarks.run suite={name}"
    return f"python -m benchmarks.{name}"


def fill_blocks(text: str, generated: dict[str, str], results_root: str = RESULTS) -> str:
    """``text`` with every table block's content replaced by its generated table."""

    def replace(m: re.Match) -> str:
        body = table_text(m.group(2), generated, results_root).rstrip("\n") + "\n"
        return m.group(1) + body + m.group(4)

    return BLOCK.sub(replace, text)


def planned(repo: str = REPO, results_root: str = RESULTS) -> dict[str, str]:
    """{path: new text} of every file ``--write`` would change (suite tables, then the documents' blocks)."""
    generated = suite_tables(results_root)
    changes = {}
    for path, text in generated.items():
        if not os.path.isfile(path) or open(path).read() != text:
            changes[path] = text
    docs = (
        sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(repo, "docs")) if f.endswith(".md"))
        if os.path.isdir(os.path.join(repo, "docs"))
        else []
    )
    for doc in [*DOCUMENTS, *docs]:
        path = os.path.join(repo, doc)
        if os.path.isfile(path):
            old = open(path).read()
            new = fill_blocks(old, generated, results_root)
            if new != old:
                changes[path] = new
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="write the tables and the documents' blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if --write would change a file")
    args = parser.parse_args(argv)
    try:
        changes = planned()
    except CollectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, text in changes.items():
        rel = os.path.relpath(path, REPO)
        if args.write:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
            print(f"wrote {rel}")
        else:
            print(f"{rel} differs from what `python -m benchmarks.report --write` (make tables) generates")
    if args.check and changes:
        return 1
    if not changes:
        print("every table is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
