"""Run a benchmark suite and regenerate its tables and figures: ``python -m benchmarks.run suite=digits``.

Options (``key=value``; ``--help`` prints them): ``suite`` (a name in benchmarks/suites/ or a YAML path), ``out``
(default ``benchmarks/results/<suite>``), ``stage`` = ``all`` | ``sweep`` | ``report``, ``methods`` / ``seeds``
(comma-separated: run only these of the suite's jobs; other methods may be named too), ``rerun=true`` (run the
chosen jobs again: their earlier folders move to ``<out>/replaced/<time>/``), ``threads`` (CPU threads of every job,
``trainer.threads``: default 1, the package's). Anything after ``--`` is passed to every job as a ``da.run`` override.

An override after ``--`` that changes a number (``-- trainer.epochs=1``) makes other jobs: they go to their own
folder, ``<out>/variants/<overrides>/``, with its own runs, tables and figures, never mixed with the suite's
results. Overrides that change no number — the launcher (``-- hydra/launcher=joblib hydra.launcher.n_jobs=2``,
``-- hydra/launcher=slurm``), ``hydra.*`` keys and the keys ``da.config`` marks ``unfingerprinted`` (the
progress bar, TensorBoard, ...) — run the same jobs in the same folders.

The sweep goes through Hydra multirun (``python -m da.run -m ...``), one run folder per job under
``<out>/runs/<source>_to_<target>/<method>/seed<seed>``. A job whose results.json exists is reused (the runner
says how many, and ``rerun=true`` runs them again), so an interrupted sweep resumes where it stopped (and a job
interrupted mid-way resumes from its checkpoint). The missing jobs go to as few multiruns as possible (per task,
one for every rectangle of methods x seeds; a method with its own overrides alone), so that a parallel launcher
always has jobs to run. Every job runs with the same number of CPU threads whatever the launcher (``trainer.threads``
and the BLAS pools' variables): PyTorch's CPU kernels sum in a thread-dependent order, so the numbers (and the
report) of a parallel sweep equal those of a sequential one. ``<out>/.lock`` keeps a second runner out of ``out``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict

from benchmarks.collect import CollectError
from benchmarks.report import report
from benchmarks.suite import HERE, SUBDIR, Suite, SuiteError, job_dir, load_suite, task_key
from da.errors import ConfigError
from da.runfolder import LOCK_NAME, RunLock

OPTIONS = ("suite", "out", "stage", "threads", "methods", "seeds", "rerun")
HELP = (
    __doc__
    + """
examples:
  python -m benchmarks.run suite=digits                      # reuse what exists, run what is missing, report
  python -m benchmarks.run suite=digits methods=dann seeds=0 rerun=true
  python -m benchmarks.run suite=digits -- trainer.epochs=1  # a smoke run: its own folder under variants/
  python -m benchmarks.run suite=digits stage=report         # tables and figures from the runs on disk
"""
)
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


def identity(extra: list[str], methods: list[str]) -> list[str]:
    """The overrides of ``extra`` that change a job's numbers (sorted): all but the launcher's, ``hydra.*`` keys and
    the keys ``da.config`` marks unfingerprinted."""
    from da.config import unfingerprinted_keys

    quiet = set(unfingerprinted_keys({}))
    for m in methods:
        quiet.update(unfingerprinted_keys({"method": {"name": m}}))
    kept = []
    for arg in extra:
        key = arg.split("=", 1)[0].lstrip("+~")
        if key.startswith(("hydra.", "hydra/")) or key == "hydra" or key in quiet:
            continue
        kept.append(arg)
    return sorted(kept)


def variant_dir(out: str, overrides: list[str]) -> str:
    """Where a suite's jobs under ``overrides`` (:func:`identity`) live: ``out`` itself without any, else
    ``<out>/variants/<the overrides as a folder name>``."""
    if not overrides:
        return out
    name = "__".join(re.sub(r"[^A-Za-z0-9._-]", "-", o) for o in overrides)  # Hydra's values take no "=" or ","
    if len(name) > 100:
        name = name[:80] + "-" + hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:10]
    return os.path.join(out, "variants", name)


def select(suite: Suite, methods: str | None, seeds: str | None) -> Suite:
    """The suite restricted to ``methods`` / ``seeds`` (comma-separated; a registered method outside the suite may
    be named)."""
    from da.methods import METHODS

    chosen = dataclasses.replace(suite)
    if methods:
        names = [m.strip() for m in methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise SuiteError(f"unknown method {unknown[0]!r}; valid methods: {', '.join(METHODS.names())}")
        chosen.methods = names
    if seeds:
        try:
            chosen.seeds = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise SuiteError(f"seeds must be comma-separated integers, got {seeds!r}") from None
    return chosen


def replace_done(suite: Suite, out: str) -> int:
    """``rerun=true``: move the chosen jobs' finished folders to ``<out>/replaced/<time>/``; returns how many."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = 0
    for task in suite.tasks:
        for m in suite.methods:
            for s in suite.seeds:
                folder = job_dir(out, task, m, s)
                if os.path.isdir(folder):
                    target = os.path.join(out, "replaced", stamp, os.path.relpath(folder, os.path.join(out, "runs")))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    shutil.move(folder, target)
                    moved += 1
    if moved:
        print(f"rerun: {moved} earlier job folders moved to {os.path.join(out, 'replaced', stamp)}", flush=True)
    return moved


def sweep(suite: Suite, out: str, extra: list[str], threads: int = 1) -> int:
    """Run every missing job through Hydra multirun, ``threads`` CPU threads each; returns the number of jobs
    launched."""
    todo = batches(suite, out)
    total = sum(len(methods) * len(seeds) for _, methods, seeds, _ in todo)
    done_before = len(suite.tasks) * len(suite.methods) * len(suite.seeds) - total
    reuse = f"{done_before} jobs done (their results are reused; rerun=true runs them again)" if done_before else ""
    print(f"suite {suite.name}: {reuse or '0 jobs done'}, {total} to run", flush=True)
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
                f"trainer.threads={threads}",
                "trainer.progress_bar=false",
                "trainer.report=false",  # committed results stay small; `da report <run>` writes one (-- overrides win)
                "hydra.callbacks={}",  # no per-multirun summary in <out>/runs: the suite's tables are the summary
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
        raise SuiteError("missing suite=<name>, e.g. suite=digits (--help lists the options)")
    if opts.get("rerun", "false") not in ("true", "false"):
        raise SuiteError(f"rerun must be true or false, got {opts['rerun']!r}")
    if opts.get("stage", "all") not in ("all", "sweep", "report"):
        raise SuiteError(f"stage must be all, sweep or report, got {opts['stage']!r}")
    opts.setdefault("threads", "1")  # trainer.threads' default: jobs compute what `da train` computes
    if not opts["threads"].isdigit() or int(opts["threads"]) < 1:
        raise SuiteError(f"threads must be a positive integer, got {opts['threads']!r}")
    return opts, extra


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv[: argv.index("--") if "--" in argv else len(argv)]):
        print(HELP)
        return
    try:
        opts, extra = parse(argv)
        full = load_suite(opts["suite"])
        suite = select(full, opts.get("methods"), opts.get("seeds"))
        own = identity(extra, suite.methods)
    except (SuiteError, ConfigError) as err:
        raise SystemExit(f"error: {err}") from None
    out = variant_dir(opts.get("out") or os.path.join(HERE, "results", full.name), own)
    if own:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "overrides.txt"), "w") as fh:
            fh.write("\n".join(own) + "\n")
        print(f"overrides {' '.join(own)} change the jobs' numbers: their runs, tables and figures go to {out}")
    stage = opts.get("stage", "all")
    start = time.perf_counter()
    if stage in ("all", "sweep"):
        if opts.get("rerun") == "true":
            replace_done(suite, out)
        sweep(suite, out, extra, threads=int(opts["threads"]))
    if stage in ("all", "report"):  # the whole suite's table (and any other method run into it)
        shown = dataclasses.replace(full, methods=list(dict.fromkeys(full.methods + suite.methods)),
                                    seeds=sorted(set(full.seeds) | set(suite.seeds)))  # fmt: skip
        try:
            written = report(shown, out)
        except CollectError as err:
            raise SystemExit(f"error: {err}") from None
        print("wrote " + ", ".join(os.path.relpath(p) for p in written))
    print(f"suite {suite.name} finished in {time.perf_counter() - start:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
