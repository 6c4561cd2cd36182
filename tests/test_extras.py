"""The optional extras: a launcher or sweeper whose plugin is not installed is one line naming the pip command."""

from __future__ import annotations

import sys

import pytest

from da import cli


class HidePlugins:
    """A meta-path finder that makes Hydra's plugins uninstalled: ``hydra_plugins`` (their namespace) is missing."""

    def find_spec(self, name, path=None, target=None):
        if name == "hydra_plugins" or name.startswith("hydra_plugins."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def no_plugins(monkeypatch):
    for name in [m for m in sys.modules if m == "hydra_plugins" or m.startswith("hydra_plugins.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [HidePlugins(), *sys.meta_path])
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # da train sets it


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["-m", "hydra/launcher=parallel", "seed=0,1"], "pip install 'da[launchers]'"),
        (["-m", "hydra/launcher=joblib", "seed=0,1"], "pip install 'da[launchers]'"),
        (["-m", "hydra/sweeper=optuna", "selection=snd", "trainer.lr=interval(0.001,0.1)"], "pip install 'da[sweep]'"),
    ],
)
def test_an_extra_without_its_plugin_is_one_line(args, hint, no_plugins, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train", *args])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and hint in err, err
