"""Run-page figures and ``da --help`` say what is: whole epochs on a one-epoch run's axes, and the default method
the help's first example trains."""

from __future__ import annotations

import os

import yaml

from da import cli
from da.config import config_dir
from da.report import integer_ticks
from da.summary import pyplot


def test_one_epoch_gets_whole_number_ticks():
    """A run of one epoch (or one evaluated epoch): the axis shows 1, not 0.5, 0.6, ... 1.5."""
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1], [0.3], marker=".")
    integer_ticks(ax, (1, 1))
    fig.canvas.draw()
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    plt.close(fig)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_help_names_the_default_method():
    """`da train` with no override trains configs/config.yaml's default method; the help's example says which."""
    with open(os.path.join(config_dir(), "config.yaml")) as fh:
        defaults = yaml.safe_load(fh)["defaults"]
    method = next(d["method"] for d in defaults if isinstance(d, dict) and "method" in d)
    first = next(line for line in cli.EPILOG.splitlines() if line.strip().startswith("da train "))
    assert first.split("#", 1)[1].split()[0] == method.upper(), first
