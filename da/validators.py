"""Label-free validators: score a model from its unlabelled target predictions, to choose checkpoints.

Computed on the target *training* split (unlabelled), never with target labels. Higher is better for all.
They re-implement pytorch-adapt's validators in a few tensor lines (importing pytorch-adapt takes seconds);
``tests/test_validators.py`` checks them against pytorch-adapt's classes.

- ``im``: Information Maximization, −mean H(p) + H(mean p) (pytorch-adapt ``IMValidator``; Shi & Sha, ICML 2012;
  as a validator: Musgrave et al., arXiv 2111.15672).
- ``snd``: Soft Neighborhood Density (Saito et al., arXiv 2108.10860; pytorch-adapt ``SNDValidator``): mean entropy
  of each sample's softmax over its cosine similarities (of predictions p) to all other samples, temperature 0.05.
- ``entropy``: −mean H(p) (pytorch-adapt ``EntropyValidator``), for reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from da.errors import ConfigError

VALIDATORS = ("im", "snd", "entropy")


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """Entropy (N,) of probability rows (N, K); 0·log 0 = 0."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(1)


def entropy_score(logits: torch.Tensor) -> float:
    """−mean entropy of softmax(logits) (N, K): confident predictions score higher."""
    return (F.softmax(logits, 1) * F.log_softmax(logits, 1)).sum(1).mean().item()


def im_score(logits: torch.Tensor) -> float:
    """Information maximization: confident (low entropy) and diverse (high entropy of the mean) predictions."""
    mean_p = F.softmax(logits, 1).mean(0, keepdim=True)  # (1, K)
    return entropy_score(logits) + _entropy_rows(mean_p).item()


def snd_score(logits: torch.Tensor, temperature: float = 0.05, chunk: int = 1024) -> float:
    """Soft neighborhood density of the predictions (N, K), computed in row chunks of the (N, N) similarity."""
    p = F.normalize(F.softmax(logits, 1), dim=1)  # (N, K) unit rows
    n = len(p)
    if n < 2:
        return 0.0
    total = 0.0
    for start in range(0, n, chunk):
        sim = p[start : start + chunk] @ p.T  # (C, N) cosine similarities
        rows = torch.arange(len(sim))
        sim[rows, rows + start] = -torch.inf  # leave each sample out of its own neighbourhood
        total += _entropy_rows(F.softmax(sim / temperature, 1)).sum().item()
    return total / n


SCORERS = {"im": im_score, "snd": snd_score, "entropy": entropy_score}


def score(logits_t: torch.Tensor, names: tuple[str, ...] = VALIDATORS) -> dict[str, float]:
    """Label-free scores (higher = better) of the unlabelled target logits (N, K)."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ConfigError(f"unknown validator {unknown[0]!r}; valid: {', '.join(SCORERS)}")
    logits_t = logits_t.float().cpu()
    return {name: SCORERS[name](logits_t) for name in names}


def best_epoch(history: list[dict[str, float]], validator: str) -> int | None:
    """The epoch (1-based) whose logged ``<validator>_score`` is highest (the later one on ties)."""
    key = f"{validator}_score"
    scored = [(row[key], row["epoch"]) for row in history if key in row]
    return max(scored)[1] if scored else None


def epoch_scores(method, dataset, device: torch.device, batch_size: int) -> dict[str, float]:
    """``score`` of ``method``'s predictions on the unlabelled ``dataset``, with ``<name>_score`` keys for log.csv."""
    from da.evaluate import predict

    if dataset is None or len(dataset) == 0:
        return {}
    with torch.random.fork_rng(devices=[]):  # a DataLoader draws a seed: keep training's random stream untouched
        logits_t = predict(method, dataset, device, batch_size).logits  # (N, K)
    return {f"{k}_score": v for k, v in score(logits_t).items()}


def best_epochs(history: list[dict[str, float]]) -> dict[str, int]:
    """For each validator logged per epoch, the epoch it would choose."""
    out = {}
    for name in VALIDATORS:
        epoch = best_epoch(history, name)
        if epoch is not None:
            out[name] = epoch
    return out
