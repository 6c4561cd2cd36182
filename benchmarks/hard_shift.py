"""The hard embedded shift and the collapse monitor: ``python -m benchmarks.hard_shift [out=DIR] [stage=...]``.

The hard task is the embedded digits task the other way round, ``dataset.source=sklearn dataset.target=fonts``:
the scikit-learn handwritten digits as the small labelled source, the font renderings as the unlabelled target
(results.json ``splits`` gives the sizes). A source-only LeNet reaches about half of the target and puts about
half of the target into one class: confidently wrong on much of it.

Every variant below runs for each seed (a job whose results.json exists is skipped; runs go one after another).
The self-training variants start from the ``source_only`` run of the same seed. The report gives, per run, the
starting model's target accuracy (the ``init`` run's; ``scratch`` for methods that train from scratch), the
final accuracy, and whether the label-free collapse monitor flagged the run (results.json ``collapse``), and
per variant the mean over seeds. Target accuracies are read for the table only; nothing is chosen with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from benchmarks.suite import parse_options
from da.runfolder import read_json

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (0, 1, 2)
HARD = ("dataset.source=sklearn", "dataset.target=fonts")
INIT = "init={out}/sklearn_to_fonts/source_only/seed{seed}"
#: (folder under runs/, overrides); run in this order (the init runs first)
VARIANTS: list[tuple[str, tuple[str, ...]]] = [
    ("sklearn_to_fonts/source_only", ("method=source_only", *HARD)),
    ("fonts_to_fonts/source_only", ("method=source_only", "dataset.source=fonts", "dataset.target=fonts")),
    ("sklearn_to_fonts/fixmatch", ("method=fixmatch", *HARD, INIT)),
    ("sklearn_to_fonts/fixmatch_da", ("method=fixmatch", "method.distribution_alignment=true", *HARD, INIT)),
    ("sklearn_to_fonts/self_training", ("method=self_training", *HARD, INIT)),
    ("sklearn_to_fonts/mcc", ("method=mcc", *HARD)),
    ("sklearn_to_fonts/adamatch", ("method=adamatch", *HARD)),
    ("fonts_to_sklearn/adamatch", ("method=adamatch",)),
    ("sklearn_to_fonts/fixmatch_flex", ("method=fixmatch", "method.class_thresholds=true", *HARD, INIT)),
    ("sklearn_to_fonts/shot", ("method=shot", *HARD)),
    ("sklearn_to_fonts/mdd", ("method=mdd", *HARD)),
    ("sklearn_to_fonts/mcd", ("method=mcd", *HARD)),
    ("sklearn_to_fonts/nrc", ("method=nrc", *HARD)),
    ("sklearn_to_fonts/aad", ("method=aad", *HARD)),
    ("sklearn_to_fonts/cdan_sdat", ("method=cdan", "method.sdat_rho=0.02", *HARD)),  # SDAT: Office-Home rho
    ("sklearn_to_fonts/cdan_mic", ("method=cdan", "method.mic_weight=1.0", *HARD)),  # MIC's lambda (arXiv 2212.01322)
]


def run_dir(out: str, variant: str, seed: int) -> str:
    return os.path.join(out, variant, f"seed{seed}")


def sweep(out: str, extra: list[str]) -> int:
    launched = 0
    for seed in SEEDS:
        for variant, overrides in VARIANTS:
            folder = run_dir(out, variant, seed)
            if os.path.isfile(os.path.join(folder, "results.json")):
                continue
            args = [o.format(out=os.path.abspath(out), seed=seed) for o in overrides]
            cmd = [sys.executable, "-m", "da.run", *args, f"seed={seed}", "trainer.progress_bar=false", *extra]
            print(f"[{time.strftime('%H:%M:%S')}] {variant} seed {seed}", flush=True)
            if subprocess.run([*cmd, f"hydra.run.dir={folder}"]).returncode != 0:
                raise SystemExit(f"error: {variant} seed {seed} failed; finished runs are kept, rerun to resume")
            launched += 1
    return launched


def runs(out: str) -> list[dict]:
    """One row per finished run: variant, seed, start (init model's target acc or None), end, flagged."""
    rows = []
    for variant, _ in VARIANTS:
        for seed in SEEDS:
            r = read_json(os.path.join(run_dir(out, variant, seed), "results.json"))
            if r is None:
                continue
            start = None
            if r.get("init"):
                init = read_json(os.path.join(os.path.dirname(r["init"]), "results.json"))
                start = init["target_acc"] if init else None
            rows.append(
                {
                    "variant": variant,
                    "seed": seed,
                    "start": start,
                    "end": r["target_acc"],
                    "flagged": r.get("collapse") is not None,
                    "collapse": r.get("collapse"),
                }
            )
    return rows


def _pct(x: float | None) -> str:
    return "scratch" if x is None else f"{100 * x:.1f}"


def report(out: str) -> str:
    rows = runs(out)
    lines = [
        "Hard embedded shift (sklearn → fonts) and the collapse monitor; target test accuracy (%), LeNet, 20 epochs. "
        "`start`: the starting model's target accuracy (the init run's; `scratch` = trained from scratch). "
        "`flagged`: the label-free collapse monitor warned (results.json `collapse`).",
        "",
        "| variant | seeds | start | end | end − start | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for variant, _ in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        end = np.array([r["end"] for r in mine]) * 100
        starts = [r["start"] for r in mine]
        start = None if any(s is None for s in starts) else float(np.mean(starts))
        delta = "—" if start is None else f"{end.mean() - 100 * start:+.1f}"
        std = f" ± {end.std(ddof=1):.1f}" if len(end) > 1 else ""
        flagged = sum(r["flagged"] for r in mine)
        lines.append(
            f"| {variant} | {len(mine)} | {_pct(start)} | {end.mean():.1f}{std} | {delta} | {flagged}/{len(mine)} |"
        )
    lines += ["", "Per run: benchmarks/results/hard_shift/tables/hard_shift_runs.md."]
    per_run = [
        "Hard embedded shift, per run (target test accuracy, %; columns as in hard_shift.md).",
        "",
        "| variant | seed | start | end | fell > 10 points | flagged |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        fell = r["start"] is not None and r["end"] < r["start"] - 0.10
        per_run.append(
            f"| {r['variant']} | {r['seed']} | {_pct(r['start'])} | {100 * r['end']:.1f} | {'yes' if fell else 'no'} | "
            f"{'yes (epoch ' + str(r['collapse']['epoch']) + ')' if r['flagged'] else 'no'} |"
        )
    text = "\n".join(lines) + "\n"
    tables = os.path.join(os.path.dirname(out), "tables")
    os.makedirs(tables, exist_ok=True)
    with open(os.path.join(tables, "hard_shift.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(tables, "hard_shift_runs.md"), "w") as fh:
        fh.write("\n".join(per_run) + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv, ("out", "stage"))
    out = opts.get("out") or os.path.join(HERE, "results", "hard_shift", "runs")
    if opts.get("stage", "all") in ("all", "sweep"):
        sweep(out, extra)
    if opts.get("stage", "all") in ("all", "report"):
        print(report(out))


if __name__ == "__main__":
    main()
