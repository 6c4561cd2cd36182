"""Mixed precision (trainer.amp): which dtype each device gets, the float32 head, and a bf16 run on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

import da.evaluator
import da.runtime
from da.backbones import ImageClassifier, LeNet
from da.experiment import fit

from .conftest import tiny_cfg


@pytest.mark.parametrize("native", [True, False])
def test_cpu_autocast_only_where_the_cpu_has_bf16_instructions(monkeypatch, native):
    monkeypatch.setattr(da.runtime, "_CPU_BF16", native)
    cpu = torch.device("cpu")
    assert da.runtime.amp_dtype(True, cpu) == (torch.bfloat16 if native else None)
    assert da.runtime.amp_dtype(False, cpu) is None
    assert da.runtime.amp_dtype(True, torch.device("mps")) is None


def test_cpu_bf16_detection_reads_the_cpu_flags(monkeypatch):
    with open("/proc/cpuinfo") as fh:
        flags = set(next((line for line in fh if line.startswith("flags")), "").split())
    monkeypatch.setattr(da.runtime, "_CPU_BF16", None)  # detect afresh (restored after the test)
    expected = bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()
    assert da.runtime.cpu_bf16_native() == expected


def test_the_head_runs_in_float32_under_autocast():
    torch.manual_seed(0)
    model = ImageClassifier(LeNet(1), 800, 10, 500).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, features = model(x)
    assert logits.dtype == torch.float32 and features.dtype == torch.bfloat16
    exact = model.head(features.float())  # the float32 head applied to the bf16 features
    assert torch.equal(logits, exact)
    fp32_logits, fp32_features = model(x)  # outside autocast: float32 throughout
    assert fp32_logits.dtype == fp32_features.dtype == torch.float32
    assert torch.allclose(logits, fp32_logits, atol=0.1)  # bf16 features: close, not equal


def test_a_bf16_run_on_the_cpu_trains_evaluates_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(da.runtime, "_CPU_BF16", True)  # forced: runs (emulated) on any CPU
    seen = []
    real = da.evaluator.predict

    def recording(method, dataset, device, batch_size=256, amp_dtype=None):
        out = real(method, dataset, device, batch_size, amp_dtype)
        seen.append((amp_dtype, out.logits.dtype, out.features.dtype))
        return out

    monkeypatch.setattr(da.evaluator, "predict", recording)
    results = fit(tiny_cfg("method=dann"), run_dir=str(tmp_path / "bf16"), quiet=True)
    assert results["precision"] == "bfloat16"
    assert json.loads((tmp_path / "bf16" / "results.json").read_text())["precision"] == "bfloat16"
    assert seen and all(s == (torch.bfloat16, torch.float32, torch.float32) for s in seen)  # float32 out
    assert 0 <= results["target_acc"] <= 1
    fp32 = fit(tiny_cfg("trainer.amp=false", "trainer.epochs=1"), run_dir=str(tmp_path / "fp32"), quiet=True)
    assert fp32["precision"] == "float32"


def test_statistic_losses_run_in_float32_under_autocast():
    from da import losses

    torch.manual_seed(0)
    f_s, f_t = torch.randn(32, 64).bfloat16(), (1.2 * torch.randn(32, 64)).bfloat16()
    z = torch.randn(32, 10)
    exact = {
        "coral": losses.coral(f_s.float(), f_t.float()),
        "mk_mmd": losses.mk_mmd(f_s.float(), f_t.float()),
        "mcc": losses.mcc(z),
        "bnm": losses.bnm(z),
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = {
            "coral": losses.coral(f_s, f_t),
            "mk_mmd": losses.mk_mmd(f_s, f_t),
            "mcc": losses.mcc(z),
            "bnm": losses.bnm(z),
        }
        by_keyword = losses.coral(f_s=f_s, f_t=f_t)  # keyword arguments are cast up too
        plain_product = (z.T @ z).dtype  # what a matrix product inside the loss would otherwise be
    assert plain_product == torch.bfloat16
    assert torch.equal(by_keyword, exact["coral"])
    for name, value in under.items():
        assert value.dtype == torch.float32 and torch.equal(value, exact[name]), name
