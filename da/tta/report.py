"""A test-time run's ``report.html``: its facts, the online error per domain and along the stream.

Written at the end of :func:`da.tta.run.fit_stream` (after results.json: a failure of the page costs the run
nothing) and again by ``da report RUN``; it reads the run's results.json record and its log.csv only.
"""

from __future__ import annotations

import csv
import html
import math
import os
import time
from typing import Any

import numpy as np

from da.report import REPORT, collapse_sentence, integer_ticks, page_html, pct, save_figures, try_write
from da.runfolder import write_text
from da.summary import mpl_text, pyplot


def write_page(run_dir: str, results: dict[str, Any]) -> str | None:
    """:func:`write_test_time_report`, or None with a warning when it fails (the run's results are written)."""
    return try_write(write_test_time_report, run_dir, results)


def write_test_time_report(run_dir: str, results: dict[str, Any]) -> str:
    """A test-time run's ``report.html``: the run's facts, its per-domain online error and the online-error
    curve of its log.csv (domain boundaries marked); returns the page's path."""
    plt = pyplot()
    start, cpu = time.perf_counter(), time.process_time()
    rows = _read_rows(os.path.join(run_dir, "log.csv"))
    title = f"{results.get('method')} on {results.get('data')} severity {results.get('severity')}"
    makers = [("online_error", "Online error along the stream", lambda: _stream_curve(plt, rows, mpl_text(title)))]
    shown, failed = save_figures(plt, run_dir, makers)
    per = results.get("per_domain_error") or {}
    table = "".join(
        f"<tr><td>{html.escape(str(d))}</td><td>{pct(v)}</td></tr>" for d, v in per.items() if not isinstance(v, dict)
    )
    body = f"<h2>Online error per domain</h2><table><tr><th>domain</th><th>error</th></tr>{table}</table>\n"
    note = "Labels are read after each prediction, to score it; the method never sees them."
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    page = page_html(title, facts(results), shown, failed, seconds, body, note)
    path = os.path.join(run_dir, REPORT)
    write_text(path, page)
    return path


def facts(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The facts at the top of a test-time run's page."""
    p = r.get("protocol") if isinstance(r.get("protocol"), dict) else {"name": r.get("protocol")}
    reset = "reset at each domain" if p.get("reset_each_domain") else "no reset"
    rows = [
        ("method", str(r.get("method"))),
        ("protocol", f"{p.get('name')} (batch {p.get('batch_size')}, {reset})"),
        ("data", f"{r.get('data')}, severity {r.get('severity')}"),
        ("seed", str(r.get("seed"))),
        ("mean error over domains", pct(r.get("mean_error"))),
        (f"online error ({r.get('samples')} samples, {r.get('batches')} batches)", pct(r.get("online_error"))),
        ("source model", f"{r.get('source_run')} ({r.get('dataset')}, {r.get('backbone')})"),
        ("source model's clean target accuracy", pct(r.get("source_target_acc"))),
        ("adaptation", f"{r.get('seconds')} s, {r.get('precision')} on {r.get('device')}"),
    ]  # fmt: skip
    if r.get("collapse"):
        rows.append(
            (
                "collapse warning",
                collapse_sentence(r["collapse"], "batch", (r.get("config") or {}).get("collapse_fraction")),
            )
        )
    return rows


def _read_rows(path: str) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _stream_curve(plt, rows: list[dict[str, str]], title: str):
    def num(v: Any) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    if not rows:
        return None
    x = np.asarray([num(r.get("batch")) for r in rows])
    fig, ax = plt.subplots(figsize=(12, 4.2))
    ax.plot(x, [100 * num(r.get("error")) for r in rows], color="tab:gray", alpha=0.5, linewidth=1, label="batch error")
    ax.plot(x, [100 * num(r.get("online_error")) for r in rows], color="tab:red", label="online error (cumulative)")
    starts = [i for i, r in enumerate(rows) if i == 0 or r.get("domain") != rows[i - 1].get("domain")]
    if 1 < len(starts) <= 30:  # the domains' names on a top axis, at the batch each begins
        for i in starts:
            ax.axvline(x[i], color="black", linewidth=0.5, alpha=0.4)
        top = ax.secondary_xaxis("top")
        top.set_xticks([x[i] for i in starts], [mpl_text(rows[i].get("domain")) for i in starts], rotation=90)
        top.tick_params(labelsize=8)
    integer_ticks(ax)
    ax.set(xlabel="batch", ylabel="error (%)", ylim=(0, 100))
    ax.legend(loc="best")  # the curves run along the top where the errors are high
    ax.set_title(f"{title}: online error along the stream")
    fig.tight_layout()
    return fig
