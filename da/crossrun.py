"""Choosing among finished runs without target labels: cross-run rules, ``da select``, ``da portfolio``.

A user with a new shift trains several methods and settings and must pick one without target labels. Every run
saves the label-free predictions of its reported weights (``predictions.npz``, :mod:`da.predictions`); the rules
below rank a pool of runs from those files and a few label-free keys of results.json (:data:`LABEL_FREE_KEYS`:
never ``target_acc``, ``per_class_acc``, ``oracle`` or ``selected``). Higher is better for every rule.

- ``ensv``: ensemble agreement (EnsV; Hu, Luo, Liang, Foo, NeurIPS 2024 Datasets & Benchmarks, "Towards Reliable
  Model Selection for Unsupervised Domain Adaptation: An Empirical Study and A Certified Baseline";
  github.com/LHXXHB/EnsV): the pseudo-labels of the average softmax of all candidates; each run's score is the
  share of target samples on which its predicted class equals the ensemble's.
- ``mixval``: mixed target samples as probes (MixVal; Hu, Liang, Liew, Xue, Bai, Wang, NeurIPS 2023;
  github.com/LHXXHB/MixVal): target images are paired (a fixed shuffle, then each batch of 128 against itself
  reversed, as the reference code), mixed with λ = 0.55 in the network's input space and classified by the run's
  own model; ICE is the share of mixed images predicted as the dominant image's pseudo-label (the run's saved
  prediction), over pairs of the same pseudo-class (intra) and of different ones (inter). The score is the mean
  of the two ICE scores' ranks among the candidates. This rule loads each run's model (``model.pt``, through
  :func:`da.build.load_run`) and its target images (the task is built once per dataset config): it is the one
  rule that runs a model.
- ``iwv``: importance-weighted validation (Sugiyama, Krauledat, Müller, JMLR 2007, IWCV), across runs: the
  held-out labelled source validation split's cross-entropy weighted by density ratios w = p(target)/p(source),
  self-normalised, −Σ w ℓ / Σ w. Unlike ``dev`` (You et al., ICML 2019), whose weights come from each run's own
  feature space, the weights here are shared by every run (the mean over runs of each run's domain-classifier
  weights, :func:`da.validators.domain_weights`), so the risks of different runs are estimated under one
  reweighting of the same samples and are comparable.
- ``reverse``: reverse (circular) validation (Zhong et al., ECML PKDD 2010; Ganin et al., JMLR 2016, arXiv
  1505.07818, sec. 5.1.1): a classifier trained on the target with the run's pseudo-labels, tested on the labelled
  source validation split. Here the reverse classifier is the nearest class centroid (cosine) of the run's own
  L2-normalised target features, not a retrained network, so the rule re-runs no model.
- every validator of :mod:`da.validators` (``im``, ``snd``, ``entropy``, ``bnm``, ``classami``, ``dev``, ``devn``,
  ``source_val``) applied across runs: each run's score of its reported weights (results.json ``validators``, or
  computed from ``predictions.npz`` when missing).
- ``ensv_src``: the mean of the ``ensv`` and ``source_val`` ranks (a combination; see docs/selection.md).

The collapse monitor (results.json ``collapse``, :mod:`da.monitor`) is a veto: a flagged run is not chosen and is
left out of the ensemble, unless every run is flagged. Rules that need the source split (``iwv``, ``reverse``,
``dev``, ``devn``, ``source_val``, ``ensv_src``) leave out the runs that have none (source-free methods).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

from da import predictions
from da.errors import ConfigError
from da.escape import terminal
from da.runfolder import REPLACED_DIR
from da.validators import VALIDATORS, ValidationData, domain_weights, score_all, subsample_index

LABEL_FREE_KEYS = (
    "method",
    "dataset",
    "source",
    "target",
    "backbone",
    "seed",
    "epochs",
    "steps",
    "selection",
    "validators",
    "collapse",
    "splits",
    "init",
    "config",
    "kind",
    "world_size",
)
SOURCE_RULES = ("iwv", "reverse", "dev", "devn", "source_val", "ensv_src")
RULES = ("ensv", "mixval", "iwv", "reverse", "ensv_src", *VALIDATORS)
DEFAULT_RULE = "ensv"
MIX_LAMBDA = 0.55  # MixVal's fixed mixing ratio (the reference code's --lam)
MIX_BATCH = 128  # pairs are formed within batches of this size (the reference code's --bs)


# ----------------------------------------------------------------------------------------------- pure functions


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax of (..., K) logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ensemble_agreement(probs: np.ndarray) -> np.ndarray:
    """EnsV: probabilities (R, N, K) of R runs → (R,) share of samples where a run's class is the ensemble's
    (the argmax of the mean probabilities)."""
    ensemble = probs.mean(0).argmax(1)  # (N,)
    return (probs.argmax(2) == ensemble[None]).mean(1)


def shared_weights(weights: np.ndarray) -> np.ndarray:
    """One importance weight per source-validation sample from the runs' weights (R, N): their mean over runs,
    scaled to mean 1."""
    w = np.asarray(weights, dtype=np.float64).mean(0)
    return w / w.mean()


def importance_weighted_risk(losses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Self-normalised importance-weighted risk (R,) of per-sample losses (R, N) under weights (N,)."""
    w = np.asarray(weights, dtype=np.float64)
    return (np.asarray(losses, dtype=np.float64) * w[None]).sum(1) / w.sum()


def reverse_accuracy(
    features_t: np.ndarray, pseudo_t: np.ndarray, features_s: np.ndarray, labels_s: np.ndarray, classes: int
) -> float:
    """Reverse validation with a nearest-centroid classifier: class centres of the L2-normalised target features
    (N_t, D) by pseudo-label (N_t,), applied to the source features (N_s, D) by cosine similarity; the accuracy
    against the source labels (N_s,). A class no target sample is given has no centre (never predicted)."""
    f_t = _unit(features_t)
    f_s = _unit(features_s)
    centres = np.full((classes, f_t.shape[1]), np.nan)
    for c in range(classes):
        if (pseudo_t == c).any():
            centres[c] = _unit(f_t[pseudo_t == c].mean(0, keepdims=True))[0]
    sim = np.where(np.isnan(centres).any(1)[None], -np.inf, f_s @ np.nan_to_num(centres).T)  # (N_s, K)
    return float((sim.argmax(1) == labels_s).mean())


def mix_pairs(n: int, batch: int = MIX_BATCH, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MixVal's pairs: a fixed shuffle of n samples, each batch paired with itself reversed; (a, b) indices (n,)."""
    order = np.random.default_rng(seed).permutation(n)
    b = np.concatenate([order[i : i + batch][::-1] for i in range(0, n, batch)])
    return order, b


def ice(mix_pred: np.ndarray, pl_a: np.ndarray, pl_b: np.ndarray) -> tuple[float, float]:
    """MixVal's ICE (intra, inter): the share of mixed samples predicted as the dominant sample's pseudo-label,
    over pairs of the same pseudo-class and of different ones (NaN when there is no such pair)."""
    hit = mix_pred == pl_a
    same = pl_a == pl_b
    intra = float(hit[same].mean()) if same.any() else float("nan")
    inter = float(hit[~same].mean()) if (~same).any() else float("nan")
    return intra, inter


def ranks(scores: np.ndarray) -> np.ndarray:
    """Average ranks (1 = lowest) of scores (R,); NaN ranks 0 (below every score)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    out = np.zeros(len(s))
    ok = np.isfinite(s)
    out[ok] = rankdata(s[ok])
    return out


def mean_rank(*scores: np.ndarray) -> np.ndarray:
    """The mean of several scores' ranks (R,): a combination that needs no common scale; NaN where any is NaN."""
    stacked = np.stack([ranks(s) for s in scores])
    bad = np.any([~np.isfinite(np.asarray(s, dtype=np.float64)) for s in scores], axis=0)
    return np.where(bad, np.nan, stacked.mean(0))


def collapse_veto(flagged: list[bool]) -> np.ndarray:
    """Which runs may be chosen (R,) bool: not flagged by the collapse monitor; all of them when all are."""
    flags = np.asarray(flagged, dtype=bool)
    return ~flags if not flags.all() else np.ones(len(flags), dtype=bool)


def choose(scores: np.ndarray, eligible: np.ndarray) -> int | None:
    """Index of the best finite score among eligible runs (ties: the first), or None when none has one."""
    s = np.where(np.asarray(eligible, dtype=bool) & np.isfinite(scores), scores, -np.inf)
    return None if not np.isfinite(s).any() else int(np.argmax(s))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One finished run as a rule sees it: its folder, label-free results keys and saved predictions."""

    run_dir: str
    info: dict
    data: ValidationData | None = field(default=None, repr=False)

    @property
    def flagged(self) -> bool:
        return self.info.get("collapse") is not None

    @property
    def label(self) -> str:
        return str(self.info.get("method", "?"))

    @property
    def scoreable(self) -> bool:
        """Every saved logit and feature is finite: a NaN or inf prediction cannot be scored by any rule."""
        return self.data is not None and predictions.finite(self.data)


def label_free(results: dict) -> dict:
    """The results.json keys a rule may read (:data:`LABEL_FREE_KEYS`); target accuracies are dropped."""
    return {k: results[k] for k in LABEL_FREE_KEYS if k in results}


SKIP_DIRS = ("source_stage", REPLACED_DIR)  # a run's own stage; earlier runs moved aside


def find_runs(paths: list[str]) -> list[str]:
    """Run folders (holding results.json) at or under ``paths``, sorted; a run's ``source_stage`` is not one, nor
    a run moved aside to ``replaced/`` (``trainer.resume=false``, ``benchmarks.run rerun=true``) below them."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            raise ConfigError(f"da select: {path} is not a folder")
        if os.path.isfile(os.path.join(path, "results.json")):
            found.append(os.path.normpath(path))
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            if "results.json" in files:
                found.append(os.path.normpath(root))
                dirs[:] = []
    return sorted(dict.fromkeys(found))


def load_candidates(run_dirs: list[str]) -> tuple[list[Candidate], list[str]]:
    """Candidates with predictions, and the folders skipped (no predictions.npz, unreadable or test-time runs)."""
    out, skipped = [], []
    for run_dir in run_dirs:
        try:
            with open(os.path.join(run_dir, "results.json")) as fh:
                results = json.load(fh)
        except (OSError, ValueError):
            skipped.append(f"{run_dir}: unreadable results.json")
            continue
        if not isinstance(results, dict) or results.get("kind") == "test_time":
            skipped.append(f"{run_dir}: not a training run")
            continue
        try:
            data = predictions.load(run_dir)
        except ConfigError as err:  # the message names the file
            skipped.append(str(err))
            continue
        if data is None:
            skipped.append(f"{run_dir}: no predictions.npz (trainer.save_predictions=none or an older run)")
            continue
        out.append(Candidate(run_dir, label_free(results), data))
    return out, skipped


def task_of(c: Candidate) -> tuple[str, str]:
    """A candidate's task, (``dataset source→target, K classes``, its dataset config up to the keys that change
    no number): two data sets whose domains share names are two tasks."""
    from da.checkpoint import fingerprint

    name = f"{c.info.get('dataset')} {c.info.get('source')}→{c.info.get('target')}, {c.data.logits_t.shape[1]} classes"
    dataset = (c.info.get("config") or {}).get("dataset")
    try:
        dataset = fingerprint({"dataset": dataset})["dataset"] if isinstance(dataset, dict) else dataset
    except Exception:  # an unknown dataset section: compared as written
        pass
    return name, json.dumps(dataset, sort_keys=True, default=str)


def check_pool(cands: list[Candidate]) -> None:
    """One task for every candidate: the same dataset config, source → target and number of classes, and the same
    number of target samples; a mixed pool is refused in one line naming what differs."""
    tasks = {task_of(c) for c in cands}
    if len(tasks) > 1:
        names = sorted({name for name, _ in tasks})
        if len(names) == 1:
            configs = [json.loads(cfg) for _, cfg in sorted(tasks)]
            keys = _differing(configs) if all(isinstance(x, dict) for x in configs) else ["dataset"]
            what = f"{names[0]} with different dataset configs ({', '.join(f'dataset.{k}' for k in keys)} differ)"
        else:
            what = "; ".join(names)
        raise ConfigError(f"da select: the runs are of different tasks ({terminal(what)}); select per task")
    shapes = {tuple(c.data.logits_t.shape) for c in cands}
    if len(shapes) > 1:
        raise ConfigError(f"da select: the runs' target predictions differ in shape {sorted(shapes)}")


def _differing(configs: list[dict]) -> list[str]:
    from da.checkpoint import config_differences

    keys: set[str] = set()
    for other in configs[1:]:
        keys.update(config_differences(configs[0], other))
    return sorted(keys) or ["dataset"]


# ---------------------------------------------------------------------------------------------------- scoring


def score(
    rule: str, cands: list[Candidate], members: np.ndarray | None = None, mixval: dict | None = None
) -> np.ndarray:
    """The rule's score (R,) of every candidate (NaN: the rule cannot score that run). ``members``: the runs
    forming EnsV's ensemble (default all); ``mixval``: precomputed {run_dir: (intra, inter)} ICE scores."""
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    n = len(cands)
    if rule == "ensv":
        probs = np.stack([softmax(c.data.logits_t.numpy()) for c in cands])  # (R, N, K)
        m = np.ones(n, dtype=bool) if members is None else np.asarray(members, dtype=bool)
        ensemble = probs[m].mean(0).argmax(1)
        return (probs.argmax(2) == ensemble[None]).mean(1)
    if rule == "mixval":
        ice_scores = mixval if mixval is not None else mixval_ice(cands)
        intra = np.array([ice_scores[c.run_dir][0] for c in cands])
        inter = np.array([ice_scores[c.run_dir][1] for c in cands])
        return mean_rank(np.nan_to_num(intra, nan=0.0), np.nan_to_num(inter, nan=0.0))
    if rule == "ensv_src":
        return mean_rank(score("ensv", cands, members), score("source_val", cands))
    if rule == "iwv":
        return _iwv(cands)
    if rule == "reverse":
        return np.array([_reverse(c) for c in cands])
    return np.array([_validator(c, rule) for c in cands])


def _has_source(c: Candidate) -> bool:
    return c.data.has_source and c.data.logits_s is not None


def _has_features(c: Candidate) -> bool:
    return c.data.features_t.shape[1] > 0 and (not _has_source(c) or c.data.features_s.shape[1] > 0)


def _validator(c: Candidate, name: str) -> float:
    saved = (c.info.get("validators") or {}).get(name)
    if isinstance(saved, (int, float)):
        return float(saved)
    if (name in ("dev", "devn", "source_val") and not _has_source(c)) or (
        name in ("classami", "dev", "devn") and not _has_features(c)
    ):
        return float("nan")
    return float(score_all(c.data, (name,)).get(name, float("nan")))


def _reverse(c: Candidate) -> float:
    if not (_has_source(c) and _has_features(c)):
        return float("nan")
    d = c.data
    pseudo = d.logits_t.argmax(1).numpy()
    return reverse_accuracy(d.features_t.numpy(), pseudo, d.features_s.numpy(), d.labels_s.numpy(), d.logits_t.shape[1])


def _iwv(cands: list[Candidate]) -> np.ndarray:
    ok = [i for i, c in enumerate(cands) if _has_source(c) and _has_features(c)]
    out = np.full(len(cands), np.nan)
    if not ok:
        return out
    groups: dict[bytes, list[int]] = {}  # runs with the same source-validation samples (labels, in order)
    for i in ok:
        groups.setdefault(cands[i].data.labels_s.numpy().tobytes(), []).append(i)
    ok = max(groups.values(), key=len)  # the largest group; the others' risks are not comparable with it
    labels = cands[ok[0]].data.labels_s
    weights = np.stack([domain_weights(cands[i].data.features_s, cands[i].data.features_t) for i in ok])
    w = shared_weights(weights)
    losses = np.stack([_cross_entropy(cands[i].data.logits_s.numpy(), labels.numpy()) for i in ok])
    out[ok] = -importance_weighted_risk(losses, w)
    return out


def _cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = softmax(logits)
    return -np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))


def mixval_ice(
    cands: list[Candidate], seed: int = 0, tasks: dict[str, torch.Tensor] | None = None
) -> dict[str, tuple[float, float]]:
    """MixVal's (intra, inter) ICE of each candidate: loads its model and target images (one task per dataset
    config; ``tasks`` caches the images across calls), classifies the mixed images; the pseudo-labels are the
    saved predictions."""
    from omegaconf import OmegaConf

    from da.build import load_run

    tasks = {} if tasks is None else tasks
    out = {}
    for c in cands:
        run = load_run(c.run_dir)
        key = OmegaConf.to_yaml(run.cfg.dataset)
        if key not in tasks:
            tasks[key] = target_images(run.task)
        x = tasks[key]  # (N, C, H, W) under the evaluation transform
        pl = c.data.logits_t.argmax(1).numpy()
        if len(x) > len(pl):  # the run saved the validators' fixed subsample (trainer.validator_samples)
            x = x[subsample_index(len(x), len(pl))]
        elif len(x) < len(pl):
            raise ConfigError(f"da select: {c.run_dir}: predictions.npz has more target rows than its task")
        a, b = mix_pairs(len(x), seed=seed)
        preds = []
        for i in range(0, len(a), 256):
            ia, ib = torch.from_numpy(a[i : i + 256]), torch.from_numpy(b[i : i + 256])
            mixed = MIX_LAMBDA * x[ia] + (1 - MIX_LAMBDA) * x[ib]
            preds.append(run.predict(mixed).float().argmax(1).cpu().numpy())
        out[c.run_dir] = ice(np.concatenate(preds), pl[a], pl[b])
    return out


def target_images(task) -> torch.Tensor:
    """The unlabelled target training images under the evaluation transform, in the order of the predictions
    (which hold the fixed subsample :func:`da.validators.subsample_index` draws when the split is larger)."""
    split = task.target_train_eval
    return torch.stack([split[i][0] for i in range(len(split))])


# ----------------------------------------------------------------------------------------------------- select


@dataclass
class Selection:
    """A ranking of candidate runs by one rule: ``chosen`` is a run folder (None: no run could be scored)."""

    rule: str
    veto: bool
    chosen: str | None
    rows: list[dict]
    skipped: list[str]

    def to_json(self) -> dict:
        return {
            "rule": self.rule,
            "veto": "collapse" if self.veto else None,
            "chosen": self.chosen,
            "ranking": self.rows,
            "skipped": self.skipped,
            "note": "chosen without target labels: predictions.npz and label-free results.json keys only",
        }

    def table(self) -> str:
        """The ranking for a terminal (names with control characters shown as escapes)."""
        lines = [f"{'rank':>4}  {'score':>10}  {'method':<14} {'veto':<5} run"]
        for r in self.rows:
            s = "n/a" if r["score"] is None else f"{r['score']:.4f}"
            mark = "*" if r["run"] == self.chosen else " "
            note = f"  ({r['note']})" if r.get("note") else ""
            method, run = terminal(r["method"]), terminal(r["run"])
            lines.append(
                f"{mark}{r['rank'] or '-':>3}  {s:>10}  {method:<14} {'yes' if r['vetoed'] else '':<5} {run}{note}"
            )
        return "\n".join(lines)


def rank_candidates(
    cands: list[Candidate],
    rule: str = DEFAULT_RULE,
    veto: bool = True,
    mixval: dict | None = None,
    skipped: list[str] | None = None,
) -> Selection:
    """Score and rank ``cands`` (pure given the candidates): the veto drops flagged runs from the choice and from
    EnsV's ensemble; runs the rule cannot score rank last."""
    if not cands:
        raise ConfigError("da select: no finished run with predictions.npz to choose from")
    check_pool(cands)
    ok = np.array([c.scoreable for c in cands], dtype=bool)
    if not ok.any():
        raise ConfigError("da select: every run's predictions.npz holds non-finite logits or features")
    eligible = collapse_veto([c.flagged for c in cands]) if veto else np.ones(len(cands), dtype=bool)
    scores = np.full(len(cands), np.nan)  # a non-finite run is left out of every rule (and of EnsV's ensemble)
    kept = [c for c, good in zip(cands, ok) if good]
    scores[ok] = score(rule, kept, members=eligible[ok], mixval=mixval)
    best = choose(scores, eligible & ok)
    order = sorted(
        range(len(cands)),
        key=lambda i: (
            not ok[i],
            not eligible[i],
            not np.isfinite(scores[i]),
            -np.nan_to_num(scores[i], nan=-np.inf),
            cands[i].run_dir,
        ),
    )
    rows = []
    for pos, i in enumerate(order, 1):
        ranked, ok_i = bool(eligible[i] and np.isfinite(scores[i])), bool(ok[i])
        rows.append(
            {
                "rank": pos if ranked else None,
                "run": cands[i].run_dir,
                "method": cands[i].label,
                "score": float(scores[i]) if np.isfinite(scores[i]) else None,
                "vetoed": bool(not eligible[i]),
                "note": None if ok_i else "non-finite logits or features: unscoreable",
            }
        )
    return Selection(rule, veto, None if best is None else cands[best].run_dir, rows, skipped or [])


def select(paths: str | list[str], rule: str = DEFAULT_RULE, veto: bool = True) -> Selection:
    """Rank the finished runs at or under ``paths`` (run or sweep folders) by ``rule``, without target labels."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
    runs = find_runs(paths)
    if not runs:
        raise ConfigError(f"da select: no run folder (results.json) under {', '.join(paths)}")
    cands, skipped = load_candidates(runs)
    return rank_candidates(cands, rule, veto, skipped=skipped)


def write_selection(sel: Selection, out: str) -> str:
    """``<out>/selection.json`` and the link ``<out>/chosen`` to the chosen run (a file naming it where links
    are not allowed; no link where ``out`` is the chosen run or inside it: a link to its own folder is a loop for
    ``tar -h`` and recursive globs); returns the json path. Unwritable ``out``: :class:`ConfigError`."""
    from da.runfolder import write_json

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"da select: --out {terminal(out)} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "selection.json")
        write_json(path, sel.to_json())
        link = os.path.join(out, "chosen")
        if os.path.islink(link) or os.path.isfile(link):
            os.remove(link)
        if sel.chosen is not None and not links_to_itself(sel.chosen, out) and not os.path.exists(link):
            try:
                os.symlink(os.path.relpath(sel.chosen, out), link)
            except OSError:
                with open(link, "w") as fh:
                    fh.write(sel.chosen + "\n")
    except OSError as err:
        raise ConfigError(f"da select: cannot write into {terminal(out)}: {err.strerror or err}") from None
    return path


def links_to_itself(chosen: str, out: str) -> bool:
    """Whether ``out`` is the chosen run folder or lies inside it (``<out>/chosen`` would be a loop)."""
    run, folder = os.path.realpath(chosen), os.path.realpath(out)
    return os.path.commonpath([run, folder]) == run


def main_select(argv: list[str]) -> int:
    """``da select RUN_OR_SWEEP_DIRS... [--rule R] [--no-veto] [--out DIR]``: rank, print, write, link."""
    parser = _Parser(prog="da select", description="Choose among finished runs without target labels.")
    parser.add_argument("paths", nargs="+", help="run folders or sweep folders holding run folders")
    parser.add_argument("--rule", default=DEFAULT_RULE, help=f"one of {', '.join(RULES)} (default {DEFAULT_RULE})")
    parser.add_argument("--no-veto", action="store_true", help="let runs the collapse monitor flagged be chosen")
    parser.add_argument("--out", help="where selection.json and the 'chosen' link go (default: the first folder)")
    try:
        args = parser.parse_args(argv)
        sel = select(args.paths, args.rule, veto=not args.no_veto)
        path = write_selection(sel, args.out or args.paths[0])
    except (ConfigError, _UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(sel.table())
    for line in sel.skipped:
        print(f"skipped {terminal(line)}")
    return _report_choice(sel, path)


def _report_choice(sel: Selection, path: str) -> int:
    if sel.chosen is None:
        print(f"error: rule {sel.rule!r} cannot score any of these runs (see docs/selection.md)", file=sys.stderr)
        return 2
    print(f"chosen ({sel.rule}): {terminal(sel.chosen)}\nwrote {terminal(path)}")
    if links_to_itself(sel.chosen, os.path.dirname(path)):
        print("no 'chosen' link: the folder written into is the chosen run itself")
    return 0


# -------------------------------------------------------------------------------------------------- portfolio

DEFAULT_PORTFOLIO = ("source_only", "dann", "cdan", "mcc", "bnm", "coral", "dan")


def portfolio_jobs(methods: list[str], grid: list[str]) -> list[tuple[str, list[str]]]:
    """(sub-folder, overrides) of every method × grid point; ``grid``: ``key=v1,v2`` strings."""
    import itertools

    axes = []
    for item in grid:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"da portfolio: --grid takes key=v1,v2; got {item!r}")
        axes.append([(key, v) for v in values.split(",")])
    jobs = []
    for method in methods:
        for point in itertools.product(*axes):
            sub = "_".join(f"{k.split('.')[-1]}{v}" for k, v in point) or "default"
            jobs.append((os.path.join(method, sub), [f"method={method}", *(f"{k}={v}" for k, v in point)]))
    return jobs


def main_portfolio(argv: list[str]) -> int:
    """``da portfolio [--methods a,b] [--grid key=v1,v2]... [--rule R] [--out DIR] [--launcher L] [-- overrides]``:
    train every method × grid point on one task (Hydra overrides after ``--`` apply to every job), then choose
    among them without target labels; prints the ranking and the chosen run. In-process (no ``--launcher``),
    methods that start from a source model start from the portfolio's source_only run; under a launcher each
    such job trains its own source stage."""
    import subprocess

    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    else:
        overrides = []
    parser = _Parser(prog="da portfolio", description="Train a portfolio of methods on one task; choose one.")
    parser.add_argument("--methods", default=",".join(DEFAULT_PORTFOLIO), help="comma-separated method names")
    parser.add_argument("--grid", action="append", default=[], help="key=v1,v2 (repeatable): a setting grid")
    parser.add_argument("--rule", default=DEFAULT_RULE, help=f"one of {', '.join(RULES)}")
    parser.add_argument("--out", default="portfolio", help="the portfolio folder (default ./portfolio)")
    parser.add_argument("--launcher", help="a Hydra launcher (e.g. joblib): one `python -m da.run -m` multirun")
    try:
        args = parser.parse_args(argv)
        if args.rule not in RULES:
            raise ConfigError(f"unknown rule {args.rule!r}; valid: {', '.join(RULES)}")
        from da.methods import METHODS

        methods = [m for m in args.methods.split(",") if m]
        for m in methods:
            METHODS.get(m)  # one line listing the valid names
        chosen = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] == "method"]
        if chosen:  # it would replace every job's method: all train it, each filed under its own name
            raise ConfigError(
                f"da portfolio: {chosen[0]} after -- overrides every job's method; name them with --methods"
            )
        jobs = portfolio_jobs(methods, args.grid)
        if args.launcher:
            cmd = [
                sys.executable,
                "-m",
                "da.run",
                "-m",
                f"method={','.join(methods)}",
                *args.grid,
                *overrides,
                f"hydra/launcher={args.launcher}",
                f"hydra.sweep.dir={args.out}",
                f"hydra.sweep.subdir=${{method.name}}/{_grid_subdir(args.grid)}",
            ]
            if subprocess.run(cmd).returncode != 0:
                raise ConfigError("da portfolio: a job failed (its run.log says why); rerun to resume")
        else:
            _fit_jobs(jobs, overrides, args.out, "source_only" in methods)
        sel = select(args.out, args.rule)
        path = write_selection(sel, args.out)
    except (ConfigError, _UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a job diverged: its folder keeps the reason; the others are kept
        print(f"error: da portfolio: {err}", file=sys.stderr)
        return 1
    print(sel.table())
    return _report_choice(sel, path)


def _grid_subdir(grid: list[str]) -> str:
    """Hydra's sub-folder of a job, as :func:`portfolio_jobs` names it in-process (``lr0.01``, ``default``)."""
    keys = [item.partition("=")[0] for item in grid]
    return "_".join(f"{k.split('.')[-1]}${{{k}}}" for k in keys) or "default"


def _fit_jobs(jobs: list[tuple[str, list[str]]], overrides: list[str], out: str, reuse_source: bool) -> None:
    """Train the jobs one after another in this process (finished folders are skipped); methods that start from
    a source model start from the portfolio's first source_only run when there is one."""
    from da.experiment import fit
    from da.methods import METHODS

    source = next((os.path.join(out, sub) for sub, ov in jobs if ov[0] == "method=source_only"), None)
    ordered = sorted(jobs, key=lambda j: j[1][0] != "method=source_only")  # the source model first
    for sub, job in ordered:
        run_dir = os.path.join(out, sub)
        if os.path.isfile(os.path.join(run_dir, "results.json")):
            continue
        extra = []
        name = job[0].split("=", 1)[1]
        if reuse_source and source and getattr(METHODS.get(name), "default_init", None) == "source":
            extra = [f"init={os.path.abspath(source)}"]
        fit([*job, *overrides, *extra], run_dir=run_dir, quiet=True)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit 2 through the caller (no SystemExit from a library call)."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(message)


def main(argv: list[str] | None = None) -> int:
    """``python -m da.crossrun select ...`` / ``python -m da.crossrun portfolio ...``."""
    argv = sys.argv[1:] if argv is None else argv
    commands = {"select": main_select, "portfolio": main_portfolio}
    if not argv or argv[0] not in commands:
        print("usage: python -m da.crossrun {select,portfolio} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
