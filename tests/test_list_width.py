"""`da list` on a terminal fits its width (each entry wrapped under its description); piped, one line per entry."""

from __future__ import annotations

import os
import shutil
import sys

from da import cli


def test_da_list_wraps_to_the_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((100, 40)))
    for what in ("methods", "validators", "backbones", "datasets"):
        assert cli.main(["list", what]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert max(len(line) for line in lines) <= 100, (what, max(lines, key=len))
    assert cli.main(["list", "methods"]) == 0
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("shot ")]
    assert len(first) == 1  # each entry still starts with its name at the left margin


def test_da_list_breaks_no_hyphenated_name(capsys, monkeypatch):
    """`pytorch-adapt` and `source-validation` stay whole across a wrapped line."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a, **k: os.terminal_size((100, 40)))
    assert cli.main(["list", "validators"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.endswith("-")]
