"""Benchmark suites (``benchmarks/suites/<name>.yaml``): what a suite holds, how it is loaded, where its jobs go.

Shared by the runner (``benchmarks.run``) and the report (``benchmarks.report``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import yaml

from da.methods import METHODS

HERE = os.path.dirname(os.path.abspath(__file__))
SUBDIR = "${dataset.source}_to_${dataset.target}/${method.name}/seed${seed}"


@dataclass
class Suite:
    name: str
    title: str
    seeds: list[int]
    tasks: list[dict]
    methods: list[str]
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)


class SuiteError(ValueError):
    pass


def load_suite(name: str) -> Suite:
    path = name if name.endswith((".yaml", ".yml")) else os.path.join(HERE, "suites", f"{name}.yaml")
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(os.path.join(HERE, "suites")) if f.endswith(".yaml"))
        raise SuiteError(f"unknown suite {name!r}; valid suites: {', '.join(names)}")
    with open(path) as fh:
        data = yaml.safe_load(fh)
    try:
        suite = Suite(**data)
    except TypeError as err:
        raise SuiteError(f"{path}: {err}") from err
    missing = [m for m in suite.methods if m not in METHODS]
    if missing:
        raise SuiteError(f"suite {suite.name} names unknown methods {missing}; valid: {', '.join(METHODS.names())}")
    return suite


def task_key(task: dict) -> str:
    return f"{task['source']}_to_{task['target']}"


def job_dir(out: str, task: dict, method: str, seed: int) -> str:
    return os.path.join(out, "runs", task_key(task), method, f"seed{seed}")


def parse_options(argv: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` options (only ``keys``) and, after ``--``, overrides passed to every job. ``-h`` / ``--help``
    prints the entry point's docstring and the options, and exits 0."""
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    if any(a in ("-h", "--help") for a in argv):
        doc = (getattr(sys.modules.get("__main__"), "__doc__", None) or "").strip()
        print(f"{doc}\n\noptions (key=value): {', '.join(keys)}; after --: da.run overrides for every job")
        raise SystemExit(0)
    bad = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in keys]
    if bad:
        raise SystemExit(f"error: unknown option {bad[0]!r}; valid: {', '.join(k + '=' for k in keys)}")
    return dict(a.split("=", 1) for a in argv), extra
