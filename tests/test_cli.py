import json

import pytest

from .conftest import TINY, run_cli


@pytest.mark.slow
def test_cli_end_to_end_from_another_directory_and_a_second_run_writes_a_second_folder(tmp_path):
    proc = run_cli(*TINY, "seed=1", "trainer.epochs=1", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    folders = list((tmp_path / "outputs").rglob("results.json"))
    assert len(folders) == 1 and "seed1_" in str(folders[0])
    results = json.loads(folders[0].read_text())
    assert 0.0 <= results["target_acc"] <= 1.0
    assert "target acc" in proc.stdout and str(folders[0].parent) in proc.stdout
    proc = run_cli(*TINY, "seed=2", "trainer.epochs=1", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "outputs").rglob("results.json"))) == 2


def _one_line_error(proc):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unknown_method_lists_valid_names(tmp_path):
    line = _one_line_error(run_cli("method=nope", cwd=str(tmp_path)))
    assert "nope" in line and "source_only" in line


def test_unknown_dataset_and_backbone(tmp_path):
    assert "digits" in _one_line_error(run_cli("dataset=nope", cwd=str(tmp_path)))
    assert "lenet" in _one_line_error(run_cli("backbone=nope", cwd=str(tmp_path)))


def test_unknown_key_fails_loudly(tmp_path):
    line = _one_line_error(run_cli("trainer.epoch=3", cwd=str(tmp_path)))
    assert "epoch" in line


def test_invalid_value_fails_with_one_line(tmp_path):
    line = _one_line_error(run_cli(*TINY, "trainer.epochs=-1", f"hydra.run.dir={tmp_path / 'x'}", cwd=str(tmp_path)))
    assert "trainer.epochs" in line
    line = _one_line_error(run_cli("dataset.source=svhn", cwd=str(tmp_path)))
    assert "svhn" in line
    line = _one_line_error(run_cli("method.trade_off=nan", cwd=str(tmp_path)))  # refused before any folder
    assert line == "error: method.trade_off must be a finite number, got nan"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_installed_wheel_ships_its_configs(tmp_path):
    """`pip install .` (not editable) works: the configs travel inside the wheel as da/configs."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(wheels), repo],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "would be ignored" not in build.stdout + build.stderr  # every configs/ folder is a listed package
    wheel = next(wheels.glob("da-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    assert (target / "da" / "configs" / "method" / "source_only.yaml").is_file()
    assert (target / "da" / "configs" / "tta" / "protocol").is_dir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", "import da, sys; sys.argv[0] = 'da.run'; print(da.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.stdout.startswith(str(target)), proc.stdout + proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "da.run", *TINY, "trainer.epochs=1", f"hydra.run.dir={out}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.json").is_file()
