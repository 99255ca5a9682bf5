"""The competition's metrics, shared by training, the ensemble and the benchmarks.

``METRICS`` is the one registry of ``--metric`` names. Each metric scores predicted classes (the
argmax of probability rows), higher is better, and has a key: its column in ``history.csv``
(``val_<key>``, ``val_crop_<key>``), in a fold's ``done.json`` and a run's ``scores.json``. Every
registered metric is computed and kept; the run's ``--metric`` decides which one chooses the
checkpoints, the tuned settings, the ensemble and its offsets, and which one the tables lead with.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from common import UserError


def _classes(probs_or_pred) -> np.ndarray:
    p = np.asarray(probs_or_pred)
    return p.argmax(axis=1) if p.ndim == 2 else p


def macro_f1(y, probs_or_pred) -> float:
    """sklearn's ``f1_score(y, pred, average="macro")`` from bincounts (about 10x faster; blends call it often).

    Takes labels or probability rows (argmax). Like sklearn, and like the leaderboard, it averages
    over the classes seen in ``y`` or in the predictions; a test checks it equals sklearn.
    """
    y = np.asarray(y)
    pred = _classes(probs_or_pred)
    k = int(max(pred.max(initial=0), y.max(initial=0))) + 1
    tp = np.bincount(y[pred == y], minlength=k)
    denom = np.bincount(pred, minlength=k) + np.bincount(y, minlength=k)
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean())


def accuracy(y, probs_or_pred) -> float:
    """The share of rows whose predicted class is right (labels or probability rows)."""
    return float(np.mean(_classes(probs_or_pred) == np.asarray(y)))


def mean_single_f1(y, members) -> float:
    """The mean macro-F1 of single models' probabilities (``members``: fold models on one test set).

    This is what a crop OOF estimates; the F1 of their mean is another figure, higher by the fold
    mean's own gain, which the benchmarks report beside it."""
    scores = [macro_f1(y, p) for p in members]
    return float(sum(scores) / len(scores))


def painting_draws(groups, draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap resamples of the groups (paintings): ``(group index of each row, weights)``, where
    ``weights[d, g]`` is how often draw ``d`` took group ``g`` (the groups drawn with replacement, as
    many as there are). A painting's crops are not independent, so they are drawn together."""
    _, g = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n = int(g.max()) + 1
    rng = np.random.default_rng(seed)
    return g, rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def weighted_macro_f1(y, pred, g, weights) -> np.ndarray:
    """``macro_f1`` of every weighting of the groups in one pass: row ``d`` of ``weights`` counts each row
    of group ``i`` ``weights[d, i]`` times. Equals ``macro_f1`` on the rows repeated so (a test checks it)."""
    y, pred = np.asarray(y), np.asarray(pred)
    k = int(max(pred.max(initial=0), y.max(initial=0))) + 1
    n = weights.shape[1]
    per_group = np.zeros((3, n, k))  # true positives, predicted, true: counts per group and class
    hit = pred == y
    np.add.at(per_group[0], (g[hit], y[hit]), 1)
    np.add.at(per_group[1], (g, pred), 1)
    np.add.at(per_group[2], (g, y), 1)
    tp = weights @ per_group[0]
    denom = weights @ (per_group[1] + per_group[2])
    f1 = np.divide(2 * tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)  # absent classes: not averaged
    return np.nanmean(f1, axis=1)


def weighted_accuracy(y, pred, g, weights) -> np.ndarray:
    """``accuracy`` of every weighting of the groups in one pass, as ``weighted_macro_f1`` draws them."""
    y, pred = np.asarray(y), np.asarray(pred)
    n = weights.shape[1]
    right = np.bincount(g, weights=(pred == y).astype(np.float64), minlength=n)
    rows = np.bincount(g, minlength=n).astype(np.float64)
    return (weights @ right) / (weights @ rows)


class Metric(NamedTuple):
    """A competition metric of predicted classes, higher is better."""
    label: str  # in tables and logs
    short: str  # a table column's name beside the score's kind: "val F1", "crop-OOF accuracy"
    key: str  # its column: val_<key>, val_crop_<key>, and the key in done.json and scores.json
    score: Callable  # (labels, probability rows or predicted classes) -> float
    drawn: Callable  # (labels, predicted classes, group of each row, group weights per draw) -> a score per draw
    # every class counts the same, however few its images: what the class-balanced sampler trains for
    classes_equal: bool


# The one registry of --metric names. Insertion order is the tables' column order.
METRICS = {
    "macro_f1": Metric("macro-F1", "F1", "f1", macro_f1, weighted_macro_f1, classes_equal=True),
    "accuracy": Metric("accuracy", "accuracy", "acc", accuracy, weighted_accuracy, classes_equal=False),
}
DEFAULT_METRIC = "macro_f1"  # Dacon's painter task; a run folder from before --metric was scored by it


def get_metric(name: str | None, option: str = "--metric") -> Metric:
    """The registered metric ``name`` (None: the default)."""
    name = DEFAULT_METRIC if name is None else name
    if name not in METRICS:
        raise UserError(f"{option} {name!r}: unknown; choose one of {list(METRICS)}.")
    return METRICS[name]


def all_scores(y, probs_or_pred, prefix: str = "") -> dict:
    """Every registered metric of these predictions, by key (``prefix`` before each key)."""
    return {prefix + m.key: m.score(y, probs_or_pred) for m in METRICS.values()}
