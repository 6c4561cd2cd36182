"""`da list` and the package's face: every data set with a real description and its domains, the validators with
`da select`'s cross-run rules, `dir(da)` the public API only, and docs that name every data set, backbone and
launcher as the README does."""

from __future__ import annotations

import os
import re

import pytest

import da
from da import cli
from da.catalog import list_datasets, list_validators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as fh:
        return fh.read()


def test_every_dataset_has_a_description_and_its_domains(capsys):
    from da.data import DATASETS

    entries = {e.name: e for e in list_datasets()}
    assert set(entries) == set(DATASETS.names())
    descriptions = [e.description for e in entries.values()]
    assert len(set(descriptions)) == len(descriptions)
    for name, e in entries.items():
        assert e.description and not e.description.startswith(f"{name}:"), name
        assert "every key in its config class" not in e.description, name
        assert e.domains, name
        if name == "folder":
            continue
        config = DATASETS.get(name).config
        extra = {"variant": 345} if name == "domainnet" else {}
        for domain in e.domains:  # each listed domain is one the dataset's config accepts
            config(source=domain, target=domain, **extra)
    assert cli.main(["list", "datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, e in entries.items():
        (line,) = [ln for ln in lines if ln.startswith(f"{name} ")]
        assert f"[domains: {', '.join(e.domains)}]" in line


def test_list_validators_shows_the_cross_run_rules(capsys):
    from da import crossrun
    from da.validators import VALIDATORS

    kinds = {e.name: e.kind for e in list_validators()}
    rules = [r for r in crossrun.RULES if r not in VALIDATORS]
    assert rules == ["ensv", "mixval", "iwv", "reverse", "ensv_src"]
    assert [k for k in kinds if k not in VALIDATORS] == rules
    assert kinds[crossrun.DEFAULT_RULE] == "cross-run, default"
    assert all(kinds[r] == "cross-run" for r in rules if r != crossrun.DEFAULT_RULE)
    assert all(kinds[v] in ("target-only", "with-source") for v in VALIDATORS)
    assert cli.main(["list", "validators"]) == 0
    out = capsys.readouterr().out
    for rule in rules:
        assert re.search(rf"^{rule}\s+cross-run", out, re.M), rule
    assert "reverse (circular) validation" in out and "sec. 5.1.1" in out  # not cut at "sec."


def test_dir_da_is_the_public_api():
    assert set(dir(da)) == {*da.__all__, "__version__"}
    for name in da.__all__:
        assert callable(getattr(da, name)), name


def test_dev_extra_installs_nbconvert():
    import tomllib  # Python >= 3.11

    dev = tomllib.loads(_read("pyproject.toml"))["project"]["optional-dependencies"]["dev"]
    assert any(re.match(r"nbconvert\b", d) for d in dev)


@pytest.mark.parametrize("group", ["dataset", "backbone"])
def test_cli_docs_name_every_registered_option(group):
    from da.config import group_options

    text = _read("docs", "cli.md")
    missing = [name for name in group_options(group) if f"`{name}`" not in text]
    assert not missing, f"docs/cli.md does not name the {group}s {missing}"


def test_docs_name_the_launchers_as_the_readme_does():
    """The README runs jobs with hydra/launcher=parallel (and slurm): the docs' examples use the same names."""
    readme = set(re.findall(r"hydra/launcher=(\w+)", _read("README.md")))
    assert readme == {"parallel", "slurm"}
    for page in ("scaling.md", "cli.md"):
        text = _read("docs", page)
        used = set(re.findall(r"hydra/launcher=(\w+)", text))
        assert used - {"submitit_local"} <= readme, (page, used)
        assert not re.search(r"^#.*joblib", text, re.M), page  # no heading names the plugin for the launcher
