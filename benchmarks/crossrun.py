"""The cross-run selection benchmark: ``python -m benchmarks.crossrun [out=DIR] [stage=all|sweep|score|report]``.

Issue 24: a user trains several methods and settings on a new shift and must choose one without target labels.
On each embedded task — ``fonts_to_sklearn`` (the default task), ``sklearn_to_fonts`` (the reversed, hard task)
and ``fonts_to_sklearn_inverted`` (the target's intensities inverted, ``dataset.target=sklearn_inverted``) — and
each seed, every registered method (inductive ``finetune`` left out: it needs target labels) trains at each point
of a small grid (``trainer.lr``); that pool of runs is what every cross-run rule of :mod:`da.crossrun` chooses
from. Methods that start from a source model (``default_init = "source"``) start from the pool's ``source_only``
run of the same task and seed at the default learning rate.

Budget (2 CPU cores shared with other work, one job at a time, about an hour): LeNet, ``trainer.epochs=2``,
``trainer.steps_per_epoch=30`` (60 steps of 64 + 64 images), ``trainer.report=false``; everything else at the
package defaults, so the grid is the one point ``trainer.lr=0.01`` and the pool's variety comes from the 17
methods. A job of 3 epochs × 56 steps took 45 s (AdaMatch, under a load of 8 on 2 cores): 2 × 3 × 17 × 9 jobs of
that size would take hours. One Hydra multirun per
(grid point, task, scratch/initialised group) over methods × seeds; a finished job (results.json) is left out of
the next sweep, and a group whose jobs are all finished is skipped.

Stages: ``sweep`` trains the missing jobs; ``score`` reads every run's ``predictions.npz`` + label-free
results.json keys and writes ``<out>/scores.csv`` (one row per rule × run: the rule's score and rank); ``report``
reads ``scores.csv`` and, for analysis only, each run's ``target_acc`` and writes ``<out>/tables/crossrun.md``:
per rule the picked run's accuracy, source-only (the default lr), the oracle-best run, and regret = oracle −
picked, per task and seed. The rules choose; target accuracies are read only after the choice, by the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks.suite import parse_options

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "crossrun")
SEEDS = (0, 1, 2)
TASKS: dict[str, tuple[str, ...]] = {
    "fonts_to_sklearn": ("dataset=digits", "dataset.source=fonts", "dataset.target=sklearn"),
    "sklearn_to_fonts": ("dataset=digits", "dataset.source=sklearn", "dataset.target=fonts"),
    "fonts_to_sklearn_inverted": ("dataset=digits", "dataset.source=fonts", "dataset.target=sklearn_inverted"),
}
GRID = {"trainer.lr": (0.01,)}  # the package default; one point: the budget allows no more (see above)
BUDGET = ("trainer.epochs=2", "trainer.steps_per_epoch=30", "trainer.report=false", "trainer.progress_bar=false")
SKIP = {"finetune": "inductive: needs labelled target data"}


def method_groups() -> tuple[list[str], list[str]]:
    """(methods trained from scratch, methods that start from a source model), registry order."""
    from da.methods import METHODS

    scratch, init = [], []
    for name in METHODS.names():
        if name in SKIP:
            continue
        (init if getattr(METHODS.get(name), "default_init", None) == "source" else scratch).append(name)
    return scratch, init


def run_dir(out: str, task: str, method: str, lr: float, seed: int) -> str:
    return os.path.join(out, "runs", task, method, f"lr{lr}", f"seed{seed}")


def done(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "results.json"))


def sweep(out: str, extra: list[str]) -> int:
    scratch, init = method_groups()
    launched = 0
    for lr in GRID["trainer.lr"]:
        for task, overrides in TASKS.items():
            for group in (scratch, init):
                todo = [(m, s) for m in group for s in SEEDS if not done(run_dir(out, task, m, lr, s))]
                if not todo:
                    continue
                methods = [m for m in group if any(t[0] == m for t in todo)]
                seeds = sorted({s for _, s in todo})
                init_arg = []
                if group is init:
                    source = run_dir(os.path.abspath(out), task, "source_only", GRID["trainer.lr"][0], 0)
                    init_arg = [f"init={source[: -len('seed0')]}seed${{seed}}"]
                cmd = [
                    sys.executable, "-m", "da.run", "-m", *overrides,
                    f"method={','.join(methods)}", f"trainer.lr={lr}", f"seed={','.join(map(str, seeds))}",
                    *BUDGET, *init_arg, *extra,
                    f"hydra.sweep.dir={os.path.join(out, 'runs', task)}",
                    "hydra.sweep.subdir=${method.name}/lr${trainer.lr}/seed${seed}",
                ]  # fmt: skip
                print(f"[{time.strftime('%H:%M:%S')}] {task} lr={lr}: {len(todo)} jobs ({', '.join(methods)})")
                sys.stdout.flush()
                if subprocess.run(cmd).returncode != 0:
                    raise SystemExit(f"error: a job of {task} lr={lr} failed; finished jobs are kept, rerun")
                launched += len(todo)
    return launched


def main(argv: list[str] | None = None) -> int:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv, ("out", "stage"))
    out = opts.get("out", OUT)
    stage = opts.get("stage", "all")
    if stage in ("all", "sweep"):
        sweep(out, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
