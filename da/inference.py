"""Using a finished run without its training data: preprocessing, predictions on image files, export.

At the end of every run :func:`save_preprocessing` writes ``<run>/preprocessing.json``: the class names and how an
image becomes the network's input (channels, resize, centre crop, scale, mean/std) — what the run's test split
did to its images. :func:`da.build.load_run` builds the model from it and ``config.yaml`` without rebuilding the
dataset; :func:`predict_files` (``da predict``) reads image files the same way; :func:`export` (``da export``)
writes TorchScript or ONNX and checks that the file gives the run's logits back.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from da.errors import ConfigError
from da.runfolder import write_json

if TYPE_CHECKING:
    from da.build import LoadedRun
    from da.data.base import Task

FILE = "preprocessing.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FORMATS = ("torchscript", "onnx")


def describe(task: Task, dataset: str) -> dict[str, Any]:
    """How ``task``'s test images were prepared, as a JSON-able dict (see the module docstring)."""
    from da.data.augment import normalisation

    split = _leaf(task.target_test)
    transform = getattr(split, "transform", None)
    x = getattr(split, "x", None)
    stored = int(x.shape[-1]) if isinstance(x, torch.Tensor) else task.image_size
    if transform is not None and hasattr(transform, "crop") and hasattr(transform, "mean"):  # decoded folders
        mean, std, crop = tuple(transform.mean), tuple(transform.std), int(transform.crop)
    else:  # in-memory float tensors, normalised when the dataset was built
        mean, std = normalisation(dataset, task.notes)
        crop = task.image_size
    return {
        "dataset": dataset,
        "domain": task.target,
        "class_names": list(task.class_names),
        "channels": int(task.in_channels),
        "resize": stored,  # an image is resized (bilinear) to resize x resize ...
        "crop": crop,  # ... then centre-cropped to crop x crop (the network's input size)
        "scale": 255.0,  # 8-bit pixels / scale -> [0, 1]
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
    }


def _leaf(split: Any) -> Any:
    """The tensor dataset under a split's wrappers (an inductive task's test split is a concatenation of subsets)."""
    for _ in range(8):
        inner = getattr(split, "datasets", None)
        if inner:
            split = inner[0]
            continue
        inner = getattr(split, "dataset", None) or getattr(split, "base", None)
        if inner is None:
            return split
        split = inner
    return split


def save_preprocessing(run_dir: str, task: Task, dataset: str) -> str:
    path = os.path.join(run_dir, FILE)
    write_json(path, describe(task, dataset))
    return path


def read_preprocessing(run_dir: str) -> dict[str, Any] | None:
    """The run's preprocessing.json, or None for a run that predates it."""
    path = os.path.join(run_dir, FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            prep = json.load(fh)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read ({type(err).__name__})") from err
    missing = [k for k in ("class_names", "channels", "resize", "crop", "mean", "std") if k not in prep]
    if missing:
        raise ConfigError(f"{path}: no {', '.join(missing)}")
    return prep


def image_files(path: str) -> list[str]:
    """``path`` itself (an image file) or every image file under the folder ``path``, sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConfigError(f"{path}: no such file or folder")
    found = [
        os.path.join(root, f) for root, _, files in os.walk(path) for f in files if f.lower().endswith(IMAGE_SUFFIXES)
    ]
    if not found:
        raise ConfigError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return sorted(found)


def load_image(path: Any, prep: dict[str, Any]) -> torch.Tensor:
    """One image (a file path or a PIL image) as the network's input (C, crop, crop), prepared as the run's test
    split was: the training decoder (:func:`da.data.decode.decode`), the centre crop, the normalisation."""
    from da.data.decode import decode

    try:
        pixels = decode(path, prep["resize"], prep["channels"])  # (S, S, C) uint8
    except Exception as err:  # PIL raises many kinds for a file that is not an image
        raise ConfigError(f"{path}: not a readable image ({type(err).__name__})") from err
    x = torch.tensor(pixels).permute(2, 0, 1).float()  # (C, S, S)
    size, crop = prep["resize"], prep["crop"]
    if size > crop:  # the centre crop of da.data.batches.CropFlipNormalize
        top = int(round((size - crop) / 2.0))
        x = x[:, top : top + crop, top : top + crop]
    mean = torch.tensor(prep["mean"]).view(-1, 1, 1)
    std = torch.tensor(prep["std"]).view(-1, 1, 1)
    return (x / float(prep.get("scale", 255.0)) - mean) / std


def predict_files(run: LoadedRun, paths: list[Any], batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, K) of image files (or PIL images) under the run's reported weights."""
    prep = run.preprocessing
    out = []
    for i in range(0, len(paths), batch_size):
        x = torch.stack([load_image(p, prep) for p in paths[i : i + batch_size]])
        out.append(torch.softmax(run.predict(x).float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(prep["class_names"])))


def predict_readable(
    run: LoadedRun, paths: list[str], batch_size: int = 256
) -> tuple[list[str], np.ndarray, list[str]]:
    """(the readable files, their class probabilities (N, K), "path: reason" of every unreadable file skipped) —
    what training does with an unreadable file (``skipped_files.txt``)."""
    prep = run.preprocessing
    kept: list[str] = []
    skipped: list[str] = []
    out = []
    for i in range(0, len(paths), batch_size):
        batch = []
        for p in paths[i : i + batch_size]:
            try:
                batch.append(load_image(p, prep))
                kept.append(p)
            except ConfigError as err:
                skipped.append(f"{p}: {err.__cause__.__class__.__name__}: {err.__cause__}")
        if batch:
            out.append(torch.softmax(run.predict(torch.stack(batch)).float(), dim=1).cpu().numpy())
    return kept, (np.concatenate(out) if out else np.zeros((0, len(prep["class_names"])))), skipped


def write_predictions_csv(fh: IO[str], files: list[str], probs: np.ndarray, class_names: list[str]) -> None:
    """CSV to ``fh``: file, predicted class, its probability, then one probability column per class; names that a
    spreadsheet would read as a formula are escaped (:func:`da.escape.csv_cell`)."""
    from da.escape import csv_cell

    writer = csv.writer(fh)
    writer.writerow(["file", "prediction", "probability", *(csv_cell(c) for c in class_names)])
    for f, p in zip(files, probs):
        k = int(p.argmax())
        writer.writerow([csv_cell(f), csv_cell(class_names[k]), f"{p[k]:.4f}", *(f"{v:.4f}" for v in p)])


# what a run folder holds (da.experiment, da.runlog, da.report, da.runfolder, Hydra's record): never an output
RUN_FILES = (
    "config.yaml",
    "results.json",
    "model.pt",
    "checkpoint.pt",
    FILE,
    "predictions.npz",
    "log.csv",
    "run.log",
    "report.html",
    "skipped_files.txt",
    "selection.json",
    "summary.md",
    "summary.csv",
    "summary.png",
    ".lock",
)
RUN_FOLDERS = (".hydra", "figures", "tensorboard", "source_stage")


def check_run_folder(run_dir: str) -> None:
    """A missing run folder is one ConfigError saying so (``load_run`` says what an existing one lacks)."""
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{run_dir}: no such run folder (a finished run folder holds model.pt and results.json)")


def check_output(path: str, run_dir: str) -> None:
    """A file ``da predict`` / ``da export`` may write: not a folder, in a folder that exists and is writable, and
    none of the run folder's own files (the run would then serve other weights or records); ConfigError otherwise."""
    if os.path.isdir(path):
        raise ConfigError(f"{path} is a folder: -o names the file to write")
    real, run = os.path.realpath(path), os.path.realpath(run_dir)
    own = os.path.dirname(real) == run and os.path.basename(real) in RUN_FILES
    inside = any(real.startswith(os.path.join(run, d) + os.sep) for d in RUN_FOLDERS)
    same = os.path.exists(path) and any(
        os.path.exists(f) and os.path.samefile(path, f) for f in (os.path.join(run, n) for n in RUN_FILES)
    )
    if own or inside or same:
        raise ConfigError(f"{path} is one of the run's own files (it would replace them): choose another -o")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigError(f"{path}: the folder {folder} does not exist (create it, or choose another -o)")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write in {folder} (read-only): write the file elsewhere with -o FILE")


class _Logits(torch.nn.Module):
    """The method's ``predict`` as a plain module (what is traced / exported): the model is its one submodule, so
    its state is the network's weights alone (a method's ``extra_state`` — banks, counts — is no input of
    ``predict`` and would stop the ONNX exporter)."""

    def __init__(self, method: torch.nn.Module) -> None:
        super().__init__()
        self.model = method.model
        self._predict = method.predict  # a bound method of the (unregistered) method: reads self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._predict(x)


def export(run: LoadedRun, fmt: str, out: str | None = None) -> tuple[str, float]:
    """Write the run's network (normalised images (B, C, crop, crop) -> logits (B, K)) as TorchScript (``.pt``) or
    ONNX (``.onnx``), load it back and compare it with the run on a batch; returns (path, largest difference)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    prep = run.preprocessing
    out = out or os.path.join(run.run_dir, "model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    check_output(out, run.run_dir)
    module = _Logits(run.method.float().cpu()).eval()
    example = torch.randn(4, prep["channels"], prep["crop"], prep["crop"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice, the exporter's tracer warnings
        expected = module(example)
        try:
            if fmt == "torchscript":
                traced = torch.jit.trace(module, example, check_trace=False)
                traced.save(out)
                got = torch.jit.load(out)(example)
            else:
                got = torch.from_numpy(_onnx(module, example, out)(example.numpy()))
        except OSError as err:
            raise ConfigError(f"cannot write {out} ({err.strerror or err}): write it elsewhere with -o FILE") from err
    return out, float((got - expected).abs().max())


def _onnx(module: torch.nn.Module, example: torch.Tensor, out: str):
    """Export ``module`` to ``out`` with a dynamic batch size; returns a function running it with onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ConfigError("--format onnx needs onnx and onnxruntime: pip install onnx onnxruntime") from err
    torch.onnx.export(
        module,
        (example,),
        out,
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"images": x.astype(np.float32)})[0]
