"""Run a benchmark suite and regenerate its tables and figures: ``python -m benchmarks.run suite=digits``.

Options (``key=value``): ``suite`` (a name in benchmarks/suites/ or a YAML path), ``out`` (default
``benchmarks/results/<suite>``), ``stage`` = ``all`` | ``sweep`` | ``report``; anything after ``--`` is passed to
every job as a ``da.run`` override (e.g. ``-- trainer.epochs=1`` for a smoke run).

The sweep goes through Hydra multirun (``python -m da.run -m ...``), one run folder per job under
``<out>/runs/<source>_to_<target>/<method>/seed<seed>``. A job whose results.json exists is skipped, so an
interrupted sweep resumes where it stopped (and a job interrupted mid-way resumes from its checkpoint).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

from benchmarks.report import report
from benchmarks.suite import HERE, SUBDIR, Suite, SuiteError, job_dir, load_suite, task_key


def missing_jobs(suite: Suite, out: str) -> dict[tuple[str, tuple[int, ...]], list[str]]:
    """Jobs without results.json, grouped as (task, seeds) -> methods so each group is one multirun."""
    groups: dict[tuple[str, tuple[int, ...]], list[str]] = defaultdict(list)
    for task in suite.tasks:
        for method in suite.methods:
            seeds = tuple(
                s
                for s in suite.seeds
                if not os.path.isfile(os.path.join(job_dir(out, task, method, s), "results.json"))
            )
            if seeds:
                groups[(task_key(task), seeds)].append(method)
    return groups


def sweep(suite: Suite, out: str, extra: list[str]) -> int:
    """Run every missing job through Hydra multirun; returns the number of jobs launched."""
    groups = missing_jobs(suite, out)
    tasks = {task_key(t): t for t in suite.tasks}
    total = sum(len(seeds) * len(methods) for (_, seeds), methods in groups.items())
    done_before = len(suite.tasks) * len(suite.methods) * len(suite.seeds) - total
    print(f"suite {suite.name}: {done_before} jobs done, {total} to run", flush=True)
    for (key, seeds), methods in groups.items():
        # methods with their own overrides run in their own multirun
        plain = [m for m in methods if m not in suite.method_overrides]
        batches = ([(plain, [])] if plain else []) + [
            ([m], suite.method_overrides[m]) for m in methods if m in suite.method_overrides
        ]
        for batch, own in batches:
            task = tasks[key]
            cmd = [
                sys.executable,
                "-m",
                "da.run",
                "-m",
                f"dataset={task['dataset']}",
                f"dataset.source={task['source']}",
                f"dataset.target={task['target']}",
                f"method={','.join(batch)}",
                f"seed={','.join(map(str, seeds))}",
                "trainer.progress_bar=false",
                *suite.overrides,
                *own,
                *extra,
                f"hydra.sweep.dir={os.path.join(out, 'runs')}",
                f"hydra.sweep.subdir={SUBDIR}",
            ]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {', '.join(batch)} x seeds {list(seeds)}", flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0:
                raise SystemExit(
                    f"error: a job of {key} ({', '.join(batch)}) failed with exit code "
                    f"{proc.returncode}; finished jobs are kept, rerun the same command to resume"
                )
    return total


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    opts = {}
    for arg in argv:
        if "=" not in arg:
            raise SuiteError(f"expected key=value, got {arg!r} (keys: suite, out, stage)")
        key, value = arg.split("=", 1)
        if key not in ("suite", "out", "stage"):
            raise SuiteError(f"unknown option {key!r}; valid: suite, out, stage")
        opts[key] = value
    if "suite" not in opts:
        raise SuiteError("missing suite=<name>, e.g. suite=digits")
    if opts.get("stage", "all") not in ("all", "sweep", "report"):
        raise SuiteError(f"stage must be all, sweep or report, got {opts['stage']!r}")
    return opts, extra


def main(argv: list[str] | None = None) -> None:
    try:
        opts, extra = parse(sys.argv[1:] if argv is None else argv)
        suite = load_suite(opts["suite"])
    except SuiteError as err:
        raise SystemExit(f"error: {err}") from None
    out = opts.get("out") or os.path.join(HERE, "results", suite.name)
    stage = opts.get("stage", "all")
    start = time.perf_counter()
    if stage in ("all", "sweep"):
        sweep(suite, out, extra)
    if stage in ("all", "report"):
        written = report(suite, out)
        print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    print(f"suite {suite.name} finished in {time.perf_counter() - start:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
