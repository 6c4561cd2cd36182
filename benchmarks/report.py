"""Tables and figures of a suite from its run folders (called by ``python -m benchmarks.run``)."""

from __future__ import annotations

import json
import os
import statistics
from collections import defaultdict

from benchmarks.collect import load_results, write_tables
from benchmarks.suite import Suite, job_dir, task_key


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
