"""Shared fixtures: tiny configs of the embedded task that run in a second on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from da.config import compose

TINY = [
    "method=source_only",  # the tests' baseline; the CLI default is dann (a later method=... overrides it)
    "dataset.samples_per_class=12",
    "trainer.epochs=2",
    "trainer.steps_per_epoch=4",
    "trainer.batch_size=16",
    "trainer.progress_bar=false",
    "device=cpu",
]


def tiny_cfg(*overrides: str):
    return compose([*TINY, *overrides])


@pytest.fixture
def tiny():
    return tiny_cfg


def run_cli(*args: str, cwd: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "da.run", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )
