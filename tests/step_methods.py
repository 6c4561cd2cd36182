"""Three methods that own their optimisation step, defined outside the package as a user would in a notebook,
and a driver that runs them through ``da.fit`` (also under torchrun, and killed mid-run).

- ``test_sam``: a SAM wrapper (Foret et al., arXiv 2010.01412) usable over any method: two forward/backward
  passes, the second at the weights moved by ρ · g / ‖g‖ (here over DANN);
- ``test_mcd``: MCD's shape (Saito et al., arXiv 1712.02560): two classifiers, two optimisers, three phases;
- ``test_ema``: a mean teacher (Tarvainen & Valpola, arXiv 1703.01780) updated after each step, over DANN.

Driver: ``python -m tests.step_methods <run_dir> <kill_at_epoch|-> [override ...]`` (``method=test_sam`` etc., or
``methods=a,b,c``: one run each in ``<run_dir>/<name>``);
``bf16`` in the environment variable ``DA_TEST_BF16`` forces CPU autocast (emulated bf16).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import open_dict

from da import losses
from da.callbacks import Callback
from da.methods.base import METHODS, Method, MethodConfig
from da.methods.dann import DANN

TINY = [
    "dataset.samples_per_class=12",
    "trainer.steps_per_epoch=4",
    "trainer.batch_size=16",
    "trainer.progress_bar=false",
    "device=cpu",
    "trainer.report=false",
]
BASES = {"test_sam": "dann", "test_mcd": "source_only", "test_ema": "dann"}


def sam_step(method: Method, batch_s, batch_t, progress: float, step, rho: float) -> dict[str, torch.Tensor]:
    """SAM over any method's losses: the gradient at w + ρ g/‖g‖ updates w (arXiv 2010.01412, Alg. 1)."""
    out = step.forward(batch_s, batch_t, progress)
    step.zero_grad()
    step.backward(out["loss"])
    params = [p for opt in step.optimizers for g in opt.param_groups for p in g["params"] if p.grad is not None]
    with torch.no_grad():
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))  # the scaler's factor cancels here
        moves = [rho * p.grad / (norm + 1e-12) for p in params]
        for p, e in zip(params, moves, strict=True):
            p.add_(e)
    step.zero_grad()
    step.backward(step.forward(batch_s, batch_t, progress)["loss"])
    with torch.no_grad():
        for p, e in zip(params, moves, strict=True):
            p.sub_(e)
    step.step()
    return out


@METHODS.register("test_sam")
class SAMDANN(DANN):
    rho = 0.05

    def optimization_step(self, batch_s, batch_t, progress, step):
        return sam_step(self, batch_s, batch_t, progress, step, self.rho)


@METHODS.register("test_mcd")
class TwoClassifiers(Method):
    """Phase A: both heads and the features on the source; B: the heads, features fixed, source CE minus their
    discrepancy on the target; C: the features, to reduce the discrepancy (arXiv 1712.02560, Sec. 3.2)."""

    @dataclass
    class Config(MethodConfig):
        label_smoothing: float = 0.0  # source_only's key, unused here

    find_unused_parameters = True  # phase B leaves the features without gradients

    def __init__(self, model, cfg, num_classes):
        super().__init__(model, cfg, num_classes)
        self.head2 = torch.nn.Linear(model.features_dim, num_classes)

    def configure_optimizers(self, make):
        heads = [p for n, p in self.named_parameters() if n.startswith(("model.head", "head2"))]
        feats = [p for n, p in self.named_parameters() if not n.startswith(("model.head", "head2"))]
        return [make([{"params": feats, "lr_factor": 1.0}]), make([{"params": heads, "lr_factor": 1.0}])]

    def _logits(self, x, detach: bool = False):
        f = self.model.bottleneck(self.model.backbone(x))  # (B, D)
        f = f.detach() if detach else f
        return self.model.head(f.float()), self.head2(f.float())

    def phase_a(self, batch_s, batch_t, progress):
        x_s, y_s = batch_s
        a, b = self._logits(x_s)
        return losses.cross_entropy(a, y_s) + losses.cross_entropy(b, y_s)

    def phase_b(self, batch_s, batch_t, progress):
        (x_s, y_s), (x_t, _) = batch_s, batch_t
        a, b = self._logits(torch.cat([x_s, x_t]), detach=True)
        n = len(x_s)
        cls = losses.cross_entropy(a[:n], y_s) + losses.cross_entropy(b[:n], y_s)
        return cls - (F.softmax(a[n:], 1) - F.softmax(b[n:], 1)).abs().mean()

    def phase_c(self, batch_s, batch_t, progress):
        a, b = self._logits(batch_t[0])
        return (F.softmax(a, 1) - F.softmax(b, 1)).abs().mean()

    def optimization_step(self, batch_s, batch_t, progress, step):
        feats, heads = step.optimizers
        out = {}
        for phase, opts in (("phase_a", (feats, heads)), ("phase_b", (heads,)), ("phase_c", (feats,))):
            loss = step.forward(batch_s, batch_t, progress, phase=phase)
            step.zero_grad()
            step.backward(loss)
            step.step(*opts)
            out[phase] = loss.detach()
        return {"loss": out["phase_a"], **out}


@METHODS.register("test_ema")
class MeanTeacherDANN(DANN):
    alpha = 0.9

    def __init__(self, model, cfg, num_classes):
        super().__init__(model, cfg, num_classes)
        self.teacher = copy.deepcopy(model).requires_grad_(False)  # part of state_dict: checkpointed

    def training_step(self, batch_s, batch_t, progress):
        out = super().training_step(batch_s, batch_t, progress)
        x_t = batch_t[0]
        with torch.no_grad():
            target = F.softmax(self.teacher(x_t)[0].float(), 1)  # (B, K)
        consistency = F.mse_loss(F.softmax(self.model(x_t)[0].float(), 1), target)
        return {**out, "loss": out["loss"] + consistency, "consistency": consistency.detach()}

    def optimization_step(self, batch_s, batch_t, progress, step):
        out = super().optimization_step(batch_s, batch_t, progress, step)
        with torch.no_grad():
            for t, s in zip(self.teacher.state_dict().values(), self.model.state_dict().values(), strict=True):
                t.copy_(self.alpha * t + (1 - self.alpha) * s) if t.is_floating_point() else t.copy_(s)
        return out


class KillAt(Callback):
    """SIGKILL this process right after the checkpoint of ``epoch`` is written (as kill -9 would)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, row) -> None:
        if trainer.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveRankState(Callback):
    """Each rank's final method state in ``<run>/rank<r>.pt`` (DDP keeps the ranks' weights equal)."""

    def on_fit_end(self, trainer) -> None:
        torch.save(trainer.method.state_dict(), os.path.join(trainer.run_dir, f"rank{trainer.runtime.rank}.pt"))


def config(*overrides: str):
    """The tiny embedded task with ``method=<name>`` of a method defined here (or registered in ``da``)."""
    import da

    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "dann")
    rest = [o for o in overrides if not o.startswith("method=")]
    tiny = [o for o in TINY if not o.startswith("dataset.")] if any(o.startswith("dataset=") for o in rest) else TINY
    cfg = da.compose([*tiny, f"method={BASES.get(name, name)}", *rest])
    with open_dict(cfg):
        cfg.method.name = name
    return cfg


def main(argv: list[str]) -> None:
    import da
    import da.runtime

    if os.environ.get("DA_TEST_BF16"):
        da.runtime._CPU_BF16 = True  # CPU autocast in bf16 (emulated where the CPU lacks it)
    run_dir, kill, *overrides = argv
    callbacks = [SaveRankState()] + ([KillAt(int(kill))] if kill != "-" else [])
    names = next((o.split("=", 1)[1] for o in overrides if o.startswith("methods=")), None)
    if names is None:
        da.fit(config(*overrides), run_dir=run_dir, quiet=True, callbacks=callbacks)
        return
    rest = [o for o in overrides if not o.startswith("methods=")]
    for name in names.split(","):  # several runs in one process (one torchrun start-up for all)
        da.fit(config(f"method={name}", *rest), run_dir=os.path.join(run_dir, name), quiet=True, callbacks=callbacks)


if __name__ == "__main__":
    main(sys.argv[1:])
