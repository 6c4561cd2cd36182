"""The notebooks run top to bottom (nbclient), so they cannot rot; the kernel is this venv's Python."""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def venv_kernel(tmp_path: Path) -> str:
    """A ``python3`` kernelspec that runs ``sys.executable`` (not whatever ``python3`` is first on PATH)."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "da venv", "language": "python"}))
    return str(tmp_path / "jupyter")


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", venv_kernel(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    repo = str(NOTEBOOKS.parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if a cell fails
    from da.methods import METHODS

    assert "entmin" not in METHODS  # the notebook's kernel is another process: this registry is untouched
    assert all(c.get("outputs") is not None for c in nb.cells if c.cell_type == "code")
    if path.name == "add_a_method.ipynb":
        assert (tmp_path / "outputs" / "notebook" / "entmin_vs_dann.png").is_file()
        for name in ("dann", "entmin"):
            result = json.loads((tmp_path / "outputs" / "notebook" / name / "results.json").read_text())
            assert result["method"] == name and 0.0 <= result["target_acc"] <= 1.0
