"""Training throughput: ``python -m benchmarks.throughput [baseline=<checkout>] [key=value ...]``.

For each model and method it runs ``da.fit`` as ``python -m da.run`` does (``init=scratch``: no source stage),
with a listener (:class:`da.callbacks.Callback`) that times one warm-up evaluated epoch and then ``repeats``
evaluated training epochs (images/s) and their end-of-epoch evaluation + validator passes (seconds, divided by
``trainer.eval_every`` — an evaluation serves that many epochs — and as a fraction of the epoch's training time,
split into its forward passes and its validators; medians over the timed epochs),
and reports the process's peak memory (CPU RSS, or ``torch.cuda.max_memory_allocated``) and the bytes of the
image tensors. The yardstick is
the same model trained by a plain PyTorch loop written below (in-memory tensors, a ``DataLoader``, SGD; the
loop of PyTorch's tutorials). ``baseline=<path>`` measures a second checkout of ``da`` (e.g. an earlier
commit with the listener API, ``git worktree add /tmp/base <commit>``) in the same run, so speed-ups are
ratios measured side by side.

Images/s counts the images a step feeds the model: batch_size for a method that reads one domain
(``source_only``), 2 x batch_size for the others (source + target). Every measurement runs in its own process.

Options: ``models`` (comma list of lenet_digits, lenet_folder28, resnet18, resnet50; default lenet_digits,
lenet_folder28 on CPU, all four on CUDA), ``methods`` (default source_only,dann,cdan,mcc,fixmatch), ``device``
(auto), ``baseline``, ``steps`` (training steps per timed epoch for the ResNets; LeNet rows time a full
epoch), ``repeats`` (timed epochs after the warm-up one; the median is reported; default 3), ``fp32`` (methods
also measured with ``trainer.amp=false`` where the default runs under autocast; default source_only,dann),
``out`` (default benchmarks/results/throughput), ``data`` (where the synthetic image folders are written;
default ~/.cache/da-throughput).

Models: ``lenet_digits`` is the embedded default task (``python -m da.run``); ``lenet_folder28`` a folder task
of 10,000 source and 5,000 target 28x28 RGB PNG images (``dataset=folder dataset.resize=28 dataset.crop=28
dataset.flip=false``), written once by this script (random images: only speed is measured); ``resnet18`` /
``resnet50`` a folder task at the Office-31 protocol's sizes (resize 256, crop 224), 10 classes x 20 images
per domain, random initialisation (no weight download).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
METHODS = ("source_only", "dann", "cdan", "mcc", "fixmatch")
ONE_DOMAIN = ("source_only",)  # methods whose step reads the source alone
KEYS = ("models", "methods", "device", "baseline", "steps", "repeats", "fp32", "out", "data")
KEYS += ("cache_images", "cache_size", "cache_budget_gb", "cache_steps")


def model_spec(name: str, data: str, on_gpu: bool, steps: int) -> dict:
    """The overrides of one model row and how long its timed epoch is."""
    if name == "lenet_digits":
        return {"overrides": ["backbone=lenet"], "steps": None, "batch_size": 64}
    if name == "lenet_folder28":
        root = folder_task(os.path.join(data, "folder28"), size=28, n_source=10_000, n_target=5_000)
        ds = ["dataset=folder", f"dataset.root={root}", "dataset.source=source", "dataset.target=target"]
        sizes = ["dataset.resize=28", "dataset.crop=28", "dataset.flip=false"]
        return {"overrides": [*ds, *sizes, "backbone=lenet"], "steps": None, "batch_size": 64}
    if name in ("resnet18", "resnet50"):
        root = folder_task(os.path.join(data, "folder256"), size=256, n_source=200, n_target=200)
        ds = ["dataset=folder", f"dataset.root={root}", "dataset.source=source", "dataset.target=target"]
        bs = 32 if on_gpu else 8
        return {
            "overrides": [*ds, f"backbone={name}", "backbone.weights=null", f"trainer.eval_batch_size={2 * bs}"],
            "steps": steps if not on_gpu else None,
            "batch_size": bs,
        }
    raise SystemExit(f"error: unknown model {name!r}; valid: lenet_digits, lenet_folder28, resnet18, resnet50")


def folder_task(root: str, size: int, n_source: int, n_target: int, classes: int = 10) -> str:
    """Write ``<root>/{source,target}/<class>/<i>.png`` (random RGB images) once; returns ``root``."""
    import numpy as np
    from PIL import Image

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(0)
    for domain, n in (("source", n_source), ("target", n_target)):
        for i in range(n):
            folder = os.path.join(root, domain, f"c{i % classes}")
            os.makedirs(folder, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i}.png"))
    open(done, "w").close()
    return root


def _jpeg_slice(args: tuple) -> None:
    """Write JPEGs ``start..stop`` of a synthetic folder (smooth random images: JPEG sizes of real photos)."""
    import numpy as np
    from PIL import Image

    root, size, classes, start, stop, half = args
    for i in range(start, stop):
        domain, j = ("source", i) if i < half else ("target", i - half)
        folder = os.path.join(root, domain, f"c{j % classes}")
        os.makedirs(folder, exist_ok=True)
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        small.resize((size, size), Image.BILINEAR).save(os.path.join(folder, f"{j}.jpg"), quality=90)


def jpeg_folder(root: str, images: int, size: int, classes: int = 10, workers: int | None = None) -> str:
    """Write ``<root>/{source,target}/<class>/<i>.jpg`` (``images`` in all, half per domain, ``size``² RGB) once,
    in parallel processes; returns ``root``."""
    from concurrent.futures import ProcessPoolExecutor

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(2000, images // workers))
    jobs = [(root, size, classes, a, min(a + chunk, images), images // 2) for a in range(0, images, chunk)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_jpeg_slice, jobs))
    open(done, "w").close()
    return root


def cache_overrides(root: str, data_root: str, budget_gb: float, size: int) -> list[str]:
    """The folder task of the cache rows: decoded at ``size``² through the cache, budget ``budget_gb`` GiB; LeNet
    on 32x32 crops (the rows measure the data path, not a large model)."""
    ds = ["dataset=folder", f"dataset.root={root}", "dataset.source=source", "dataset.target=target"]
    crop = min(32, size)
    ds += [
        f"dataset.resize={size}",
        f"dataset.crop={crop}",
        "dataset.cache=true",
        f"dataset.memory_budget_gb={budget_gb}",
    ]
    return [*ds, f"data_root={data_root}", "backbone=lenet"]


def cache_worker(spec: dict) -> dict:
    """One phase of the cache rows in this process: ``build`` (the task, through the cache: a first run decodes,
    a second reads) or ``train`` (``da.fit``: one epoch of ``steps`` steps and its evaluation, cache warm)."""
    import resource

    import da
    from da.build import typed_configs
    from da.config import compose
    from da.data import build_task

    overrides = [*spec["overrides"], "device=cpu", "trainer.progress_bar=false", "method=source_only", "init=scratch"]
    start = time.perf_counter()
    if spec["phase"] == "build":
        cfg = compose(overrides)
        task = build_task(typed_configs(cfg).dataset, 0, spec["data_root"])
        kind = type(task.source_train.x).__name__
        images = len(task.source_train) + len(task.target_train)
    else:
        overrides += ["trainer.epochs=1", f"trainer.steps_per_epoch={spec['steps']}", "trainer.batch_size=64"]
        from da.callbacks import Callback

        class Held(Callback):
            def on_fit_start(self, trainer) -> None:
                self.kind = type(trainer.task.source_train.x).__name__
                self.images = len(trainer.task.source_train) + len(trainer.task.target_train)

        held, run_dir = Held(), tempfile.mkdtemp(prefix="da-throughput-")
        try:
            da.fit(da.compose(overrides), run_dir=run_dir, quiet=True, callbacks=[held])
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        kind, images = held.kind, held.images
    return {
        "seconds": time.perf_counter() - start,
        "peak_mb": max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        / 2**10,  # the largest of this process and its decode workers
        "held_as": kind,
        "images": images,
    }


def cache_rows(data: str, images: int, size: int, budget_gb: float, steps: int) -> list[str]:
    """The decoded-image cache on a synthetic folder of ``images`` JPEGs at ``size``²: a first run's (parallel)
    decode, a second run's start-up (cache hit), and a run's peak RSS with the set over the memory budget."""
    root = jpeg_folder(os.path.join(data, f"jpeg{images}_{size}"), images, size)
    data_root = os.path.join(data, f"cache-root{images}_{size}")
    shutil.rmtree(os.path.join(data_root, ".da-cache"), ignore_errors=True)  # the first run starts cold
    spec = {"data_root": data_root, "overrides": cache_overrides(root, data_root, budget_gb, size), "steps": steps}
    decoded_gb = images * 3 * size * size / 2**30
    rows = []
    for label, phase in (
        ("first run: decode (parallel)", "build"),
        ("second run: start-up (cache hit)", "build"),
        (f"training, {steps} steps + evaluation", "train"),
    ):
        out = measure({**spec, "phase": phase, "model": "cache", "method": phase}, REPO, cache=True)
        rows.append((label, out))
        print(f"  cache {label}: {out and round(out['seconds'], 1)} s, peak RSS {out and round(out['peak_mb'])} MiB")
    first, second = rows[0][1], rows[1][1]
    lines = [
        f"Decoded-image cache: {images:,} JPEGs at {size}x{size} (decoded {decoded_gb:.1f} GiB), memory budget "
        f"{budget_gb:g} GiB, {os.cpu_count()} CPUs:",
        "",
        "| phase | seconds | peak RSS MiB | held as |",
        "|---|---|---|---|",
    ]
    for label, out in rows:
        cells = [
            label,
            _fmt(out and out["seconds"], ".1f"),
            _fmt(out and out["peak_mb"]),
            out and out["held_as"] or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if first and second:
        lines += [
            "",
            f"Second start-up {first['seconds'] / second['seconds']:.0f}x faster than the first; peak RSS "
            f"{max(o['peak_mb'] for _, o in rows if o) / 1024:.1f} GiB vs {decoded_gb:.1f} GiB decoded.",
        ]
    return lines


# ---------------------------------------------------------------------------------------------- worker side
def worker(spec: dict) -> dict:
    """One measurement in this process, with whichever ``da`` is first on the path (this checkout or the
    baseline's), through the public API: ``da.fit`` with a listener that reads each epoch's timings."""
    import resource

    import torch

    import da
    from da.callbacks import Callback
    from da.runtime import select_device

    torch.manual_seed(0)
    device = select_device(spec["device"])
    if spec["method"] == "plain":
        return plain_loop(spec, device)
    bs, repeats = spec["batch_size"], spec.get("repeats", 3)
    overrides = [
        f"method={spec['method']}",
        f"device={spec['device']}",
        "trainer.progress_bar=false",
        f"trainer.batch_size={bs}",
        "init=scratch",  # no source stage: only the method's own epochs are timed
        *spec["overrides"],
    ]
    # a warm-up evaluation, then the timed ones: trainer.eval_every=k evaluates every k-th epoch
    every = getattr(da.compose(overrides).trainer, "eval_every", 1)  # a baseline may predate it
    overrides.append(f"trainer.epochs={every * (1 + repeats)}")
    if spec["steps"]:
        overrides.append(f"trainer.steps_per_epoch={spec['steps']}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    class Timer(Callback):
        """Per epoch: training seconds (the trainer's own clock) and the evaluation's two parts."""

        def __init__(self) -> None:
            self.times: list[tuple[float, float, float, float]] = []
            self.trained = 0.0

        def on_train_epoch_end(self, trainer) -> None:
            sync()
            self.train = trainer.train_seconds - self.trained
            self.trained = trainer.train_seconds

        def on_epoch_end(self, trainer, row) -> None:
            seconds = trainer.evaluator.seconds  # the evaluation that just ran: forwards, validators
            forwards, validators = seconds["forwards"], seconds["validators"]
            # trainer.eval_every = k: an evaluation's cost is spread over the k epochs it serves; an epoch without
            # one is not timed (its training costs the same as the evaluated epoch's)
            if "target_acc" not in row:
                return
            k = getattr(trainer.cfg, "eval_every", 1)
            self.times.append((self.train, (forwards + validators) / k, forwards / k, validators / k))
            self.steps, self.precision = trainer.steps_per_epoch, trainer.runtime.precision
            self.task = trainer.task

    timer = Timer()
    run_dir = tempfile.mkdtemp(prefix="da-throughput-")
    try:
        da.fit(da.compose(overrides), run_dir=run_dir, quiet=True, callbacks=[timer])
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    train, evaluation, forwards, validators = (_median(list(c)) for c in zip(*timer.times[1:], strict=True))
    domains = 1 if spec["method"] in ONE_DOMAIN else 2
    images = timer.steps * bs * domains
    tensors = {id(t): t for t in _tensors(timer.task)}
    return {
        "images_per_s": images / train,
        "step_ms": 1000 * train / timer.steps,
        "train_s": train,
        "eval_s": evaluation,
        "eval_fraction": evaluation / train,
        "forwards_s": forwards,
        "validators_s": validators,
        "steps": timer.steps,
        "precision": timer.precision,
        "data_mb": sum(t.nelement() * t.element_size() for t in tensors.values()) / 2**20,
        "peak_mb": _peak_mb(device, resource),
    }


def _median(values: list[float | None]) -> float | None:
    """The median of the timed epochs: one epoch slowed by another process on a shared machine moves it less
    than a mean, and it reports no luckier epoch than the typical one (as a minimum would)."""
    if any(v is None for v in values):
        return None
    ordered = sorted(values)  # type: ignore[type-var]
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _tensors(task) -> list:
    """The image tensors a task holds (shared views counted once by the caller)."""
    out = []
    for name in ("source_train", "source_test", "target_train", "target_test", "target_train_eval", "source_val"):
        d = getattr(task, name, None)
        while d is not None and not hasattr(d, "x"):
            d = getattr(d, "base", None) or getattr(d, "dataset", None)
        if d is not None:
            out.append(d.x)
    return out


def _peak_mb(device, resource) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def plain_loop(spec: dict, device) -> dict:
    """The yardstick: the same model trained by the loop of PyTorch's tutorials on the task's source images,
    held in memory as float tensors: ``DataLoader(TensorDataset, shuffle=True)``, cross-entropy, SGD with
    momentum, ``loss.item()`` each step. Batches of 2 x batch_size (as many images as a two-domain step)."""
    import resource

    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from da.backbones import BackboneConfig, build_model
    from da.build import typed_configs
    from da.config import compose
    from da.data import build_task

    cfg = compose([f"device={spec['device']}", *spec["overrides"]])
    configs = typed_configs(cfg)
    task = build_task(configs.dataset, 0, os.path.expanduser(str(cfg.data_root)))
    x, y = [], []
    for i in range(len(task.source_train)):  # the training view, once: the loop then reads tensors
        xi, yi = task.source_train[i]
        x.append(xi)
        y.append(int(yi))
    data = TensorDataset(torch.stack(x), torch.tensor(y))
    backbone = BackboneConfig(**{**vars(configs.backbone), "weights": None})
    model = build_model(backbone, task.num_classes, task.in_channels, task.image_size).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    bs = 2 * spec["batch_size"]
    loader = DataLoader(data, batch_size=bs, shuffle=True, drop_last=True)
    steps = spec["steps"] or len(loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def epoch() -> float:
        model.train()
        done, running = 0, 0.0
        sync()
        start = time.perf_counter()
        while done < steps:
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                logits, _ = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
                running += loss.item()
                done += 1
                if done == steps:
                    break
        sync()
        return time.perf_counter() - start

    epoch()  # warm-up
    train = _median([epoch() for _ in range(spec.get("repeats", 3))])
    return {
        "images_per_s": steps * bs / train,
        "step_ms": 1000 * train / steps,
        "train_s": train,
        "eval_s": None,
        "eval_fraction": None,
        "steps": steps,
        "precision": "float32",
        "data_mb": data.tensors[0].nelement() * data.tensors[0].element_size() / 2**20,
        "peak_mb": _peak_mb(device, resource),
    }


# ---------------------------------------------------------------------------------------------- driver side
def measure(spec: dict, tree: str, cache: bool = False) -> dict | None:
    """Run :func:`worker` (``cache``: :func:`cache_worker`) in a fresh process with ``tree``'s ``da`` first on the
    path."""
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, os.path.abspath(__file__), "--cache-worker" if cache else "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  failed: {spec['model']} {spec['method']} ({tree}): {tail}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_name(device: str) -> str:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_")
    return f"cpu{os.cpu_count()}"


def git_commit(tree: str) -> str:
    try:
        out = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--", "da"], capture_output=True, text=True)
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def _fmt(v, spec: str = ".0f") -> str:
    return "—" if v is None else format(v, spec)


def table(rows: list[dict], baseline: bool) -> str:
    head = ["model", "method", "precision", "images/s", "step ms", "eval + validators s", "eval / train"]
    head += ["forwards / validators / train"]
    if baseline:
        head += ["baseline images/s", "speed-up"]
    head += ["vs plain loop", "data MiB", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], r["method"], r.get("precision") or "—", _fmt(r["images_per_s"]), _fmt(r["step_ms"], ".1f")]
        cells += [_fmt(r["eval_s"], ".2f"), _fmt(r["eval_fraction"] and 100 * r["eval_fraction"], ".0f") + "%"]
        parts = [r.get("forwards_s"), r.get("validators_s")]
        cells.append(
            " / ".join(f"{100 * v / r['train_s']:.0f}%" for v in parts)
            if None not in parts and r.get("train_s")
            else "—"
        )
        if baseline:
            cells += [_fmt(r.get("base_images_per_s")), _fmt(r.get("speedup"), ".2f") + "x"]
        cells += [_fmt(r.get("vs_plain"), ".2f") + "x", _fmt(r["data_mb"], ".0f"), _fmt(r["peak_mb"], ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).replace("—%", "—").replace("—x", "—")


def main(argv: list[str]) -> int:
    from benchmarks.suite import parse_options

    opts, _ = parse_options(argv, KEYS)
    device = opts.get("device", "auto")
    import torch

    on_gpu = device != "cpu" and torch.cuda.is_available()
    default_models = "lenet_digits,lenet_folder28" + (",resnet18,resnet50" if on_gpu else "")
    models = [m for m in opts.get("models", default_models).split(",") if m]
    methods = opts.get("methods", ",".join(METHODS)).split(",")
    baseline = opts.get("baseline")
    if baseline and not os.path.isdir(os.path.join(baseline, "da")):
        raise SystemExit(f"error: baseline={baseline} is not a checkout of da (no da/ folder)")
    data = os.path.expanduser(opts.get("data", "~/.cache/da-throughput"))
    out = opts.get("out", os.path.join(HERE, "results", "throughput"))
    steps = int(opts.get("steps", "3"))
    repeats = int(opts.get("repeats", "3"))
    fp32 = [m for m in opts.get("fp32", "source_only,dann").split(",") if m]
    name = device_name(device)
    print(
        f"throughput on {name}: {REPO} ({git_commit(REPO)})"
        + (f" vs {baseline} ({git_commit(baseline)})" if baseline else "")
    )
    rows = []
    for model in models:
        spec = {"model": model, "device": device, "repeats": repeats, **model_spec(model, data, on_gpu, steps)}
        plain = measure({**spec, "method": "plain"}, REPO)
        rows.append({"model": model, "method": "plain PyTorch loop", **(plain or _empty())})
        print(f"  {model} plain loop: {_fmt(plain and plain['images_per_s'])} images/s", flush=True)
        for method in methods:
            ours = measure({**spec, "method": method}, REPO)
            if ours is None:
                continue
            base = measure({**spec, "method": method}, baseline) if baseline else None
            variants = [(method, ours)]
            if method in fp32 and ours["precision"] != "float32":  # the same step without mixed precision
                full = measure({**spec, "method": method, "overrides": [*spec["overrides"], "trainer.amp=false"]}, REPO)
                if full is not None:
                    variants.append((f"{method} (trainer.amp=false)", full))
            for label, mine in variants:
                row = {"model": model, "method": label, **mine}
                if plain:
                    row["vs_plain"] = mine["images_per_s"] / plain["images_per_s"]
                if base:
                    row["base_images_per_s"] = base["images_per_s"]
                    row["speedup"] = mine["images_per_s"] / base["images_per_s"]
                rows.append(row)
                print(
                    f"  {model} {label}: {mine['images_per_s']:.0f} images/s ({mine['precision']})"
                    + (f", baseline {base['images_per_s']:.0f} ({row['speedup']:.2f}x)" if base else "")
                    + f", eval {100 * mine['eval_fraction']:.0f}% of training",
                    flush=True,
                )
    text = table(rows, bool(baseline)) if rows else ""
    per_image = _per_image_ratios(rows)
    images = int(opts.get("cache_images", "100000"))
    if images:
        size, budget = int(opts.get("cache_size", "256")), float(opts.get("cache_budget_gb", "4"))
        per_image += ["", *cache_rows(data, images, size, budget, int(opts.get("cache_steps", "20")))]
    header = [
        f"# Training throughput on {name}",
        "",
        f"`python -m benchmarks.throughput {' '.join(argv)}`".replace(" `", "`"),
        "",
        f"da: {git_commit(REPO)}"
        + (f"; baseline: {baseline} at {git_commit(baseline)}" if baseline else "")
        + f"; torch {torch.__version__}, {torch.get_num_threads()} threads; {time.strftime('%Y-%m-%d')}.",
        "",
        "",
    ]
    footer = ["", *per_image] if per_image else []
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{name}.md")
    with open(path, "w") as fh:
        fh.write("\n".join(header) + text + "\n" + "\n".join(footer) + "\n")
    print(text)
    print("\n".join(per_image))
    print(f"written to {path}")
    return 0


def _empty() -> dict:
    keys = ("images_per_s", "step_ms", "train_s", "eval_s", "eval_fraction", "forwards_s", "validators_s")
    return dict.fromkeys((*keys, "data_mb", "peak_mb"))


def _per_image_ratios(rows: list[dict]) -> list[str]:
    """Cost per image of each method's step relative to source_only's at the same settings, per model."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["method"]: r for r in rows if r["model"] == model and r.get("images_per_s")}
        ratios = []
        for label, r in mine.items():
            method, _, variant = label.partition(" ")  # e.g. "dann (trainer.amp=false)"
            ref = mine.get(f"source_only {variant}".strip())
            if method in ("source_only", "plain") or ref is None:
                continue
            ratios.append(f"{label} {ref['images_per_s'] / r['images_per_s']:.2f}x")
        if ratios:
            out.append(f"- {model}: cost per image relative to source_only: {', '.join(ratios)}")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] in ("--worker", "--cache-worker"):
        run = worker if sys.argv[1] == "--worker" else cache_worker
        print(json.dumps(run(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
