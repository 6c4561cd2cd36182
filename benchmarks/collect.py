"""Collect results.json files into tables: mean ± std per method and task, the average, published numbers beside.

``python -m benchmarks.collect <runs folder> [--suite digits] [--out folder]`` writes ``<suite>.md``, ``.tex``
and ``.csv`` (by default into ``tables/`` beside the runs folder). Every number in a table comes from a
results.json; every published number from published.yaml. Runs averaged into one cell must share their config
(up to the seed, the keys that change no number and ``data_root``): otherwise collect stops and names the keys.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
from statistics import mean, stdev

import yaml

from da.results import headline_acc

HERE = os.path.dirname(os.path.abspath(__file__))
TASK_NAMES = {"amazon": "A", "dslr": "D", "webcam": "W", "mnist": "M", "usps": "U"}


def load_results(folder: str) -> list[dict]:
    """Every results.json below ``folder``, sorted by path; each gets its run folder under ``"_dir"``. A run's own
    source stage (``<run>/source_stage/``, a nested run of another config) and the runs moved aside to a
    ``replaced/`` folder are not results of the sweep."""
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "results.json"), recursive=True)):
        if {"source_stage", "replaced"} & set(os.path.relpath(path, folder).split(os.sep)):  # not the sweep's
            continue
        with open(path) as fh:
            rows.append({**json.load(fh), "_dir": os.path.dirname(path)})
    return rows


class CollectError(ValueError):
    """Runs that must not be averaged together (one line)."""


IGNORED = ("seed", "data_root")  # per-run by design, or a machine's path


def _flat(node, prefix: str = "") -> dict[str, object]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    out: dict[str, object] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def check_comparable(results: list[dict]) -> None:
    """Every (method, task) cell's runs share one config, up to :data:`IGNORED` and the keys ``da.config`` marks
    unfingerprinted; a cell whose runs differ raises :class:`CollectError` naming the keys (and a run of each value).
    Runs without a ``config`` (older fixtures) are not compared."""
    from da.config import unfingerprinted_keys

    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if isinstance(r.get("config"), dict):
            cells.setdefault((r["method"], f"{r['source']}_to_{r['target']}"), []).append(r)
    for (method, task), runs in cells.items():
        skip = set(IGNORED) | set(unfingerprinted_keys(runs[0]["config"]))
        flat = [{k: v for k, v in _flat(r["config"]).items() if k not in skip} for r in runs]
        keys = sorted(
            {k for f in flat for k in f if any(g.get(k, "<absent>") != flat[0].get(k, "<absent>") for g in flat)}
        )
        if keys:
            k = keys[0]
            seen: dict[str, str] = {}
            for r, f in zip(runs, flat):
                seen.setdefault(repr(f.get(k, "<absent>")), r.get("_dir", "?"))
            examples = "; ".join(f"{v} in {d}" for v, d in list(seen.items())[:2])
            raise CollectError(
                f"runs of {method} on {task} differ in {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} "
                f"({k}: {examples}): collect averages runs of one config only; collect each sweep's folder apart"
            )


def load_published(suite: str, path: str | None = None) -> dict:
    with open(path or os.path.join(HERE, "published.yaml")) as fh:
        return (yaml.safe_load(fh) or {}).get(suite) or {}


def task_label(key: str) -> str:
    src, tgt = key.split("_to_")
    return f"{TASK_NAMES.get(src, src)}→{TASK_NAMES.get(tgt, tgt)}"


def reported(r: dict) -> float | None:
    """The reported weights' target accuracy in the dataset's headline metric (VisDA-2017: mean per-class)."""
    return headline_acc(r)


def picked_by(validator: str):
    """The target accuracy of the epoch ``validator`` picks in a run (results.json ``selected``; analysis)."""
    return lambda r: ((r.get("selected") or {}).get(validator) or {}).get("target_acc")


def oracle_value(r: dict) -> float | None:
    return (r.get("oracle") or {}).get("target_acc")


def summarise(results: list[dict], methods: list[str] | None = None, tasks: list[str] | None = None, value=reported):
    """{(method, task): {seed: accuracy %}} plus the method and task orders; ``value`` reads a run's accuracy
    (the reported one by default; a validator's pick, or the oracle, for the selection columns)."""
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for r in results:
        key = (r["method"], f"{r['source']}_to_{r['target']}")
        v = value(r)
        if v is not None:
            cells.setdefault(key, {})[r["seed"]] = 100.0 * v
    methods = methods or sorted({m for m, _ in cells})
    tasks = tasks or sorted({t for _, t in cells})
    return cells, [m for m in methods if any((m, t) in cells for t in tasks)], tasks


def _fmt(values) -> str:
    values = list(values.values()) if isinstance(values, dict) else list(values)
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f} (1 seed)"
    return f"{mean(values):.1f} ± {stdev(values):.1f}"


def rows(results: list[dict], published: dict, methods=None, tasks=None) -> list[dict]:
    """Long format: one row per (method, task) and per method's average over tasks."""
    cells, methods, tasks = summarise(results, methods, tasks)
    out = []
    for m in methods:
        per_task = {t: cells.get((m, t), {}) for t in tasks}
        for t, values in per_task.items():
            pub, ref = _published(published, m, [t])
            out.append(_row(m, t, list(values.values()), pub, ref))
        # the average over tasks, per seed, over the seeds every task has
        common = set.intersection(*(set(v) for v in per_task.values())) if per_task else set()
        avg = [mean(v[seed] for v in per_task.values()) for seed in sorted(common)]
        pub, ref = _published(published, m, tasks)
        out.append(_row(m, "avg", avg, pub, ref))
    return out


def _row(method, task, values, pub, ref) -> dict:
    mu = mean(values) if values else math.nan
    return {
        "_values": values,
        "method": method,
        "task": task,
        "seeds": len(values),
        "mean": round(mu, 2) if values else None,
        "std": round(stdev(values), 2) if len(values) > 1 else (0.0 if values else None),
        "published": pub,
        "published_ref": ref if pub is not None else None,
        "diff": round(mu - pub, 2) if (values and pub is not None) else None,
    }


def _published(published: dict, method: str, tasks: list[str]) -> tuple[float | None, str | None]:
    """The first reference (published.yaml order) that reports ``method`` on all of ``tasks``: its mean."""
    for ref, entry in published.items():
        values = (entry.get("methods") or {}).get(method) or {}
        if tasks and all(t in values for t in tasks):
            return round(mean(values[t] for t in tasks), 2), ref
    return None, None


def _average(cells: dict, method: str, tasks: list[str]) -> str:
    """mean ± std over seeds of the per-seed average over tasks (seeds every task has)."""
    per_task = [cells.get((method, t), {}) for t in tasks]
    common = set.intersection(*(set(v) for v in per_task)) if per_task else set()
    return _fmt([mean(v[seed] for v in per_task) for seed in sorted(common)])


def markdown(
    results: list[dict], published: dict, title: str, methods=None, tasks=None, validator: str = "source_val"
) -> str:
    cells, methods, tasks = summarise(results, methods, tasks)
    picked, _, _ = summarise(results, methods, tasks, picked_by(validator))
    best, _, _ = summarise(results, methods, tasks, oracle_value)
    long = {(r["method"], r["task"]): r for r in rows(results, published, methods, tasks)}
    head = [
        "method",
        *[task_label(t) for t in tasks],
        "avg: last",
        f"avg: {validator}-picked",
        "avg: oracle†",
        "published avg",
        "published selection",
        "Δ (last − published)",
        "source",
    ]
    lines = [
        f"**{title}** — mean ± std over seeds. Per task and `last`: the last epoch, what the package reports "
        f"(no target labels). `{validator}-picked`: the epoch the label-free validator `{validator}` picks "
        "(no target labels). †oracle: the best epoch by target test accuracy — analysis only, it needs target "
        "labels and chooses nothing. Published numbers carry their own selection rule.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in methods:
        avg = long[(m, "avg")]
        ref = avg["published_ref"]
        cols = [
            m,
            *[_fmt(cells.get((m, t), {})) for t in tasks],
            _fmt_row(avg),
            _average(picked, m, tasks),
            _average(best, m, tasks),
            _num(avg["published"]),
            (published.get(ref) or {}).get("selection", "—") if ref else "—",
            _num(avg["diff"], signed=True),
            ref or "—",
        ]
        lines.append("| " + " | ".join(cols) + " |")
    refs = [r for r in published.values() if r.get("methods")]
    if refs:
        lines.append("")
        for name, r in published.items():
            lines.append(f"- `{name}`: {r['source']}. Protocol: {r['protocol']}. Selection: {r['selection']}.")
    return "\n".join(lines) + "\n"


def _fmt_row(r: dict) -> str:
    return _fmt(r["_values"]) if r["_values"] else "—"


def _num(x, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def latex(results: list[dict], published: dict, title: str, methods=None, tasks=None) -> str:
    cells, methods, tasks = summarise(results, methods, tasks)
    long = {(r["method"], r["task"]): r for r in rows(results, published, methods, tasks)}
    cols = "l" + "c" * (len(tasks) + 3)
    head = ["Method", *[task_label(t).replace("→", r"$\to$") for t in tasks], "Avg", "Published", r"$\Delta$"]
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(title)}}}",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for m in methods:
        avg = long[(m, "avg")]
        vals = [_fmt(cells.get((m, t), {})) for t in tasks]
        cols = [_tex(m), *vals, _fmt_row(avg), _num(avg["published"]), _num(avg["diff"], signed=True)]
        out.append(" & ".join(c.replace("±", r"$\pm$").replace("—", "--") for c in cols) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def _tex(s: str) -> str:
    return s.replace("_", r"\_").replace("%", r"\%").replace("→", r"$\to$").replace("&", r"\&")


def csv_text(results: list[dict], published: dict, methods=None, tasks=None) -> str:
    keys = ["method", "task", "seeds", "mean", "std", "published", "published_ref", "diff"]
    lines = [",".join(keys)]
    for r in rows(results, published, methods, tasks):
        lines.append(",".join("" if r[k] is None else str(r[k]) for k in keys))
    return "\n".join(lines) + "\n"


def write_tables(
    results: list[dict], suite: str, title: str, out: str, methods=None, tasks=None, published_path: str | None = None
) -> list[str]:
    check_comparable(results)
    published = load_published(suite, published_path)
    os.makedirs(out, exist_ok=True)
    paths = []
    for ext, text in (
        ("md", markdown(results, published, title, methods, tasks)),
        ("tex", latex(results, published, title, methods, tasks)),
        ("csv", csv_text(results, published, methods, tasks)),
    ):
        path = os.path.join(out, f"{suite}.{ext}")
        with open(path, "w") as fh:
            fh.write(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.collect",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m benchmarks.collect benchmarks/results/digits/runs --suite digits",
    )
    parser.add_argument("runs", help="folder searched recursively for results.json")
    parser.add_argument("--suite", default="digits", help="key into published.yaml and the output file name")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", default=None, help="output folder (default: tables/ beside the runs folder)")
    args = parser.parse_args(argv)
    results = load_results(args.runs)
    if not results:
        raise SystemExit(f"error: no results.json under {args.runs}")
    runs = os.path.abspath(args.runs).rstrip(os.sep)
    out = args.out or os.path.join(os.path.dirname(runs) if os.path.basename(runs) == "runs" else runs, "tables")
    try:
        paths = write_tables(results, args.suite, args.title or args.suite, out)
    except CollectError as err:
        raise SystemExit(f"error: {err}") from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
