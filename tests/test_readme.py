"""README.md as a user reads it: every fenced command and Python block runs as written, and the default method is
the one the committed benchmarks support."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
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


BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIPPED = {  # a block holding this text is not run, for the reason given
    "make run": "the install itself: `make test` built the venv these blocks run in",
    "hydra/launcher=slurm": "needs a SLURM cluster",
}


def readme_blocks() -> list[tuple[str, str]]:
    """Every fenced ```bash and ```python block of README.md, in order: (language, text)."""
    with open(os.path.join(ROOT, "README.md")) as fh:
        return [(m.group(1), m.group(2)) for m in BLOCK.finditer(fh.read())]


def _script(blocks: list[tuple[str, str]], work: str) -> str:
    """One bash session that runs the blocks in order as a user pastes them, each command between timing marks."""
    lines = ["set -euo pipefail"]
    for i, (lang, text) in enumerate(blocks):
        if lang == "python":
            path = os.path.join(work, f".readme_block_{i}.py")
            with open(path, "w") as fh:
                fh.write(text)
            commands = [f"python {path}"]
        else:
            commands = [line for line in text.splitlines() if line.strip()]
        for j, command in enumerate(commands):
            lines += [f'echo "@@{i}.{j} start $(date +%s.%N)"', command, f'echo "@@{i}.{j} end $(date +%s.%N)"']
    return "\n".join(lines) + "\n"


def _timings(blocks: list[tuple[str, str]], stdout: str) -> list[str]:
    """``block.command (seconds): the command`` for every command that finished."""
    marks = dict(re.findall(r"^@@(\d+\.\d+ \w+) ([\d.]+)$", stdout, re.MULTILINE))
    out = []
    for i, (lang, text) in enumerate(blocks):
        commands = ["python <block>"] if lang == "python" else [line for line in text.splitlines() if line.strip()]
        for j, command in enumerate(commands):
            if f"{i}.{j} end" in marks:
                took = float(marks[f"{i}.{j} end"]) - float(marks[f"{i}.{j} start"])
                out.append(f"{i}.{j} ({took:.1f} s): {command.split('  #')[0].strip()}")
    return out


@pytest.mark.slow(seconds=140)
def test_every_readme_block_runs_verbatim_in_a_fresh_folder(tmp_path, capsys):
    """The quickstart, the how-tos and the Python snippet, in order in one shell, in a folder that holds only what a
    fresh clone gives them (docs/ and the venv, as links): nothing is written into the checkout."""
    venv = sys.prefix
    if not os.path.isfile(os.path.join(venv, "bin", "activate")):
        pytest.skip(f"{venv} is not a venv with bin/activate")
    work = tmp_path / "clone"
    work.mkdir()
    os.symlink(venv, work / ".venv")
    os.symlink(os.path.join(ROOT, "docs"), work / "docs")
    run, skipped = [], []
    for lang, text in readme_blocks():
        reason = next((why for key, why in SKIPPED.items() if key in text), None)
        if reason:
            skipped.append((text.splitlines()[0], reason))
        else:
            run.append((lang, text))
    assert len(run) >= 4 and {lang for lang, _ in run} == {"bash", "python"}
    checkout = {p: os.path.exists(os.path.join(ROOT, p)) for p in ("runs", "multirun", "outputs", "predictions.csv")}
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    proc = subprocess.run(
        ["bash", "-c", _script(run, str(work))], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    with capsys.disabled():
        print("\nREADME commands, in order, with their times:\n" + "\n".join(_timings(run, proc.stdout)))
        print("\n".join(f"skipped ({first[:60]!r}): {reason}" for first, reason in skipped))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "runs" / "mcc" / "results.json").is_file() and (work / "runs" / "mcc" / "report.html").is_file()
    assert len((work / "predictions.csv").read_text().splitlines()) == 11  # a header + one line per example image
    assert (work / "runs" / "mcc" / "model.torchscript.pt").is_file()
    for method in ("source_only", "mcc"):  # the quickstart's runs give the README table's seed-0 numbers
        ours = json.loads((work / "runs" / method / "results.json").read_text())["target_acc"]
        committed = os.path.join(RESULTS, "digits", "runs", "fonts_to_sklearn", method, "seed0", "results.json")
        assert ours == json.loads(open(committed).read())["target_acc"], method
    assert checkout == {p: os.path.exists(os.path.join(ROOT, p)) for p in checkout}, "written into the checkout"
