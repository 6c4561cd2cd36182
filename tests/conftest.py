"""Shared fixtures: tiny configs of the embedded task that run in a second on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from da.config import compose

TINY = [
    "method=source_only",  # the tests' baseline; the CLI default is mcc (a later method=... overrides it)
    "dataset.samples_per_class=12",
    "trainer.epochs=2",
    "trainer.steps_per_epoch=4",
    "trainer.batch_size=16",
    "trainer.progress_bar=false",
    "trainer.report=false",  # report.html costs ~1 s a run; tests/test_product.py checks it once
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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A folder task small enough that evaluation costs nothing: 3 classes x 16 random 28x28 RGB images per domain
    (the numbers mean nothing; only their equality is checked)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for domain in ("src", "tgt"):
        for i in range(48):
            (root / domain / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(
                root / domain / f"c{i % 3}" / f"{i}.png"
            )
    return [*folder_task(root), "trainer.batch_size=8"]


def folder_task(root) -> list[str]:
    """The overrides of a LeNet run on ``<root>/{src,tgt}/<class>/*.png`` at 28x28, without random flips."""
    return [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.source=src",
        "dataset.target=tgt",
        "dataset.resize=28",
        "dataset.crop=28",
        "dataset.flip=false",
        "backbone=lenet",
    ]


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (tens of seconds each) run first, the longest (``seconds=``) first of all: the two
    workers of ``make test`` then share the short tests at the end instead of one finishing a long test alone."""

    def key(item) -> float:
        mark = item.get_closest_marker("slow")
        return 0.0 if mark is None else -float(mark.kwargs.get("seconds", 10))

    items.sort(key=key)  # stable: the order within equal keys stays the collection's
