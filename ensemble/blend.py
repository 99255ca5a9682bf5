"""Ways to combine runs, with one estimator-like interface, and their honest OOF scores.

A blender sees ``members``: a list of (n_rows, K) probability arrays, one per run.
``fit(members, y)`` learns from OOF rows (only ``weighted`` and ``stack`` learn anything);
``predict_proba(members)`` returns (n_rows, K). Learned state ends in ``_`` (scikit-learn's habit).
Scores of learning blenders come from an inner, painting-grouped cross-validation on the OOF:
never from the rows they were fit on.
"""
from __future__ import annotations

import importlib

import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

from common import UserError
from common.metrics import macro_f1
from ensemble.merge import EPS, merge


class MergeBlend:
    """Soft vote ('mean'), geometric mean ('gmean') or hard vote ('vote'), equal weights."""

    learns = False

    def __init__(self, mode: str = "mean"):
        self.mode = mode

    def fit(self, members, y):
        return self

    def predict_proba(self, members):
        return merge(np.stack(members), self.mode)


class WeightedBlend:
    """Run weights on the simplex that maximise OOF macro-F1 (random search, then coordinate refinement)."""

    learns = True

    def __init__(self, n_candidates: int = 300, seed: int = 0):
        self.n_candidates, self.seed = n_candidates, seed

    def fit(self, members, y):
        n = len(members)
        stack = np.stack(members)
        rng = np.random.default_rng(self.seed)
        cands = np.vstack([np.eye(n), np.full((1, n), 1 / n), rng.dirichlet(np.ones(n), self.n_candidates)])
        score = lambda w: macro_f1(y, np.tensordot(w, stack, axes=1))  # noqa: E731
        best = max(cands, key=score)
        best_s = score(best)
        for step in (0.2, 0.1, 0.05):  # coordinate moves between pairs of runs
            improved = True
            while improved:
                improved = False
                for i in range(n):
                    for j in range(n):
                        if i == j or best[j] < step:
                            continue
                        w = best.copy()
                        w[i] += step
                        w[j] -= step
                        s = score(w)
                        if s > best_s + 1e-12:
                            best, best_s, improved = w, s, True
        self.weights_ = best / best.sum()
        return self

    def predict_proba(self, members):
        return merge(np.stack(members), "mean", weights=self.weights_)


STACKERS = {
    "logreg": lambda: LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"),
    "rf": "sklearn.ensemble.RandomForestClassifier",
    "hgb": "sklearn.ensemble.HistGradientBoostingClassifier",
    "mlp": "sklearn.neural_network.MLPClassifier",
}


def make_estimator(name: str):
    """A scikit-learn classifier by short name (logreg, rf, hgb, mlp) or dotted path."""
    spec = STACKERS.get(name, name)
    if callable(spec):
        return spec()
    module, _, cls = spec.rpartition(".")
    try:
        est = getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"--stacker {name!r}: not a known short name {sorted(STACKERS)} nor an importable "
                        "class path like sklearn.linear_model.LogisticRegression.") from None
    if not hasattr(est, "predict_proba"):
        raise UserError(f"--stacker {name!r} has no predict_proba; use a probabilistic classifier.")
    return est


class StackBlend:
    """A scikit-learn meta-learner on the runs' concatenated OOF log-probabilities."""

    learns = True

    def __init__(self, estimator="logreg"):
        self.estimator = estimator

    @staticmethod
    def features(members):
        return np.hstack([np.log(np.clip(m, EPS, 1.0)) for m in members])

    def fit(self, members, y):
        self.k_ = members[0].shape[1]
        self.model_ = clone(make_estimator(self.estimator)) if isinstance(self.estimator, str) else clone(self.estimator)
        self.model_.fit(self.features(members), y)
        return self

    def predict_proba(self, members):
        p = self.model_.predict_proba(self.features(members))
        out = np.full((len(p), self.k_), EPS)
        out[:, self.model_.classes_] = p  # a class absent from a training fold keeps ~0
        return out / out.sum(axis=1, keepdims=True)


class DecisionOffsets:
    """Per-class log-probability offsets fit to maximise macro-F1 on top of another blender.

    Macro-F1 rewards the small classes that argmax under-predicts; a per-class bias fixes that.
    """

    learns = True

    def __init__(self, base, grid=(-1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0), rounds: int = 2):
        self.base, self.grid, self.rounds = base, grid, rounds

    def fit(self, members, y):
        self.base_ = clone_blend(self.base).fit(members, y)
        logp = np.log(np.clip(self.base_.predict_proba(members), EPS, 1.0))
        b = np.zeros(logp.shape[1])
        best = macro_f1(y, logp)
        for _ in range(self.rounds):
            for c in range(len(b)):
                for g in self.grid:
                    trial = b.copy()
                    trial[c] = g
                    s = macro_f1(y, logp + trial)
                    if s > best + 1e-12:
                        best, b = s, trial
        self.offsets_ = b
        return self

    def predict_proba(self, members):
        p = np.clip(self.base_.predict_proba(members), EPS, 1.0) * np.exp(self.offsets_)
        return p / p.sum(axis=1, keepdims=True)


def clone_blend(blend):
    """A fresh, unfitted copy (blenders only store arguments in __init__)."""
    import copy
    fresh = copy.copy(blend)
    for k in [k for k in vars(fresh) if k.endswith("_")]:
        delattr(fresh, k)
    return fresh


def honest_oof(blend, members, y, groups, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-sample predictions of ``blend`` on the OOF rows.

    Blenders that learn are fit on the other inner folds; crops of one painting stay in one
    inner fold (grouped by id), or a painting would be scored on weights fit on itself.
    """
    if not blend.learns:
        return blend.predict_proba(members)
    n_splits = min(n_splits, int(np.bincount(y).min()) if np.bincount(y).min() >= 2 else 2)
    cv = StratifiedGroupKFold(n_splits=max(2, n_splits), shuffle=True, random_state=seed)
    out = np.zeros_like(members[0], dtype=np.float64)
    for tr, te in cv.split(members[0], y, groups):
        fitted = clone_blend(blend).fit([m[tr] for m in members], y[tr])
        out[te] = fitted.predict_proba([m[te] for m in members])
    return out


# The one registry of --method names: name -> factory(stacker). Insertion order is the report's order.
BLENDS = {
    "mean": lambda stacker: MergeBlend("mean"),
    "gmean": lambda stacker: MergeBlend("gmean"),
    "vote": lambda stacker: MergeBlend("vote"),
    "weighted": lambda stacker: WeightedBlend(),
    "stack": lambda stacker: StackBlend(stacker),
}


def make_blend(method: str, stacker: str = "logreg", offsets: bool = False):
    if method not in BLENDS:
        raise UserError(f"--method {method!r}: choose one of {sorted(BLENDS)}.")
    b = BLENDS[method](stacker)
    return DecisionOffsets(b) if offsets else b
