"""The label-free collapse monitor (issue 15, item 4): flags a collapsing run, stays silent on a healthy one,
and never reads a target label."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import da.build
from da.data.base import Task, Unlabelled
from da.experiment import fit
from da.monitor import CollapseMonitor, class_marginal

from .conftest import tiny_cfg


def _logits(predicted: list[int], k: int = 4) -> torch.Tensor:
    """Logits whose argmax is ``predicted`` (N,) over ``k`` classes."""
    out = torch.zeros(len(predicted), k)
    out[torch.arange(len(predicted)), torch.tensor(predicted)] = 5.0
    return out


def test_class_marginal_on_hand_made_predictions():
    uniform = class_marginal(_logits([0, 1, 2, 3] * 5))
    assert uniform["marginal_entropy"] == pytest.approx(math.log(4)) and uniform["largest_class_fraction"] == 0.25
    one = class_marginal(_logits([2] * 7))
    assert one["marginal_entropy"] == 0.0 and one["largest_class_fraction"] == 1.0
    half = class_marginal(_logits([0, 0, 1, 1]))
    assert half["marginal_entropy"] == pytest.approx(math.log(2)) and half["largest_class_fraction"] == 0.5


def test_monitor_flags_a_collapsing_run_once(caplog):
    monitor = CollapseMonitor(fraction=0.5)
    monitor.start(_logits([0, 1, 2, 3] * 25))  # the starting model predicts every class: entropy ln 4
    epochs = [
        [0, 1, 2, 3] * 25,  # healthy
        [0] * 40 + [1, 2, 3] * 20,  # drifting towards class 0
        [0] * 90 + [1] * 10,  # entropy 0.33 < 0.5 ln 4 = 0.69: flagged here
        [0] * 100,
    ]
    with caplog.at_level(logging.WARNING, logger="da"):
        for epoch, predicted in enumerate(epochs, start=1):
            monitor.update(epoch, _logits(predicted))
    assert monitor.collapse is not None and monitor.collapse["epoch"] == 3
    assert monitor.collapse["largest_class_fraction"] == 0.9
    assert monitor.collapse["reference_entropy"] == pytest.approx(math.log(4))
    assert len([r for r in caplog.records if "collapse warning" in r.getMessage()]) == 1


def test_monitor_stays_silent_on_a_healthy_run():
    monitor = CollapseMonitor(fraction=0.5)
    monitor.start(_logits([0] * 100))  # a random start often predicts one class: its entropy is no reference
    for epoch, predicted in enumerate([[0, 1] * 50, [0, 1, 2, 3] * 25, [0, 1, 2, 3, 3] * 20], start=1):
        monitor.update(epoch, _logits(predicted))
    assert monitor.collapse is None and monitor.reference == pytest.approx(math.log(4))


class _Poison:
    """A target label that fails the test if anything reads its value."""

    def _fail(self, *_):
        raise AssertionError("a target label was read")

    __eq__ = __ne__ = __lt__ = __gt__ = __int__ = __index__ = __bool__ = __float__ = __hash__ = _fail


class _PoisonedLabels(torch.utils.data.Dataset):
    def __init__(self, base) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        return self.base[i][0], _Poison()


def test_no_target_label_reaches_the_monitor(tmp_path, monkeypatch):
    build = da.build.build_task

    def build_with_poisoned_target(*args, **kwargs) -> Task:
        task = build(*args, **kwargs)
        task.target_train = Unlabelled(_PoisonedLabels(task.target_train.base))
        task.target_train_eval = task.target_train
        task.target_train_labels = None  # the analysis copy is gone too
        return task

    monkeypatch.setattr(da.build, "build_task", build_with_poisoned_target)
    result = fit(tiny_cfg("method=dann", "trainer.collapse_fraction=0.9"), run_dir=str(tmp_path), quiet=True)
    header = (tmp_path / "log.csv").read_text().splitlines()[0].split(",")
    assert "marginal_entropy" in header and "largest_class_fraction" in header
    assert "collapse" in result
    with pytest.raises(AssertionError, match="target label was read"):  # the poison works
        _Poison() == 1  # noqa: B015
