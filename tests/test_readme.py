"""README.md as a user reads it: the default method is the one the committed benchmarks support."""

from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

import yaml

from da.config import compose
from da.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _accuracies() -> dict[tuple[str, str], dict[int, float]]:
    """(suite/task, method) -> {seed: target accuracy} of the digits suite and the hard shift."""
    acc: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for suite in ("digits", "hard_shift"):
        for path in glob.glob(os.path.join(RESULTS, suite, "runs", "*", "*", "seed*", "results.json")):
            *_, task, method, seed, _ = path.split(os.sep)
            acc[(task, method)][int(seed[4:])] = json.loads(open(path).read())["target_acc"]
    return acc


def test_the_default_method_has_the_best_worst_case_gain_of_the_transductive_methods():
    """Of the transductive methods of the digits suite (the default task's table in the README), the default is
    the one whose smallest gain over source_only (same task and seed, over the digits suite and the hard shift) is
    largest, and it gains everywhere."""
    acc = _accuracies()
    suite = yaml.safe_load(open(os.path.join(ROOT, "benchmarks", "suites", "digits.yaml")))["methods"]
    candidates = [m for m in suite if m != "source_only" and METHODS.get(m).kind == "transductive"]
    worst = {}
    for m in candidates:
        gains = [
            runs[s] - acc[(task, "source_only")][s]
            for (task, method), runs in acc.items()
            if method == m
            for s in runs
            if s in acc.get((task, "source_only"), {})
        ]
        worst[m] = min(gains)
    default = compose([]).method.name
    assert default in candidates
    assert worst[default] == max(worst.values()), sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    assert worst[default] > 0, "the default gains over source_only on every committed task and seed"
