"""`da tta --help` fits a terminal (no line wider than the usage text's, no description cut short), and a bad
value is one line naming its key and why."""

from __future__ import annotations

from da.tta.config import HELP, help_text


def test_tta_help_fits_its_width_and_cuts_no_description():
    text = help_text()
    widest = max(len(line) for line in HELP.splitlines())
    assert max(len(line) for line in text.splitlines()) <= widest
    assert "…" not in text
    assert "OPTIM.METHOD Adam" in text and "reset_constant_em" in text  # a long comment and a wrapped one, whole


def test_a_value_of_the_wrong_type_is_named_with_why():
    """`da tta severity=abc`: the key and the schema's reason, as `da train` says it, not Hydra's bare line."""
    import pytest

    from da.errors import ConfigError
    from da.tta.config import compose

    with pytest.raises(ConfigError, match=r"invalid value for severity: .*'abc'.*Integer"):
        compose(["severity=abc"])
