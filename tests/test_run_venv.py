"""A tiny `da tta` stream in a venv holding only what `make run` installs: da's run dependencies, no extras.

`make run` runs `pip install -e .`, which brings the newest setuptools (torch requires it): setuptools >= 81 has no
`pkg_resources`, which the dev venv still has (its test extra pins setuptools < 81 for pytorch-adapt), so a test in
the dev venv alone would not see what a user's install does. A real `pip install -e .` into a fresh venv downloads
and copies ~5.5 GB (CUDA torch), minutes of a test; instead the venv is built from the run dependencies' closure:
da's requirements without extras, resolved recursively through importlib.metadata in this interpreter's
environment, each of those distributions' installed files linked into a new `python -m venv --without-pip` venv's
site-packages, and da itself on a .pth (as an editable install puts it). setuptools is linked without
`pkg_resources` and `_distutils_hack` (and the .pth that imports the latter), as setuptools >= 81 installs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG_RESOURCES_FREE = ("pkg_resources", "_distutils_hack", "distutils-precedence.pth")  # setuptools >= 81's layout


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run_closure() -> dict[str, metadata.Distribution]:
    """Every installed distribution da's run dependencies (no extra) need, recursively, by normalised name."""
    env = default_environment()
    found: dict[str, metadata.Distribution] = {}
    todo = [(r, "") for r in metadata.requires("da") or []]
    while todo:
        text, extra = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        key = _normal(req.name)
        for wanted in req.extras:  # foo[bar]: foo's requirements under extra bar
            todo += [(r, wanted) for r in metadata.requires(req.name) or []]
        if key in found:
            continue
        found[key] = metadata.distribution(req.name)
        todo += [(r, "") for r in found[key].requires or []]
    return found


def _tops(dist: metadata.Distribution) -> set[str]:
    """The entries of site-packages ``dist`` installed (its packages, modules, .pth and .dist-info)."""
    rels = (os.path.normpath(str(p)) for p in dist.files or [])
    return {r.split(os.sep)[0] for r in rels if not r.startswith("..")}


def link_closure(closure: dict[str, metadata.Distribution], site: str) -> None:
    """Symlink the closure's entries of site-packages into ``site``: a whole folder where only the closure owns it
    (its compiled __pycache__ comes along), else the closure's files in it one by one (a namespace folder shared
    with an extra's plugin, e.g. hydra_plugins/). setuptools goes in without pkg_resources and _distutils_hack."""
    owners: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        for top in _tops(dist):
            owners.setdefault(top, set()).add(_normal(dist.metadata["Name"]))
    for key, dist in closure.items():
        base = str(dist.locate_file(""))
        for top in _tops(dist):
            if key == "setuptools" and top in PKG_RESOURCES_FREE:
                continue
            target = os.path.join(site, top)
            if owners[top] <= set(closure):
                if not os.path.lexists(target):
                    os.symlink(os.path.join(base, top), target)
                continue
            for path in dist.files or []:
                rel = os.path.normpath(str(path))
                if rel.split(os.sep)[0] == top and os.path.exists(os.path.join(base, rel)):
                    os.makedirs(os.path.dirname(os.path.join(site, rel)), exist_ok=True)
                    if not os.path.lexists(os.path.join(site, rel)):
                        os.symlink(os.path.join(base, rel), os.path.join(site, rel))


@pytest.fixture(scope="module")
def run_venv(tmp_path_factory):
    """The python of a venv built from da's run closure (see the module docstring)."""
    venv = tmp_path_factory.mktemp("run-venv") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    closure = run_closure()
    assert "torch" in closure and "setuptools" in closure and "pytest" not in closure
    link_closure(closure, site)
    with open(os.path.join(site, "da.pth"), "w") as fh:
        fh.write(ROOT + "\n")
    return python


@pytest.mark.slow
def test_tiny_tta_stream_in_a_make_run_venv(run_venv, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    probe = subprocess.run([run_venv, "-c", "import pkg_resources"], capture_output=True, env=env, cwd=tmp_path)
    assert probe.returncode != 0  # as in a setuptools >= 81 install
    source = (
        'source=["method=source_only","backbone=lenet","dataset.source=sklearn","dataset.target=sklearn",'
        '"trainer.epochs=1","trainer.steps_per_epoch=2","trainer.progress_bar=false","trainer.report=false"]'
    )
    args = ["device=cpu", "quiet=true", "protocol.num_samples=4", "protocol.batch_size=4", source]
    folder = tmp_path / "tta"
    done = subprocess.run(
        [run_venv, "-m", "da.tta", *args, f"run_dir={folder}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "results.json").is_file()
