"""`da tta`: the command beside `da train`, its help (every key with its default), one-line errors that name the
valid options or the right key, the README table's setup as the default, and the corruptions: checked before the
source stage, reproducible, and independent of setuptools' pkg_resources."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from da import cli
from da.errors import ConfigError
from da.tta import corruptions
from da.tta.__main__ import main as tta_main
from da.tta.config import SOURCE_STAGE, compose

TINY_SOURCE = (
    'source=["method=source_only","backbone=lenet","dataset.source=sklearn","dataset.target=sklearn",'
    '"trainer.epochs=1","trainer.steps_per_epoch=2","trainer.progress_bar=false","trainer.report=false"]'
)
TINY = ["device=cpu", "quiet=true", "protocol.num_samples=8", "protocol.batch_size=8", TINY_SOURCE]


def _keys(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _keys(value, f"{prefix}{key}.")
        elif key != "name":
            yield f"{prefix}{key}", value


def test_da_help_lists_tta_and_tta_help_lists_every_key(capsys):
    from omegaconf import OmegaConf

    from da.tta.methods import TTA_METHODS

    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0 and "\n    tta " in capsys.readouterr().out
    assert cli.main(["tta", "--help"]) == 0
    text = capsys.readouterr().out
    assert tta_main(["--help"]) == 0 and capsys.readouterr().out == text  # python -m da.tta --help: the same
    assert "Overrides are Hydra's" not in text  # not the module docstring
    lines = text.splitlines()
    plain = OmegaConf.to_container(compose([]), resolve=False)
    for key, value in _keys(plain):
        matching = [ln for ln in lines if ln.startswith(f"  {key}=")]
        assert len(matching) == 1, key
        if not isinstance(value, list):
            shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            assert matching[0].startswith(f"  {key}={shown} "), (key, matching)
    for name in TTA_METHODS.names():
        for key in vars(TTA_METHODS.get(name).Config(name=name)):
            if key != "name":
                assert sum(ln.startswith(f"  method.{key}=") for ln in lines) == 1, key
    for option in ("bn_adapt", "cotta", "eata", "sar", "source", "tent", "label_shift", "cifar100c"):
        assert option in text


def test_source_stage_key_names_the_source_key():
    with pytest.raises(ConfigError) as err:
        compose(["trainer.epochs=1"])
    message = str(err.value)
    assert "\n" not in message and "+trainer.epochs" not in message
    assert "source=[" in message and '"trainer.epochs=1"' in message and '"backbone=resnet18"' in message
    with pytest.raises(ConfigError, match="valid keys: method, protocol, data, severity"):
        compose(["nosuch=1"])
    with pytest.raises(ConfigError, match=r"unknown key 'method.nope'; valid keys of method: name, optimizer, lr"):
        compose(["method.nope=1"])


@pytest.mark.parametrize(
    ("override", "listed"),
    [
        ("method=nosuch", "valid methods: bn_adapt, cotta, eata, sar, source, tent"),
        ("protocol=nosuch", "valid protocols: continual, label_shift, mixed, reset"),
        ("data=nosuch", "valid data sets: cifar100c, cifar10c, digits_c"),
    ],
)
def test_unknown_option_lists_the_valid_ones(override, listed, capsys):
    assert tta_main([override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and listed in err


def test_default_run_is_the_readme_tables_setup():
    """The table (benchmarks/tta.py) trains the source 5 epochs and streams 256 images per corruption at severity
    5, batch 64, continual: the default run is that run, so its number compares with the table's."""
    from benchmarks import tta as bench
    from da.config import compose as compose_da

    default = compose([])
    table = compose(bench.STREAM_OVERRIDES + [f"severity={bench.SEVERITY}", "protocol=continual"])
    assert default == table
    assert default.protocol.num_samples == 256 and default.protocol.batch_size == 64
    stage = compose_da(list(default.source))
    assert stage == compose_da([*SOURCE_STAGE, *bench.SOURCE_OVERRIDES]) and stage.trainer.epochs == 5
    assert compose(["data=cifar10c"]).protocol.num_samples is None  # CIFAR-10-C streams every image


def test_da_tta_is_python_m_da_tta(monkeypatch, capsys):
    """`da tta ARGS` runs the stream of `python -m da.tta ARGS` (tests/test_run_venv.py runs one for real)."""
    from da.tta import run

    seen = []
    monkeypatch.setattr(run, "fit_stream", lambda args: seen.append(args))
    assert cli.main(["tta", "method=eata", "severity=3"]) == 0 and seen == [["method=eata", "severity=3"]]
    monkeypatch.setattr(run, "fit_stream", lambda args: compose(args))
    assert cli.main(["tta", "trainer.epochs=1"]) == 2 and "source=[" in capsys.readouterr().err


def test_a_failing_corruption_stops_the_run_before_the_source_stage(tmp_path, monkeypatch):
    real = corruptions.corruption_function

    def broken(name):
        if name == "frost":
            raise TypeError("'imagecorruptions.corruptions' is not a package")
        return real(name)

    monkeypatch.setattr(corruptions, "corruption_function", broken)
    from da.tta.run import fit_stream

    with pytest.raises(ConfigError, match="frost"):
        fit_stream([*TINY, "data.corruptions=[fog,frost]"], run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, no source stage trained


def test_impulse_noise_is_the_same_in_every_build():
    cfg = corruptions.DigitsCConfig(corruptions=["impulse_noise"])
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    idx = np.arange(4)
    a, b = (corruptions.corrupt_digits(x, idx, "impulse_noise", 5, cfg, 0.5, 0.5) for _ in range(2))
    assert a.numpy().tobytes() == b.numpy().tobytes()
    other = corruptions.DigitsCConfig(corruptions=["impulse_noise"], corruption_seed=1)
    assert not torch.equal(a, corruptions.corrupt_digits(x, idx, "impulse_noise", 5, other, 0.5, 0.5))


def test_corruptions_run_without_pkg_resources(monkeypatch):
    """setuptools >= 81 has no pkg_resources (a `make run` install): frost still finds its images."""
    for name in [m for m in sys.modules if m == "imagecorruptions" or m.startswith("imagecorruptions.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # import pkg_resources -> ImportError
    image = np.full((32, 32, 3), 128, dtype=np.uint8)
    assert corruptions.corruption_function("frost")(image, 5).shape == (32, 32, 3)
    corruptions.check_corruptions(list(corruptions.CORRUPTIONS), 5)
    assert sys.modules["pkg_resources"] is None  # the stand-in was there for the import only
