"""`da tta --help` fits a terminal: no line wider than the usage text's, no description cut short."""

from __future__ import annotations

from da.tta.config import HELP, help_text


def test_tta_help_fits_its_width_and_cuts_no_description():
    text = help_text()
    widest = max(len(line) for line in HELP.splitlines())
    assert max(len(line) for line in text.splitlines()) <= widest
    assert "…" not in text
    assert "OPTIM.METHOD Adam" in text and "reset_constant_em" in text  # a long comment and a wrapped one, whole
