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


def test_init_of_a_test_time_run_names_its_source_stage(tmp_path, capsys):
    """`da tta init=<a test-time run>`: one line naming the source model that run adapted (its source_stage)."""
    from da.tta.__main__ import main as tta_main

    stage = tmp_path / "tta" / "source_stage"
    stage.mkdir(parents=True)
    (stage / "model.pt").write_bytes(b"")
    (stage / "config.yaml").write_text("method: {name: source_only}\n")
    (tmp_path / "tta" / "config.yaml").write_text("method: {name: tent}\n")
    assert tta_main([f"init={tmp_path / 'tta'}", "device=cpu"]) == 2
    assert f"init={stage}" in capsys.readouterr().err
