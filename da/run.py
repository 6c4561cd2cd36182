"""Command line: ``python -m da.run [key=value ...]`` (Hydra). A thin shell around :func:`da.fit`.

Bad input (an unknown method, dataset, backbone or key; an invalid value; missing data) prints one line
and exits with status 2, without a traceback.
"""

from __future__ import annotations

import sys

GROUPS = ("method", "dataset", "backbone")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def check_overrides(args: list[str]) -> None:
    """Catch bad overrides before Hydra starts, with one readable line instead of Hydra's report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from da.config import compose, group_options, one_line

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        fail(f"cannot parse the command line: {one_line(err)}")
    sweep = False
    for override in parsed:
        key = override.key_or_group
        if key in GROUPS and override.value_type is not None:
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [override.get_value_element_as_str()]
            )
            valid = group_options(key)
            for value in values:
                if value not in valid:
                    fail(f"unknown {key} {value!r}; valid {key}s: {', '.join(valid)}")
        sweep = sweep or override.is_sweep_override()
    if not sweep and not any(a in ("-m", "--multirun") for a in args):
        hydra_args = [a for a in overrides if not a.startswith("hydra.") and not a.startswith("hydra/")]
        compose(hydra_args)  # raises ConfigError for unknown keys and type errors


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from da.config import config_dir
    from da.errors import ConfigError

    args = sys.argv[1:]
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        try:
            check_overrides(args)
        except ConfigError as err:
            fail(str(err))

    @hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> float:
        from da.experiment import fit

        try:
            results = fit(cfg, run_dir=HydraConfig.get().runtime.output_dir)
        except ConfigError as err:
            fail(str(err))
        except FloatingPointError as err:
            fail(str(err), code=1)
        except KeyboardInterrupt:
            fail("interrupted; completed epochs are kept in checkpoint.pt; rerun in the same folder to resume", 130)
        return results["target_acc"]

    _main()


if __name__ == "__main__":
    main()
