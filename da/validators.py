"""Label-free validators: score a model without target labels, to choose checkpoints and hyper-parameters.

Each is a pure function of predictions; higher is better for all. They read the unlabelled target training
split and, for ``dev``, ``devn`` and ``source_val``, a held-out *labelled source* validation split — never a
target label (:class:`ValidationData` has no place for one). ``tests/test_validators.py`` checks each against an
independent reference (pytorch-adapt's validators where they match, numpy / scikit-learn otherwise) and on
hand-made cases whose ranking is known.

- ``im``: Information Maximization, −mean H(p) + H(mean p) (Shi & Sha, ICML 2012; as a validator Musgrave et al.,
  arXiv 2111.15672; pytorch-adapt ``IMValidator``).
- ``snd``: Soft Neighborhood Density (Saito et al., arXiv 2108.10860; pytorch-adapt ``SNDValidator``): mean entropy
  of each sample's softmax over its cosine similarities (of predictions p) to all other samples, temperature 0.05.
- ``entropy``: −mean H(p) (pytorch-adapt ``EntropyValidator``), for reference.
- ``bnm``: the nuclear norm of the target softmax matrix over N, ‖P‖_* / N (BNM, Cui et al., arXiv 2003.12237; as a
  validator Musgrave et al., arXiv 2208.07360; pytorch-adapt ``BNMValidator``).
- ``classami``: adjusted mutual information between the predicted labels and a k-means clustering (k = classes)
  of the L2-normalised target features, k-means started from the predicted classes' centroids (Musgrave et al.,
  arXiv 2208.07360, "ClassAMI"; pytorch-adapt ``ClassClusterValidator(centroid_init="label_centers")``).
- ``dev``: Deep Embedded Validation (You et al., ICML 2019): the source-validation loss importance-weighted by
  density ratios w = p(target | f) / p(source | f) · n_s / n_t from a domain classifier, with the control variate
  η = −Cov(wℓ, w) / Var(w): risk = mean(wℓ) + η mean(w) − η; the score is −risk. The domain classifier here is a
  logistic regression on standardised features of source-validation vs target images (the reference code trains
  an MLP on source-train vs target features); ``get_dev_risk`` follows thuml/Deep-Embedded-Validation.
- ``devn``: DEV with the weights max-normalised (w / max w, shifted to mean 1): Musgrave et al.'s DEVN
  (pytorch-adapt ``normalization="max"``), less dominated by a few large weights.
- ``source_val``: accuracy on the held-out labelled source validation split (the baseline Musgrave et al. find
  often as good as any).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from da import losses
from da.errors import ConfigError

TARGET_ONLY = ("im", "snd", "entropy", "bnm", "classami")
WITH_SOURCE = ("dev", "devn", "source_val")
VALIDATORS = TARGET_ONLY + WITH_SOURCE


@dataclass
class ValidationData:
    """What a validator may read: predictions on the unlabelled target training split and, when the method
    uses source data, on the labelled source validation split. Target labels have no field here."""

    logits_t: torch.Tensor  # (N_t, K)
    features_t: torch.Tensor  # (N_t, D)
    logits_s: torch.Tensor | None = None  # (N_s, K) source validation split
    features_s: torch.Tensor | None = None  # (N_s, D)
    labels_s: torch.Tensor | None = None  # (N_s,)

    @property
    def has_source(self) -> bool:
        return self.labels_s is not None and len(self.labels_s) > 1


def subsample_index(n: int, cap: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a fixed random subsample of ``cap`` of ``n`` rows (all of them when ``n <= cap``)."""
    if n <= cap:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:cap].sort().values


def _entropy_rows(p: torch.Tensor) -> torch.Tensor:
    """Entropy (N,) of probability rows (N, K); 0·log 0 = 0."""
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(1)


def entropy_score(logits: torch.Tensor) -> float:
    """−mean entropy of softmax(logits) (N, K): confident predictions score higher."""
    return -losses.entropy(logits.float()).item()


def im_score(logits: torch.Tensor) -> float:
    """Information maximization: confident (low entropy) and diverse (high entropy of the mean) predictions."""
    mean_p = F.softmax(logits.float(), 1).mean(0, keepdim=True)  # (1, K)
    return entropy_score(logits) + _entropy_rows(mean_p).item()


def snd_score(logits: torch.Tensor, temperature: float = 0.05, chunk: int = 1024) -> float:
    """Soft neighborhood density of the predictions (N, K), computed in row chunks of the (N, N) similarity."""
    p = F.normalize(F.softmax(logits.float(), 1), dim=1)  # (N, K) unit rows
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


def bnm_score(logits: torch.Tensor) -> float:
    """‖softmax(logits)‖_* / N: confident and diverse predictions have a large nuclear norm. arXiv 2003.12237."""
    return -losses.bnm(logits).item()


def classami_score(features: torch.Tensor, logits: torch.Tensor, seed: int = 0) -> float:
    """AMI between predicted labels and k-means clusters of the L2-normalised features (N, D). arXiv 2208.07360."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    labels = logits.argmax(1).numpy()
    feats = F.normalize(features.float(), dim=1).numpy().astype(np.float64)
    k = logits.shape[1]
    if len(feats) <= k or len(np.unique(labels)) < 2:
        return 0.0  # one predicted class (or too few samples): no structure to agree with
    centroids = np.zeros((k, feats.shape[1]))
    for c in range(k):  # the predicted classes' centres; an empty class keeps a zero centre (as abas/pytorch-adapt)
        if (labels == c).any():
            centroids[c] = feats[labels == c].mean(0)
    clusters = KMeans(n_clusters=k, init=centroids, n_init=1, random_state=seed).fit(feats).labels_
    return float(adjusted_mutual_info_score(labels, clusters))


def domain_weights(features_s: torch.Tensor, features_t: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Density ratios p(target | f) / p(source | f) · n_s / n_t (N_s,) of the source-validation samples, from a
    logistic-regression domain classifier on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    f_s, f_t = features_s.float().numpy(), features_t.float().numpy()
    x = np.concatenate([f_s, f_t]).astype(np.float64)
    y = np.concatenate([np.zeros(len(f_s)), np.ones(len(f_t))])
    with threadpool_limits(1):  # small matrices: BLAS threads beside torch's OpenMP ones only slow it down (30x)
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(max_iter=1000, random_state=seed).fit(scaler.transform(x), y)
        p_t = clf.predict_proba(scaler.transform(f_s.astype(np.float64)))[:, 1].clip(1e-6, 1 - 1e-6)
    return p_t / (1.0 - p_t) * len(f_s) / len(f_t)


def normalize_weights(weights: np.ndarray, normalization: str | None) -> np.ndarray:
    """DEVN's normalisation (``"max"``): w / max w, shifted to mean 1."""
    if normalization == "max":
        weights = weights / weights.max()
        weights = weights - (weights.mean() - 1.0)
    return weights


def dev_risk(weights: np.ndarray, errors: np.ndarray, normalization: str | None = None) -> float:
    """DEV's control-variate risk estimate from importance weights (N,) and per-sample losses (N,)."""
    w = normalize_weights(np.asarray(weights, dtype=np.float64), normalization)
    e = np.asarray(errors, dtype=np.float64)
    weighted = w * e
    cov = np.cov(np.stack([weighted, w]), ddof=1)[0, 1]
    var_w = np.var(w, ddof=1)
    eta = -cov / var_w if var_w > 0 else 0.0
    return float(weighted.mean() + eta * w.mean() - eta)


def dev_score(data: ValidationData, normalization: str | None = None, weights: np.ndarray | None = None) -> float:
    """−DEV risk of the source-validation cross-entropy (higher = better); ``weights``: the domain weights
    when already computed (dev and devn share them)."""
    weights = domain_weights(data.features_s, data.features_t) if weights is None else weights
    errors = F.cross_entropy(data.logits_s.float(), data.labels_s, reduction="none").numpy()
    return -dev_risk(weights, errors, normalization)


def source_val_score(data: ValidationData) -> float:
    return (data.logits_s.argmax(1) == data.labels_s).float().mean().item()


SCORERS = {"im": im_score, "snd": snd_score, "entropy": entropy_score, "bnm": bnm_score}


def score_all(data: ValidationData, names: tuple[str, ...] = VALIDATORS) -> dict[str, float]:
    """Every validator in ``names`` that ``data`` allows (the source-based ones need the source split)."""
    unknown = [n for n in names if n not in VALIDATORS]
    if unknown:
        raise ConfigError(f"unknown validator {unknown[0]!r}; valid: {', '.join(VALIDATORS)}")
    logits_t = data.logits_t.float().cpu()
    out = {}
    weights = None  # dev and devn: one domain classifier
    for name in names:
        if name in SCORERS:
            out[name] = SCORERS[name](logits_t)
        elif name == "classami":
            out[name] = classami_score(data.features_t.cpu(), logits_t)
        elif data.has_source:
            if name == "source_val":
                out[name] = source_val_score(data)
            else:
                if weights is None:
                    weights = domain_weights(data.features_s, data.features_t)
                out[name] = dev_score(data, "max" if name == "devn" else None, weights)
    return out


def score(logits_t: torch.Tensor, names: tuple[str, ...] = ("im", "snd", "entropy")) -> dict[str, float]:
    """Scores that need only the target logits (N, K)."""
    unknown = [n for n in names if n not in VALIDATORS]
    if unknown:
        raise ConfigError(f"unknown validator {unknown[0]!r}; valid: {', '.join(VALIDATORS)}")
    bad = [n for n in names if n not in SCORERS]
    if bad:
        raise ConfigError(f"validator {bad[0]!r} needs features or source data; use score_all")
    return {name: SCORERS[name](logits_t.float().cpu()) for name in names}


def best_epoch(history: list[dict[str, float]], validator: str) -> int | None:
    """The epoch (1-based) whose logged ``<validator>_score`` is highest (the later one on ties)."""
    key = f"{validator}_score"
    scored = [(row[key], row["epoch"]) for row in history if key in row and row[key] == row[key]]
    return max(scored)[1] if scored else None


def best_epochs(history: list[dict[str, float]]) -> dict[str, int]:
    """For each validator logged per epoch, the epoch it would choose."""
    out = {}
    for name in VALIDATORS:
        epoch = best_epoch(history, name)
        if epoch is not None:
            out[name] = epoch
    return out
