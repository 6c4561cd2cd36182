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

A refused run (its folder locked by another run, or holding another config's checkpoint) writes nothing there:
Hydra is told ``hydra.output_subdir=null`` and the CLI writes Hydra's record (``.hydra/``) itself once the run
has begun; a folder Hydra made for a run that fails before it begins is removed. Ctrl-C at any moment is one
line and exit status 130.
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
OPTUNA_PLUGIN = "hydra_plugins.hydra_optuna_sweeper"  # hydra/sweeper=optuna (pip package hydra-optuna-sweeper)
# interpolations in a sweep's folder that differ between any two jobs of it
UNIQUE_PER_JOB = ("hydra.job.num", "hydra.job.id", "hydra.job.override_dirname")


def log_error(message: str) -> None:
    """The error line in the run's run.log, when Hydra opened one (its job logging's file handler)."""
    record = logging.LogRecord("da", logging.ERROR, __file__, 0, "error: %s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def fail(message: str, code: int = 2, log: bool = True) -> None:
    """Print one line to stderr (and to the run's run.log when Hydra opened one and ``log``) and exit with
    ``code``."""
    if log:
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
    from da.runfolder import TRAINING, check_folder, check_run_dir

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
        folder = check_run_dir(str(OmegaConf.select(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")))
        if not multirun and os.path.isdir(folder):  # another kind's run: refused before Hydra opens run.log there
            check_folder(folder, TRAINING, lambda config: [])
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
    plugins = [name for name, (module, _) in LAUNCHER_PLUGINS.items() if plugin_installed(module)]
    return ["basic", *plugins, *shipped]


def plugin_installed(module: str) -> bool:
    """Whether a Hydra plugin's module can be imported; without any plugin its namespace package
    (``hydra_plugins``) is missing too, and ``find_spec`` of a submodule raises instead of returning None."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


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
    if not plugin_installed(module):
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
    if not plugin_installed(OPTUNA_PLUGIN):
        raise ConfigError("hydra/sweeper=optuna needs hydra-optuna-sweeper: pip install 'da[sweep]'")
    direction = [a for a in args if a.startswith("hydra.sweeper.direction=")]
    if direction and direction[-1].split("=", 1)[1] != "maximize":
        raise ConfigError("hydra.sweeper.direction must be maximize: da returns a validator score (higher = better)")
    if not any(a.startswith("selection=") and a != "selection=last" for a in args):
        raise ConfigError("an Optuna sweep maximises a label-free score: add selection=<validator> (e.g. snd)")
    return args if direction else [*args, "hydra.sweeper.direction=maximize"]


def torchrun_args(args: list[str]) -> list[str]:
    """Under ``torchrun`` every rank runs this CLI; ranks other than 0 write nothing to the run folder: their
    Hydra folder (run.log) is a temporary one, removed as soon as Hydra has set up the job (:func:`rank_folder`),
    and their console shows warnings and errors only (:func:`da.experiment.fit` hands them rank 0's run folder).
    Every rank stops when torchrun dies (:func:`da.distributed.exit_with_launcher`). One run per torchrun: a
    sweep goes through a Hydra launcher instead."""
    import atexit
    import signal
    import tempfile

    from da.distributed import exit_with_launcher, launched_by_torchrun
    from da.errors import ConfigError

    if not launched_by_torchrun():
        return args
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("torchrun trains one run over several processes; sweep with -m without torchrun")
    exit_with_launcher()
    rank = int(os.environ["RANK"])
    if rank == 0:
        return args
    folder = tempfile.mkdtemp(prefix=f"da-rank{rank}-")
    os.environ[RANK_FOLDER] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # torchrun's stop: atexit runs
    return [*args, f"hydra.run.dir={folder}", f"{NO_RECORD}", "hydra.job_logging.root.level=WARNING"]


SWEEP_SUMMARY = "++hydra.callbacks.sweep_summary._target_"  # da.report.SweepSummary: print + write the summary
RANK_FOLDER = "DA_RANK_HYDRA_DIR"  # the temporary Hydra folder of a torchrun rank other than 0
NO_RECORD = "hydra.output_subdir=null"  # Hydra writes no .hydra record; da.run writes it once the run is accepted


def rank_folder_done() -> None:
    """A torchrun rank other than 0: Hydra has opened its run.log, so its temporary folder goes now (the file
    stays open, writable, until exit), and SIGTERM takes its default action again. A torchrun killed at any later
    moment leaves no ``da-rank*`` folder behind."""
    import signal

    folder = os.environ.pop(RANK_FOLDER, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def record_subdir(args: list[str]) -> str | None:
    """Where the run's Hydra record goes: ``hydra.output_subdir`` as given (Hydra's default ``.hydra``), None
    when it is null."""
    given = [a.split("=", 1)[1] for a in args if a.lstrip("+").startswith("hydra.output_subdir=")]
    value = given[-1] if given else ".hydra"
    return None if value in ("null", "") else value


def write_record(cfg, folder: str, subdir: str) -> None:
    """What Hydra writes to ``<run>/.hydra``: config.yaml (the job's config), hydra.yaml and overrides.yaml,
    each atomically."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from da.runfolder import write_text

    record = OmegaConf.to_container(HydraConfig.instance().cfg, enum_to_str=True)  # plain: nothing resolved
    record["hydra"]["output_subdir"] = subdir  # as Hydra would have written it
    overrides = record["hydra"]["overrides"]
    overrides["hydra"] = [o for o in overrides["hydra"] if o != NO_RECORD]
    os.makedirs(folder, exist_ok=True)
    try:
        for name, node in (("config.yaml", cfg), ("hydra.yaml", record), ("overrides.yaml", overrides["task"])):
            write_text(os.path.join(folder, name), OmegaConf.to_yaml(node))
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: a record of an earlier start stays
        raise


def record_listener(cfg, run_dir: str, subdir: str):
    """A listener of the training loop that writes Hydra's record once the run has begun: the folder is this
    run's (locked, resume check passed) and everything that can refuse it has been checked."""
    from da.callbacks import Callback

    class HydraRecord(Callback):
        def on_fit_start(self, trainer) -> None:
            write_record(cfg, os.path.join(run_dir, subdir), subdir)

    return HydraRecord()


def claim_run_dir(cfg, run_dir: str):
    """Take the run folder before anything is written to it (rank 0 only): its lock (held through
    :func:`da.fit`, which takes it again) and the resume check. A refusal is a ConfigError and leaves the folder
    as it was (:func:`da.runfolder.check_folder`: another kind's run, a finished run of another config). Returns
    the held lock (a context manager that releases it)."""
    from omegaconf import OmegaConf

    from da.checkpoint import config_differences, fingerprint, read_resumable
    from da.experiment import REPLACE_HINT
    from da.runfolder import TRAINING, RunLock, check_folder

    if os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    lock = RunLock(run_dir, reentrant=True).acquire()
    try:
        resume = OmegaConf.select(cfg, "trainer.resume", default=True)
        signature = fingerprint(OmegaConf.to_container(cfg, resolve=True))
        differs = lambda config: config_differences(fingerprint(config), signature)  # noqa: E731
        if resume:
            read_resumable(run_dir, signature, mmap=True)  # its config only: fit reads the weights
        # another kind's run, or a finished run of another config: refused; fit moves a replaced run aside
        check_folder(run_dir, TRAINING, differs, replace=not resume, hint=REPLACE_HINT)
    except BaseException:
        lock.release(restore=True)
        raise
    return lock


STARTUP_INTERRUPTED = "during start-up; nothing was trained"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop) raised where Ctrl-C raises KeyboardInterrupt: the run stops the same
    way (workers stopped, completed epochs kept) and the command exits with 143 (128 + SIGTERM)."""


def raise_terminated(signum, frame) -> None:
    raise Terminated


def stopped(err: BaseException) -> tuple[str, int]:
    """What stopped the run and the exit status: ("terminated", 143) for SIGTERM, ("interrupted", 130) for Ctrl-C."""
    return ("terminated", 143) if isinstance(err, Terminated) else ("interrupted", 130)


def main() -> None:
    """The CLI; Ctrl-C (SIGTERM) at any moment, start-up included, is one line and exit status 130 (143)."""
    import signal

    signal.signal(signal.SIGINT, interrupted_at_start)  # until Hydra hands the job over (_main)
    signal.signal(signal.SIGTERM, interrupted_at_start)
    try:
        _cli()
    except KeyboardInterrupt as err:
        word, code = stopped(err)
        fail(f"{word} {STARTUP_INTERRUPTED}", code, log=False)


def interrupted_at_start(signum, frame) -> None:
    """Ctrl-C or SIGTERM while importing and composing: a KeyboardInterrupt raised inside an import can leave a
    library half imported (and a later error that is not one line), and nothing has been written yet: end here."""
    import signal

    word, code = stopped(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
    print(f"error: {word} {STARTUP_INTERRUPTED}", file=sys.stderr, flush=True)
    folder = os.environ.get(RANK_FOLDER)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(code)


def _cli() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from da.config import config_dir
    from da.errors import ConfigError

    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) is dropped, not a traceback
    args = sys.argv[1:]
    cli_pid = os.getpid()  # a job in another process (a launcher's worker) hands its error back instead of exiting
    try:
        args = torchrun_args(optuna_args(args))
    except ConfigError as err:
        fail(str(err))
    subdir = record_subdir(args)
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):  # not --help, --cfg, ...
        try:
            check_overrides(args)
        except ConfigError as err:
            fail(str(err))
        if NO_RECORD not in args:
            args = [*args, NO_RECORD]  # da writes the record (record_listener) once the run has begun
        callbacks = any(a.lstrip("+~").startswith("hydra.callbacks") for a in args)  # the user's own say
        if any(a in ("-m", "--multirun") for a in args) and not callbacks:
            args = [*args, f"{SWEEP_SUMMARY}=da.report.SweepSummary"]  # a summary table + chart when the sweep ends
    sys.argv[1:] = args
    record = subdir if NO_RECORD in args and os.environ.get("RANK", "0") == "0" else None

    @hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> float:
        import signal
        import threading

        from da.experiment import fit
        from da.runfolder import detach_logs, drop_unstarted, only_hydra_log

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt: the run keeps its epochs
            if signal.getsignal(signal.SIGTERM) is interrupted_at_start:  # not a torchrun rank's own handler
                signal.signal(signal.SIGTERM, raise_terminated)
        run_dir = os.path.abspath(HydraConfig.get().runtime.output_dir)
        in_worker = os.getpid() != cli_pid  # joblib / submitit worker: the CLI prints its error (one_line_job_errors)
        rank_folder_done()
        fresh = only_hydra_log(run_dir)
        try:
            claim = claim_run_dir(cfg, run_dir)
        except ConfigError as err:  # another run's folder (locked, or another config's checkpoint): not ours to touch
            detach_logs(run_dir)
            if in_worker:
                raise
            fail(str(err), log=False)
        listeners = [record_listener(cfg, run_dir, record)] if record else []
        with claim:
            try:
                results = fit(cfg, run_dir=run_dir, callbacks=listeners)
            except (ConfigError, FloatingPointError) as err:
                logged = not drop_unstarted(run_dir, fresh)
                if in_worker:
                    if logged:
                        log_error(str(err))
                    raise
                fail(str(err), code=exit_code(err), log=logged)
            except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (Terminated)
                word, code = stopped(err)
                if drop_unstarted(run_dir, fresh):
                    fail(f"{word} {STARTUP_INTERRUPTED}", code, log=False)
                fail(f"{word}; completed epochs are kept in checkpoint.pt; rerun in the same folder to resume", code)
        # what a sweeper (Optuna) maximises: the selected checkpoint's label-free score, never a target label
        return results["selection"]["score"]

    with one_line_job_errors():
        _main()


if __name__ == "__main__":
    main()
