"""Ways to combine runs, as scikit-learn classifiers, and their honest OOF scores.

A blender's input ``X`` is the runs' probability blocks side by side: ``(n_rows, n_members * K)``
(``members_to_X``). Each blender is a ``BaseEstimator`` + ``ClassifierMixin``: ``__init__``
only stores arguments, ``fit(X, y)`` learns (only ``weighted``, ``stack`` and the offsets learn
anything), and learned state ends in ``_``. Scores of learning blenders come from
``cross_val_predict`` with a painting-grouped ``StratifiedGroupKFold`` on the OOF rows: never
from the rows they were fit on.
"""
from __future__ import annotations

import importlib
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from common import UserError
from common.metrics import DEFAULT_METRIC, get_metric
from ensemble.merge import EPS, merge


def members_to_X(members) -> np.ndarray:
    """A list of (n_rows, K) probability arrays -> the blenders' (n_rows, n_members * K) input."""
    return np.hstack([np.asarray(m, dtype=np.float64) for m in members])


def _blocks(X, n_members: int) -> np.ndarray:
    return np.stack(np.split(np.asarray(X, dtype=np.float64), n_members, axis=1))  # (members, rows, K)


def _of_classes(X, n_members: int, classes) -> np.ndarray:
    """``X`` with each member's columns of ``classes`` only, its rows renormalised: the blenders' input over the
    classes the rows they learn from hold."""
    blocks = _blocks(X, n_members)[:, :, classes]
    return members_to_X(blocks / np.maximum(blocks.sum(axis=2, keepdims=True), EPS))


def _log_probs(X):
    return np.log(np.clip(X, EPS, 1.0))


class _Blender(ClassifierMixin, BaseEstimator):
    """scikit-learn's classifier contract: ``predict`` is the argmax of ``predict_proba``."""

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


class MergeBlend(_Blender):
    """Soft vote ('mean'), geometric mean ('gmean') or hard vote ('vote'), equal weights."""

    learns = False

    def __init__(self, mode: str = "mean", n_members: int = 1):
        self.mode, self.n_members = mode, n_members

    def fit(self, X, y=None):
        self.classes_ = np.arange(np.shape(X)[1] // self.n_members)  # the members' classes; nothing learnt
        return self

    def predict_proba(self, X):
        return merge(_blocks(X, self.n_members), self.mode)


class WeightedBlend(_Blender):
    """Run weights on the simplex that maximise the OOF score by ``metric`` (``common.metrics.METRICS``;
    random search, then coordinate refinement)."""

    learns = True

    def __init__(self, n_members: int = 1, n_candidates: int = 300, seed: int = 0, metric: str = DEFAULT_METRIC):
        self.n_members, self.n_candidates, self.seed, self.metric = n_members, n_candidates, seed, metric

    def fit(self, X, y):
        n = self.n_members
        stack = _blocks(X, n)
        self.classes_ = np.arange(stack.shape[2])
        rng = np.random.default_rng(self.seed)
        cands = np.vstack([np.eye(n), np.full((1, n), 1 / n), rng.dirichlet(np.ones(n), self.n_candidates)])
        metric = get_metric(self.metric).score
        score = lambda w: metric(y, np.tensordot(w, stack, axes=1))  # noqa: E731
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

    def predict_proba(self, X):
        return merge(_blocks(X, self.n_members), "mean", weights=self.weights_)


STACKERS = {
    # class weights that make every class count the same where the metric does (macro-F1), none where it
    # counts rows (accuracy): a balanced fit trades common-class rows for rare ones
    "logreg": lambda metric: LogisticRegression(C=1.0, max_iter=2000,
                                                class_weight="balanced" if get_metric(metric).classes_equal else None),
    "rf": "sklearn.ensemble.RandomForestClassifier",
    "hgb": "sklearn.ensemble.HistGradientBoostingClassifier",
    "mlp": "sklearn.neural_network.MLPClassifier",
}


def make_estimator(name: str, metric: str = DEFAULT_METRIC):
    """A scikit-learn classifier by short name (logreg, rf, hgb, mlp) or dotted path; ``metric``, the
    competition's, sets logreg's class weights."""
    spec = STACKERS.get(name, name)
    if callable(spec):
        return spec(metric)
    module, _, cls = spec.rpartition(".")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"--stacker {name!r}: not a known short name {sorted(STACKERS)} nor an importable "
                        "class path like sklearn.linear_model.LogisticRegression.") from None
    if not isinstance(factory, type) or not hasattr(factory, "fit"):  # never call a function such as os.system
        raise UserError(f"--stacker {name!r} is not a classifier class (one with fit and predict_proba, like "
                        "sklearn.linear_model.LogisticRegression).")
    try:
        est = factory()
    except TypeError as e:
        raise UserError(f"--stacker {name!r} cannot be made without arguments ({e}); choose a classifier whose "
                        "defaults work, or wrap it in a class of your own.") from None
    if not hasattr(est, "predict_proba"):  # on the instance: SVC has one only with probability=True
        raise UserError(f"--stacker {name!r} has no predict_proba; use a probabilistic classifier.")
    return est


class StackBlend(_Blender):
    """A scikit-learn meta-learner on the runs' concatenated OOF log-probabilities (a Pipeline)."""

    learns = True

    def __init__(self, estimator="logreg", n_members: int = 1, metric: str = DEFAULT_METRIC):
        self.estimator, self.n_members, self.metric = estimator, n_members, metric

    def fit(self, X, y):
        clf = make_estimator(self.estimator, self.metric) if isinstance(self.estimator, str) else clone(self.estimator)
        self.model_ = Pipeline([("log", FunctionTransformer(_log_probs)), ("clf", clf)]).fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        return self.model_.predict_proba(X)


class _OnTop(_Blender):
    """An adjustment on top of another blender (``base``), whose members it takes."""

    @property
    def n_members(self) -> int:
        return self.base.n_members


class DecisionOffsets(_OnTop):
    """Per-class log-probability offsets fit to maximise the score by ``metric`` on top of another blender.

    Macro-F1 rewards the small classes that argmax under-predicts; a per-class bias fixes that. (Under
    accuracy they can only trade one class's rows for another's; the build keeps them where that pays.)
    A metric of the probabilities (the log loss) gets ``TemperatureCalibration`` in their place.
    """

    learns = True

    def __init__(self, base=None, grid=(-1.5, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0), rounds: int = 2,
                 metric: str = DEFAULT_METRIC):
        self.base, self.grid, self.rounds, self.metric = base, grid, rounds, metric

    def fit(self, X, y):
        metric = get_metric(self.metric).score
        self.base_ = clone(self.base).fit(X, y)
        self.classes_ = self.base_.classes_
        logp = _log_probs(self.base_.predict_proba(X))
        target = np.searchsorted(self.classes_, y)  # y as column positions of the base's output
        b = np.zeros(logp.shape[1])
        best = metric(target, logp)
        rows, cols = np.arange(len(logp)), np.arange(len(b))
        ranked = None
        for _ in range(self.rounds):
            for c in range(len(b)):
                # moving class c's offset changes only the rows where c's score crosses the best other
                # class's, so each trial is argmax(logp + trial) from the two best classes of each row,
                # found again only when an offset changed
                if ranked is None:
                    score = logp + b
                    top = score.argmax(axis=1)
                    ranked = score, top, np.where(cols == top[:, None], -np.inf, score).argmax(axis=1)
                score, top, second = ranked
                other = np.where(top == c, second, top)  # the first best class other than c, as argmax picks
                other_score, own = score[rows, other], logp[:, c]
                for g in self.grid:
                    pred = np.where(own + g > other_score, c,
                                    np.where(own + g == other_score, np.minimum(c, other), other))
                    s = metric(target, pred)
                    if s > best + 1e-12:
                        best, b, ranked = s, np.where(cols == c, g, b), None
        self.offsets_ = b
        return self

    def predict_proba(self, X):
        p = np.clip(self.base_.predict_proba(X), EPS, 1.0) * np.exp(self.offsets_)
        return p / p.sum(axis=1, keepdims=True)


class TemperatureCalibration(_OnTop):
    """Another blender's probabilities calibrated by scikit-learn's temperature scaling
    (``CalibratedClassifierCV(method="temperature")``: ``softmax(log p / T)``, ``T`` fit for the log loss), the
    adjustment on top of a method under a metric of the probabilities, as ``DecisionOffsets`` is under one of
    the classes: a fold mean of models trained with label smoothing and MixUp is less sure than it is right,
    and the log loss charges for that.

    A base that learns nothing (a vote) is calibrated on every row. One that learns (weighted, stack) is
    calibrated on its predictions for rows it was not fit on (``ensemble=False``, an ``inner_folds`` split): on
    its own rows it is surer than on new ones, and a temperature fit there sharpens it. That split keeps a
    painting's crops together where ``fit`` is given the rows' ``groups`` (the build and ``honest_oof`` give
    them): a stacker that saw one crop of a painting is as sure of its siblings as of its own rows.
    """

    learns = True
    takes_groups = True  # fit_blend and honest_oof hand it the rows' paintings

    def __init__(self, base=None, inner_folds: int = 5, seed: int = 0):
        self.base, self.inner_folds, self.seed = base, inner_folds, seed

    def fit(self, X, y, groups=None):
        base = clone(self.base)
        # scikit-learn's calibration knows the classes of y only, the blends those of X's columns: it is fit on
        # the columns of y's classes, and the others get 0 (a class of one painting, in a fold of the honest
        # score, is absent from the rows the others learn from)
        self.classes_, self.present_ = np.arange(np.shape(X)[1] // self.n_members), np.unique(y)
        X = _of_classes(X, self.n_members, self.present_)
        y = np.searchsorted(self.present_, y)
        with warnings.catch_warnings():  # a class of fewer rows or paintings than folds: calibrated all the same
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
            if groups is None:
                cv = StratifiedKFold(n_inner_folds(y, self.inner_folds), shuffle=True, random_state=self.seed)
                cv = list(cv.split(X, y))
            else:
                cv = list(grouped_split(groups, self.inner_folds, self.seed, y).split(X, y, groups))
            if base.learns:
                self.model_ = CalibratedClassifierCV(base, method="temperature", cv=cv, ensemble=False).fit(X, y)
            else:  # (scikit-learn still splits y to predict with the frozen base, which gives the same everywhere:
                # the split only has to exist, so it is the one above, which exists where each class is small)
                self.model_ = CalibratedClassifierCV(FrozenEstimator(base.fit(X, y)), method="temperature",
                                                     cv=cv).fit(X, y)
        self.temperature_ = float(1 / self.model_.calibrated_classifiers_[0].calibrators[0].beta_)
        return self

    def predict_proba(self, X):
        if not hasattr(self, "present_"):  # saved before 2026-12-06's thirtieth session: fit on every column
            return self.model_.predict_proba(X)
        out = np.zeros((len(X), len(self.classes_)))
        out[:, self.present_] = self.model_.predict_proba(_of_classes(X, self.n_members, self.present_))
        return out


def n_inner_folds(y, n_splits: int) -> int:
    """``n_splits``, or fewer: no more folds than the largest class has rows. scikit-learn refuses a stratified split
    where every class has fewer (a build of one finished fold's whole-painting OOF, 2 paintings a class, ended in its
    traceback)."""
    largest = int(np.unique(y, return_counts=True)[1].max())
    if largest < 2:
        raise UserError(f"{len(y)} OOF rows to learn from hold one of each class: a blend that learns, or "
                        "offsets, cannot be scored on rows it was not fit on; use --method mean, vote or gmean "
                        "without --offsets, or finish more folds.")
    return max(2, min(n_splits, largest))


def grouped_split(groups, n_splits: int, seed: int, y) -> StratifiedGroupKFold:
    """The inner split of OOF rows: stratified, a painting's crops in one fold, at most one fold a painting."""
    return StratifiedGroupKFold(n_splits=min(n_inner_folds(y, n_splits), max(2, len(np.unique(groups)))),
                                shuffle=True, random_state=seed)


def fit_blend(blend, X, y, groups):
    """``blend.fit(X, y)``, handing the rows' paintings to a blender whose own inner split needs them."""
    return blend.fit(X, y, groups=groups) if getattr(blend, "takes_groups", False) else blend.fit(X, y)


def full_proba(fitted, X, n_classes: int) -> np.ndarray:
    """``predict_proba`` spread over all ``n_classes`` columns (a class absent from the fit gets 0)."""
    out = np.zeros((len(X), n_classes))
    out[:, fitted.classes_] = fitted.predict_proba(X)
    return out


def honest_oof(blend, X, y, groups, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-sample predictions of ``blend`` on the OOF rows, (n_rows, K).

    Blenders that learn are fit on the other inner folds (``cross_val_predict``); crops of one
    painting stay in one inner fold (grouped by id), or a painting would be scored on weights
    fit on itself. Classes absent from the OOF are left out of the inner CV (they cannot be
    learnt) and get probability 0.
    """
    n_members = blend.n_members
    k = np.shape(X)[1] // n_members
    if not blend.learns:
        return full_proba(clone(blend).fit(X, y), X, k)
    present = np.unique(y)
    Xp = _of_classes(X, n_members, present)
    # A class of few paintings needs no fewer inner folds: a painting's crops hold one label, so the grouped
    # split puts each of a class's paintings in a fold of its own, and a class of two or more is learnt in
    # every inner fold. (They made it 2-fold for every class, fitting on half the rows.) A class of one
    # painting (--allow-small-classes) is learnt in none, under any K.
    cv = grouped_split(groups, n_splits, seed, y)
    # scikit-learn hands each inner fit its own rows' groups (``params``, cut to the fold's rows)
    params = {"groups": np.asarray(groups)} if getattr(blend, "takes_groups", False) else None
    with warnings.catch_warnings():  # scikit-learn's warnings about small classes: the split's warning said it
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        warnings.filterwarnings("ignore", message="Number of classes in training fold", category=RuntimeWarning)
        p = cross_val_predict(clone(blend), Xp, y, groups=groups, cv=cv, method="predict_proba", params=params)
    out = np.zeros((len(y), k))
    out[:, present] = p
    return out


# The one registry of --method names: name -> factory(stacker, n_members, metric). Insertion order is the report's.
BLENDS = {
    "mean": lambda stacker, n, metric: MergeBlend("mean", n),
    "gmean": lambda stacker, n, metric: MergeBlend("gmean", n),
    "vote": lambda stacker, n, metric: MergeBlend("vote", n),
    "weighted": lambda stacker, n, metric: WeightedBlend(n, metric=metric),
    "stack": lambda stacker, n, metric: StackBlend(stacker, n, metric),
}


def votes() -> list[str]:
    """The methods that learn nothing from the OOF: usable without a fitted blend."""
    return [m for m in BLENDS if not BLENDS[m]("logreg", 1, DEFAULT_METRIC).learns]


def make_blend(method: str, stacker: str = "logreg", offsets: bool = False, n_members: int = 1,
               metric: str = DEFAULT_METRIC):
    """The ``--method`` blender, with per-class offsets on top (a temperature under a metric of the probabilities,
    the log loss); the ones that fit weights or offsets maximise ``metric``, the competition's."""
    if method not in BLENDS:
        raise UserError(f"--method {method!r}: choose one of {sorted(BLENDS)}.")
    b = BLENDS[method](stacker, n_members, metric)
    if not offsets:
        return b
    return DecisionOffsets(b, metric=metric) if get_metric(metric).of_classes else TemperatureCalibration(b)
