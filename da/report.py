"""``report.html``: what a finished run did, on one page, and the summary of a sweep.

Every run ends by writing ``<run>/report.html`` and the figures it shows (``<run>/figures/*.png``), unless
``trainer.report=false``: training curves (losses, source/target accuracy, the reported epoch marked), one small
panel per label-free validator, per-class accuracy, the confusion matrix, a 2-D PCA of the bottleneck features
coloured by domain and by class, and a reliability diagram with its expected calibration error; beside the target
accuracy, the comparable source-only run's when the caller found one. Target labels appear here for analysis only:
nothing in a report chooses anything. Names reach matplotlib through :func:`da.summary.mpl_text` (a ``$`` would
start mathtext); a figure that fails is named on the page, not raised. ``da report RUN`` writes it again for a
finished run (its dataset must be readable: the figures need the test images); ``da report SWEEP`` summarises
every run under a folder (:mod:`da.summary`), as a ``-m`` sweep does when it ends.
"""

from __future__ import annotations

import csv
import html
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback as HydraCallback

from da.escape import terminal
from da.runfolder import atomic_write, write_text
from da.summary import mpl_text, pyplot, write_summary

log = logging.getLogger(__name__)

FIGURES = "figures"
REPORT = "report.html"
ECE_BINS = 15  # Guo et al., "On Calibration of Modern Neural Networks", arXiv 1706.04599 (M = 15 bins)
EMBEDDING_POINTS = 500  # per domain: the PCA and the scatter stay well under a second
FONTS = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9, "xtick.labelsize": 10,
         "ytick.labelsize": 10}  # fmt: skip


@dataclass
class TestPredictions:
    """What the figures read: the target test split's logits (N, K), labels (N,) and features (N, D); the source
    test split's features and labels when the method used source data."""

    logits_t: np.ndarray
    labels_t: np.ndarray
    features_t: np.ndarray
    features_s: np.ndarray | None = None
    labels_s: np.ndarray | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error (Guo et al. 2017, eq. 3) and the per-bin confidence/accuracy/count of the
    top-class probability over ``bins`` equal-width bins of (0, 1]."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece, table = 0.0, []
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        if n:
            ece += n / len(conf) * abs(correct[mask].mean() - conf[mask].mean())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf[mask].mean()) if n else math.nan,
                "accuracy": float(correct[mask].mean()) if n else math.nan,
            }
        )
    return float(ece), table


def confusion(pred: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of ``x`` (N, D) -> (N, 2)."""
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def read_log(run_dir: str) -> list[dict[str, float]]:
    """log.csv's rows as numbers (an empty cell is NaN)."""
    path = os.path.join(run_dir, "log.csv")
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def num(v: str) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return math.nan

    return [{k: num(v) for k, v in row.items()} for row in rows]


def write_report(
    run_dir: str,
    results: dict[str, Any],
    preds: TestPredictions,
    class_names: list[str],
    baseline: tuple[dict[str, Any], str] | None = None,
) -> str:
    """Write ``<run_dir>/figures/*.png`` and ``<run_dir>/report.html``; return the page's path. A figure that
    fails is left out and named on the page (the run's files are never at stake); ``baseline``: the comparable
    source-only run's results and folder (:func:`da.experiment.find_baseline`), shown beside the accuracy."""
    plt = pyplot()
    start, cpu = time.perf_counter(), time.process_time()
    rows = read_log(run_dir)
    chosen = (results.get("selection") or {}).get("epoch")
    probs = softmax(preds.logits_t.astype(np.float64))
    pred = probs.argmax(axis=1)
    ece, _ = calibration(probs, preds.labels_t)
    names = [mpl_text(n) for n in class_names]
    title = mpl_text(plain_title(results))
    makers = [
        ("curves", "Training curves and label-free validators", lambda: _curves(plt, rows, chosen, title)),
        ("per_class", "Per-class accuracy (target test)", lambda: _per_class(plt, preds, pred, names, title)),
        ("confusion", "Confusion matrix (target test)", lambda: _confusion(plt, preds, pred, names, title)),
        ("embedding", "Feature embedding (PCA)", lambda: _embedding(plt, preds, names, title)),
        ("reliability", "Reliability diagram (target test)", lambda: _reliability(plt, probs, preds, ece, title)),
    ]  # fmt: skip
    shown, failed = save_figures(plt, run_dir, makers)
    facts = summary_rows(results, ece, baseline, run_dir)
    page = page_html(
        plain_title(results), facts, shown, failed, (time.perf_counter() - start, time.process_time() - cpu)
    )
    path = os.path.join(run_dir, REPORT)
    write_text(path, page)
    return path


def try_write(write: Callable[..., str], *args: Any, **kwargs: Any) -> str | None:
    """``write(*args)`` (a page writer of this module), or None with a warning when it fails: a run's results
    are written whether or not its page could be."""
    try:
        return write(*args, **kwargs)
    except Exception as err:  # the page is a view of the run: no failure of it may cost the run
        log.warning("report.html not written: %s: %s", type(err).__name__, err)
        return None


def save_figures(plt, run_dir: str, makers: list[tuple[str, str, Callable]]) -> tuple[list, list[str]]:
    """Draw and save each figure (``name``, caption, maker returning a figure or (figure, caption) or None):
    (src, caption) of those written, and a line per figure that failed."""
    folder = os.path.join(run_dir, FIGURES)
    os.makedirs(folder, exist_ok=True)
    shown, failed = [], []
    for name, caption, make in makers:
        try:
            with plt.rc_context(FONTS):
                fig = make()
                if isinstance(fig, tuple):
                    fig, caption = fig
                if fig is None:
                    continue
                path = os.path.join(folder, f"{name}.png")
                atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=80))
        except Exception as err:  # one figure's failure leaves the page and the others
            failed.append(f"{caption}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        finally:
            plt.close("all")
        shown.append((f"{FIGURES}/{name}.png", caption))
    return shown, failed


def plain_title(results: dict[str, Any]) -> str:
    return f"{results.get('method')} on {results.get('dataset')} {results.get('source')} → {results.get('target')}"


def integer_ticks(ax, span: tuple[float, float] | None = None) -> None:
    """Whole-number ticks on the x axis (epochs, batches); ``span``: the x range every panel of a figure shows
    (one evaluated epoch alone would get fractional ticks around it)."""
    from matplotlib.ticker import MaxNLocator

    if span is not None and np.isfinite(span).all():
        pad = max(0.5, 0.03 * (span[1] - span[0]))
        ax.set_xlim(span[0] - pad, span[1] + pad)
    # min_n_ticks=1: with one whole number in view (one epoch) the default 2 falls back to fractional ticks
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _span(rows: list[dict[str, float]]) -> tuple[float, float]:
    epochs = [r["epoch"] for r in rows]
    return min(epochs), max(epochs)


def _mark(ax, chosen: int | None) -> None:
    if chosen is not None:
        ax.axvline(chosen, color="black", linestyle="--", linewidth=1, label=f"reported epoch {chosen}")


def _evaluated(rows: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """The epochs that have ``key`` (trainer.eval_every > 1 leaves the others empty) and its values there."""
    epochs = np.asarray([r["epoch"] for r in rows])
    v = np.asarray([r.get(key, math.nan) for r in rows], dtype=np.float64)
    keep = np.isfinite(v)
    return epochs[keep], v[keep]


def _curves(plt, rows: list[dict[str, float]], chosen: int | None, title: str):
    """Losses and accuracies per epoch, and below them one small panel per label-free validator (each on its own
    scale: the validators' values are not comparable with each other)."""
    if not rows:
        return None
    keys = list(rows[0])
    losses = [k for k in keys if k in ("loss", "cls", "transfer") or k.endswith("_loss")]
    accs = [k for k in ("source_acc", "target_acc", "val_acc") if k in keys]
    scores = [k for k in keys if k.endswith("_score")]
    cols = min(4, len(scores))
    n_rows = math.ceil(len(scores) / cols) if scores else 0
    fig = plt.figure(figsize=(13, 4.4 + 2.7 * n_rows), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.4, max(2.7 * n_rows, 0.01)]) if scores else (fig, None)
    axes = top.subplots(1, 2)
    for k in losses:
        x, v = _evaluated(rows, k)
        axes[0].plot(x, v, marker=".", label=k)
    axes[0].set(title="Training losses", xlabel="epoch", ylabel="loss (epoch mean)")
    for k in accs:
        x, v = _evaluated(rows, k)
        axes[1].plot(x, 100 * v, marker=".", label=k.replace("_", " "))
    axes[1].set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in axes:
        _mark(ax, chosen)
        integer_ticks(ax, _span(rows))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    top.suptitle(f"{title}: training curves")
    if bottom is not None:
        panels = bottom.subplots(n_rows, cols, squeeze=False)
        for ax, k in zip(panels.flat, scores):
            x, v = _evaluated(rows, k)
            ax.plot(x, v, marker=".", color="tab:green")
            _mark(ax, chosen)
            integer_ticks(ax, _span(rows))
            ax.set(title=mpl_text(k[: -len("_score")]), xlabel="epoch")
        for ax in list(panels.flat)[len(scores) :]:
            ax.set_visible(False)
        bottom.suptitle("Label-free validators, each on its own scale (higher = better; dashed: the reported epoch)")
    return fig


def _per_class(plt, preds: TestPredictions, pred: np.ndarray, names: list[str], title: str):
    k = len(names)
    cm = confusion(pred, preds.labels_t, k)
    support = cm.sum(axis=1)
    acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, min(18, 0.35 * k + 2)), 4.2))
    ax.bar(range(k), 100 * acc, color="tab:blue")
    ax.axhline(100 * float((pred == preds.labels_t).mean()), color="tab:red", linestyle="--", label="overall")
    ax.set(title=f"{title}: per-class accuracy (target test)", xlabel="class", ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_xticks(range(k), names if k <= 40 else [""] * k, rotation=90 if k > 12 else 0, fontsize=9 if k <= 20 else 8)
    ax.legend()
    fig.tight_layout()
    return fig


def _confusion(plt, preds: TestPredictions, pred: np.ndarray, names: list[str], title: str):
    k = len(names)
    cm = confusion(pred, preds.labels_t, k)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(5, min(14, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, label="% of the true class")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ticks = names if k <= 40 else [""] * k
    small = 9 if k <= 20 else 8
    ax.set_xticks(range(k), ticks, rotation=90 if k > 12 else 0, fontsize=small)
    ax.set_yticks(range(k), ticks, fontsize=small)
    ax.set(
        title=f"{title}:\nconfusion matrix (target test; cells: counts)", xlabel="predicted class", ylabel="true class"
    )
    fig.tight_layout()
    return fig


def _embedding(plt, preds: TestPredictions, names: list[str], title: str):
    rng = np.random.default_rng(0)

    def sample(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = rng.permutation(len(f))[:EMBEDDING_POINTS]
        return f[keep], y[keep]

    f_t, y_t = sample(preds.features_t, preds.labels_t)
    parts, domains, labels = [f_t], [np.ones(len(f_t))], [y_t]
    counts = [f"{len(f_t)} of {len(preds.features_t)} target"]
    if preds.features_s is not None and preds.labels_s is not None:
        f_s, y_s = sample(preds.features_s, preds.labels_s)
        parts.insert(0, f_s), domains.insert(0, np.zeros(len(f_s))), labels.insert(0, y_s)
        counts.insert(0, f"{len(f_s)} of {len(preds.features_s)} source")
    z = pca_2d(np.concatenate(parts).astype(np.float64))
    domain, label = np.concatenate(domains), np.concatenate(labels)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for d, name, colour in ((0, "source test", "tab:blue"), (1, "target test", "tab:orange")):
        mask = domain == d
        if mask.any():
            axes[0].scatter(z[mask, 0], z[mask, 1], s=8, alpha=0.6, c=colour, label=name)
    axes[0].set(title="coloured by domain", xlabel="PC 1", ylabel="PC 2")
    axes[0].legend(markerscale=2)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "nipy_spectral")
    sc = axes[1].scatter(z[:, 0], z[:, 1], s=8, alpha=0.6, c=label, cmap=cmap, vmin=0, vmax=max(len(names) - 1, 1))
    axes[1].set(title="coloured by class", xlabel="PC 1", ylabel="PC 2")
    if len(names) <= 20:
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=cmap(k / max(len(names) - 1, 1)), label=n)
            for k, n in enumerate(names)
        ]
        axes[1].legend(
            handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(names) <= 10 else 2
        )
    else:
        fig.colorbar(sc, ax=axes[1], label="class index")
    sampled = " and ".join(counts)
    fig.suptitle(f"{title}: bottleneck features, first two principal components")
    fig.tight_layout()
    return fig, f"Feature embedding (PCA) of {sampled} test images (a random sample of at most {EMBEDDING_POINTS} each)"


def _reliability(plt, probs: np.ndarray, preds: TestPredictions, ece: float, title: str):
    _, table = calibration(probs, preds.labels_t)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    centres = [(b["low"] + b["high"]) / 2 for b in table]
    width = 1.0 / len(table)
    acc = [0.0 if math.isnan(b["accuracy"]) else b["accuracy"] for b in table]
    ax.bar(centres, acc, width=width, edgecolor="black", color="tab:blue", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(
        title=f"{title}\nreliability (target test), ECE {100 * ece:.1f}%",
        xlabel="confidence (top-class probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def summary_rows(
    results: dict[str, Any],
    ece: float | None = None,
    baseline: tuple[dict[str, Any], str] | None = None,
    run_dir: str | None = None,
) -> list[tuple[str, str]]:
    """The facts at the top of a report: task, method, what was reported and how well it did, beside the
    comparable source-only run's target accuracy when ``baseline`` holds one."""
    sel = results.get("selection") or {}
    rule = sel.get("rule", "last")
    chosen = f"epoch {sel.get('epoch')} of {results.get('epochs')} ({rule})"
    if rule not in ("last", None) and isinstance(sel.get("score"), (int, float)):
        chosen += f", score {sel['score']:.4g}"
    splits = results.get("splits") or {}
    seconds = results.get("train_seconds")
    rows = [
        ("task", f"{results.get('dataset')}: {results.get('source')} → {results.get('target')}"),
        ("method", str(results.get("method"))),
        ("backbone", str(results.get("backbone"))),
        ("seed", str(results.get("seed"))),
        ("reported weights", chosen),
        (f"target test accuracy ({splits.get('target_test', '?')} images)", pct(results.get("target_acc"))),
    ]
    if baseline is not None:
        other, folder = baseline
        where = os.path.relpath(folder, run_dir) if run_dir else folder
        rows.append(("source-only baseline (same task, backbone, seed)", f"{pct(other.get('target_acc'))} ({where})"))
    rows += [
        (source_acc_name(results), pct(results.get("source_acc"))),
        (
            "training",
            f"{results.get('steps')} steps, {seconds if isinstance(seconds, (int, float)) else 0:.0f} s, "
            f"{results.get('precision')} on {results.get('device')}",
        ),  # fmt: skip
    ]
    if ece is not None:
        rows.append(("expected calibration error (target test)", pct(ece)))
    if results.get("collapse"):
        fraction = ((results.get("config") or {}).get("trainer") or {}).get("collapse_fraction")
        rows.append(("collapse warning", collapse_sentence(results["collapse"], "epoch", fraction)))
    return rows


def collapse_sentence(c: Any, unit: str = "epoch", fraction: float | None = None) -> str:
    """The collapse monitor's record (:mod:`da.monitor`) as a sentence."""
    if not isinstance(c, dict):
        return str(c)

    def num(key: str, fmt: str) -> str:
        v = c.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "?"

    below = f"below {100 * fraction:.0f}% of its peak" if isinstance(fraction, (int, float)) else "well below its peak"
    return (
        f"at {unit} {c.get('epoch', '?')} the target predictions' class marginal had entropy "
        f"{num('marginal_entropy', '.2f')}, {below} ({num('reference_entropy', '.2f')}); "
        f"{100 * c['largest_class_fraction'] if isinstance(c.get('largest_class_fraction'), (int, float)) else 0:.0f}% "
        "of target images went to one class. A label-free signal that the model may be confirming its own mistakes."
    )


def source_acc_name(results: dict[str, Any]) -> str:
    """What results.json's ``source_acc`` measured: the held-out source test split, or (inductive runs, whose
    source is the labelled target budget) the labelled training images."""
    if results.get("budget"):
        return "accuracy on the labelled training images"
    return "source test accuracy"


def page_html(
    title: str,
    facts: list[tuple[str, str]],
    figures: list[tuple[str, str]],
    failed: list[str],
    seconds: tuple[float, float],
    body: str = "",
    note: str = "Target labels are used on this page for analysis only; the reported weights were chosen as stated "
    "above.",
) -> str:
    e = html.escape
    rows = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts)
    imgs = "\n".join(
        f'<figure><img src="{e(src)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>' for src, cap in figures
    )
    lost = "".join(f"<li>{e(line)}</li>" for line in failed)
    lost = f"<p>Figures that could not be drawn:</p><ul>{lost}</ul>" if lost else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}
th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}img{{max-width:100%}}
figure{{display:inline-block;vertical-align:top;margin:1em 1.5em 1em 0}}figcaption{{color:#555}}</style></head>
<body><h1>{e(title)}</h1>
<table>{rows}</table>
<p>{e(note)}
Files: <a href="results.json">results.json</a>, <a href="log.csv">log.csv</a>, <a href="config.yaml">config.yaml</a>.
</p>
{body}{imgs}
{lost}<p><small>written by da.report in {seconds[0]:.1f} s ({seconds[1]:.1f} s of CPU time)</small></p>
</body></html>
"""


# ---------------------------------------------------------------- sweeps


class SweepSummary(HydraCallback):
    """A Hydra callback (``hydra.callbacks``): when a ``-m`` sweep ends, print the summary of its runs and write
    summary.md / summary.csv / summary.png into the sweep's folder (:mod:`da.summary`). ``da.run`` adds it to every
    sweep."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        folder = str(config.hydra.sweep.dir)
        if not os.path.isdir(folder):
            return
        table, rows = write_summary(folder)
        if rows:
            where = terminal(os.path.join(folder, "summary.md"))
            print(f"\n{table}summary of {sum(r['runs'] for r in rows)} runs: {where}")
