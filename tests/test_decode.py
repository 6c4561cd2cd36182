"""One image decoder for training and prediction: every Pillow mode gives the same pixels to a decoded folder and to
``da predict`` / ``LoadedRun.predict_images``, and a run on 16-bit images predicts its own target images as it
reported them."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import da
from da import cli
from da.data.images import decode_paths
from da.inference import load_image

from .conftest import folder_task

PREP = {"channels": 3, "resize": 10, "crop": 8, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "scale": 255.0}


def _modes(folder) -> dict[str, str]:
    """One file per Pillow mode a data set holds: {mode: path}."""
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, (12, 14), dtype=np.uint16)
    rgb = rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
    images = {
        "I;16": (Image.fromarray(grey16), "png"),
        "I": (Image.fromarray(grey16.astype(np.int32) * 3, mode="I"), "tif"),
        "F": (Image.fromarray(grey16.astype(np.float32) / 65535.0), "tif"),
        "L": (Image.fromarray(rgb[..., 0]), "png"),
        "1": (Image.fromarray(rgb[..., 0] > 127), "png"),
        "P": (Image.fromarray(rgb).convert("P"), "png"),
        "LA": (Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), mode="LA"), "png"),
        "RGB": (Image.fromarray(rgb), "png"),
        "RGBA": (Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode="RGBA"), "png"),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), "tif"),
    }
    paths = {}
    for mode, (img, ext) in images.items():
        path = os.path.join(folder, f"{mode.replace(';', '_')}.{ext}")
        img.save(path)
        with Image.open(path) as back:
            assert back.mode.startswith(mode[0]), (mode, back.mode)
        paths[mode] = path
    return paths


def test_training_and_prediction_decode_every_mode_alike(tmp_path):
    paths = _modes(str(tmp_path))
    decoded = decode_paths(list(paths.values()), [0] * len(paths), ["a"], PREP["resize"], "t")
    assert decoded.skipped == []
    from da.data.batches import CropFlipNormalize

    expected = CropFlipNormalize(PREP["crop"], False, False, PREP["mean"], PREP["std"])(decoded.x)
    for k, (mode, path) in enumerate(paths.items()):
        got = load_image(path, PREP)
        assert torch.allclose(got, expected[k], atol=1e-5), mode
        with Image.open(path) as img:  # a PIL image is prepared as its file is
            assert torch.allclose(load_image(img, PREP), got), mode


def test_wide_pixels_are_scaled_not_clipped(tmp_path):
    """16-bit grey at half scale is mid grey (Pillow's convert makes it white); a float image in [0, 1] is scaled by
    255 (Pillow's convert makes it black)."""
    Image.fromarray(np.full((6, 6), 32896, dtype=np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((6, 6), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    paths = [str(tmp_path / "grey16.png"), str(tmp_path / "float.tif")]
    x = decode_paths(paths, [0, 0], ["a"], 6, "t").x
    assert x[0].unique().tolist() == [128] and x[1].unique().tolist() == [128]
    prep = {**PREP, "resize": 6, "crop": 6, "mean": [0.0] * 3, "std": [1.0] * 3}
    assert torch.allclose(load_image(paths[0], prep), torch.full((3, 6, 6), 128 / 255))


@pytest.fixture(scope="module")
def grey16_run(tmp_path_factory):
    """A finished folder run on 16-bit grey PNGs (two classes told apart by brightness): (run folder, target files
    with their classes, the run's own target logits)."""
    root = tmp_path_factory.mktemp("grey16")
    rng = np.random.default_rng(0)
    files = []
    for domain in ("src", "tgt"):
        for c, level in (("dark", 12000), ("bright", 48000)):
            (root / domain / c).mkdir(parents=True)
            for i in range(10):
                pixels = np.clip(rng.normal(level, 6000, (28, 28)), 0, 65535).astype(np.uint16)
                Image.fromarray(pixels).save(root / domain / c / f"{i}.png")
                if domain == "tgt":
                    files.append((str(root / domain / c / f"{i}.png"), c))
    folder = str(root / "run")
    overrides = [
        "method=source_only",
        *folder_task(root),
        "trainer.epochs=1",
        "trainer.steps_per_epoch=12",
        "trainer.batch_size=10",
        "trainer.amp=false",
        "trainer.progress_bar=false",
        "trainer.report=false",
        "device=cpu",
    ]
    da.fit(overrides, run_dir=folder, quiet=True)
    run = da.load_run(folder)
    from da.evaluate import predict

    logits = predict(run.method, run.task.target_test, torch.device("cpu")).logits
    return folder, sorted(files), logits  # the task's order: classes, then files, sorted


def test_16bit_run_predicts_its_target_images_as_reported(grey16_run, tmp_path):
    folder, files, logits = grey16_run
    run = da.load_run(folder)
    probs = run.predict_images([f for f, _ in files])  # files in the order of the task's target split
    assert np.abs(probs - torch.softmax(logits, 1).numpy()).max() < 1e-4
    out = tmp_path / "pred.csv"
    assert cli.main(["predict", folder, os.path.dirname(os.path.dirname(files[0][0])), "-o", str(out)]) == 0
    rows = {r["file"]: r["prediction"] for r in csv.DictReader(open(out))}
    accuracy = np.mean([rows[f] == c for f, c in files])
    reported = json.load(open(os.path.join(folder, "results.json")))["target_acc"]
    assert accuracy == pytest.approx(reported) and reported > 0.5
