"""The per-epoch evaluation of a run: the splits it reads, one forward per split per set of weights, the
label-free validators, the collapse monitor and the held-out source validation split.

Test accuracies are curves only (they choose nothing). The validators and the monitor read the unlabelled
target training split under the evaluation transform; when the target test split is the same images (a folder
task's transductive protocol), its accuracy comes from that same forward pass. Under torchrun every rank first
takes rank 0's buffers (BatchNorm running statistics: the ones model.pt holds), then predicts a shard; the
shards are gathered, so every rank scores the whole split with the weights that are saved.
"""

from __future__ import annotations

import time

import torch

from da import distributed
from da.data.base import Task
from da.data.batches import TensorSplit, resolve
from da.evaluate import Predictions, accuracy, predict
from da.methods.base import Method
from da.monitor import CollapseMonitor
from da.runtime import Runtime, place_splits
from da.validators import ValidationData, score_all, subsample_index


def same_images(a: TensorSplit, b: TensorSplit) -> bool:
    """Whether two splits hold the same images under the same transform (their predictions are equal)."""
    return a.x is b.x and a.transform is b.transform and len(a) == len(b)


class Evaluator:
    """Predictions and scores of a method's current weights on a task's splits.

    ``splits`` are the task's in-memory splits placed where the run keeps its images (:func:`place_splits`);
    the training loop reads its batches from the same ones. Predictions of the target training split are
    cached until :meth:`invalidate` (the loop calls it whenever the weights change).
    """

    def __init__(self, task: Task, method: Method, runtime: Runtime, batch_size: int, collapse_fraction: float):
        self.task, self.method, self.runtime, self.batch_size = task, method, runtime, batch_size
        # the validators' subsample cap and the epochs between evaluations (trainer.validator_samples, eval_every)
        self.max_samples = getattr(runtime.cfg, "validator_samples", None)
        self.every, self.last = getattr(runtime.cfg, "eval_every", 1), getattr(runtime.cfg, "epochs", 0)
        self.splits, self.placement = place_splits(
            {
                "source_train": resolve(task.source_train),
                "target_train": resolve(task.target_train),
                "target_train_eval": resolve(task.target_train_eval),
                "target_test": resolve(task.target_test),
                "source_val": resolve(task.source_val) if method.uses_source else None,
            },
            runtime.device,
            runtime.cfg.data_on_device,
        )
        self.monitor = CollapseMonitor(collapse_fraction)  # label-free: predictions on the unlabelled target
        self._target_train: Predictions | None = None  # one forward per set of weights
        self.seconds = {"forwards": 0.0, "validators": 0.0}  # the last evaluate(), in its two parts

    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` is evaluated: every ``every``-th, the last, and every epoch of an inductive task
        (early stopping reads each one)."""
        return epoch % self.every == 0 or epoch >= self.last or self.task.val is not None

    def invalidate(self) -> None:
        """The weights changed: predictions are computed afresh when next asked for."""
        self._target_train = None

    def predict(self, dataset) -> Predictions:
        """Predictions over a whole split; under torchrun each rank predicts a contiguous shard and every rank
        receives all of them, in order (each image predicted once)."""
        rt = self.runtime
        if rt.world == 1:
            return predict(self.method, dataset, rt.device, self.batch_size, rt.amp_dtype)
        distributed.broadcast_buffers(self.method)  # rank 0's BatchNorm statistics: those model.pt holds
        return distributed.predict_sharded(self.method, dataset, rt.device, self.batch_size, rt.amp_dtype)

    def predict_target_train(self) -> Predictions:
        """Predictions on the unlabelled target training split (evaluation transform) of the current weights,
        leaving training's random stream untouched. Computed once per set of weights: the end-of-epoch
        validators and monitor, and the next epoch's pseudo-labelling (same weights), share one forward pass."""
        if self._target_train is None:
            split = self.splits["target_train_eval"] or self.task.target_train_eval
            with torch.random.fork_rng(devices=[]):
                self._target_train = self.predict(split)
        return self._target_train

    def target_test_predictions(self) -> Predictions:
        """Predictions on the target test split: those of the target training split when both are the same
        images under the same transform, else a forward pass of their own."""
        test, train = self.splits["target_test"], self.splits["target_train_eval"]
        if test is not None and train is not None and test.labels is not None and same_images(test, train):
            pred = self.predict_target_train()
            return Predictions(pred.logits, pred.features, test.labels.cpu())
        return self.predict(self.task.target_test)

    def validation_data(self) -> ValidationData:
        """Predictions the label-free validators read: the unlabelled target training split (evaluation
        transform) and, for a method that uses source data, the labelled source validation split. Training's
        random stream is left untouched (a DataLoader draws a seed from the global RNG).

        Both are capped at ``max_samples`` images: a fixed subsample (seed 0, the same for every run, method and
        epoch, so scores stay comparable) — the validators' cost grows with N (SND with N²). The target training
        split is still predicted whole (its accuracy, the monitor, pseudo-labels); the source validation split is
        predicted only where it is sampled."""
        with torch.random.fork_rng(devices=[]):
            tgt = self.predict_target_train()
            src_val = self.splits["source_val"] or (self.task.source_val if self.method.uses_source else None)
            if isinstance(src_val, TensorSplit) and self.max_samples and len(src_val) > self.max_samples:
                index = subsample_index(len(src_val), self.max_samples)
                src_val = TensorSplit(src_val.x[index], src_val.labels[index], src_val.transform)
            src = self.predict(src_val) if src_val is not None and len(src_val) else None
        logits_t, features_t = tgt.logits, tgt.features
        if self.max_samples and len(logits_t) > self.max_samples:
            index = subsample_index(len(logits_t), self.max_samples)
            logits_t, features_t = logits_t[index], features_t[index]
        if src is None:
            return ValidationData(logits_t, features_t)
        return ValidationData(logits_t, features_t, src.logits, src.features, src.labels)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """This epoch's test accuracies (curves), label-free scores and collapse statistics; nothing (``{}``) for an
        epoch :meth:`due` skips (``trainer.eval_every``).

        The source accuracy curve is measured on the held-out source validation split the validators read when
        the run has one (``source_val`` > 0), else on the source test split; results.json's ``source_acc`` is
        always the source test split's. A source-free method is not evaluated on source images.
        """
        if not self.due(epoch):
            self.seconds = {"forwards": 0.0, "validators": 0.0}
            return {}
        start = time.perf_counter()
        data = self.validation_data()
        tgt = self.target_test_predictions()
        out = {"target_acc": accuracy(tgt.logits, tgt.labels)}
        if self.method.uses_source:
            if data.has_source:
                out["source_acc"] = accuracy(data.logits_s, data.labels_s)
            else:
                src = self.predict(self.task.source_test)
                out["source_acc"] = accuracy(src.logits, src.labels)
        middle = time.perf_counter()
        out.update({f"{k}_score": v for k, v in score_all(data).items()})
        self.seconds = {"forwards": middle - start, "validators": time.perf_counter() - middle}
        out.update(self.monitor.update(epoch, self.predict_target_train().logits))  # every target image
        return out

    def pseudo_label_metrics(self) -> dict[str, float]:
        """Coverage of the method's pseudo-labels and (analysis only) their accuracy on the hidden labels."""
        pl, truth = self.method.pseudo_labels, self.task.target_train_labels
        if pl is None:
            return {}
        kept = pl >= 0
        out = {"pl_coverage": kept.float().mean().item()}
        if truth is not None and kept.any():
            out["pl_acc"] = (pl[kept].cpu() == truth[kept.cpu()]).float().mean().item()
        return out
