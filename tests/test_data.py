import numpy as np
import torch

from da.data import make_loader
from da.data.base import Unlabelled
from da.data.digits import build_digits, digit_fonts, render_digits


def test_fonts_have_real_digit_glyphs():
    names = [p.rsplit("/", 1)[-1] for p in digit_fonts()]
    assert "DejaVuSans.ttf" in names and "cmr10.ttf" in names
    for symbol_font in ("cmex10.ttf", "cmsy10.ttf", "LastResortHE-Regular.ttf", "STIXSizOneSymReg.ttf"):
        assert symbol_font not in names


def test_rendering_is_deterministic_by_seed():
    a, ya = render_digits(3, seed=7)
    b, yb = render_digits(3, seed=7)
    c, _ = render_digits(3, seed=8)
    assert a.shape == (30, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a, c)
    assert 0.0 <= a.min() and a.max() <= 1.0


def test_task_shapes_and_normalisation():
    task = build_digits(seed=0, samples_per_class=10, image_size=28)
    x, y = task.source_train[0]
    assert x.shape == (1, 28, 28) and y.dtype == torch.long
    xt, _ = task.target_test[0]
    assert xt.shape == x.shape  # same image size in both domains
    assert task.num_classes == 10 and task.in_channels == 1
    assert -1.0 <= task.target_test.x.min() and task.target_test.x.max() <= 1.0
    assert len(task.target_train) + len(task.target_test) == 1797  # all of load_digits
    assert len(task.source_train) + len(task.source_test) == 100


def test_target_split_is_fixed_across_seeds():
    a = build_digits(seed=0, samples_per_class=5)
    b = build_digits(seed=3, samples_per_class=5)
    assert torch.equal(a.target_test.x, b.target_test.x)
    assert not torch.equal(a.source_train.x, b.source_train.x)


def test_target_labels_are_hidden_from_training_batches():
    task = build_digits(seed=0, samples_per_class=5)
    assert isinstance(task.target_train, Unlabelled)
    loader = make_loader(task.target_train, batch_size=32, train=True, seed=0)
    x, idx = next(iter(loader))
    # the second element is the sample index, not the class: it ranges over the whole split
    assert x.shape == (32, 1, 28, 28)
    assert idx.max() >= 10 or len(task.target_train) <= 10
    labels = task.target_train_labels[idx]
    assert not torch.equal(idx, labels)


def test_train_on_target_uses_the_same_test_split():
    upper = build_digits(seed=0, source="sklearn", target="sklearn", samples_per_class=5)
    shifted = build_digits(seed=0, samples_per_class=5)
    assert torch.equal(upper.target_test.x, shifted.target_test.x)
    assert torch.equal(upper.source_train.x, upper.target_train.base.x)
