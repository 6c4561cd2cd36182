"""Command line: ``python -m da.run [key=value ...]`` (Hydra). A thin shell around :func:`da.fit`.

Bad input (an unknown method, dataset, backbone or key; an invalid value; missing data; a run folder that
cannot be written) prints one line and exits with status 2, without a traceback — for single runs and for
``-m`` sweeps alike, before Hydra creates any folder.
"""

from __future__ import annotations

import itertools
import logging
import sys

GROUPS = ("method", "dataset", "backbone")
MAX_CHECKED_COMBINATIONS = 64


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr (and to the run's run.log when Hydra opened one) and exit with ``code``."""
    record = logging.LogRecord("da", logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _combinations(parsed) -> list[list[str]]:
    """Override lists to check: every combination of swept groups (method=a,b), the first value of other
    choice/range sweeps; sweeps that cannot be enumerated (Optuna's interval/tag) are left to the sweeper."""
    fixed, grouped = [], []
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(override.input_line)
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # interval(...) / tag(...) sweeps: sampled by the sweeper, not enumerable here
            continue
        if override.key_or_group in GROUPS:
            grouped.append([f"{key}={v}" for v in values])
        elif values:
            fixed.append(f"{key}={values[0]}")
    combos = [list(c) for c in itertools.product(*grouped)] if grouped else [[]]
    return [fixed + c for c in combos[:MAX_CHECKED_COMBINATIONS]]


def check_overrides(args: list[str]) -> None:
    """Catch bad overrides and unwritable run folders before Hydra starts, with one readable line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    from da.build import typed_configs
    from da.config import compose, group_options, one_line
    from da.errors import ConfigError
    from da.runfolder import check_run_dir

    overrides = [a for a in args if not a.startswith("-")]
    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise ConfigError(f"cannot parse the command line: {one_line(err)}") from err
    for override in parsed:
        key = override.key_or_group
        if key in GROUPS and override.value_type is not None:
            try:
                values = list(override.sweep_string_iterator()) if override.is_sweep_override() else None
            except Exception:
                values = None
            for value in values or [override.get_value_element_as_str()]:
                if value not in group_options(key):
                    raise ConfigError(f"unknown {key} {value!r}; valid {key}s: {', '.join(group_options(key))}")
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{override.input_line} is a sweep: add -m (python -m da.run -m ...)")
    for combo in _combinations(parsed):
        cfg = compose(combo, return_hydra_config=True)
        check_run_dir(str(OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
        with open_dict(cfg):
            del cfg["hydra"]
        typed_configs(cfg)  # unknown keys and invalid values of every section


def optuna_args(args: list[str]) -> list[str]:
    """An Optuna sweep maximises the label-free score ``main`` returns: add ``direction=maximize`` (the plugin's
    default is minimize, which would pick the worst configuration) and require a validator as ``selection``."""
    from da.errors import ConfigError

    if not any(a.replace("+", "").startswith("hydra/sweeper=optuna") for a in args):
        return args
    direction = [a for a in args if a.startswith("hydra.sweeper.direction=")]
    if direction and direction[-1].split("=", 1)[1] != "maximize":
        raise ConfigError("hydra.sweeper.direction must be maximize: da returns a validator score (higher = better)")
    if not any(a.startswith("selection=") and a != "selection=last" for a in args):
        raise ConfigError("an Optuna sweep maximises a label-free score: add selection=<validator> (e.g. snd)")
    return args if direction else [*args, "hydra.sweeper.direction=maximize"]


def torchrun_args(args: list[str]) -> list[str]:
    """Under ``torchrun`` every rank runs this CLI; ranks other than 0 write nothing to the run folder: their
    Hydra folder (run.log) is a temporary one, removed at exit, and their console shows warnings and errors
    only (:func:`da.experiment.fit` hands them rank 0's run folder). One run per torchrun: a sweep goes through
    a Hydra launcher instead."""
    import atexit
    import os
    import shutil
    import tempfile

    from da.errors import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("torchrun trains one run over several processes; sweep with -m without torchrun")
    rank = int(os.environ["RANK"])
    if rank == 0:
        return args
    folder = tempfile.mkdtemp(prefix=f"da-rank{rank}-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return [*args, f"hydra.run.dir={folder}", "hydra.output_subdir=null", "hydra.job_logging.root.level=WARNING"]


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from da.config import config_dir
    from da.errors import ConfigError

    args = sys.argv[1:]
    try:
        args = torchrun_args(optuna_args(args))
    except ConfigError as err:
        fail(str(err))
    sys.argv[1:] = args
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):  # not --help, --cfg, ...
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
        # what a sweeper (Optuna) maximises: the selected checkpoint's label-free score, never a target label
        return results["selection"]["score"]

    _main()


if __name__ == "__main__":
    main()
