"""Batched augmentation (da.augment_tensor, the one implementation): the fine-tuning presets
(da.data.augment.BatchAugment: shapes, per-image randomness, exactness of the geometric presets, torchvision's
definitions, reproducibility and refusals), the operations' two conventions, and FixMatch/AdaMatch's weak and strong
views. Small batches; a few seconds in all."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from da import augment_tensor as AT
from da.data import augment as A
from da.data.augment import IMAGENET_NORM, BatchAugment, build_augment, build_batch_augment
from da.errors import ConfigError

GREY_NORM = ((0.5,), (0.5,))
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _normalise(u: torch.Tensor, norm) -> torch.Tensor:
    """[0, 1] images (B, C, H, W) -> normalised with (mean, std)."""
    mean, std = (torch.tensor(v, dtype=u.dtype, device=u.device).view(1, -1, 1, 1) for v in norm)
    return (u - mean) / std


def _unit(x: torch.Tensor, norm) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for v in norm)
    return x * std + mean


def _natural(names, size=16):
    return BatchAugment(names, size, *IMAGENET_NORM, glyphs=False)


def _glyph(names, size=16):
    return BatchAugment(names, size, *GREY_NORM, glyphs=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_device_are_kept(device, dtype):
    torch.manual_seed(0)
    rgb = _normalise(torch.rand(8, 3, 16, 16, dtype=dtype, device=device), IMAGENET_NORM)
    grey = _normalise(torch.rand(8, 1, 16, 16, dtype=dtype, device=device), GREY_NORM)
    cases = [(["flip", "crop", "color", "randaugment"], False, IMAGENET_NORM, rgb)]
    cases += [(["crop", "color", "randaugment"], True, GREY_NORM, grey)]
    for names, glyphs, norm, x in cases:
        for ops in [*([op] for op in names), names]:
            y = BatchAugment(ops, 16, *norm, glyphs=glyphs)(x)
            assert y.shape == x.shape and y.dtype == dtype and y.device == x.device, (ops, y.shape, y.dtype)
            u = _unit(y, norm)
            assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5, ops  # still a [0, 1] image once un-normalised


@pytest.mark.parametrize(
    "glyphs,op",
    [(False, "flip"), (False, "crop"), (False, "color"), (False, "randaugment")]
    + [(True, "crop"), (True, "color"), (True, "randaugment")],
)
def test_identical_images_get_different_augmentations(glyphs, op):
    torch.manual_seed(1)
    channels, norm = (1, GREY_NORM) if glyphs else (3, IMAGENET_NORM)
    image = torch.rand(1, channels, 16, 16)
    x = _normalise(image.expand(12, -1, -1, -1).contiguous(), norm)
    y = (_glyph([op]) if glyphs else _natural([op]))(x)
    assert not torch.allclose(y, x, atol=1e-4), "the preset changed nothing"
    distinct = {tuple(img.flatten().round(decimals=4).tolist()) for img in y}
    assert len(distinct) > 1, "every image got the same augmentation"


def test_flip_gives_the_image_or_its_mirror():
    torch.manual_seed(2)
    x = _normalise(torch.rand(16, 3, 8, 8), IMAGENET_NORM)
    y = _natural(["flip"], size=8)(x)
    same = (y - x).abs().flatten(1).amax(1) < 1e-5  # (B,)
    mirrored = (y - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_flip_mirrors_about_half_of_a_large_batch():
    torch.manual_seed(3)
    x = _normalise(torch.rand(512, 3, 4, 4), IMAGENET_NORM)
    y = _natural(["flip"], size=4)(x)
    mirrored = (y - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert 0.4 <= mirrored.float().mean().item() <= 0.6


def test_glyph_crop_is_an_exact_integer_shift_with_background_fill():
    torch.manual_seed(4)
    size, pad = 16, 2  # pad = max(1, 16 // 8)
    u = torch.rand(16, 1, size, size)
    y = _unit(_glyph(["crop"], size=size)(_normalise(u, GREY_NORM)), GREY_NORM)  # back in [0, 1]
    padded = torch.nn.functional.pad(u, (pad,) * 4, value=0.0)
    shifts = set()
    for i in range(len(u)):
        matches = [
            (top - pad, left - pad)
            for top in range(2 * pad + 1)
            for left in range(2 * pad + 1)
            if torch.allclose(y[i], padded[i, :, top : top + size, left : left + size], atol=1e-6)
        ]
        assert len(matches) == 1, f"image {i} is no shift of at most {pad} pixels with 0 fill"
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_natural_crop_of_a_constant_image_stays_constant():
    torch.manual_seed(5)
    u = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(8, 3, 16, 16)
    x = _normalise(u, IMAGENET_NORM)
    assert torch.allclose(_natural(["crop"])(x), x, atol=1e-5)


def test_resized_crop_boxes_fit_and_fall_back_to_the_centre():
    torch.manual_seed(6)
    top, left, h, w = AT.resized_crop_boxes(256, 12, 20, torch.zeros(1)).unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 12).all() and (left + w <= 20).all()
    assert (h > 0).all() and (w > 0).all() and len(set(h.tolist())) > 1
    # no area fits (scale > 1): torchvision's fallback, the largest centre crop within the ratio: 12 x 16
    boxes = AT.resized_crop_boxes(4, 12, 20, torch.zeros(1), scale=(2.0, 3.0))
    assert boxes.tolist() == [[0, 2, 12, 16]] * 4


def test_color_scales_a_constant_grey_image_by_its_brightness():
    """On a constant grey image contrast changes nothing (it blends with the image's mean), so the preset
    multiplies every image by its own brightness factor in [0.6, 1.4]."""
    torch.manual_seed(7)
    values = torch.linspace(0.1, 0.7, 8).view(8, 1, 1, 1)
    u = values.expand(8, 1, 16, 16)
    y = _unit(BatchAugment(["color"], 16, *GREY_NORM, glyphs=False)(_normalise(u, GREY_NORM)), GREY_NORM)
    ratio = y / u  # (B, 1, H, W)
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)  # a scaling
    assert (per_image[:, 0] >= 0.6 - 1e-5).all() and (per_image[:, 0] <= 1.4 + 1e-5).all()
    assert per_image[:, 0].std() > 0.01  # per-image factors


def test_colour_operations_follow_torchvision():
    torch.manual_seed(8)
    u = torch.rand(6, 3, 8, 8)
    hsv = AT.rgb_to_hsv(u)
    assert torch.allclose(AT.hsv_to_rgb(hsv), u, atol=1e-5)
    factor = torch.full((6,), 1.3)
    assert torch.allclose(AT.adjust_contrast(u, factor), TF.adjust_contrast(u, 1.3), atol=1e-5)
    assert torch.allclose(AT.adjust_saturation(u, factor), TF.adjust_saturation(u, 1.3), atol=1e-5)
    assert torch.allclose(AT.adjust_sharpness(u, factor), TF.adjust_sharpness(u, 1.3), atol=1e-5)
    assert torch.allclose(AT.adjust_hue(u, torch.full((6,), -0.08)), TF.adjust_hue(u, -0.08), atol=1e-5)
    grey_rgb = torch.rand(6, 1, 8, 8).expand(6, 3, 8, 8)  # R = G = B: saturation and hue keep it grey
    y = A.batch_color_jitter(grey_rgb, (0.4, 0.4, 0.4, 0.1))
    assert torch.allclose(y, y[:, :1].expand_as(y), atol=1e-5)


@pytest.mark.parametrize("op", ["shear_x", "shear_y", "translate_x", "translate_y", "rotate"])
def test_randaugment_geometry_matches_torchvision(op):
    torch.manual_seed(9)
    u = torch.rand(4, 3, 16, 16)
    level, sign = 9 / 30, torch.tensor([1.0, -1.0, 1.0, -1.0])
    y = A._randaugment_op(op, u, sign, level)
    for i, s in enumerate(sign.tolist()):
        if op.startswith("shear"):
            shear = [math.degrees(math.atan(0.3 * level * s)), 0.0]
            shear = shear if op == "shear_x" else shear[::-1]
            ref = TF.affine(u[i], angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
        elif op.startswith("translate"):
            shift = [int(150 / 331 * 16 * level * s), 0]
            shift = shift if op == "translate_x" else shift[::-1]
            ref = TF.affine(u[i], angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
        else:
            ref = TF.rotate(u[i], 30 * level * s)
        assert torch.equal(y[i], ref), (op, s)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_randaugment_operation_keeps_shape_and_range(channels):
    torch.manual_seed(10)
    u = torch.rand(4, channels, 8, 8)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    for op in A.RANDAUGMENT_OPS:
        y = A._randaugment_op(op, u, sign, 9 / 30)
        assert y.shape == u.shape and y.min() >= 0 and y.max() <= 1, op
        unchanged = op == "identity" or (op == "color" and channels == 1)  # torchvision: no saturation on grey
        assert torch.equal(y, u) == unchanged, op


@pytest.mark.parametrize("glyphs", [False, True])
def test_a_seeded_run_is_reproducible(glyphs):
    names = ["crop", "color", "randaugment"] if glyphs else ["flip", "crop", "color", "randaugment"]
    aug, norm, c = (_glyph(names), GREY_NORM, 1) if glyphs else (_natural(names), IMAGENET_NORM, 3)
    x = _normalise(torch.rand(8, c, 16, 16, generator=torch.Generator().manual_seed(0)), norm)
    outs = []
    for seed in (11, 11, 12):
        torch.manual_seed(seed)
        outs.append(aug(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


def test_glyph_data_sets_refuse_flip_with_the_per_sample_message():
    with pytest.raises(ConfigError, match="mirrors glyphs") as batched:
        build_batch_augment(["crop", "flip"], "mnist", 28)
    with pytest.raises(ConfigError) as per_sample:
        build_augment(["crop", "flip"], "mnist", 28)
    assert str(batched.value) == str(per_sample.value)
    assert build_batch_augment("flip", "folder", 32) is not None


def test_build_batch_augment_mirrors_build_augment():
    assert build_batch_augment("none", "digits", 28) is None
    assert build_batch_augment(None, "digits", 28) is None
    with pytest.raises(ConfigError, match="unknown augmentation preset"):
        build_batch_augment(["crop", "blur"], "digits", 28)
    aug = build_batch_augment("crop,color", "digits", 28)
    assert aug.glyphs and aug.names == ["crop", "color"] and repr(aug) == "BatchAugment(crop+color)"
    aug = build_batch_augment("color", "folder", 32, notes={"normalization": [[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]]})
    assert aug.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert aug.std.flatten().tolist() == pytest.approx([1.0, 2.0, 3.0])


# ---------------------------------------------------------------- the operations' two conventions


def test_posterize_and_solarize_follow_torchvision_and_the_views_convention():
    torch.manual_seed(13)
    u = torch.rand(4, 3, 8, 8)
    u[:, :, 0, 0], u[:, :, 0, 1] = 0.0, 1.0
    for bits in (4, 6, 8):
        assert torch.equal(AT.posterize(u, bits), TF.posterize(u, bits))
    spread = AT.posterize(u, torch.tensor([1.0, 2.0, 3.0, 4.0]), spread=True)  # per-image bits
    for i, bits in enumerate((1, 2, 3, 4)):
        levels = 2**bits - 1
        assert torch.allclose(spread[i], (u[i] * levels).round() / levels)  # nearest of 2^bits levels in [0, 1]
        assert spread[i, :, 0, 0].eq(0).all() and spread[i, :, 0, 1].eq(1).all()  # both ends kept
    assert torch.equal(AT.solarize(u, 0.7), TF.solarize(u, 0.7))
    per_image = AT.solarize(u, torch.tensor([0.0, 0.5, 1.0, 2.0]))
    assert torch.equal(per_image[0], 1 - u[0]) and torch.equal(per_image[3], u[3])


def test_the_views_contrast_and_sharpness_variants():
    torch.manual_seed(14)
    u = torch.rand(4, 3, 8, 8)
    factor = torch.tensor([0.5, 1.0, 1.5, 0.0])
    whole = AT.adjust_contrast(u, factor, luma=False)  # blends with the mean of all channels
    assert torch.allclose(whole[3], u[3].mean().expand(3, 8, 8))
    assert torch.allclose(whole[1], u[1])  # factor 1: the image
    grey = u[:, :1]
    assert torch.equal(AT.adjust_contrast(grey, factor, luma=False), AT.adjust_contrast(grey, factor))
    keep, replicate = AT.adjust_sharpness(u, factor), AT.adjust_sharpness(u, factor, border="replicate")
    assert torch.allclose(keep[..., 1:-1, 1:-1], replicate[..., 1:-1, 1:-1])  # the same smoothing inside
    assert torch.equal(keep[..., 0, :], u[..., 0, :])  # torchvision keeps the border
    assert not torch.allclose(replicate[0, :, 0, :], u[0, :, 0, :])  # the views smooth it too


def test_random_sign_is_plus_or_minus_one_in_the_batch_dtype():
    torch.manual_seed(15)
    for dtype in (torch.float32, torch.float64):
        s = AT.random_sign(1000, torch.zeros(1, dtype=dtype), half_negative=dtype == torch.float64)
        assert s.dtype == dtype and set(s.tolist()) == {-1.0, 1.0} and abs(s.mean().item()) < 0.15


# ---------------------------------------------------------------- FixMatch/AdaMatch's views


def test_views_keep_shape_and_weak_never_flips_digits():
    x = torch.zeros(8, 1, 28, 28) - 1
    x[:, :, 6:22, 4:8] = 1  # a bar on the left: a horizontal flip would move it to the right
    torch.manual_seed(0)
    w = AT.weak(x, max_shift=0.0)
    assert torch.allclose(w, x, atol=1e-5)  # no shift, no flip: identity
    w = AT.weak(x, max_shift=0.125)
    assert w.shape == x.shape and w[..., :14].sum() > w[..., 14:].sum()  # the bar stays on the left
    s = AT.strong(x)
    assert s.shape == x.shape and torch.isfinite(s).all() and not torch.allclose(s, x)
    assert s.min() >= x.min() - 1e-4 and s.max() <= x.max() + 1e-4  # intensities stay in the image's range
    hidden = AT.cutout(torch.ones(2, 1, 10, 10) * torch.arange(10.0), size=0.5)
    assert (hidden != torch.ones(2, 1, 10, 10) * torch.arange(10.0)).any()


@pytest.mark.parametrize("channels", [1, 3])
def test_every_strong_view_operation_keeps_shape_and_range(channels):
    torch.manual_seed(16)
    x01 = torch.rand(4, channels, 8, 8)
    m = torch.tensor([0.05, 0.4, 0.7, 1.0])
    for op in AT.PHOTOMETRIC:
        y = AT._photometric(op, x01, m)
        assert y.shape == x01.shape and y.min() >= 0 and y.max() <= 1, op
    for op in AT.GEOMETRIC:
        theta = AT._geometric_theta(op, m, x01)
        assert theta.shape == (4, 2, 3) and not torch.equal(theta, AT.identity_theta(4, x01)), op


def test_strong_view_is_reproducible_and_per_image():
    x = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (17, 17, 18):
        torch.manual_seed(seed)
        outs.append(AT.strong(x))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    same_image = torch.randn(1, 1, 12, 12).expand(16, 1, 12, 12).contiguous()
    torch.manual_seed(19)
    y = AT.strong(same_image)
    assert len({tuple(img.flatten().round(decimals=4).tolist()) for img in y}) > 1
