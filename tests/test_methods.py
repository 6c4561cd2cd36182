"""One smoke test per registered method, generated from the registry (a new method is tested as it registers).

Each method is built on a tiny shifted task (fonts -> sklearn digits) on the CPU, as ``da.fit`` builds it,
takes a few optimiser steps on fixed batches and must: give every trainable parameter a finite gradient,
lower its loss, predict (B, K) logits, and produce no NaN. A method that needs other settings for this test
declares them itself as a class attribute ``smoke_overrides`` (config overrides, e.g. ``("method.x=1",)``).
"""

import pytest
import torch

from da.build import build_run
from da.data import make_loader
from da.methods import METHODS
from da.methods.base import EpochContext

from .conftest import tiny_cfg

STEPS = 8


def build(name: str):
    """The method and task as ``da.fit`` builds them (da.build.build_run), from a scratch model."""
    cls = METHODS.get(name)
    cfg = tiny_cfg(f"method={name}", "dataset.samples_per_class=8", *getattr(cls, "smoke_overrides", ()))
    parts = build_run(cfg)
    return parts.method, parts.task, parts.configs.trainer


def first_batch(dataset, batch_size: int, seed: int):
    return next(iter(make_loader(dataset, batch_size, True, seed)))


@pytest.mark.parametrize("name", METHODS.names())
def test_method_smoke(name):
    method, task, tcfg = build(name)
    device = torch.device("cpu")
    method.on_epoch_start(EpochContext(0, 0.0, device, task.target_train, tcfg.eval_batch_size))
    batch_s = first_batch(task.source_train, 16, 1) if method.uses_source else None
    batch_t = first_batch(task.target_train, 16, 2) if method.uses_target else None
    assert batch_t is None or len(batch_t[1]) == 16 and batch_t[1].dtype == torch.long  # indices, never labels

    optimizer = torch.optim.SGD(method.param_groups(tcfg.lr), lr=tcfg.lr, momentum=0.9)
    method.train()
    losses = []
    for step in range(STEPS):
        out = method.training_step(batch_s, batch_t, progress=0.5 * step / STEPS)
        assert "loss" in out and out["loss"].dim() == 0
        for key, value in out.items():
            assert torch.isfinite(value).all(), f"{name}: {key} is {value}"
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if step == 0:
            trainable = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
            assert trainable, f"{name} has no trainable parameter"
            missing = [n for n, p in trainable if p.grad is None]
            assert not missing, f"{name}: no gradient for {missing[:5]}"
            assert all(torch.isfinite(p.grad).all() for _, p in trainable)
            assert any(p.grad.abs().sum() > 0 for _, p in trainable)
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"

    method.eval()
    x = (batch_t or batch_s)[0][:5]
    with torch.no_grad():
        logits = method.predict(x)
    assert logits.shape == (5, task.num_classes) and torch.isfinite(logits).all()
    assert method.features(x).shape[0] == 5
