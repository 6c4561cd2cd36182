"""Run a benchmark suite and regenerate its tables and figures: ``python -m benchmarks.run suite=digits``.

Options (``key=value``): ``suite`` (a name in benchmarks/suites/ or a YAML path), ``out`` (default
``benchmarks/results/<suite>``), ``stage`` = ``all`` | ``sweep`` | ``report``, ``threads`` (CPU threads of every
job, default 1 or ``$OMP_NUM_THREADS``); anything after ``--`` is passed to every job as a ``da.run`` override
(e.g. ``-- trainer.epochs=1`` for a smoke run, ``-- hydra/launcher=joblib hydra.launcher.n_jobs=2`` for two jobs at
a time, ``-- hydra/launcher=slurm`` for a SLURM cluster).

The sweep goes through Hydra multirun (``python -m da.run -m ...``), one run folder per job under
``<out>/runs/<source>_to_<target>/<method>/seed<seed>``. A job whose results.json exists is skipped, so an
interrupted sweep resumes where it stopped (and a job interrupted mid-way resumes from its checkpoint). The missing
jobs go to as few multiruns as possible (per task, one for every rectangle of methods x seeds; a method with its
own overrides alone), so that a parallel launcher always has jobs to run. Every job runs with the same number of
CPU threads whatever the launcher: PyTorch's CPU kernels sum in a thread-dependent order, so the numbers (and the
report) of a parallel sweep equal those of a sequential one. ``<out>/.lock`` keeps a second runner out of ``out``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

from benchmarks.report import report
from benchmarks.suite import HERE, SUBDIR, Suite, SuiteError, job_dir, load_suite, task_key
from da.errors import ConfigError
from da.runfolder import LOCK_NAME, RunLock

OPTIONS = ("suite", "out", "stage", "threads")
# the thread pools of PyTorch (OpenMP), NumPy / scikit-learn (OpenBLAS, MKL, ...): joblib's workers set the same list
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def missing_jobs(suite: Suite, out: str) -> dict[tuple[str, tuple[int, ...]], list[str]]:
    """Jobs without results.json, grouped as (task, missing seeds) -> methods (:func:`batches` plans the multiruns)."""
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


def batches(suite: Suite, out: str) -> list[tuple[dict, list[str], list[int], list[str]]]:
    """The jobs without results.json as few multiruns as possible: ``(task, methods, seeds, own overrides)``, each
    the full product methods x seeds. Per task, the methods without own overrides are grouped by their missing
    seeds, or the seeds by their missing methods, whichever gives fewer multiruns; a method with its own overrides
    is a multirun of its own."""
    found: list[tuple[dict, list[str], list[int], list[str]]] = []
    for task in suite.tasks:
        missing = {
            (m, s)
            for m in suite.methods
            for s in suite.seeds
            if not os.path.isfile(os.path.join(job_dir(out, task, m, s), "results.json"))
        }
        plain = [m for m in suite.methods if m not in suite.method_overrides]
        by_seeds: dict[tuple[int, ...], list[str]] = defaultdict(list)  # missing seeds -> methods
        for m in plain:
            seeds = tuple(s for s in suite.seeds if (m, s) in missing)
            if seeds:
                by_seeds[seeds].append(m)
        by_methods: dict[tuple[str, ...], list[int]] = defaultdict(list)  # missing methods -> seeds
        for s in suite.seeds:
            methods = tuple(m for m in plain if (m, s) in missing)
            if methods:
                by_methods[methods].append(s)
        rectangles = [(methods, list(seeds)) for seeds, methods in by_seeds.items()]
        if len(by_methods) < len(rectangles):
            rectangles = [(list(methods), seeds) for methods, seeds in by_methods.items()]
        found += [(task, methods, seeds, []) for methods, seeds in rectangles]
        for m, own in suite.method_overrides.items():
            seeds = [s for s in suite.seeds if (m, s) in missing]
            if m in suite.methods and seeds:
                found.append((task, [m], seeds, list(own)))
    return found


def lock_out(out: str) -> RunLock:
    """Hold ``<out>/.lock`` for the sweep: a second runner aimed at the same results stops with one line."""
    os.makedirs(out, exist_ok=True)
    try:
        return RunLock(out).acquire()
    except ConfigError:
        with open(os.path.join(out, LOCK_NAME)) as fh:
            holder = fh.read().strip() or "another process"
        raise SystemExit(
            f"error: {out} is being swept by another command ({holder}); wait for it to finish or choose another out="
        ) from None


def sweep(suite: Suite, out: str, extra: list[str], threads: int = 1) -> int:
    """Run every missing job through Hydra multirun, ``threads`` CPU threads each; returns the number of jobs
    launched."""
    todo = batches(suite, out)
    total = sum(len(methods) * len(seeds) for _, methods, seeds, _ in todo)
    done_before = len(suite.tasks) * len(suite.methods) * len(suite.seeds) - total
    print(f"suite {suite.name}: {done_before} jobs done, {total} to run", flush=True)
    if not todo:
        return 0
    # the same threads for every job, sequential or parallel (joblib's workers would get cpu_count // n_jobs)
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, str(threads))}
    lock = lock_out(out)
    try:
        for task, methods, seeds, own in todo:
            key = task_key(task)
            cmd = [
                sys.executable,
                "-m",
                "da.run",
                "-m",
                f"dataset={task['dataset']}",
                f"dataset.source={task['source']}",
                f"dataset.target={task['target']}",
                f"method={','.join(methods)}",
                f"seed={','.join(map(str, seeds))}",
                "trainer.progress_bar=false",
                *suite.overrides,
                *own,
                *extra,
                f"hydra.sweep.dir={os.path.join(out, 'runs')}",
                f"hydra.sweep.subdir={SUBDIR}",
            ]
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {', '.join(methods)} x seeds {seeds}", flush=True)
            proc = subprocess.run(cmd, env=env)
            if proc.returncode != 0:
                raise SystemExit(
                    f"error: a job of {key} ({', '.join(methods)}) failed with exit code "
                    f"{proc.returncode}; finished jobs are kept, rerun the same command to resume"
                )
    finally:
        lock.release()
    return total


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    opts = {}
    for arg in argv:
        if "=" not in arg:
            raise SuiteError(f"expected key=value, got {arg!r} (keys: {', '.join(OPTIONS)})")
        key, value = arg.split("=", 1)
        if key not in OPTIONS:
            raise SuiteError(f"unknown option {key!r}; valid: {', '.join(OPTIONS)}")
        opts[key] = value
    if "suite" not in opts:
        raise SuiteError("missing suite=<name>, e.g. suite=digits")
    if opts.get("stage", "all") not in ("all", "sweep", "report"):
        raise SuiteError(f"stage must be all, sweep or report, got {opts['stage']!r}")
    opts.setdefault("threads", os.environ.get("OMP_NUM_THREADS") or "1")
    if not opts["threads"].isdigit() or int(opts["threads"]) < 1:
        raise SuiteError(f"threads must be a positive integer, got {opts['threads']!r}")
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
        sweep(suite, out, extra, threads=int(opts["threads"]))
    if stage in ("all", "report"):
        written = report(suite, out)
        print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    print(f"suite {suite.name} finished in {time.perf_counter() - start:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
