"""``report.html``: what a finished run did, on one page, and the summary of a sweep.

Every run ends by writing ``<run>/report.html`` and the figures it shows (``<run>/figures/*.png``), unless
``trainer.report=false``: training curves (losses, source/target accuracy, label-free validator scores, the
reported epoch marked), per-class accuracy, the confusion matrix, a 2-D PCA of the bottleneck features coloured
by domain and by class, and a reliability diagram with its expected calibration error. Target labels appear here
for analysis only: nothing in a report chooses anything. ``da report RUN`` writes it again for a finished run
(its dataset must be readable: the figures need the test images); ``da report SWEEP`` summarises every run under
a folder (``summary.md``, ``summary.csv``, ``summary.png``), as a ``-m`` sweep does when it ends.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback as HydraCallback

from da.runfolder import atomic_write, write_text

FIGURES = "figures"
REPORT = "report.html"
ECE_BINS = 15  # Guo et al., "On Calibration of Modern Neural Networks", arXiv 1706.04599 (M = 15 bins)
EMBEDDING_POINTS = 500  # per domain: the PCA and the scatter stay well under a second
SUMMARY_KEYS = ("dataset", "source", "target", "method", "backbone")


@dataclass
class TestPredictions:
    """What the figures read: the target test split's logits (N, K), labels (N,) and features (N, D); the source
    test split's features and labels when the method used source data."""

    logits_t: np.ndarray
    labels_t: np.ndarray
    features_t: np.ndarray
    features_s: np.ndarray | None = None
    labels_s: np.ndarray | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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


def write_report(run_dir: str, results: dict[str, Any], preds: TestPredictions, class_names: list[str]) -> str:
    """Write ``<run_dir>/figures/*.png`` and ``<run_dir>/report.html``; return the page's path."""
    plt = _plt()
    start, cpu = time.perf_counter(), time.process_time()
    folder = os.path.join(run_dir, FIGURES)
    os.makedirs(folder, exist_ok=True)
    rows = read_log(run_dir)
    selection = results.get("selection") or {}
    chosen = selection.get("epoch")
    probs = softmax(preds.logits_t.astype(np.float64))
    pred = probs.argmax(axis=1)
    ece, _ = calibration(probs, preds.labels_t)
    task = f"{results.get('dataset')} {results.get('source')} → {results.get('target')}"
    title = f"{results.get('method')} on {task}"
    figures = [
        ("curves", "Training curves", _curves(plt, rows, chosen, title)),
        ("per_class", "Per-class accuracy (target test)", _per_class(plt, preds, pred, class_names, title)),
        ("confusion", "Confusion matrix (target test)", _confusion(plt, preds, pred, class_names, title)),
        ("embedding", "Feature embedding (PCA)", _embedding(plt, preds, class_names, title)),
        ("reliability", "Reliability diagram (target test)", _reliability(plt, probs, preds.labels_t, ece, title)),
    ]
    shown = []
    for name, caption, fig in figures:
        if fig is None:
            continue
        path = os.path.join(folder, f"{name}.png")
        atomic_write(path, lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=80))
        plt.close(fig)
        shown.append((f"{FIGURES}/{name}.png", caption))
    page = _page(results, shown, ece, title, (time.perf_counter() - start, time.process_time() - cpu))
    path = os.path.join(run_dir, REPORT)
    write_text(path, page)
    return path


def _mark(ax, chosen: int | None) -> None:
    if chosen is not None:
        ax.axvline(chosen, color="black", linestyle="--", linewidth=1, label=f"reported epoch {chosen}")


def _curves(plt, rows: list[dict[str, float]], chosen: int | None, title: str):
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    keys = list(rows[0])
    losses = [k for k in keys if k in ("loss", "cls", "transfer") or k.endswith("_loss")]
    accs = [k for k in ("source_acc", "target_acc", "val_acc") if k in keys]
    scores = [k for k in keys if k.endswith("_score")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for k in losses:
        axes[0].plot(epochs, [r[k] for r in rows], marker=".", label=k)
    axes[0].set(title="Training losses", xlabel="epoch", ylabel="loss (epoch mean)")

    def evaluated(key: str) -> tuple[np.ndarray, np.ndarray]:
        """The epochs that have ``key`` (trainer.eval_every > 1 leaves the others empty) and its values there."""
        v = np.asarray([r[key] for r in rows], dtype=np.float64)
        keep = np.isfinite(v)
        return np.asarray(epochs)[keep], v[keep]

    for k in accs:
        x, v = evaluated(k)
        axes[1].plot(x, 100 * v, marker=".", label=k.replace("_", " "))
    axes[1].set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for k in scores:  # each validator on its own scale: min-max over the epochs
        x, v = evaluated(k)
        span = v.max() - v.min() if len(v) else 0.0
        axes[2].plot(x, (v - v.min()) / span if span > 0 else np.zeros_like(v), label=k[: -len("_score")])
    axes[2].set(title="Label-free validators (each scaled to [0, 1])", xlabel="epoch", ylabel="score (scaled)")
    for ax in axes:
        _mark(ax, chosen)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    return fig


def _per_class(plt, preds: TestPredictions, pred: np.ndarray, names: list[str], title: str):
    k = len(names)
    cm = confusion(pred, preds.labels_t, k)
    support = cm.sum(axis=1)
    acc = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    fig, ax = plt.subplots(figsize=(max(6, min(18, 0.35 * k + 2)), 3.8))
    ax.bar(range(k), 100 * acc, color="tab:blue")
    ax.axhline(100 * float((pred == preds.labels_t).mean()), color="tab:red", linestyle="--", label="overall")
    ax.set(title=f"{title}: per-class accuracy (target test)", xlabel="class", ylabel="accuracy (%)", ylim=(0, 100))
    ax.set_xticks(range(k), names if k <= 40 else [""] * k, rotation=90 if k > 12 else 0, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _confusion(plt, preds: TestPredictions, pred: np.ndarray, names: list[str], title: str):
    k = len(names)
    cm = confusion(pred, preds.labels_t, k)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = max(4.5, min(14, 0.4 * k + 2))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(100 * rates, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, label="% of the true class")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ticks = names if k <= 40 else [""] * k
    ax.set_xticks(range(k), ticks, rotation=90 if k > 12 else 0, fontsize=7)
    ax.set_yticks(range(k), ticks, fontsize=7)
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
    if preds.features_s is not None and preds.labels_s is not None:
        f_s, y_s = sample(preds.features_s, preds.labels_s)
        parts.insert(0, f_s), domains.insert(0, np.zeros(len(f_s))), labels.insert(0, y_s)
    z = pca_2d(np.concatenate(parts).astype(np.float64))
    domain, label = np.concatenate(domains), np.concatenate(labels)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for d, name, colour in ((0, "source test", "tab:blue"), (1, "target test", "tab:orange")):
        mask = domain == d
        if mask.any():
            axes[0].scatter(z[mask, 0], z[mask, 1], s=6, alpha=0.6, c=colour, label=name)
    axes[0].set(title="coloured by domain", xlabel="PC 1", ylabel="PC 2")
    axes[0].legend(fontsize=7, markerscale=2)
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20" if len(names) <= 20 else "nipy_spectral")
    sc = axes[1].scatter(z[:, 0], z[:, 1], s=6, alpha=0.6, c=label, cmap=cmap, vmin=0, vmax=max(len(names) - 1, 1))
    axes[1].set(title="coloured by class", xlabel="PC 1", ylabel="PC 2")
    if len(names) <= 20:
        handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=cmap(k / max(len(names) - 1, 1)), label=n)
            for k, n in enumerate(names)
        ]
        axes[1].legend(handles=handles, fontsize=6, loc="best", ncol=2)
    else:
        fig.colorbar(sc, ax=axes[1], label="class index")
    n_s = int((domain == 0).sum())
    fig.suptitle(f"{title}: bottleneck features, first two principal components ({n_s} source, {len(f_t)} target)")
    fig.tight_layout()
    return fig


def _reliability(plt, probs: np.ndarray, labels: np.ndarray, ece: float, title: str):
    _, table = calibration(probs, labels)
    fig, ax = plt.subplots(figsize=(5, 5))
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
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def summary_rows(results: dict[str, Any], ece: float | None = None) -> list[tuple[str, str]]:
    """The facts at the top of a report: task, method, what was reported and how well it did."""
    sel = results.get("selection") or {}
    rule = sel.get("rule", "last")
    chosen = f"epoch {sel.get('epoch')} of {results.get('epochs')} ({rule})"
    if rule not in ("last", None) and sel.get("score") is not None:
        chosen += f", score {sel['score']:.4g}"
    splits = results.get("splits") or {}
    rows = [
        ("task", f"{results.get('dataset')}: {results.get('source')} → {results.get('target')}"),
        ("method", str(results.get("method"))),
        ("backbone", str(results.get("backbone"))),
        ("seed", str(results.get("seed"))),
        ("reported weights", chosen),
        (f"target test accuracy ({splits.get('target_test', '?')} images)", _pct(results.get("target_acc"))),
        (source_acc_name(results), _pct(results.get("source_acc"))),
        (
            "training",
            f"{results.get('steps')} steps, {results.get('train_seconds', 0):.0f} s, "
            f"{results.get('precision')} on {results.get('device')}",
        ),  # fmt: skip
    ]
    if ece is not None:
        rows.append(("expected calibration error (target test)", _pct(ece)))
    if results.get("collapse"):
        rows.append(("collapse warning", json.dumps(results["collapse"])))
    return rows


def source_acc_name(results: dict[str, Any]) -> str:
    """What results.json's ``source_acc`` measured: the held-out source test split, or (inductive runs, whose
    source is the labelled target budget) the labelled training images."""
    if results.get("budget"):
        return "accuracy on the labelled training images"
    return "source test accuracy"


def _page(
    results: dict[str, Any], figures: list[tuple[str, str]], ece: float, title: str, seconds: tuple[float, float]
) -> str:
    e = html.escape
    facts = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(results, ece))
    imgs = "\n".join(
        f'<figure><img src="{e(src)}" alt="{e(cap)}"><figcaption>{e(cap)}</figcaption></figure>' for src, cap in figures
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse}}
th,td{{text-align:left;padding:2px 12px;border-bottom:1px solid #ddd}}img{{max-width:100%}}
figure{{display:inline-block;vertical-align:top;margin:1em 1.5em 1em 0}}figcaption{{color:#555}}</style></head>
<body><h1>{e(title)}</h1>
<table>{facts}</table>
<p>Target labels are used on this page for analysis only; the reported weights were chosen as stated above.
Files: <a href="results.json">results.json</a>, <a href="log.csv">log.csv</a>, <a href="config.yaml">config.yaml</a>.
</p>
{imgs}
<p><small>written by da.report in {seconds[0]:.1f} s ({seconds[1]:.1f} s of CPU time)</small></p>
</body></html>
"""


# ---------------------------------------------------------------- sweeps


def find_runs(folder: str) -> list[str]:
    """Every finished run folder (holding results.json) under ``folder``, its own source stages excepted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in ("source_stage", FIGURES, ".hydra"))
        if "results.json" in files:
            found.append(root)
    return found


def summarise(folder: str) -> list[dict[str, Any]]:
    """One row per (dataset, source, target, method, backbone) of the runs under ``folder``: the number of runs
    (seeds), target accuracy mean and standard deviation (%) and the source accuracy's mean."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in find_runs(folder):
        try:
            with open(os.path.join(run, "results.json")) as fh:
                r = json.load(fh)
        except (OSError, ValueError):
            continue
        groups.setdefault(tuple(r.get(k) for k in SUMMARY_KEYS), []).append(r)
    rows = []
    for key, runs in sorted(groups.items(), key=lambda kv: tuple(str(v) for v in kv[0])):
        t = np.asarray([100 * r["target_acc"] for r in runs])
        s = [100 * r["source_acc"] for r in runs if r.get("source_acc") is not None]
        rows.append(
            {
                **dict(zip(SUMMARY_KEYS, key)),
                "runs": len(runs),
                "seeds": ",".join(str(r.get("seed")) for r in sorted(runs, key=lambda r: r.get("seed", 0))),
                "epochs": ",".join(sorted({str(r.get("epochs")) for r in runs})),
                "target_acc": round(float(t.mean()), 2),
                "target_std": round(float(t.std(ddof=1)), 2) if len(t) > 1 else None,
                "source_acc": round(float(np.mean(s)), 2) if s else None,
            }
        )
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    head = "| task | method | backbone | runs (seeds) | epochs | target acc (%) | source acc (%) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = f"{r['target_acc']:.1f}" + (f" ± {r['target_std']:.1f}" if r["target_std"] is not None else "")
        src = "n/a" if r["source_acc"] is None else f"{r['source_acc']:.1f}"
        task = f"{r['dataset']} {r['source']}→{r['target']}"
        lines.append(
            f"| {task} | {r['method']} | {r['backbone']} | {r['runs']} ({r['seeds']}) | {r['epochs']} | {acc} | {src} |"
        )
    return "\n".join(lines) + "\n"


def write_summary(folder: str) -> tuple[str, list[dict[str, Any]]]:
    """``summary.md``, ``summary.csv`` and ``summary.png`` (target accuracy per method and task, ± std over
    seeds) in ``folder``; returns the Markdown table and the rows."""
    rows = summarise(folder)
    table = summary_markdown(rows)
    write_text(os.path.join(folder, "summary.md"), table)
    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(os.path.join(folder, "summary.csv"), buf.getvalue())
        plt = _plt()
        labels = [f"{r['method']}\n{r['source']}→{r['target']}" for r in rows]
        fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 4))
        err = [r["target_std"] or 0.0 for r in rows]
        ax.bar(range(len(rows)), [r["target_acc"] for r in rows], yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=45 if len(rows) > 8 else 0)
        ax.set(title=f"Target test accuracy, {len(find_runs(folder))} runs (± std over seeds)", ylabel="accuracy (%)")
        fig.tight_layout()
        atomic_write(os.path.join(folder, "summary.png"), lambda fh: fig.savefig(fh, format="png", dpi=90))
        plt.close(fig)
    return table, rows


class SweepSummary(HydraCallback):
    """A Hydra callback (``hydra.callbacks``): when a ``-m`` sweep ends, print the summary of its runs and write
    summary.md / summary.csv / summary.png into the sweep's folder. ``da.run`` adds it to every sweep."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        folder = str(config.hydra.sweep.dir)
        if not os.path.isdir(folder):
            return
        table, rows = write_summary(folder)
        if rows:
            print(f"\n{table}summary of {sum(r['runs'] for r in rows)} runs: {os.path.join(folder, 'summary.md')}")
