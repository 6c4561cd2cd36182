"""Test-time adaptation (issue 25): the losses and update rules on hand-made cases, every method on the embedded
corruption benchmark in the continual and mixed protocols, resets at domain boundaries, labels kept from the
methods, and the CIFAR-10-C files on disk (a fixture in the release's format) with the offline one-line error."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from da.errors import ConfigError
from da.tta import losses
from da.tta.corruptions import CORRUPTIONS, load_cifar_c, to_model_input
from da.tta.methods import TTA_METHODS
from da.tta.stream import ProtocolConfig, batch_bounds, dirichlet_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("source", "bn_adapt", "tent", "eata", "sar", "cotta")
TINY = ["device=cpu", "quiet=true", "protocol.num_samples=8", "protocol.batch_size=8"]  # one batch per domain


# ----------------------------------------------------------------------------------------- losses, update rules


def test_entropy_and_margin_by_hand():
    uniform = torch.zeros(2, 4)
    assert torch.allclose(losses.softmax_entropy(uniform), torch.full((2,), math.log(4)))
    sure = torch.tensor([[100.0, 0.0, 0.0]])
    assert losses.softmax_entropy(sure).item() < 1e-6
    # two classes at p = (0.5, 0.5) and one certain sample: mean entropy ln 2 / 2
    assert losses.tent_loss(torch.tensor([[0.0, 0.0], [100.0, 0.0]])).item() == pytest.approx(math.log(2) / 2)
    assert losses.entropy_margin(10) == pytest.approx(0.4 * math.log(10))
    assert losses.entropy_margin(1000) == pytest.approx(0.4 * math.log(1000))  # EATA's / SAR's ImageNet E0


def test_eata_filters_weights_and_average():
    e0 = losses.entropy_margin(2)  # 0.277
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [0.0, 0.0]])  # two confident (H 0.04), one uniform (H ln 2)
    reliable, selected = losses.eata_select(logits, e0, 0.05, None)
    assert reliable.tolist() == [True, True, False] and selected.tolist() == [True, True, False]
    # a moving average equal to the first sample's probabilities: that sample is redundant (|cos| = 1 >= 0.05); the
    # second's probabilities are (nearly) orthogonal to it (|cos| < 0.05): it passes
    ema = torch.tensor([1.0, 0.0])
    reliable, selected = losses.eata_select(torch.tensor([[20.0, 0.0], [0.0, 20.0]]), e0, 0.05, ema)
    assert selected.tolist() == [False, True]  # (0, 1) is orthogonal to (1, 0)
    assert losses.eata_weights(torch.tensor([e0, 0.0]), e0).tolist() == pytest.approx([1.0, math.exp(e0)])
    p = torch.tensor([[0.2, 0.8], [0.4, 0.6]])
    assert losses.eata_update_probs(None, p).tolist() == pytest.approx([0.3, 0.7])
    assert losses.eata_update_probs(torch.tensor([1.0, 0.0]), p).tolist() == pytest.approx([0.93, 0.07])
    assert losses.eata_update_probs(None, p[:0]) is None
    kept = torch.tensor([0.5, 0.5])
    assert losses.eata_update_probs(kept, p[:0]) is kept


def test_fisher_penalty_by_hand():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    fishers = {"a": (torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.0]))}  # b has no Fisher: not regularised
    # 2000 · (2·1² + 0.5·2²) = 2000 · 4
    assert losses.fisher_penalty(params, fishers, 2000.0).item() == pytest.approx(8000.0)


def test_sam_step_and_sar_recovery_by_hand():
    eps = losses.sam_perturbation([torch.tensor([3.0]), None, torch.tensor([4.0])], rho=0.05)
    assert eps[1] is None
    assert eps[0].item() == pytest.approx(0.05 * 3 / 5) and eps[2].item() == pytest.approx(0.05 * 4 / 5)
    assert losses.ema_scalar(None, 0.5) == 0.5
    assert losses.ema_scalar(0.5, 0.1) == pytest.approx(0.9 * 0.5 + 0.1 * 0.1)
    assert not losses.sar_should_recover(None) and not losses.sar_should_recover(0.2)
    assert losses.sar_should_recover(0.19)


def test_cotta_rules_by_hand():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(losses.soft_cross_entropy(z, z), losses.softmax_entropy(z))  # CE(p, p) = H(p)
    standard, augmented = torch.zeros(1, 3), torch.stack([torch.ones(1, 3), 3 * torch.ones(1, 3)])
    unsure = losses.cotta_pseudo_logits(torch.tensor([0.5]), 0.92, standard, augmented)
    sure = losses.cotta_pseudo_logits(torch.tensor([0.95]), 0.92, standard, augmented)
    assert torch.equal(unsure, 2 * torch.ones(1, 3)) and torch.equal(sure, standard)
    assert losses.ema_tensor(torch.tensor(1.0), torch.tensor(0.0), 0.999).item() == pytest.approx(0.999)
    mask = torch.tensor([True, False])
    assert losses.stochastic_restore(torch.tensor([5.0, 6.0]), torch.tensor([0.0, 0.0]), mask).tolist() == [0.0, 6.0]
    drawn = losses.restore_mask(torch.Size([100_000]), 0.01, torch.Generator().manual_seed(0))
    assert 0.008 < drawn.float().mean().item() < 0.012


def test_stream_batches_and_dirichlet_order():
    assert batch_bounds(17, 8) == [(0, 8), (8, 17)]  # a last batch of one joins the one before
    assert batch_bounds(16, 8) == [(0, 8), (8, 16)]
    labels = np.repeat(np.arange(10), 50)
    order = dirichlet_order(labels, 0.1, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(500))  # a permutation
    switches = int((np.diff(labels[order]) != 0).sum())
    iid = int((np.diff(labels[np.random.default_rng(0).permutation(500)]) != 0).sum())
    assert switches < iid / 5  # long runs of one class
    with pytest.raises(ConfigError):
        ProtocolConfig(name="gradual")


# ----------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batches of 8 through LeNet: one intra-op thread is faster than two, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A small source model (LeNet: its bottleneck's BatchNorm1d is what the BN methods adapt), trained once."""
    from da.config import compose
    from da.experiment import fit

    folder = str(tmp_path_factory.mktemp("tta") / "source")
    overrides = ["method=source_only", "backbone=lenet", "dataset.source=sklearn", "dataset.target=sklearn"]
    overrides += ["trainer.epochs=1", "trainer.steps_per_epoch=8", "trainer.progress_bar=false", "device=cpu"]
    fit(compose(overrides), run_dir=folder, quiet=True)
    return folder


@pytest.fixture(scope="module")
def cache():
    return {}


def _run(tmp_path, source_run, cache, *overrides, name="run", **kw):
    from da.tta.run import fit_stream

    return fit_stream([*TINY, f"init={source_run}", *overrides], run_dir=str(tmp_path / name), cache=cache, **kw)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_continual_and_mixed(method, tmp_path, source_run, cache):
    assert set(METHODS) <= set(TTA_METHODS.names())
    out = {}
    # cut for time: CoTTA's 32 teacher passes, EATA's 2,000 Fisher images
    extra = {"cotta": ["method.augmentations=2"], "eata": ["method.fisher_size=16"]}.get(method, [])
    for protocol in ("continual", "mixed"):
        r = _run(
            tmp_path, source_run, cache, f"method={method}", f"protocol={protocol}", "severity=5", *extra, name=protocol
        )
        out[protocol] = r
        assert r["method"] == method and r["severity"] == 5 and r["protocol"]["name"] == protocol
        assert list(r["per_domain_error"]) == list(CORRUPTIONS) and r["samples"] == 15 * 8
        assert all(0 <= e <= 1 for e in r["per_domain_error"].values())
        assert r["mean_error"] == pytest.approx(np.mean(list(r["per_domain_error"].values())))
        assert r["source_run"] == os.path.abspath(source_run)
        with open(tmp_path / protocol / "log.csv") as fh:
            assert len(list(csv.DictReader(fh))) == r["batches"] == 15
    assert out["continual"]["protocol"]["reset_each_domain"] is False


def test_switching_the_protocol_changes_results(tmp_path, source_run, cache):
    runs = {
        p: _run(tmp_path, source_run, cache, "method=tent", f"protocol={p}", name=p) for p in ("continual", "mixed")
    }
    assert runs["continual"]["protocol"]["name"] == "continual" and runs["mixed"]["protocol"]["name"] == "mixed"
    assert runs["continual"]["per_domain_error"] != runs["mixed"]["per_domain_error"]
    shifted = _run(tmp_path, source_run, cache, "method=source", "protocol=label_shift", name="ls")
    assert shifted["protocol"]["dirichlet"] == 0.1


def _boundaries(tmp_path, source_run, cache, method, protocol, read):
    seen = []
    _run(
        tmp_path,
        source_run,
        cache,
        f"method={method}",
        f"protocol={protocol}",
        name=f"{method}_{protocol}",
        on_domain_start=lambda domain, m: seen.append(read(m)),
    )
    return seen


def test_continual_keeps_and_reset_restores_at_domain_boundaries(tmp_path, source_run, cache):
    """TENT's adapted BN affine parameters and BN-adapt's running statistics, read before each domain's first batch:
    a reset run starts every domain from the source; a continual run carries the last domain's state on."""

    def affine(m):
        return torch.cat([p.detach().flatten().clone() for p in m.adapted_parameters().values()])

    def running_mean(m):
        return torch.cat([b.clone() for n, b in m.model.named_buffers() if n.endswith("running_mean")])

    for method, read in (("tent", affine), ("bn_adapt", running_mean)):
        reset = _boundaries(tmp_path, source_run, cache, method, "reset", read)
        continual = _boundaries(tmp_path, source_run, cache, method, "continual", read)
        assert len(reset) == len(continual) == 15
        assert torch.equal(reset[0], continual[0])  # both start from the source model
        assert all(torch.equal(s, reset[0]) for s in reset[1:]), method
        assert all(not torch.equal(s, continual[0]) for s in continual[1:]), method


def test_target_labels_never_reach_the_method(tmp_path, source_run, cache, monkeypatch):
    """``step`` receives the images alone; with the stream's labels scrambled the method computes exactly the same
    (its losses and final parameters), only the scored error changes."""
    import da.tta.run as run
    from da.tta.methods.tent import Tent

    calls = []
    original = Tent.step

    def step(self, *args, **kwargs):
        calls.append((len(args), sorted(kwargs)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Tent, "step", step)
    final = []
    grab = lambda d, m: final.append(torch.cat([p.detach().flatten() for p in m.adapted_parameters().values()]))  # noqa: E731
    a = _run(tmp_path, source_run, cache, "method=tent", name="a", on_domain_start=grab)
    assert calls and all(c == (1, []) for c in calls)
    build = run.build_stream

    def scrambled(*args):
        batches = build(*args)
        for b in batches:
            b.y = (b.y + 3) % 10
        return batches

    monkeypatch.setattr(run, "build_stream", scrambled)
    b = _run(tmp_path, source_run, cache, "method=tent", name="b", on_domain_start=grab)
    assert all(torch.equal(x, y) for x, y in zip(final[:15], final[15:]))
    losses_a, losses_b = ([row["loss"] for row in csv.DictReader(open(tmp_path / n / "log.csv"))] for n in "ab")
    assert losses_a == losses_b
    assert a["per_domain_error"] != b["per_domain_error"]


def test_source_stage_and_bad_keys(tmp_path, cache):
    from da.tta.config import compose
    from da.tta.run import fit_stream

    with pytest.raises(ConfigError, match="method.nope"):
        compose(["method.nope=1"])
    with pytest.raises(ConfigError, match="severity"):
        fit_stream([*TINY, "severity=6"], run_dir=str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()
    src = '["method=source_only","backbone=lenet","dataset.source=sklearn","dataset.target=sklearn",'
    src += '"trainer.epochs=1","trainer.steps_per_epoch=2","trainer.progress_bar=false"]'
    r = fit_stream(
        [*TINY, "method=source", "init=source", f"source={src}", "data.corruptions=[fog]"],
        run_dir=str(tmp_path / "staged"),
        cache=cache,
    )
    assert r["source_run"] == str(tmp_path / "staged" / "source_stage") and r["backbone"] == "lenet"
    assert (tmp_path / "staged" / "source_stage" / "model.pt").is_file()


# ----------------------------------------------------------------------------------------- CIFAR-10-C on disk


def _cifar_fixture(root, corruptions=("gaussian_noise", "fog"), per=6):
    """``<root>/CIFAR-10-C/<corruption>.npy`` of shape (5·per, 32, 32, 3) uint8 (severity s fills its rows with s)
    and ``labels.npy`` (5·per,): the release's layout with ``per`` images per severity instead of 10,000."""
    folder = root / "CIFAR-10-C"
    folder.mkdir(parents=True)
    for c in corruptions:
        x = np.repeat(np.arange(1, 6, dtype=np.uint8), per)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
        np.save(folder / f"{c}.npy", x)
    np.save(folder / "labels.npy", np.tile(np.arange(per) % 10, 5).astype(np.int64))
    return folder


def test_cifar10c_loader_on_a_fixture(tmp_path, source_run, cache):
    folder = _cifar_fixture(tmp_path)
    images, labels = load_cifar_c(str(folder), "fog", 3, np.array([0, 2]))
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and (images == 3).all()
    assert labels.tolist() == [0, 2]
    x = to_model_input(images, 1, 28, 0.5, 0.5)
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.full_like(x, (3 / 255 - 0.5) / 0.5), atol=1e-5)
    r = _run(
        tmp_path,
        source_run,
        cache,
        "method=bn_adapt",
        "data=cifar10c",
        f"data.root={tmp_path}",
        "data.corruptions=[gaussian_noise,fog]",
        "severity=2",
        name="cifar",
    )
    assert r["data"] == "cifar10c" and list(r["per_domain_error"]) == ["gaussian_noise", "fog"] and r["samples"] == 12


def test_cifar10c_missing_is_one_line_exit_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "da.tta", "data=cifar10c", f"data.root={tmp_path}", f"run_dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: CIFAR-10-C not found")
    assert "CIFAR-10-C.tar" in lines[0] and "56bf5dcef84df0e2308c6dcbcbbd8499" in lines[0] and "zenodo" in lines[0]
    assert not (tmp_path / "run").exists()
