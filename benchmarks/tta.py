"""Test-time adaptation on the embedded corruption benchmark: ``python -m benchmarks.tta [out=DIR] [stage=...]``.

For each seed (0, 1, 2) the source model is trained once (``python -m da.run`` with ``da.tta.config.SOURCE_STAGE``:
a ResNet-18 from scratch, no bottleneck, on the clean scikit-learn digits; ``runs/source/seed<s>``), then every
test-time method streams the 15 corruptions of its target test split at severity 5 in the ``continual`` and the
``mixed`` protocol from that model (``runs/<protocol>/<method>/seed<s>``; a run whose results.json exists is
skipped, so a rerun resumes). Cut to fit two shared CPU cores: the source model trains 5 epochs (not 20) and each
corruption streams 256 of its 540 images (drawn by the seed; the same for every method). CoTTA's augmentations run
without horizontal flips (``method.hflip=0``): a mirrored digit is another glyph. Every other key is the methods'
default.

The report (``tta.md`` and ``tta.csv`` beside ``runs/``) gives, per protocol and method, the online error (%) of
each corruption (mean over seeds) and the mean over corruptions (mean ± std over seeds), with the published
CIFAR-10-C numbers of ``published.yaml`` (``tta_cifar10c``: WRN-28, severity 5) beside — another data set and
network, for orientation only. Every number comes from a results.json.
"""

from __future__ import annotations

import os
import sys
import time
from statistics import mean, stdev

from benchmarks.collect import load_published
from benchmarks.suite import parse_options
from da.runfolder import read_json

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (0, 1, 2)
METHODS = ("source", "bn_adapt", "tent", "eata", "sar", "cotta")
PROTOCOLS = ("continual", "mixed")
SEVERITY = 5
#: the source model's training, cut for two shared CPU cores: 5 epochs (its clean test accuracy is ~98% from the
#: third epoch on; the default 20 took an hour per seed there)
SOURCE_OVERRIDES = ["trainer.epochs=5"]
#: 256 of the 540 images of each corruption (4 batches of 64), drawn by the seed: the same images for every method
STREAM_OVERRIDES = ["protocol.num_samples=256"]
METHOD_OVERRIDES = {"cotta": ["method.hflip=0.0"]}
PUBLISHED_FOR = {"continual": ("mariodoebler_continual", "cotta_paper"), "mixed": ("mariodoebler_mixed",)}


def source_dir(out: str, seed: int) -> str:
    return os.path.join(out, "source", f"seed{seed}")


def run_dir(out: str, protocol: str, method: str, seed: int) -> str:
    return os.path.join(out, protocol, method, f"seed{seed}")


def train_source(out: str, seed: int, extra: list[str]) -> None:
    from da.config import compose
    from da.experiment import fit
    from da.tta.config import SOURCE_STAGE

    folder = source_dir(out, seed)
    if os.path.isfile(os.path.join(folder, "results.json")):
        return
    print(f"[{time.strftime('%H:%M:%S')}] source model seed {seed}", flush=True)
    overrides = [*SOURCE_STAGE, *SOURCE_OVERRIDES, f"seed={seed}", "trainer.progress_bar=false", *extra]
    fit(compose(overrides), run_dir=folder, quiet=True)


def sweep(out: str, extra: list[str], seeds: tuple[int, ...] = SEEDS) -> None:
    from da.tta.run import fit_stream

    cache: dict = {}  # corrupted images and source tasks, shared by every run of this process
    for seed in seeds:  # seed by seed: an interrupted sweep leaves whole seeds; seeds=1 runs one (in parallel)
        train_source(out, seed, [])
        for protocol in PROTOCOLS:
            for method in METHODS:
                folder = run_dir(out, protocol, method, seed)
                if os.path.isfile(os.path.join(folder, "results.json")):
                    continue
                overrides = [
                    f"method={method}",
                    f"protocol={protocol}",
                    f"severity={SEVERITY}",
                    f"seed={seed}",
                    f"init={os.path.abspath(source_dir(out, seed))}",
                    "quiet=true",
                    *STREAM_OVERRIDES,
                    *METHOD_OVERRIDES.get(method, []),
                    *extra,
                ]
                started = time.time()
                r = fit_stream(overrides, run_dir=folder, cache=cache)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {protocol} {method} seed {seed}: mean error "
                    f"{100 * r['mean_error']:.1f}% ({time.time() - started:.0f}s)",
                    flush=True,
                )


def collect(out: str) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = {}
    for protocol in PROTOCOLS:
        for method in METHODS:
            for seed in SEEDS:
                r = read_json(os.path.join(run_dir(out, protocol, method, seed), "results.json"))
                if r is not None:
                    runs.setdefault((protocol, method), []).append(r)
    return runs


def _ms(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{mean(values):.1f} ± {stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f} (1 seed)"


def report(out: str) -> str:
    runs = collect(out)
    published = load_published("tta_cifar10c")
    sources = [read_json(os.path.join(source_dir(out, s), "results.json")) for s in SEEDS]
    clean = [100 * (1 - r["target_acc"]) for r in sources if r]
    lines = [
        f"Test-time adaptation on the embedded corruption benchmark (`data=digits_c`, severity {SEVERITY}): online "
        "error (%) of each corruption (mean over seeds) and the mean over corruptions (mean ± std over seeds). "
        "Source model: ResNet-18 from scratch, no bottleneck, trained on the clean scikit-learn digits "
        f"(5 epochs; clean test error {_ms(clean)} %); the stream is their corrupted test split, 256 of its 540 "
        "images per corruption (drawn by the seed), batch 64. Published: CIFAR-10-C, WRN-28, severity 5 "
        "(`benchmarks/published.yaml`, `tta_cifar10c`) — another data set and network, for orientation only.",
        "",
        "Made by `python -m benchmarks.tta` (every number from the runs' results.json).",
    ]
    csv = ["protocol,method,seeds,domain,error_mean,error_std"]
    for protocol in PROTOCOLS:
        order = next((rs[0]["protocol"]["order"] for (p, _), rs in runs.items() if p == protocol), [])
        short = [d.replace("_noise", "").replace("_blur", "").replace("_transform", "")[:8] for d in order]
        refs = [r for r in PUBLISHED_FOR[protocol] if r in published]
        lines += ["", f"### {protocol}", ""]
        head = ["method", "seeds", *short, "mean", *[f"published ({r})" for r in refs]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in METHODS:
            rs = runs.get((protocol, method), [])
            if not rs:
                continue
            cells = [f"{100 * mean(r['per_domain_error'][d] for r in rs):.1f}" for d in order]
            means = [100 * r["mean_error"] for r in rs]
            pub = [str((published[r]["methods"].get(method) or {}).get("mean", "—")) for r in refs]
            lines.append("| " + " | ".join([method, str(len(rs)), *cells, _ms(means), *pub]) + " |")
            for d in order:
                v = [100 * r["per_domain_error"][d] for r in rs]
                csv.append(f"{protocol},{method},{len(rs)},{d},{mean(v):.2f},{stdev(v) if len(v) > 1 else 0:.2f}")
            csv.append(
                f"{protocol},{method},{len(rs)},mean,{mean(means):.2f},{stdev(means) if len(means) > 1 else 0:.2f}"
            )
    text = "\n".join(lines) + "\n"
    folder = os.path.dirname(os.path.abspath(out))
    with open(os.path.join(folder, "tta.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(folder, "tta.csv"), "w") as fh:
        fh.write("\n".join(csv) + "\n")
    return text


def main(argv: list[str] | None = None) -> None:
    opts, extra = parse_options(sys.argv[1:] if argv is None else argv, ("out", "stage", "seeds"))
    out = opts.get("out") or os.path.join(HERE, "results", "tta", "runs")
    seeds = tuple(int(s) for s in opts["seeds"].split(",")) if opts.get("seeds") else SEEDS
    if opts.get("stage", "all") in ("all", "sweep"):
        sweep(out, extra, seeds)
    if opts.get("stage", "all") in ("all", "report"):
        print(report(out))


if __name__ == "__main__":
    main()
