"""The selection benchmark: how well does each label-free validator choose a configuration and a checkpoint?

``python -m benchmarks.selection [suite=digits_selection] [out=DIR] [stage=all|sweep|report] [eval_every=K]``
``[-- overrides]``

``eval_every=K`` reports the regret the validators would have if runs scored only every K-th epoch and the last
(``trainer.eval_every=K``): it reads the same runs (training does not change), writes ``<suite>_eval_every<K>.*``.

A selection suite (``benchmarks/suites/<name>.yaml``) gives, per method, a small grid of its main knobs and
which grid point is the method's default. Every (method, grid point, seed) is one ``da.run`` job of one Hydra
multirun per method (any Hydra launcher: add ``hydra/launcher=joblib hydra.launcher.n_jobs=2`` after ``--`` to
run jobs in parallel); a method whose jobs all have results.json is skipped. The report reads each job's
log.csv — one row per epoch, a checkpoint with its label-free scores (``<validator>_score``) and, for analysis
only, its target test accuracy — and gives per method × validator, averaged over seeds:

- ``picked``: target accuracy of the (grid point, epoch) with the best validator score — what a user without
  target labels would get by trusting that validator;
- ``default``: the default grid point's last epoch (what the package reports with no selection);
- ``oracle``: the best (grid point, epoch) by target test accuracy — not attainable without target labels;
- ``regret`` = oracle − picked;
- ``wsp``: the weighted Spearman correlation of validator score and target accuracy over all checkpoints
  (Musgrave, Belongie, Lim, arXiv 2208.07360: checkpoints weighted by their validator-score rank, normalised to
  [0, 1] and squared, so the top of the validator's ranking counts most; their powerful-benchmarker code uses
  power 2).

The validators choose; target accuracies are read only after the choice.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import yaml
from scipy.stats import rankdata

from benchmarks.suite import parse_options

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class SelectionSuite:
    name: str
    title: str
    seeds: list[int]
    task: dict
    grids: dict[str, dict[str, list]]  # method -> {override key: [values]}
    defaults: dict[str, dict[str, object]]  # method -> {override key: default value} (a grid point)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)


def load(name: str) -> SelectionSuite:
    path = name if name.endswith((".yaml", ".yml")) else os.path.join(HERE, "suites", f"{name}.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no selection suite {path}")
    with open(path) as fh:
        suite = SelectionSuite(**yaml.safe_load(fh))
    for method, grid in suite.grids.items():
        default = suite.defaults.get(method, {})
        if set(default) != set(grid) or any(default[k] not in grid[k] for k in grid):
            raise SystemExit(f"error: {path}: the default of {method} must be one point of its grid {grid}")
    return suite


def grid_points(grid: dict[str, list]) -> list[dict[str, object]]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def slug(point: dict[str, object]) -> str:
    return "_".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(point.items())) or "default"


def job_dir(out: str, method: str, point: dict[str, object], seed: int) -> str:
    return os.path.join(out, "runs", method, slug(point), f"seed{seed}")


def sweep(suite: SelectionSuite, out: str, extra: list[str]) -> int:
    """One Hydra multirun per method over its grid × the seeds with a missing job; returns the jobs missing
    before. A finished job in the multirun resumes from its checkpoint in a moment (nothing is retrained), and
    a method whose jobs all have results.json is skipped."""
    missing_total = 0
    for method, grid in suite.grids.items():
        missing = [
            (p, s)
            for p in grid_points(grid)
            for s in suite.seeds
            if not os.path.isfile(os.path.join(job_dir(out, method, p, s), "results.json"))
        ]
        if not missing:
            continue
        missing_total += len(missing)
        seeds = sorted({s for _, s in missing})
        keys = sorted(grid)
        subdir = "_".join(f"{k.split('.')[-1]}${{{k}}}" for k in keys) or "default"
        cmd = [
            sys.executable,
            "-m",
            "da.run",
            "-m",
            f"dataset={suite.task['dataset']}",
            f"dataset.source={suite.task['source']}",
            f"dataset.target={suite.task['target']}",
            f"method={method}",
            *(f"{k}={','.join(str(v) for v in grid[k])}" for k in keys),
            f"seed={','.join(map(str, seeds))}",
            "trainer.progress_bar=false",
            *suite.overrides,
            *(o.replace("{out}", os.path.abspath(out)) for o in suite.method_overrides.get(method, [])),
            *extra,
            f"hydra.sweep.dir={os.path.join(out, 'runs', method)}",
            f"hydra.sweep.subdir={subdir}/seed${{seed}}",
        ]
        print(f"[{time.strftime('%H:%M:%S')}] {method}: {len(missing)} missing jobs (grid {grid}, seeds {seeds})")
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"error: a job of {method} failed; finished jobs are kept, rerun the same command")
    return missing_total


def read_log(run_dir: str) -> list[dict[str, float]]:
    with open(os.path.join(run_dir, "log.csv")) as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def weighted_spearman(scores: np.ndarray, accuracies: np.ndarray, power: float = 2.0) -> float:
    """Spearman correlation with checkpoint weights (dense rank of the score / max rank) ** power."""
    ranks_w = rankdata(scores, method="dense").astype(float)
    w = (ranks_w / ranks_w.max()) ** power
    rs, ra = rankdata(scores), rankdata(accuracies)
    ms, ma = np.average(rs, weights=w), np.average(ra, weights=w)
    cov = np.average((rs - ms) * (ra - ma), weights=w)
    var = np.average((rs - ms) ** 2, weights=w) * np.average((ra - ma) ** 2, weights=w)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


def thin(rows: list[dict[str, float]], every: int) -> list[dict[str, float]]:
    """The rows as a run with ``trainer.eval_every=every`` scores them: validator scores only after every
    ``every``-th epoch and the last (training is the same: the other epochs' weights are only not scored)."""
    if every <= 1 or not rows:
        return rows
    last = max(r["epoch"] for r in rows)
    keep = lambda r: r["epoch"] % every == 0 or r["epoch"] == last  # noqa: E731
    return [r if keep(r) else {k: v for k, v in r.items() if not k.endswith("_score")} for r in rows]


def analyse(suite: SelectionSuite, out: str, every: int = 1) -> dict[str, dict]:
    """Per method: per validator the picked / default / oracle accuracies and regrets per seed, and wsp.
    ``every`` > 1: the validators choose among the epochs ``trainer.eval_every=every`` would evaluate (see
    :func:`thin`); the oracle still sees every logged epoch."""
    result: dict[str, dict] = {}
    for method, grid in suite.grids.items():
        per_seed: dict[int, list[tuple[str, dict[str, float]]]] = {}
        for seed in suite.seeds:
            rows = []
            for point in grid_points(grid):
                folder = job_dir(out, method, point, seed)
                if os.path.isfile(os.path.join(folder, "log.csv")):
                    rows += [(slug(point), r) for r in thin(read_log(folder), every)]
            if rows:
                per_seed[seed] = rows
        if not per_seed:
            continue
        validators = sorted(
            {k[: -len("_score")] for _, rows in per_seed.items() for _, r in rows for k in r if k.endswith("_score")}
        )
        default = slug(suite.defaults[method])
        out_m: dict[str, dict] = {
            "default": [],
            "oracle": [],
            "validators": {v: {"picked": [], "wsp": []} for v in validators},
        }
        for rows in per_seed.values():
            last = max((r for s, r in rows if s == default), key=lambda r: r["epoch"], default=None)
            out_m["default"].append(last["target_acc"] if last else float("nan"))
            out_m["oracle"].append(max(r["target_acc"] for _, r in rows if "target_acc" in r))
            for v in validators:
                scored = [
                    (r[f"{v}_score"], r["epoch"], r["target_acc"])
                    for _, r in rows
                    if np.isfinite(r.get(f"{v}_score", np.nan))
                ]
                if not scored:
                    continue
                pick = max(scored, key=lambda t: (t[0], t[1]))  # the validator chooses; ties: the later epoch
                out_m["validators"][v]["picked"].append(pick[2])
                s, a = np.array([t[0] for t in scored]), np.array([t[2] for t in scored])
                out_m["validators"][v]["wsp"].append(weighted_spearman(s, a))
        out_m["seeds"] = sorted(per_seed)
        out_m["checkpoints"] = int(np.mean([sum("target_acc" in r for _, r in rows) for rows in per_seed.values()]))
        result[method] = out_m
    return result


def _pm(values: list[float]) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return "n/a" if len(v) == 0 else f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def report(suite: SelectionSuite, out: str, every: int = 1) -> list[str]:
    """Write tables/<suite>.md and .csv (``every`` > 1: <suite>_eval_every<k>.*, see :func:`analyse`); return
    their paths."""
    data = analyse(suite, out, every)
    name = suite.name if every <= 1 else f"{suite.name}_eval_every{every}"
    folder = os.path.join(out, "tables")
    os.makedirs(folder, exist_ok=True)
    lines = [
        f"# {suite.title}",
        "",
        "Target test accuracy (%) of the configuration + checkpoint each label-free validator picks, mean ± std over "
        f"seeds {suite.seeds}; `default` = the method's default configuration, last epoch; `oracle` = best checkpoint "
        "by target test accuracy (analysis only: it needs target labels); regret = oracle − picked (points); "
        "wSp = weighted Spearman correlation of score and accuracy over all checkpoints (Musgrave et al., arXiv "
        "2208.07360). Grids: " + "; ".join(f"{m} {g}" for m, g in suite.grids.items()) + ".",
        "",
        "| method | validator | picked | default | oracle | regret | wSp |",
        "|---|---|---|---|---|---|---|",
    ]
    rows_csv = [["method", "validator", "picked_mean", "default_mean", "oracle_mean", "regret_mean", "wsp_mean"]]
    best_lines = []
    for method, m in data.items():
        regrets = {}
        for v, d in m["validators"].items():
            picked = np.asarray(d["picked"], dtype=float)
            regret = np.asarray(m["oracle"][: len(picked)], dtype=float) - picked
            regrets[v] = float(regret.mean())
            wsp = float(np.nanmean(d["wsp"])) if d["wsp"] else float("nan")
            lines.append(
                f"| {method} | {v} | {_pm(picked)} | {_pm(m['default'])} | {_pm(m['oracle'])} | "
                f"{100 * regret.mean():.1f} | {wsp:.2f} |"
            )
            rows_csv.append([method, v, picked.mean(), np.mean(m["default"]), np.mean(m["oracle"]), regret.mean(), wsp])
        if regrets:
            best = min(regrets, key=regrets.get)
            gain = np.mean(m["validators"][best]["picked"]) - np.mean(m["default"])
            best_lines.append(
                f"- {method}: smallest regret `{best}` ({100 * regrets[best]:.1f} points); picked − default "
                f"{100 * gain:+.1f} points"
            )
    lines += ["", "Smallest regret per method (the validator to trust on this task, as far as these runs go):", ""]
    lines += best_lines
    if every > 1:
        lines[0] += f" — validators scoring every {every}th epoch and the last (trainer.eval_every={every})"
    md = os.path.join(folder, f"{name}.md")
    with open(md, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    path_csv = os.path.join(folder, f"{name}.csv")
    with open(path_csv, "w", newline="") as fh:
        csv.writer(fh).writerows(rows_csv)
    with open(os.path.join(folder, f"{name}.json"), "w") as fh:
        json.dump(data, fh, indent=1, default=float)
    return [md, path_csv]


def main(argv: list[str] | None = None) -> None:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv, ("suite", "out", "stage", "eval_every"))
    suite = load(opts.get("suite", "digits_selection"))
    out = opts.get("out") or os.path.join(HERE, "results", suite.name)
    start = time.perf_counter()
    if opts.get("stage", "all") in ("all", "sweep"):
        sweep(suite, out, extra)
    if opts.get("stage", "all") in ("all", "report"):
        every = int(opts.get("eval_every", "1"))
        print("wrote " + ", ".join(os.path.relpath(p) for p in report(suite, out, every)))
    print(f"selection suite {suite.name} finished in {time.perf_counter() - start:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
