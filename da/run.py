"""Command line: ``python -m da.run [key=value ...]`` (Hydra). A thin shell around :func:`da.fit`.

Bad input (an unknown method, dataset, backbone or key; an invalid value; missing data; a run folder that
cannot be written) prints one line and exits with status 2, without a traceback — for single runs and for
``-m`` sweeps alike, before Hydra creates any folder.

Sweeps run on any Hydra launcher: ``hydra/launcher=parallel`` (or the plugin's ``joblib``: jobs in parallel on
this machine) and ``hydra/launcher=slurm`` (or ``submitit_slurm``: a SLURM cluster), configured in
``configs/hydra/launcher/``. A job that fails in a launcher's worker process writes its line to its run.log and
hands its error back; the command prints that one line and exits with the job's status, once the other jobs are
done. The jobs of one sweep never share a run folder (checked before any starts); jobs of different commands
aimed at one folder meet its lock (:class:`da.runfolder.RunLock`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator

GROUPS = ("method", "dataset", "backbone")
MAX_CHECKED_COMBINATIONS = 64
# hydra/launcher options of Hydra's plugins -> (the plugin's module, its pip package); the shipped options in
# configs/hydra/launcher/ (parallel, slurm) extend one of these through their defaults list
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
# interpolations in a sweep's folder that differ between any two jobs of it
UNIQUE_PER_JOB = ("hydra.job.num", "hydra.job.id", "hydra.job.override_dirname")


def log_error(message: str) -> None:
    """The error line in the run's run.log, when Hydra opened one (its job logging's file handler)."""
    record = logging.LogRecord("da", logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr (and to the run's run.log when Hydra opened one) and exit with ``code``."""
    log_error(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def exit_code(err: BaseException) -> int:
    """The CLI's status for a job's error: 1 for a diverged run, 2 for bad input."""
    return 1 if isinstance(err, FloatingPointError) else 2


@contextlib.contextmanager
def one_line_job_errors() -> Iterator[None]:
    """A launcher (joblib, submitit) runs jobs in other processes and hands each one's error back in Hydra's
    ``JobReturn``; reading its ``return_value`` prints a header and raises the error, which Hydra reports as a
    traceback. Within the block, a job's ``ConfigError`` or divergence ends the command with one line instead
    (after the launcher has waited for the other jobs)."""
    from hydra.core.utils import JobReturn, JobStatus

    from da.errors import ConfigError

    plain = JobReturn.return_value

    def return_value(job: JobReturn):
        error = job._return_value
        if job.status == JobStatus.FAILED and isinstance(error, ConfigError | FloatingPointError):
            fail(str(error), exit_code(error))
        return plain.fget(job)

    JobReturn.return_value = property(return_value, plain.fset)  # type: ignore[method-assign]
    try:
        yield
    finally:
        JobReturn.return_value = plain  # type: ignore[method-assign]


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
    from da.config import group_options, one_line
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
    check_launcher(parsed, multirun)
    for i, combo in enumerate(_combinations(parsed)):
        cfg = _compose(combo)
        check_run_dir(str(OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
        if multirun and i == 0:
            check_distinct_folders(parsed, OmegaConf.to_container(cfg.hydra.sweep, resolve=False))
        with open_dict(cfg):
            del cfg["hydra"]
        typed_configs(cfg)  # unknown keys and invalid values of every section


def _compose(overrides: list[str]):
    """The config with Hydra's own node; a value a structured Hydra node (a launcher's) rejects is one line that
    says why, not Hydra's bare "Error merging override"."""
    from da.config import compose
    from da.errors import ConfigError

    try:
        return compose(overrides, return_hydra_config=True)
    except ConfigError as err:
        cause = err.__cause__
        while cause is not None and cause.__cause__ is not None:
            cause = cause.__cause__
        match = re.match(r"Error merging override (\S+?)=", str(err))
        if not match or cause is None or not str(cause).strip():
            raise
        raise ConfigError(f"invalid value for {match.group(1)}: {str(cause).strip().splitlines()[0]}") from err


def launcher_options() -> list[str]:
    """Every hydra/launcher option: Hydra's basic one, the installed plugins' and the shipped ones."""
    from da.config import config_dir

    folder = os.path.join(config_dir(), "hydra", "launcher")
    shipped = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
    plugins = [name for name, (module, _) in LAUNCHER_PLUGINS.items() if importlib.util.find_spec(module)]
    return ["basic", *plugins, *shipped]


def launcher_plugin(name: str) -> str | None:
    """The plugin option a hydra/launcher option runs on: itself, or the first entry of a shipped config's defaults."""
    import yaml

    from da.config import config_dir

    if name in LAUNCHER_PLUGINS:
        return name
    path = os.path.join(config_dir(), "hydra", "launcher", f"{name}.yaml")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        defaults = (yaml.safe_load(fh) or {}).get("defaults") or []
    return next((d for d in defaults if d in LAUNCHER_PLUGINS), None)


def check_launcher(parsed, multirun: bool) -> None:
    """``hydra/launcher=<name>`` and ``hydra.launcher.<key>=`` overrides: a launcher runs the jobs of a sweep (-m);
    its plugin must be installed, SLURM needs sbatch, and every key must be one of the launcher's."""
    from da.errors import ConfigError

    launcher = [o for o in parsed if o.key_or_group == "hydra/launcher"]
    options = [o for o in parsed if o.key_or_group.startswith("hydra.launcher.")]
    if not launcher:
        if options:
            raise ConfigError(
                f"{options[0].input_line} sets an option of a launcher, but none is chosen: add hydra/launcher="
                f"<{'|'.join(n for n in launcher_options() if n != 'basic')}> (and -m)"
            )
        return
    name = launcher[-1].get_value_element_as_str()
    if name == "basic":
        return
    if not multirun:
        raise ConfigError(f"hydra/launcher={name} launches the jobs of a sweep: add -m (python -m da.run -m ...)")
    plugin = launcher_plugin(name)
    if plugin is None:
        raise ConfigError(f"unknown launcher {name!r}; valid launchers: {', '.join(launcher_options())}")
    module, package = LAUNCHER_PLUGINS[plugin]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"hydra/launcher={name} needs {package}: pip install 'da[launchers]'")
    missing = [c for c in ("sbatch", "srun") if plugin == "submitit_slurm" and shutil.which(c) is None]
    if missing:
        raise ConfigError(
            f"hydra/launcher={name} submits jobs to SLURM, but {' and '.join(missing)} is not on this machine's PATH: "
            "run the command on the cluster's login node (hydra/launcher=submitit_local runs the same jobs here)"
        )
    keys = list(_compose([launcher[-1].input_line]).hydra.launcher)
    for option in options:
        key = option.key_or_group.split(".")[2]
        if key not in keys:
            raise ConfigError(
                f"unknown key hydra.launcher.{key} for hydra/launcher={name}; valid keys: "
                + ", ".join(k for k in keys if k != "_target_")
            )


def check_distinct_folders(parsed, sweep: dict) -> None:
    """Two jobs of one sweep must never write the same run folder: every swept key must appear in
    ``hydra.sweep.dir``/``subdir`` (a group through any of its keys, e.g. ``${method.name}``), unless the folder
    names something unique to each job (``${hydra.job.num}``, as the default subdir does)."""
    from da.errors import ConfigError

    pattern = f"{sweep.get('dir', '')}/{sweep.get('subdir', '')}"
    used = re.findall(r"\$\{([\w.]+)\}", pattern)
    if any(u.startswith(UNIQUE_PER_JOB) for u in used):
        return
    for override in parsed:
        key = override.key_or_group
        if not override.is_sweep_override() or key.startswith("hydra"):
            continue
        try:
            if len(set(override.sweep_string_iterator())) < 2:
                continue
        except Exception:  # interval(...) / tag(...): many values
            pass
        dotted = key.replace("/", ".")
        if not any(u == dotted or u.startswith(dotted + ".") for u in used):
            example = f"${{{dotted}.name}}" if key in GROUPS else f"${{{dotted}}}"
            raise ConfigError(
                f"the jobs of {override.input_line} would share a run folder: hydra.sweep.subdir "
                f"({sweep.get('subdir')}) does not name {key}; add {example} (or ${{hydra.job.num}}) to it"
            )


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
    import tempfile

    from da.distributed import launched_by_torchrun
    from da.errors import ConfigError

    if not launched_by_torchrun():
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
    cli_pid = os.getpid()  # a job in another process (a launcher's worker) hands its error back instead of exiting
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
        except (ConfigError, FloatingPointError) as err:
            if os.getpid() != cli_pid:  # joblib / submitit worker: the CLI prints it (one_line_job_errors)
                log_error(str(err))
                raise
            fail(str(err), code=exit_code(err))
        except KeyboardInterrupt:
            fail("interrupted; completed epochs are kept in checkpoint.pt; rerun in the same folder to resume", 130)
        # what a sweeper (Optuna) maximises: the selected checkpoint's label-free score, never a target label
        return results["selection"]["score"]

    with one_line_job_errors():
        _main()


if __name__ == "__main__":
    main()
