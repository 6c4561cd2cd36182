"""Issue 21: MDD, MCD, NRC, AaD, the SDAT and MIC options and timm backbones.

In process: SDAT's step equals a hand-written two-pass update on a toy model; MIC's teacher is the EMA schedule
of lhoyer/MIC and part of the state; MCD's phases move what they should; NRC/AaD's banks are filled, written,
searched and checkpointed; a tiny timm ViT builds at the task's size and channels, and missing weights offline
are one line. Through ``da.fit`` in subprocesses (the driver below, the pattern of ``tests.step_methods``):
every new method (MDD here with SDAT and MIC on) resumes after kill -9 to the uninterrupted run, and one
torchrun start trains all of them under 2-rank gloo DDP on a timm tiny ViT with the ranks kept equal.

Driver: ``python -m tests.test_new_methods <run_dir> <kill_at_epoch|-> <label,label,...> [override ...]``
(labels: the keys of ``RUNS``; one run each in ``<run_dir>/<label>``).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from da.backbones import BackboneConfig, ImageClassifier, build_model
from da.config import TrainerConfig
from da.errors import ConfigError
from da.evaluate import Predictions
from da.methods.base import EpochContext, block_mask
from da.methods.dann import DANN
from da.methods.mcd import MCD
from da.methods.nrc import NRC
from da.runtime import Runtime, Step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {  # label -> overrides of the tiny task (tests.step_methods.TINY)
    "mdd_sdat_mic": ("method=mdd", "method.sdat_rho=0.05", "method.mic_weight=1"),
    "mcd": ("method=mcd", "method.num_k=2"),
    "nrc": ("method=nrc", "init=scratch"),
    "aad": ("method=aad", "init=scratch"),
}
TINY_VIT = ("backbone=timm", "backbone.name=test_vit", "backbone.weights=null", "dataset.image_size=32")


# ---------------------------------------------------------------- toy model and step


def toy_model(num_classes: int = 3) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU()), 6, num_classes, bottleneck_dim=4)


def toy_batches(n: int = 8):
    g = torch.Generator().manual_seed(1)
    x_s, y_s = torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)
    return (x_s, y_s), (torch.randn(n, 3, 2, 2, generator=g), torch.arange(n))


def toy_step(method, lr: float = 0.1) -> Step:
    """The run's Step in float32 on the CPU over plain SGD (no momentum, no weight decay) at ``lr``."""
    opts = method.configure_optimizers(lambda groups: torch.optim.SGD(groups, lr=lr))
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_factor"]
    return Step(Runtime(TrainerConfig(amp=False), torch.device("cpu"), 0), method, opts)


# ---------------------------------------------------------------- SDAT and MIC


def test_sdat_step_equals_a_hand_written_two_pass_update():
    rho, lr, progress = 0.05, 0.1, 0.5
    method = DANN(toy_model(), DANN.Config(name="dann", sdat_rho=rho, hidden_dim=8), 3).train()
    ref, before = copy.deepcopy(method), copy.deepcopy(method.state_dict())
    batch_s, batch_t = toy_batches()
    method.optimization_step(batch_s, batch_t, progress, toy_step(method, lr))

    # by hand: the source CE of the joint batch gives the ascent over the model (backbone, bottleneck, head) ...
    (x_s, y_s), (x_t, _) = batch_s, batch_t
    model_params = list(ref.model.parameters())
    task = F.cross_entropy(ref.model(torch.cat([x_s, x_t]))[0][: len(x_s)], y_s)
    g1 = torch.autograd.grad(task, model_params)
    norm = torch.sqrt(sum((g * g).sum() for g in g1))
    eps = [rho * g / norm for g in g1]
    with torch.no_grad():
        for p, e in zip(model_params, eps, strict=True):
            p += e
    # ... the whole DANN loss at w + eps gives the gradient every parameter (discriminator included) steps with
    params = [p for p in ref.parameters() if p.requires_grad]
    g2 = torch.autograd.grad(ref.training_step(batch_s, batch_t, progress)["loss"], params)
    with torch.no_grad():
        for p, e in zip(model_params, eps, strict=True):
            p -= e
        for p, g in zip(params, g2, strict=True):
            p -= lr * g
    after, expected = method.state_dict(), ref.state_dict()
    assert list(after) == list(expected)
    for key in after:  # weights and the BatchNorm statistics of both passes
        torch.testing.assert_close(after[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(after["model.head.weight"], before["model.head.weight"])  # the step did train


def test_mic_teacher_follows_the_ema_schedule_and_is_checkpointed():
    method = DANN(toy_model(), DANN.Config(name="dann", mic_weight=1.0, hidden_dim=8), 3).train()
    assert not method.mic_teacher.training and not any(p.requires_grad for p in method.mic_teacher.parameters())
    step = toy_step(method)
    batch_s, batch_t = toy_batches()
    w0 = [p.detach().clone() for p in method.model.parameters()]
    out = method.optimization_step(batch_s, batch_t, 0.5, step)
    assert torch.isfinite(out["mic"]) and out["mic"] > 0
    w1 = [p.detach().clone() for p in method.model.parameters()]
    t1 = [0.5 * a + 0.5 * b for a, b in zip(w0, w1, strict=True)]  # alpha_1 = min(1 - 1/2, 0.9)
    for t, e in zip(method.mic_teacher.parameters(), t1, strict=True):
        torch.testing.assert_close(t, e)
    method.optimization_step(batch_s, batch_t, 0.5, step)
    w2 = list(method.model.parameters())
    for t, a, b in zip(method.mic_teacher.parameters(), t1, w2, strict=True):  # alpha_2 = min(1 - 1/3, 0.9)
        torch.testing.assert_close(t, 2 / 3 * a + 1 / 3 * b)
    state = method.state_dict()
    assert int(state["mic_updates"]) == 2 and any(k.startswith("mic_teacher.") for k in state)
    assert method.train().mic_teacher.training is False  # train() keeps the teacher in eval mode


def test_options_off_add_no_state():
    method = DANN(toy_model(), DANN.Config(name="dann", hidden_dim=8), 3)
    assert method.mic_teacher is None and not method.find_unused_parameters
    assert not any(k.startswith("mic_teacher.") or k == "mic_updates" for k in method.state_dict())


def test_block_mask_masks_whole_blocks_at_the_ratio():
    torch.manual_seed(0)
    x = torch.ones(64, 3, 32, 32)
    mask = block_mask(x, 0.7, 8)  # a 4 x 4 grid of 8-pixel blocks
    assert mask.shape == (64, 1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.view(64, 1, 4, 8, 4, 8)
    assert torch.equal(blocks.amax((3, 5)), blocks.amin((3, 5)))  # constant inside every block
    assert abs(mask.mean().item() - 0.3) < 0.05


# ---------------------------------------------------------------- MCD


def test_mcd_phases_train_the_heads_then_the_generator():
    method = MCD(toy_model(), MCD.Config(name="mcd", num_k=1), 3).train()
    g_opt, h_opt = toy_step(method).optimizers
    g_params = {id(p) for group in g_opt.param_groups for p in group["params"]}
    h_params = {id(p) for group in h_opt.param_groups for p in group["params"]}
    assert not g_params & h_params and g_params | h_params == {id(p) for p in method.parameters()}
    batch_s, batch_t = toy_batches()
    out = method.maximize_discrepancy(batch_s, batch_t, 0.0)
    out["loss"].backward()
    assert all(p.grad is None for p in method.model.backbone.parameters())  # G fixed in phase B
    assert all(p.grad is not None for p in method.head2.parameters())
    method.zero_grad()
    before = copy.deepcopy(method.state_dict())
    method.optimization_step(batch_s, batch_t, 0.0, toy_step(method))
    after = method.state_dict()
    assert not torch.equal(before["head2.weight"], after["head2.weight"])
    assert not torch.equal(before["model.backbone.1.weight"], after["model.backbone.1.weight"])


# ---------------------------------------------------------------- NRC / AaD banks


def test_neighbour_banks_fill_write_search_and_checkpoint():
    method = NRC(toy_model(), NRC.Config(name="nrc", k=1, kk=1), 3).train()
    n = 10
    torch.manual_seed(2)
    cached = Predictions(torch.randn(n, 3), torch.randn(n, 4), None)
    ctx = EpochContext(0, 0.0, torch.device("cpu"), None, 8, cached=lambda: cached)
    method.on_epoch_start(ctx)
    torch.testing.assert_close(method.fea_bank, F.normalize(cached.features, dim=1))
    torch.testing.assert_close(method.score_bank, F.softmax(cached.logits, dim=1))
    _, (x_t, _) = toy_batches(4)
    index = torch.tensor([7, 2, 5, 0])
    out = method.training_step(None, (x_t, index), 0.5)
    assert torch.isfinite(out["loss"])
    with torch.no_grad():
        logits, f = method.model(x_t)
    torch.testing.assert_close(method.score_bank[index], F.softmax(logits, 1))  # the batch is written
    # the nearest neighbour leaves the sample itself out
    method.fea_bank = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert method.nearest(method.fea_bank, 1).flatten().tolist() == [1, 0, 3, 2]
    fresh = NRC(toy_model(), NRC.Config(name="nrc"), 3)
    fresh.load_state_dict(method.state_dict())  # the banks travel in the state (the checkpoint)
    assert torch.equal(fresh.fea_bank, method.fea_bank) and torch.equal(fresh.score_bank, method.score_bank)
    method.on_epoch_start(ctx)  # a second epoch (or a resumed run) keeps the banks
    assert torch.equal(fresh.fea_bank, method.fea_bank)


# ---------------------------------------------------------------- timm


def test_timm_tiny_vit_takes_the_tasks_size_and_channels():
    model = build_model(BackboneConfig(name="test_vit", library="timm"), 10, in_channels=1, image_size=32)
    logits, f = model(torch.randn(2, 1, 32, 32))
    assert logits.shape == (2, 10) and f.shape == (2, 256)
    with pytest.raises(ConfigError, match="cannot take 28x28 images"):
        build_model(BackboneConfig(name="test_vit", library="timm"), 10, in_channels=1, image_size=28)
    with pytest.raises(
        ConfigError, match="unknown timm model 'vit_bse_patch16_224'; did you mean vit_base_patch16_224"
    ):
        build_model(BackboneConfig(name="vit_bse_patch16_224", library="timm"), 10, 3, 32)


def test_timm_weights_missing_offline_is_one_line_naming_the_repo_and_the_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        build_model(BackboneConfig(name="test_vit", weights="default", library="timm"), 10, 1, 32)
    message = str(err.value)
    assert "\n" not in message and "timm/test_vit.r160_in1k" in message and str(tmp_path) in message
    assert "backbone.weights=null" in message


# ---------------------------------------------------------------- through da.fit: kill -9, DDP


def _driver(run_dir, kill: int | None, labels, *overrides: str, torchrun: bool = False):
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else []
    args = [str(run_dir), str(kill or "-"), ",".join(labels), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "DA_TEST_BF16": ""}
    cmd = [sys.executable, *launcher, "-m", "tests.test_new_methods", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out


def _log(run_dir) -> list[dict[str, str]]:
    with open(os.path.join(run_dir, "log.csv")) as fh:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_new_methods_resume_after_kill_9_to_the_uninterrupted_run(tmp_path, tiny_folder):
    labels = list(RUNS)
    common = (*tiny_folder, "trainer.epochs=2")  # the 48-image folder task: evaluation costs nothing
    # the uninterrupted runs (one process) and one killed process per method, side by side
    procs = [_driver(tmp_path / "whole", None, labels, *common)]
    procs += [_driver(tmp_path / "killed", 1, [label], *common) for label in labels]
    (rc, out), *killed = [_finish(p) for p in procs]
    assert rc == 0, out[-3000:]
    for label, (rc_k, out_k) in zip(labels, killed, strict=True):
        assert rc_k == -9 and not (tmp_path / "killed" / label / "results.json").exists(), (label, out_k[-2000:])
    rc, out = _finish(_driver(tmp_path / "killed", None, labels, *common))
    assert rc == 0, out[-3000:]
    for label in labels:
        whole, resumed = tmp_path / "whole" / label, tmp_path / "killed" / label
        assert "resumed from" in (resumed / "run.log").read_text(), label
        assert _log(resumed) == _log(whole), label
        a = torch.load(resumed / "rank0.pt", weights_only=True)  # the method's whole state: banks, teacher
        b = torch.load(whole / "rank0.pt", weights_only=True)
        assert list(a) == list(b), label
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), (label, key)
            else:  # extra state: {name: (tensor or None, on accelerator)}
                for name, (va, _) in a[key].items():
                    vb = b[key][name][0]
                    assert (va is None and vb is None) or torch.equal(va, vb), (label, name)
        assert json.loads((resumed / "results.json").read_text())["steps"] == 8


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="torchrun with gloo on Linux")
def test_new_methods_under_two_rank_ddp_on_a_timm_tiny_vit(tmp_path):
    rc, out = _finish(_driver(tmp_path, None, list(RUNS), "trainer.epochs=2", *TINY_VIT, torchrun=True))
    assert rc == 0, out[-3000:]
    for label in RUNS:
        run = tmp_path / label
        results = json.loads((run / "results.json").read_text())
        assert results["world_size"] == 2 and results["backbone"] == "timm/test_vit", label
        r0 = torch.load(run / "rank0.pt", weights_only=True)
        r1 = torch.load(run / "rank1.pt", weights_only=True)
        weights = [k for k, v in r0.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        assert weights and all(torch.equal(r0[k], r1[k]) for k in weights if "running_" not in k), label
        for name, (value, _) in r0["_extra_state"].items():  # NRC / AaD: each rank wrote the global batch
            other = r1["_extra_state"][name][0]
            assert (value is None and other is None) or torch.equal(value, other), (label, name)
        saved = torch.load(run / "model.pt", weights_only=True)  # rank 0's model
        assert all(torch.equal(saved[k], r0[f"model.{k}"]) for k in saved), label


def main(argv: list[str]) -> None:
    import da
    from tests.step_methods import KillAt, SaveRankState, config

    run_dir, kill, labels, *overrides = argv
    callbacks = [SaveRankState()] + ([KillAt(int(kill))] if kill != "-" else [])
    for label in labels.split(","):  # several runs in one process (one torchrun start-up for all)
        da.fit(config(*RUNS[label], *overrides), run_dir=os.path.join(run_dir, label), quiet=True, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
