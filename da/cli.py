"""The ``da`` command: train, tta, list, report, predict, export (and select / portfolio across runs).

``da train [key=value ...]`` is ``python -m da.run``, ``da tta [key=value ...]`` is ``python -m da.tta``; every other
subcommand works on finished run folders.
Bad input is one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

EPILOG = """examples:
  da train                                   # MCC (the default method) on the embedded digits task (no download)
  da train method=source_only seed=1         # any key=value override of the config
  da train -m method=source_only,dann seed=0,1,2   # a sweep; ends with a summary table and chart
  da tta method=tent severity=5              # test-time adaptation on corrupted digits (da tta --help: every key)
  da list methods                            # every method with its kind and a one-line description
  da report outputs/digits/fonts_to_sklearn/dann/seed0_<time>   # (re)write a run's report.html
  da report multirun/<time>                  # summary.md / summary.png of every run under a folder
  da predict RUN my_images/ -o predictions.csv
  da export RUN --format onnx

`da <command> --help` describes each command."""


class Parser(argparse.ArgumentParser):
    """argparse with its errors as one ``error:`` line and exit status 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _train(args: argparse.Namespace, rest: list[str]) -> int:
    from da import run

    sys.argv = ["da train", *rest]
    run.main()
    return 0


def _tta(args: argparse.Namespace, rest: list[str]) -> int:
    from da.tta.__main__ import main as tta_main

    return tta_main(rest)


def _list(args: argparse.Namespace, rest: list[str]) -> int:
    import shutil
    import textwrap

    from da.catalog import LISTS

    entries = LISTS[args.what]()
    width = max((len(e.name) for e in entries), default=4)
    kind_width = max((len(e.kind) for e in entries), default=4)
    show_kind = args.what in ("methods", "validators")
    # on a terminal each entry wraps under its description's column; piped, one line per entry (for grep)
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else 0
    indent = " " * (width + 2 + (kind_width + 2 if show_kind else 0))

    def show(text: str, hang: str = "") -> None:
        print(
            textwrap.fill(text, columns, subsequent_indent=hang, break_on_hyphens=False)
            if columns > len(hang) + 20
            else text
        )

    for e in entries:
        kind = f"{e.kind:<{kind_width}}  " if show_kind else ""
        domains = f" [domains: {', '.join(e.domains)}]" if e.domains else ""
        show(f"{e.name:<{width}}  {kind}{e.description}{domains}", indent)
    if args.what == "validators":
        print()
        show("validators: selection=<name> picks a run's epoch, and each is also a `da select --rule <name>`; "
             "cross-run rules rank finished runs: `da select RUNS --rule <name>` (default ensv)")  # fmt: skip
    if args.what == "methods":
        print()
        show("kinds: transductive (labelled source + unlabelled target), unsupervised (source-free or pseudo-label "
             "methods; target images only after the source stage), inductive (a labelled target budget)")  # fmt: skip
    return 0


def _report(args: argparse.Namespace, rest: list[str]) -> int:
    from da.escape import terminal
    from da.report import REPORT
    from da.summary import write_summary

    folder = args.folder
    if not os.path.isdir(folder):
        return fail(f"{terminal(folder)}: no such folder")
    notes: list[str] = []
    try:
        if os.path.isfile(os.path.join(folder, "results.json")) and not args.summary:
            print(terminal(rewrite_report(folder, args.device)))
            return 0
        table, rows = write_summary(folder, notes)
    except OSError as err:  # a read-only folder, a full disk: nothing of the runs is touched
        return fail(f"cannot write into {terminal(err.filename or folder)}: {err.strerror or err}")
    for line in notes:
        print(f"skipped {terminal(line)}")
    if not rows:
        return fail(f"{terminal(folder)}: no finished run (results.json) under it")
    print(table, end="")
    written = "summary.md (+ .csv, .png)" if any("target_acc" in r for r in rows) else "summary.md (+ summary_tta.csv)"
    print(f"summary of {sum(r['runs'] for r in rows)} runs: {terminal(os.path.join(folder, written))}")
    missing = [r for r in _runs(folder) if not os.path.isfile(os.path.join(r, REPORT)) and _page_possible(r)]
    if missing:
        print(f"{len(missing)} run(s) have no {REPORT}: `da report <run>` writes one")
    return 0


def _runs(folder: str) -> list[str]:
    """The finished runs under ``folder`` that a summary counts (unreadable ones are skipped with a note)."""
    from da.summary import find_runs, read_results

    return [r for r in find_runs(folder) if read_results(r)[0] is not None]


def _page_possible(run_dir: str) -> bool:
    """Whether ``da report`` can write the run's page: a test-time run's comes from its files, a training run's
    needs its model.pt (committed benchmark runs keep none)."""
    from da.summary import is_test_time, read_results

    results = read_results(run_dir)[0]
    return results is not None and (is_test_time(results) or os.path.isfile(os.path.join(run_dir, "model.pt")))


def rewrite_report(run_dir: str, device: str = "cpu") -> str:
    """Write a finished run's report.html again: a training run's from its model and test images (its dataset must
    be readable), a test-time run's from its results.json and log.csv."""
    from da.errors import ConfigError
    from da.escape import terminal
    from da.summary import is_test_time, read_results

    results, why = read_results(run_dir, finished=False)
    if results is None:
        raise ConfigError(f"{terminal(run_dir)}: {why}")
    if is_test_time(results):
        from da.tta.report import write_test_time_report

        return write_test_time_report(run_dir, results)
    if not _page_possible(run_dir) and read_results(run_dir)[0] is not None:
        raise ConfigError(
            f"{terminal(run_dir)}: a finished run without its model.pt (its weights were not kept): report.html is"
            " drawn from the model's test predictions; its numbers are in results.json"
        )
    import torch

    from da.build import load_run
    from da.evaluate import predict
    from da.experiment import _test_predictions, find_baseline
    from da.report import write_report

    run = load_run(run_dir, device)
    task = run.task
    dev = torch.device(device)
    tgt = predict(run.method, task.target_test, dev)
    src = predict(run.method, task.source_test, dev) if run.method.uses_source else None
    baseline = find_baseline(run.results, run_dir)
    return write_report(run_dir, run.results, _test_predictions(tgt, src), list(task.class_names), baseline=baseline)


def _predict(args: argparse.Namespace, rest: list[str]) -> int:
    from da.build import load_run
    from da.escape import terminal
    from da.inference import check_output, check_run_folder, image_files, predict_readable, write_predictions_csv
    from da.runfolder import write_text

    out = args.output or "-"
    listed = None if out == "-" else f"{os.path.splitext(out)[0]}.skipped.txt"  # as training's skipped_files.txt
    check_run_folder(args.run)
    for path in (out, listed) if listed else ():
        check_output(path, args.run)
    files = image_files(args.images)
    run = load_run(args.run, args.device)
    kept, probs, skipped = predict_readable(run, files)
    if listed and os.path.isfile(listed):
        os.remove(listed)  # an earlier prediction's list
    if skipped:
        if listed:
            write_text(listed, "\n".join(skipped) + "\n")
        else:
            print("\n".join(f"skipped {terminal(s)}" for s in skipped), file=sys.stderr)
        print(f"skipped {len(skipped)} unreadable image(s), e.g. {terminal(skipped[0])} (all in "
              f"{terminal(listed) if listed else 'the lines above'})", file=sys.stderr)  # fmt: skip
    if not kept:
        return fail(f"{args.images}: none of its {len(files)} image file(s) is readable")
    if out == "-":
        write_predictions_csv(sys.stdout, kept, probs, run.class_names)
        return 0
    try:
        with open(out, "w", newline="") as fh:
            write_predictions_csv(fh, kept, probs, run.class_names)
    except OSError as err:
        return fail(f"cannot write {out} ({err.strerror or err})")
    print(f"{len(kept)} images -> {terminal(out)}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace, rest: list[str]) -> int:
    from da.build import load_run
    from da.inference import check_run_folder, export

    check_run_folder(args.run)
    run = load_run(args.run, "cpu")
    path, diff = export(run, args.format, args.output)
    prep = run.preprocessing
    print(
        f"{path}: input (batch, {prep['channels']}, {prep['crop']}, {prep['crop']}) normalised as "
        f"{os.path.join(args.run, 'preprocessing.json')} says; output logits over {len(prep['class_names'])} "
        f"classes; loaded back: largest difference from the run {diff:.1e}"
    )
    return 0


def _crossrun(name: str) -> Callable[[argparse.Namespace, list[str]], int]:
    def handler(args: argparse.Namespace, rest: list[str]) -> int:
        try:
            from da import crossrun
        except ImportError:
            return fail(f"da {name} needs da.crossrun, which this version does not have")
        return int(getattr(crossrun, f"main_{name}")(rest) or 0)

    return handler


def parser(groups: bool = False) -> Parser:
    """The ``da`` argument parser; ``groups``: list the config groups' options in ``da train --help``."""
    p = Parser(
        prog="da",
        description="Transfer learning and domain adaptation in PyTorch: train runs, inspect and use them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"da {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name: str, help: str, epilog: str, handler) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        s.set_defaults(handler=handler)
        return s

    add(
        "train",
        "Train one run (or a sweep with -m): `python -m da.run` with the same key=value overrides.",
        "examples:\n  da train method=dann trainer.epochs=5\n  da train -m method=source_only,dann seed=0,1,2\n"
        "  da train dataset=folder dataset.root=~/my_images dataset.source=photos dataset.target=sketches\n"
        "  da train --cfg job        # print the composed config (Hydra's flags work too)\n\n"
        "keys: `da train --cfg job` prints them all, with their values; each is declared, with its default and a "
        "comment, in a dataclass (da/config.py, da/methods/<name>.py, da/data/, da/backbones.py).\n"
        + (_groups() if groups else ""),
        _train,
    )
    s = sub.add_parser(
        "tta",
        help="Test-time adaptation: adapt a source model to a stream of corrupted batches (`python -m da.tta`); "
        "da tta --help lists every key with its default.",
        add_help=False,
    )
    s.add_argument("-h", "--help", action="store_true")  # da.tta prints its help (main passes it the arguments)
    s.add_argument("overrides", nargs=argparse.REMAINDER)
    s.set_defaults(handler=_tta)
    s = add(
        "list",
        "List what can be chosen: methods (with their kind), datasets (with their domains), backbones, or "
        "validators (with the cross-run rules of da select).",
        "examples:\n  da list methods\n  da list validators",
        _list,
    )
    s.add_argument("what", choices=["methods", "datasets", "backbones", "validators"])
    s = add(
        "report",
        "Write a run's report.html again, or summarise every run under a folder (a sweep).",
        "examples:\n  da report outputs/digits/fonts_to_sklearn/dann/seed0_<time>\n  da report multirun/<time>\n\n"
        "A run's report needs its dataset (the figures use the test images); a summary reads results.json only.",
        _report,
    )
    s.add_argument("folder", help="a run folder (holding results.json) or a folder of runs")
    s.add_argument("--summary", action="store_true", help="summarise even when FOLDER is a single run")
    s.add_argument("--device", default="cpu", help="device for the forward passes (default: cpu)")
    s = add(
        "predict",
        "Classify image files with a finished run's model; writes a CSV of the predicted class and every class's "
        "probability. Needs no training data: the run folder holds the preprocessing and class names.",
        "examples:\n  da predict RUN image.png\n  da predict RUN folder_of_images/ -o predictions.csv",
        _predict,
    )
    s.add_argument("run", help="a finished run folder")
    s.add_argument("images", help="an image file or a folder (searched recursively)")
    s.add_argument("-o", "--output", help="the CSV file to write (default: standard output)")
    s.add_argument("--device", default="cpu", help="device (default: cpu)")
    s = add(
        "export",
        "Export a finished run's network (normalised images -> logits) as TorchScript or ONNX; the file is loaded "
        "back and checked against the run.",
        "examples:\n  da export RUN --format torchscript      # RUN/model.torchscript.pt (torch.jit.load)\n"
        "  da export RUN --format onnx -o model.onnx    # onnxruntime.InferenceSession\n\n"
        "The input is what RUN/preprocessing.json describes (resize, centre crop, /255, mean/std).",
        _export,
    )
    s.add_argument("run", help="a finished run folder")
    s.add_argument("--format", required=True, choices=["torchscript", "onnx"])
    s.add_argument("-o", "--output", help="the file to write (default: inside the run folder)")
    for name, text in (
        ("select", "Choose among finished runs without target labels (a cross-run rule); see da select --help."),
        (
            "portfolio",
            "Train a set of methods and settings on one task and choose one without target labels "
            "(see da portfolio --help).",
        ),
    ):
        s = sub.add_parser(name, help=text, description=text, add_help=False)
        s.set_defaults(handler=_crossrun(name))
    return p


def _groups() -> str:
    """The options of the config groups, for ``da train --help``."""
    import textwrap

    from da.config import group_options

    return "\n".join(
        textwrap.fill(", ".join(group_options(g)), 116, initial_indent=f"  {g}=", subsequent_indent="    ")
        for g in ("method", "dataset", "backbone")
    )


def _version() -> str:
    from da import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """The ``da`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if not argv:
        p.print_help()
        return 2
    if argv[0] == "train" and any(a in ("-h", "--help") for a in argv[1:]):
        parser(groups=True).parse_args(["train", "--help"])  # prints the help (with the groups' options) and exits 0
    if argv[0] in ("train", "tta", "select", "portfolio"):  # every later argument belongs to the command itself
        args, rest = p.parse_args(argv[:1]), argv[1:]
    else:
        args, rest = p.parse_args(argv), []
    from da.errors import ConfigError

    try:
        return args.handler(args, rest)
    except ConfigError as err:
        return fail(str(err))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:  # `da list methods | head`
        sys.stderr.close()
        return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
