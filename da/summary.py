"""A folder's summary: one row per configuration of the finished runs under it, seeds averaged.

``da report FOLDER`` and the end of a ``-m`` sweep (:class:`da.report.SweepSummary`) write ``summary.md``,
``summary.csv`` and ``summary.png`` (training runs) and, when the folder holds test-time runs, their own table
(``summary_tta.csv``, a second table in summary.md). Runs are one row when their configs are equal up to the seed
and the keys that change no number (:func:`da.config.unfingerprinted`), ``init`` up to the run's own seed, and a
key an older run lacks taken as the one value the others share; where rows of one task and method differ,
the ``overrides`` column names the keys that tell them apart (``trainer.lr=0.01``). A folder whose results.json
cannot be read as a finished run is skipped with a note, never a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from typing import Any

import numpy as np

from da.escape import csv_cell, markdown_cell, terminal
from da.runfolder import atomic_write, write_text

SUMMARY_KEYS = ("dataset", "source", "target", "method", "backbone")
TTA_KEYS = ("method", "protocol", "data", "severity", "dataset", "backbone")
TTA_RUN_KEYS = ("seed", "run_dir", "quiet")  # a test-time config's keys that are not part of its setting
SKIP_DIRS = ("source_stage", "figures", ".hydra", "replaced")  # replaced: runs trainer.resume=false moved aside


def find_runs(folder: str) -> list[str]:
    """Every finished run folder (holding results.json) under ``folder``, its own source stages excepted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        if "results.json" in files:
            found.append(root)
    return found


def read_results(run_dir: str, finished: bool = True) -> tuple[dict[str, Any] | None, str]:
    """A run's results.json as a run's record, or None and why it cannot be read (``finished``: nor summarised,
    its headline number missing)."""
    try:
        with open(os.path.join(run_dir, "results.json")) as fh:
            r = json.load(fh)
    except OSError as err:
        return None, f"results.json unreadable ({err.strerror or err})"
    except ValueError:
        return None, "results.json is not JSON"
    if not isinstance(r, dict) or not r:
        return None, "results.json holds no run record"
    key = "mean_error" if is_test_time(r) else "target_acc"
    if finished and not _number(r.get(key)):
        return None, f"results.json has no {key} (an unfinished or failed run)"
    return r, ""


def is_test_time(results: dict[str, Any]) -> bool:
    return results.get("kind") == "test_time"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def setting(config: Any, drop: tuple[str, ...]) -> dict[str, Any]:
    """The part of a resolved config that sets a run's numbers, less ``drop`` (top-level keys, e.g. the seed)."""
    if not isinstance(config, dict):
        return {}
    try:
        from da.checkpoint import fingerprint

        config = fingerprint(config)
    except Exception:  # a config of another kind (test-time) or version: compared as written
        pass
    return {k: v for k, v in config.items() if k not in drop}


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix[:-1]: node} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _group(runs: list[dict[str, Any]], keys: tuple[str, ...], drop: tuple[str, ...]) -> list[list[dict[str, Any]]]:
    """Runs in groups of one setting (``keys`` and the config up to ``drop``), each group's ``_overrides`` set:
    the ``key=value`` pairs where it differs from the other groups sharing its ``keys``."""
    heads: dict[tuple, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for r in runs:
        head = tuple(json.dumps(_label(r, k), default=str) for k in keys)
        heads.setdefault(head, []).append((r, _comparable(r.get("config"), drop)))
    out = []
    for head in sorted(heads):
        _fill_missing([flat for _, flat in heads[head]])
        groups: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for r, flat in heads[head]:
            groups.setdefault(json.dumps(flat, sort_keys=True), []).append((r, flat))
        flats = [members[0][1] for members in groups.values()]
        differ = sorted({k for f in flats for k in f if len({json.dumps(g.get(k, "-")) for g in flats}) > 1})
        labelled = []
        for members in groups.values():
            flat = members[0][1]
            labelled.append((" ".join(f"{k}={_value(flat.get(k, '-'))}" for k in differ), [r for r, _ in members]))
        for overrides, members in sorted(labelled, key=lambda kv: kv[0]):
            for r in members:
                r["_overrides"] = overrides
            out.append(members)
    return out


def _comparable(config: Any, drop: tuple[str, ...]) -> dict[str, Any]:
    """A run's :func:`setting`, flattened to dotted keys with JSON values; ``init`` with the run's own seed masked
    (``.../seed1`` -> ``.../seed*``): the seed-matched source runs of one sweep are one setting."""
    flat = flatten(json.loads(json.dumps(setting(config, drop), default=str)))
    if isinstance(config, dict) and isinstance(config.get("trainer"), dict):  # a training run's config
        for key, default in _added_defaults(config).items():
            flat.setdefault(key, json.loads(json.dumps(default, default=str)))
    seed = config.get("seed") if isinstance(config, dict) else None
    if isinstance(flat.get("init"), str) and _number(seed):
        pattern = rf"(^|/)(seed[-_=]?){int(seed)}(?=/|$)"
        flat["init"] = re.sub(pattern, r"\1\2*", flat["init"].rstrip("/"))
    return flat


def _added_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys declared with :func:`da.config.added` and their defaults: the fingerprint leaves such a key
    out at its default, and a run that predates it computed what the default computes."""
    from da.config import config_classes

    out: dict[str, Any] = {}
    for prefix, cls in config_classes(config).items():
        out.update(_defaults_of(cls, prefix))
    return out


def _defaults_of(cls: type, prefix: str) -> dict[str, Any]:
    import typing
    from dataclasses import fields, is_dataclass

    from da.config import DEFAULT_ONLY, FINGERPRINT

    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.metadata.get(FINGERPRINT, True) == DEFAULT_ONLY:
            out[prefix + f.name] = f.default
        elif is_dataclass(hints.get(f.name)):
            out.update(_defaults_of(hints[f.name], f"{prefix}{f.name}."))
    return out


def _fill_missing(flats: list[dict[str, Any]]) -> None:
    """A key that some runs' configs lack (written before the key existed) takes the one value the others share;
    where they hold several values it stays missing and tells those runs apart."""
    for key in {k for f in flats for k in f}:
        values = {json.dumps(f[key]) for f in flats if key in f}
        if len(values) == 1:
            value = next(f[key] for f in flats if key in f)
            for f in flats:
                f.setdefault(key, value)


def _label(r: dict[str, Any], key: str) -> Any:
    value = r.get(key)
    return value.get("name") if isinstance(value, dict) else value


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _seeds(runs: list[dict[str, Any]]) -> str:
    def order(r: dict[str, Any]) -> tuple:
        seed = r.get("seed")
        return (0, seed, "") if _number(seed) else (1, 0, str(seed))

    return ",".join(str(r.get("seed")) for r in sorted(runs, key=order))


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None


def collect(folder: str) -> tuple[list[dict], list[dict], list[str]]:
    """The training runs' and the test-time runs' records under ``folder``, and a note per skipped folder."""
    train, tta, skipped = [], [], []
    for run in find_runs(folder):
        r, why = read_results(run)
        if r is None:
            skipped.append(f"{run}: {why}")
        else:
            (tta if is_test_time(r) else train).append(r)
    return train, tta, skipped


def summarise(folder: str) -> list[dict[str, Any]]:
    """One row per setting of the training runs under ``folder``: task, method, backbone, the overrides that tell
    rows of one task and method apart, the number of runs (seeds), target accuracy mean and standard deviation
    (%) and the source accuracy's mean."""
    return training_rows(collect(folder)[0])


def training_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for group in _group(runs, SUMMARY_KEYS, ("seed",)):
        mean, std = _mean_std([100 * r["target_acc"] for r in group])
        s = [100 * r["source_acc"] for r in group if _number(r.get("source_acc"))]
        rows.append(
            {
                **{k: _label(group[0], k) for k in SUMMARY_KEYS},
                "overrides": group[0]["_overrides"],
                "runs": len(group),
                "seeds": _seeds(group),
                "epochs": ",".join(sorted({str(r.get("epochs")) for r in group})),
                "target_acc": mean,
                "target_std": std,
                "source_acc": float(np.mean(s)) if s else None,
            }
        )
    return rows


def test_time_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting of the test-time runs: method, protocol, data, severity, seeds, mean error (%)."""
    rows = []
    for group in _group(runs, TTA_KEYS, TTA_RUN_KEYS):
        mean, std = _mean_std([100 * r["mean_error"] for r in group])
        rows.append(
            {
                **{k: _label(group[0], k) for k in TTA_KEYS},
                "overrides": group[0]["_overrides"],
                "runs": len(group),
                "seeds": _seeds(group),
                "mean_error": mean,
                "error_std": std,
            }
        )
    return rows


def _table(head: list[str], cells: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float | None) -> str:
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def summary_markdown(rows: list[dict[str, Any]], tta_rows: list[dict[str, Any]] | None = None) -> str:
    """The Markdown tables of :func:`training_rows` and :func:`test_time_rows` (every cell escaped); the
    ``overrides`` column appears where some row has overrides."""
    out = ""
    if rows or not tta_rows:
        extra = any(r["overrides"] for r in rows)
        head = ["task", "method", "backbone", *(["overrides"] if extra else [])]
        head += ["runs (seeds)", "epochs", "target acc (%)", "source acc (%)"]
        cells = [
            [
                f"{r['dataset']} {r['source']}→{r['target']}",
                r["method"],
                r["backbone"],
                *([r["overrides"]] if extra else []),
                f"{r['runs']} ({r['seeds']})",
                r["epochs"],
                _pm(r["target_acc"], r["target_std"]),
                "n/a" if r["source_acc"] is None else f"{r['source_acc']:.1f}",
            ]
            for r in rows
        ]
        out = _table(head, cells)
    if tta_rows:
        extra = any(r["overrides"] for r in tta_rows)
        models = {f"{r['dataset']}, {r['backbone']}" for r in tta_rows}  # shown where rows differ in it
        head = ["method", "protocol", "data", "severity", *(["source model"] if len(models) > 1 else [])]
        head += [*(["overrides"] if extra else []), "runs (seeds)"]
        cells = [
            [r["method"], r["protocol"], r["data"], r["severity"]]
            + ([f"{r['dataset']}, {r['backbone']}"] if len(models) > 1 else [])
            + ([r["overrides"]] if extra else [])
            + [f"{r['runs']} ({r['seeds']})", _pm(r["mean_error"], r["error_std"])]
            for r in tta_rows
        ]
        out += ("\n" if out else "") + "Test-time adaptation runs (online error, mean over domains):\n\n"
        out += _table([*head, "mean error (%)"], cells)
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    return buf.getvalue()


def write_summary(folder: str, notes: list[str] | None = None) -> tuple[str, list[dict[str, Any]]]:
    """``summary.md``, ``summary.csv`` and ``summary.png`` (target accuracy per setting, ± std over seeds) and,
    for test-time runs, ``summary_tta.csv`` in ``folder``; returns the Markdown and every row (training rows
    first). ``notes`` receives one line per skipped folder."""
    train, tta, skipped = collect(folder)
    if notes is not None:
        notes.extend(skipped)
    rows, tta_rows = training_rows(train), test_time_rows(tta)
    if not rows and not tta_rows:
        return "", []
    table = summary_markdown(rows, tta_rows)
    write_text(os.path.join(folder, "summary.md"), table)
    if tta_rows:
        write_text(os.path.join(folder, "summary_tta.csv"), _csv(tta_rows))
    if rows:
        write_text(os.path.join(folder, "summary.csv"), _csv(rows))
        _chart(folder, rows, len(train))
    return table, rows + tta_rows


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mpl_text(value: Any) -> str:
    """``value`` as matplotlib text shown as written: ``$`` would start mathtext (and fail on a lone one); control
    characters as escapes."""
    return terminal(value).replace("$", r"\$")


def _chart(folder: str, rows: list[dict[str, Any]], runs: int) -> None:
    """One horizontal bar per row, its label (method, task, overrides) wrapped beside it: the plot keeps its size
    however long the overrides are."""
    import textwrap

    plt = pyplot()
    labels = [
        "\n".join(textwrap.wrap(mpl_text(f"{r['method']}  {r['source']}→{r['target']}  {r['overrides']}".strip()), 60))
        for r in rows
    ]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * lines + 0.1 * len(rows)), layout="constrained")
    err = [r["target_std"] or 0.0 for r in rows]
    ax.barh(range(len(rows)), [r["target_acc"] for r in rows], xerr=err, capsize=3, color="tab:blue")
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set(title=f"Target test accuracy, {runs} runs (± std over seeds)", xlabel="accuracy (%)", xlim=(0, 100))
    atomic_write(os.path.join(folder, "summary.png"), lambda fh: fig.savefig(fh, format="png", dpi=90))
    plt.close(fig)
