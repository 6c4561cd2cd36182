"""Figures and feature analyses for finished runs: accuracy bars, training curves, t-SNE, proxy A-distance.

Method, domain and panel names reach matplotlib through :func:`da.summary.mpl_text` (a ``$`` would start mathtext).
"""

from __future__ import annotations

import csv
import os
from typing import Any

import numpy as np
import torch

from da.build import load_run
from da.data.base import Task
from da.evaluate import predict
from da.methods import Method
from da.summary import mpl_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def restore(run_dir: str, device: str = "cpu", tasks: dict | None = None) -> tuple[Method, Task]:
    """A finished run's method (its reported weights, model.pt, through :func:`da.build.load_run`) and its task.

    ``tasks`` caches built tasks across calls, keyed by (dataset config, seed): runs of one task share it.
    """
    run = load_run(run_dir, device, tasks=tasks if tasks is not None else {})
    return run.method, run.task


def domain_features(method: Method, task: Task, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Bottleneck features of the source and target test splits: (N_s, D), (N_t, D)."""
    dev = torch.device(device)
    f_s = predict(method, task.source_test, dev).features.numpy()
    f_t = predict(method, task.target_test, dev).features.numpy()
    return f_s, f_t


def proxy_a_distance(f_s: np.ndarray, f_t: np.ndarray, seed: int = 0) -> float:
    """Proxy A-distance 2(1 - 2ε) (Ben-David et al., NeurIPS 2006; Ganin et al. arXiv 1505.07818, sec. 5.1).

    ε is the test error of a linear classifier told to separate source from target features, trained on a
    random half of the pooled features and tested on the other half (domain labels only, no class labels).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    n = min(len(f_s), len(f_t))
    rng = np.random.default_rng(seed)
    x = np.concatenate([f_s[rng.permutation(len(f_s))[:n]], f_t[rng.permutation(len(f_t))[:n]]])
    y = np.concatenate([np.zeros(n), np.ones(n)])
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.5, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(x_tr), y_tr)
    err = 1.0 - clf.score(scaler.transform(x_te), y_te)
    return float(2.0 * (1.0 - 2.0 * err))


def accuracy_bars(results: list[dict[str, Any]], path: str, order: list[str] | None = None) -> str:
    """Target accuracy per method (and task), mean with ± std error bars over seeds."""
    import pandas as pd

    plt, sns = _plt()
    df = pd.DataFrame(
        {
            "method": mpl_text(r["method"]),
            "task": mpl_text(f"{r['source']}→{r['target']}"),
            "target accuracy (%)": 100 * r["target_acc"],
        }
        for r in results
    )
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * df["method"].nunique() + 2), 3.2))
    order = [mpl_text(m) for m in order] if order else None
    sns.barplot(df, x="method", y="target accuracy (%)", hue="task", order=order, errorbar="sd", ax=ax, capsize=0.1)
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=35)
    ax.set_title("Target test accuracy per method (mean ± std over seeds)")
    if df["task"].nunique() == 1:
        ax.get_legend().remove()
    return _save(fig, path)


def training_curves(run_dirs: dict[str, list[str]], path: str, metric: str = "target_acc") -> str:
    """``metric`` from each run's log.csv against the epoch, mean and ± std band over seeds, one line per method."""
    import pandas as pd

    plt, sns = _plt()
    frames = []
    for method, dirs in run_dirs.items():
        for d in dirs:
            with open(os.path.join(d, "log.csv")) as fh:
                for row in csv.DictReader(fh):
                    if row.get(metric):
                        value = float(row[metric]) * (100 if metric.endswith("_acc") else 1)  # accuracies in %
                        frames.append({"method": mpl_text(method), "epoch": int(row["epoch"]), metric: value})
    df = pd.DataFrame(frames)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.lineplot(df, x="epoch", y=metric, hue="method", errorbar="sd", ax=ax)
    label = metric.replace("_acc", " accuracy (%)").replace("_", " ")
    ax.set_ylabel(label)
    ax.set_title(f"{label[0].upper() + label[1:]} per epoch (mean ± std over seeds; curves only, chooses nothing)")
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def tsne_panels(
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str,
    seed: int = 0,
    n: int = 400,
    points_csv: str | None = None,
) -> list[str]:
    """One t-SNE panel per entry (e.g. before / after adaptation), source and target points coloured by domain.

    The 2-D points are also written to ``points_csv`` (panel, domain, x, y) so the figure can be redrawn
    without the features (:func:`tsne_from_points`).
    """
    import pandas as pd
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(seed)
    frames = []
    for title, (f_s, f_t) in panels.items():
        f_s = f_s[rng.permutation(len(f_s))[:n]]
        f_t = f_t[rng.permutation(len(f_t))[:n]]
        emb = TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(
            np.concatenate([f_s, f_t])
        )
        domain = ["source"] * len(f_s) + ["target"] * len(f_t)
        frames.append(pd.DataFrame({"panel": title, "domain": domain, "x": emb[:, 0], "y": emb[:, 1]}))
    points = pd.concat(frames)
    written = []
    if points_csv:
        os.makedirs(os.path.dirname(points_csv) or ".", exist_ok=True)
        points.to_csv(points_csv, index=False, float_format="%.4f")
        written.append(points_csv)
    return [*written, _draw_tsne(points, path)]


def tsne_from_points(points_csv: str, path: str) -> str:
    import pandas as pd

    return _draw_tsne(pd.read_csv(points_csv), path)


def _draw_tsne(points, path: str) -> str:
    plt, _ = _plt()
    titles = list(dict.fromkeys(points["panel"]))
    fig, axes = plt.subplots(1, len(titles), figsize=(4.2 * len(titles), 4.0), squeeze=False)
    for ax, title in zip(axes[0], titles):
        for domain, colour in (("source", "tab:blue"), ("target", "tab:red")):
            sel = points[(points["panel"] == title) & (points["domain"] == domain)]
            ax.scatter(sel["x"], sel["y"], s=4, alpha=0.6, label=domain, c=colour)
        ax.set_title(mpl_text(title))
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(markerscale=3)
    fig.suptitle("t-SNE of bottleneck features, source and target test images")
    return _save(fig, path)


def pad_bars(pads: dict[str, list[float]], path: str) -> str:
    """Proxy A-distance per method (lower = domains less separable), mean ± std over seeds."""
    import pandas as pd

    plt, sns = _plt()
    df = pd.DataFrame({"method": mpl_text(m), "proxy A-distance": v} for m, vals in pads.items() for v in vals)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(pads) + 2), 3.0))
    sns.barplot(df, x="method", y="proxy A-distance", errorbar="sd", ax=ax, capsize=0.1, color="tab:gray")
    ax.set_xlabel("")
    ax.tick_params(axis="x", rotation=35)
    ax.set_title("Proxy A-distance between source and target features (lower: less separable)")
    return _save(fig, path)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
