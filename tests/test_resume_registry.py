"""Every registered method resumes to the uninterrupted result (issue 26, item 3): parametrised over the
registry, so a new method is covered the moment it registers. A run is interrupted right after epoch 1's
checkpoint (as a kill would leave it: nothing after the checkpoint is written) and rerun in the same folder;
log.csv (timing aside) and model.pt must equal an uninterrupted run's. tests/test_step_contract.py does the same
with a real SIGKILL for methods that own their step and for FlexMatch."""

from __future__ import annotations

import csv

import pytest
import torch

from da.callbacks import Callback
from da.config import compose
from da.experiment import fit
from da.methods import METHODS

from .conftest import TINY

#: Options whose state a resume must also keep: a pseudo-label round spanning the interruption (fails when the
#: labels are not checkpointed). FlexMatch's counts: tests/test_step_contract.py (a real SIGKILL on digits).
VARIANTS = {"self_training": [(), ("method.relabel_every=2",)]}
OWN = {"finetune": ("method.labels_per_class=4",)}  # the tiny task's label budget
CASES = [(name, extra) for name in METHODS.names() for extra in VARIANTS.get(name, [()])]


class Interrupted(Exception):
    pass


class StopAfter(Callback):
    """Stops the run once epoch ``epoch``'s checkpoint is written (the built-in listeners ran before this one)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, row) -> None:
        if trainer.epoch == self.epoch:
            raise Interrupted


def _log(run_dir) -> list[dict[str, str]]:
    with open(run_dir / "log.csv") as fh:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(fh)]


@pytest.mark.parametrize(("name", "extra"), CASES, ids=[f"{n}{'+' if e else ''}{'+'.join(e)}" for n, e in CASES])
def test_every_method_resumes_to_the_uninterrupted_result(tmp_path, tiny_folder, name, extra):
    run = ("init=scratch", "trainer.epochs=3", "trainer.steps_per_epoch=2", *OWN.get(name, ()), *extra)
    base = [o for o in TINY if not o.startswith("dataset.")]
    cfg = compose([*base, *tiny_folder, f"method={name}", *run])
    whole = fit(cfg, run_dir=str(tmp_path / "whole"), quiet=True)
    with pytest.raises(Interrupted):
        fit(cfg, run_dir=str(tmp_path / "cut"), quiet=True, callbacks=[StopAfter(1)])
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = fit(cfg, run_dir=str(tmp_path / "cut"), quiet=True)
    assert _log(tmp_path / "cut") == _log(tmp_path / "whole")
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["target_acc"] == whole["target_acc"] and resumed["steps"] == whole["steps"] == 6
