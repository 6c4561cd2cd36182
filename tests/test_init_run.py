"""``init=<run folder>``: a run starts from the weights that run trained, never from a model.pt copied in."""

from __future__ import annotations

import shutil

import pytest
import torch

from da.errors import ConfigError
from da.experiment import fit

from .conftest import tiny_cfg

RUN = ["trainer.epochs=1", "trainer.steps_per_epoch=2"]


def test_init_from_a_run_whose_model_is_not_its_own_is_refused(tmp_path):
    fit(tiny_cfg(*RUN), run_dir=str(tmp_path / "src"), quiet=True)
    shutil.copytree(tmp_path / "src", tmp_path / "copied")
    state = torch.load(tmp_path / "src" / "model.pt", weights_only=True)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(other, tmp_path / "copied" / "model.pt")  # another model of the same architecture
    with pytest.raises(ConfigError, match="not the model that run trained"):
        fit(tiny_cfg(*RUN, "method=dann", f"init={tmp_path / 'copied'}"), run_dir=str(tmp_path / "b"), quiet=True)
    assert not (tmp_path / "b").exists()  # refused before the folder is made
    done = fit(tiny_cfg(*RUN, "method=dann", f"init={tmp_path / 'src'}"), run_dir=str(tmp_path / "a"), quiet=True)
    assert done["target_acc"] is not None
