"""An error found before training starts (data, backbone, init weights, device, selection) leaves no stub run
folder behind (issue 26, item 8): the run is refused before its folder is created."""

from __future__ import annotations

import pytest

from da.errors import ConfigError
from da.experiment import fit

from .conftest import tiny_cfg


@pytest.mark.parametrize(
    "overrides",
    [
        ("dataset=office31", "dataset.download=false"),  # no images on disk
        ("backbone.name=no_such_net",),
        ("init=/no/such/model.pt",),
        ("device=tpu",),
    ],
    ids=["data", "backbone", "init", "device"],
)
def test_a_refused_start_leaves_no_run_folder(tmp_path, overrides):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError):
        fit(tiny_cfg(f"data_root={tmp_path / 'data'}", *overrides), run_dir=str(run_dir), quiet=True)
    assert not run_dir.exists()
