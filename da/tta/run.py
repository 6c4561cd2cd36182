"""``fit_stream(cfg)``: one test-time run end to end, in its own locked run folder.

The config is checked and the data found *before* the folder is touched (a refused run leaves nothing behind);
the folder must hold no training run and no finished test-time run of another config (:func:`claim_test_time`).
Then: the source model (``init=source``: ``da.experiment.source_checkpoint`` trains ``source_only`` in
``<run>/source_stage/``, reused when finished; or ``init=<run folder>``), read through ``da.build.load_run``; the
domains (the corruption benchmark at the run's severity); the protocol's stream; config.yaml, once all of these
have passed; and the loop — for each batch,
reset where the protocol says, ``method.step(images)`` (no label), and the returned logits scored against the
labels the runner kept. log.csv gets one row per batch, results.json the per-domain online error, their mean, the
protocol and the source run. The label-free collapse monitor (``da.monitor.CollapseMonitor``) watches the
predicted-class marginal over windows of one domain's length (results.json ``collapse.epoch`` is the index of the
batch that closed the window; a label-shifted stream is expected to trip it).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from da.build import load_run
from da.checkpoint import config_differences
from da.errors import ConfigError
from da.monitor import CollapseMonitor
from da.results import git_commit, versions
from da.runfolder import TEST_TIME, claim_folder, locked_run_dir, write_json, write_text
from da.runtime import seed_everything, select_device
from da.tta import corruptions
from da.tta.config import TTAConfigs, compose, typed
from da.tta.methods import StreamContext, TTAMethod
from da.tta.report import write_page
from da.tta.stream import Domain, build_stream, sample_indices

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
SOURCE_STAGE_DIR = "source_stage"


def default_run_dir(c: TTAConfigs) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(
        "outputs", "tta", c.data.name, c.protocol.name, c.method.name, f"seed{c.run.seed}_sev{c.run.severity}_{stamp}"
    )


def source_run(cfg: DictConfig, c: TTAConfigs, run_dir: str) -> str:
    """The source model's run folder: ``init`` itself, or ``<run_dir>/source_stage`` trained (or reused) first."""
    if c.run.init != "source":
        return os.path.abspath(os.path.expanduser(c.run.init))
    from da.config import compose as compose_da
    from da.experiment import source_checkpoint

    da_cfg = compose_da([*c.run.source, f"seed={c.run.seed}", f"device={c.run.device}"])
    source_checkpoint(da_cfg, run_dir, quiet=c.run.quiet)
    return os.path.join(run_dir, SOURCE_STAGE_DIR)


def check_source(c: TTAConfigs) -> None:
    """Refused before the TTA folder is touched (and before a source stage trains): ``init=<run>`` must be a
    finished run folder, and the source run's dataset one the stream's data can be made from."""
    if c.run.init == "source":
        from da.config import compose as compose_da

        check_dataset(c, str(compose_da([*c.run.source, f"seed={c.run.seed}"]).dataset.name))
        return
    folder = os.path.expanduser(c.run.init)
    if not os.path.isfile(os.path.join(folder, "model.pt")) or not os.path.isfile(os.path.join(folder, "config.yaml")):
        stage = os.path.join(folder, "source_stage")
        if os.path.isfile(os.path.join(stage, "model.pt")):  # a test-time run: the model it adapted is its stage's
            raise ConfigError(f"init={c.run.init}: a test-time run; the source model it adapted is init={stage}")
        raise ConfigError(f"init={c.run.init}: not a finished run folder (no model.pt and config.yaml); or init=source")
    dataset = OmegaConf.select(OmegaConf.load(os.path.join(folder, "config.yaml")), "dataset.name")
    if dataset is not None:
        check_dataset(c, str(dataset))


def check_dataset(c: TTAConfigs, dataset: str) -> None:
    """The source run's dataset must have a known normalisation, and be the digits task for ``data=digits_c``."""
    if dataset not in corruptions.NORMALISATION:
        raise ConfigError(
            f"the source run's dataset {dataset!r} has no known normalisation for {c.data.name}; "
            f"valid: {', '.join(corruptions.NORMALISATION)}"
        )
    if c.data.name == "digits_c" and dataset != "digits":
        raise ConfigError(f"data=digits_c corrupts the embedded digits task; the source run is {dataset}")


def build_domains(c: TTAConfigs, task, cache: dict, data_root: str) -> list[Domain]:
    """The run's domains: each corruption of ``c.data`` at the run's severity, its samples cut and ordered by the
    seed (:func:`da.tta.stream.sample_indices`); corrupted images come from ``cache`` when already made."""
    dataset = task.name
    check_dataset(c, dataset)
    mean, std = corruptions.NORMALISATION[dataset]
    domains = []
    if c.data.name == "digits_c":
        clean = task.target_test
        key_data = (repr(task.target), tuple(clean.x.shape), float(clean.x.sum()))
        for i, name in enumerate(c.data.corruptions):
            idx = sample_indices(len(clean), c.protocol.num_samples, c.run.seed, i)
            key = ("digits_c", key_data, name, c.run.severity, c.data.work_size, c.data.corruption_seed)
            store = cache.setdefault(key, {})
            missing = np.array([j for j in idx.tolist() if j not in store], dtype=np.int64)
            if len(missing):
                images = corruptions.corrupt_digits(clean.x, missing, name, c.run.severity, c.data, mean, std)
                store.update(zip(missing.tolist(), images))
            x = torch.stack([store[j] for j in idx.tolist()])
            domains.append(Domain(name, x, clean.y[torch.from_numpy(idx)]))
        return domains
    folder = corruptions.check_cifar_c(c.data, data_root)
    for i, name in enumerate(c.data.corruptions):
        per = len(np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")) // 5
        idx = sample_indices(per, c.protocol.num_samples, c.run.seed, i)
        images, labels = corruptions.load_cifar_c(folder, name, c.run.severity, idx)
        x = corruptions.to_model_input(images, task.in_channels, task.image_size, mean, std)
        domains.append(Domain(name, x, torch.from_numpy(labels)))
    return domains


def clean_images(task) -> torch.Tensor | None:
    """Clean in-distribution images for EATA's Fisher (labels unused): the source run's held-out source images,
    its validation split first, then its test split."""
    parts = [getattr(s, "x", None) for s in (task.source_val, task.source_test) if s is not None]
    parts = [p for p in parts if isinstance(p, torch.Tensor)]
    return torch.cat(parts) if parts else None


def fit_stream(
    cfg: DictConfig | list[str],
    run_dir: str | None = None,
    cache: dict | None = None,
    on_domain_start: Callable[[str, TTAMethod], None] | None = None,
) -> dict[str, Any]:
    """Run the test-time experiment ``cfg`` (a composed TTA config, or overrides for :func:`da.tta.config.compose`)
    and write its run folder; return results.json's content.

    ``cache`` keeps corrupted images (and source tasks) across calls of one process, e.g. a benchmark's runs.
    ``on_domain_start(domain, method)`` is called before the first batch of each domain of a per-domain protocol
    (after a reset), for listeners that inspect the method (the tests read its parameters there).
    """
    if isinstance(cfg, list):
        cfg = compose(cfg)
    c = typed(cfg)
    check_source(c)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    data_root = str(resolved["data_root"])
    if c.data.name != "digits_c":
        corruptions.check_cifar_c(c.data, data_root)  # one line before anything is written
    else:
        corruptions.check_corruptions(list(c.data.corruptions), c.run.severity, c.data.work_size)
    device = select_device(c.run.device)
    cache = {} if cache is None else cache
    folder = run_dir or c.run.run_dir or default_run_dir(c)
    with locked_run_dir(folder, claim_test_time(resolved)) as run_dir:
        source_dir = source_run(cfg, c, run_dir)
        loaded = load_run(source_dir, device=str(device), tasks=cache.setdefault("tasks", {}))
        task = loaded.task
        seed_everything(c.run.seed)
        domains = build_domains(c, task, cache, data_root)
        stream = build_stream(c.protocol, domains, c.run.seed)
        mean, std = corruptions.NORMALISATION[task.name]
        ctx = StreamContext(task.num_classes, mean, std, device, c.protocol.batch_size, clean_images(task))
        method = c.method_cls(loaded.model, c.method, ctx).to(device)
        # written once everything that can refuse the run has passed: a refused run leaves no config.yaml
        write_text(os.path.join(run_dir, "config.yaml"), OmegaConf.to_yaml(OmegaConf.create(resolved)))
        start = time.perf_counter()
        rows, preds, monitor = _loop(c, method, stream, domains, device, on_domain_start)
        seconds = time.perf_counter() - start
        results = _results(c, resolved, loaded, domains, preds, stream, method, monitor, source_dir, seconds, device)
        write_text(os.path.join(run_dir, "log.csv"), _csv(rows))
        write_json(os.path.join(run_dir, "results.json"), results)
        write_page(run_dir, results)  # report.html, after results.json: a failure of the page only warns
        if not c.run.quiet:
            log.info(summary(results, run_dir))
    return results


def claim_test_time(resolved: dict[str, Any]) -> Callable[[str], None]:
    """The run folder's claim (:func:`da.runfolder.claim_folder`): a training run's folder (``init=R run_dir=R``
    included) or a finished test-time run of another config is refused before anything is written."""

    def differs(config: dict[str, Any]) -> list[str]:
        return config_differences(_signature(config), _signature(resolved))

    def claim(run_dir: str) -> None:
        claim_folder(run_dir, TEST_TIME, differs, hint=" or delete it")

    return claim


def _signature(config: dict[str, Any]) -> dict[str, Any]:
    """A test-time config less the keys that change no number: where the run folder is, the progress lines."""
    return {k: v for k, v in config.items() if k not in ("run_dir", "quiet")}


def _loop(c: TTAConfigs, method: TTAMethod, stream, domains, device, on_domain_start):
    """Every batch: reset if due, ``method.step(images)`` — the images only — then score the logits."""
    monitor = CollapseMonitor(c.run.collapse_fraction)
    window = math.ceil(len(domains[0].y) / c.protocol.batch_size)  # batches of one domain's length
    rows, preds, held, seen, wrong = [], [], [], 0, 0
    current = None
    for b, batch in enumerate(stream):
        if batch.reset:
            method.reset()
        first = int(batch.domain[0])
        if c.protocol.name != "mixed" and first != current:
            current = first
            if on_domain_start is not None:
                on_domain_start(domains[first].name, method)
        logits, metrics = method.step(batch.x.to(device))
        logits = logits.detach().float().cpu()  # (B, K)
        pred = logits.argmax(1)
        preds.append(pred)
        held.append(logits)
        errors = int((pred != batch.y).sum())  # the labels are read here only, after the method has predicted
        seen, wrong = seen + len(pred), wrong + errors
        row = {"batch": b, "domain": domains[first].name if c.protocol.name != "mixed" else "mixed", "n": len(pred)}
        row |= {"error": errors / len(pred), "online_error": wrong / seen}
        row |= {k: v for k, v in metrics.items()}
        if len(held) == window or b == len(stream) - 1:
            row |= monitor.update(b, torch.cat(held))  # "epoch" = the batch closing the window
            held = []
        rows.append(row)
    return rows, torch.cat(preds), monitor


def _results(c, resolved, loaded, domains, preds, stream, method, monitor, source_dir, seconds, device) -> dict:
    y = torch.cat([b.y for b in stream])
    tag = torch.cat([b.domain for b in stream])
    per_domain = {}
    for i, d in enumerate(domains):
        mask = tag == i
        per_domain[d.name] = float((preds[mask] != y[mask]).float().mean())
    return {
        "kind": "test_time",
        "method": c.method.name,
        "protocol": {
            "name": c.protocol.name,
            "reset_each_domain": c.protocol.resets,
            "batch_size": c.protocol.batch_size,
            "num_samples": c.protocol.num_samples,
            "samples_per_domain": {d.name: len(d.y) for d in domains},
            "dirichlet": c.protocol.dirichlet if c.protocol.name == "label_shift" else None,
            "order": [d.name for d in domains],
        },
        "data": c.data.name,
        "severity": c.run.severity,
        "seed": c.run.seed,
        "per_domain_error": per_domain,  # online error of each domain (fraction), in the stream's order
        "mean_error": float(np.mean(list(per_domain.values()))),  # the TTA tables' "mean": over domains
        "online_error": float((preds != y).float().mean()),  # over every sample of the stream
        "samples": len(y),
        "batches": len(stream),
        "method_stats": method.stats(),
        "collapse": monitor.collapse,
        "source_run": source_dir,
        "source_target_acc": loaded.results.get("target_acc"),  # the source run's clean target accuracy
        "dataset": loaded.results.get("dataset"),
        "backbone": loaded.results.get("backbone"),
        "device": device.type,
        "precision": "float32",
        "seconds": round(seconds, 3),
        "versions": versions(),
        "git_commit": git_commit(),
        "config": resolved,
        "schema_version": SCHEMA_VERSION,
    }


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def summary(r: dict, run_dir: str) -> str:
    return (
        f"{r['method']} on {r['data']} severity {r['severity']} ({r['protocol']['name']}, batch "
        f"{r['protocol']['batch_size']}, seed {r['seed']}, {r['samples']} samples, {r['seconds']:.0f}s): mean error "
        f"{100 * r['mean_error']:.1f}%\nrun folder: {run_dir}"
    )
