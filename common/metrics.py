"""The competition's metrics, shared by training, the ensemble and the benchmarks.

``METRICS`` is the one registry of ``--metric`` names. Each metric scores probability rows (most score
their predicted classes, the argmax; the log loss scores the probabilities themselves), higher is better
(the log loss is kept negated, as scikit-learn's ``neg_log_loss`` scorer does), and has a key: its column
in ``history.csv`` (``val_<key>``, ``val_crop_<key>``), in a fold's ``done.json`` and a run's
``scores.json``. Every registered metric is computed and kept; the run's ``--metric`` decides which one chooses the
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


def _kappa(observed, k: int):
    """Quadratic weighted kappa from confusion counts (``observed``: (..., k * k), true class major): one minus
    the weighted disagreement over what rows and columns of the same totals would give by chance."""
    i, j = np.divmod(np.arange(k * k), k)
    w = (i - j) ** 2 / max(k - 1, 1) ** 2
    o = observed.reshape(*observed.shape[:-1], k, k)
    n = o.sum(axis=(-2, -1))
    chance = (o.sum(axis=-1)[..., :, None] * o.sum(axis=-2)[..., None, :]).reshape(observed.shape)
    chance = chance / np.where(n > 0, n, 1)[..., None]
    disagree = chance @ w
    return np.where(disagree > 0, 1 - (observed @ w) / np.where(disagree > 0, disagree, 1), 0.0)


def quadratic_kappa(y, probs_or_pred) -> float:
    """Cohen's kappa with quadratic weights (APTOS, PANDA): the classes in their sorted order are the ordinal
    scale, weighted by ``(i - j)^2`` over all of them; equals ``sklearn.metrics.cohen_kappa_score(y, pred,
    labels=range(K), weights="quadratic")`` (a test checks it)."""
    y, pred, k = _graded(y, probs_or_pred)
    return float(_kappa(np.bincount(y * k + pred, minlength=k * k).astype(np.float64), k))


def _graded(y, probs_or_pred) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels, predicted classes and the scale's length: the probability rows' columns, or the largest class seen
    (the kappa does not change with classes above every row's, seen by neither)."""
    y, pred, p = np.asarray(y), _classes(probs_or_pred), np.asarray(probs_or_pred)
    return y, pred, p.shape[1] if p.ndim == 2 else int(max(pred.max(initial=0), y.max(initial=0))) + 1


# Kaggle's log loss clips each probability to [1e-15, 1 - 1e-15] and renormalises the rows: a zero would be infinite
LOG_LOSS_EPS = 1e-15


def _true_class_losses(y, probs) -> np.ndarray:
    """Each row's log loss: minus the log of its true class's probability, clipped and renormalised as Kaggle does."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError("the log loss scores probability rows, not predicted classes")
    p = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return np.log(p.sum(axis=1)) - np.log(p[np.arange(len(p)), np.asarray(y)])


def neg_log_loss(y, probs) -> float:
    """Minus the multi-class log loss of probability rows (higher is better, as scikit-learn's ``neg_log_loss``);
    equals ``-sklearn.metrics.log_loss(y, probs, labels=range(K))`` away from the clip (a test checks it)."""
    return -float(_true_class_losses(y, probs).mean())


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


def weighted_macro_f1(y, probs_or_pred, g, weights) -> np.ndarray:
    """``macro_f1`` of every weighting of the groups in one pass: row ``d`` of ``weights`` counts each row
    of group ``i`` ``weights[d, i]`` times. Equals ``macro_f1`` on the rows repeated so (a test checks it)."""
    y, pred = np.asarray(y), _classes(probs_or_pred)
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


def weighted_accuracy(y, probs_or_pred, g, weights) -> np.ndarray:
    """``accuracy`` of every weighting of the groups in one pass, as ``weighted_macro_f1`` draws them."""
    y, pred = np.asarray(y), _classes(probs_or_pred)
    n = weights.shape[1]
    right = np.bincount(g, weights=(pred == y).astype(np.float64), minlength=n)
    rows = np.bincount(g, minlength=n).astype(np.float64)
    return (weights @ right) / (weights @ rows)


def weighted_quadratic_kappa(y, probs_or_pred, g, weights) -> np.ndarray:
    """``quadratic_kappa`` of every weighting of the groups in one pass, as ``weighted_macro_f1`` draws them."""
    y, pred, k = _graded(y, probs_or_pred)
    per_group = np.zeros((weights.shape[1], k * k))  # confusion counts per group
    np.add.at(per_group, (g, y * k + pred), 1)
    return _kappa(weights @ per_group, k)


def weighted_neg_log_loss(y, probs, g, weights) -> np.ndarray:
    """``neg_log_loss`` of every weighting of the groups in one pass, as ``weighted_macro_f1`` draws them."""
    n = weights.shape[1]
    loss = np.bincount(g, weights=_true_class_losses(y, probs), minlength=n)
    rows = np.bincount(g, minlength=n).astype(np.float64)
    return -(weights @ loss) / (weights @ rows)


class Metric(NamedTuple):
    """A competition metric of probability rows, higher is better."""
    label: str  # in tables and logs
    short: str  # a table column's name beside the score's kind: "val F1", "crop-OOF accuracy"
    key: str  # its column: val_<key>, val_crop_<key>, and the key in done.json and scores.json
    score: Callable  # (labels, probability rows; predicted classes where of_classes) -> float
    drawn: Callable  # (labels, probability rows, group of each row, group weights per draw) -> a score per draw
    # every class counts the same, however few its images: what the class-balanced sampler trains for
    classes_equal: bool
    # it scores the predicted class (the argmax), so per-class offsets can move it and the submission names a
    # class; False: it scores the probabilities, and the submission may be one probability column per class
    of_classes: bool = True
    # a leaderboard shows board_sign x the score: -1 for the log loss, which it shows as a loss (lower is better)
    board_sign: int = 1
    # the classes are an ordinal scale, in their sorted order (a grade 0 to 4): a near miss costs less than a far one
    ordinal: bool = False


# The one registry of --metric names. Insertion order is the tables' column order.
METRICS = {
    "macro_f1": Metric("macro-F1", "F1", "f1", macro_f1, weighted_macro_f1, classes_equal=True),
    "accuracy": Metric("accuracy", "accuracy", "acc", accuracy, weighted_accuracy, classes_equal=False),
    "quadratic_kappa": Metric("quadratic kappa", "QWK", "qwk", quadratic_kappa, weighted_quadratic_kappa,
                              classes_equal=False, ordinal=True),
    "neg_log_loss": Metric("neg. log loss", "-log loss", "neg_log_loss", neg_log_loss, weighted_neg_log_loss,
                           classes_equal=False, of_classes=False, board_sign=-1),
}
NEG_LOG_LOSS = METRICS["neg_log_loss"].key  # also a fold's validation loss (history.csv's val_loss, crop-loss monitor)
DEFAULT_METRIC = "macro_f1"  # Dacon's painter task; a run folder from before --metric was scored by it


def get_metric(name: str | None, option: str = "--metric") -> Metric:
    """The registered metric ``name`` (None: the default)."""
    name = DEFAULT_METRIC if name is None else name
    if name not in METRICS:
        raise UserError(f"{option} {name!r}: unknown; choose one of {list(METRICS)}.")
    return METRICS[name]


def shown_beside(lead: Metric) -> list[Metric]:
    """The metrics a table shows beside the one it leads with: every other one but an ordinal one (a kappa over
    classes that are no scale, the painters, says nothing), which is kept all the same."""
    return [m for m in METRICS.values() if m is not lead and not m.ordinal]


def all_scores(y, probs_or_pred, prefix: str = "") -> dict:
    """Every registered metric of these predictions, by key (``prefix`` before each key)."""
    return {prefix + m.key: m.score(y, probs_or_pred) for m in METRICS.values()}


def check_metric_fits_sample(metric: str | None, probability_columns, sample_path) -> None:
    """A sample submission of one probability column per class is scored on its probabilities: a metric of the
    predicted classes would choose checkpoints and blends for another score than the leaderboard's."""
    m = get_metric(metric)
    if probability_columns and m.of_classes:
        shown = [name for name, x in METRICS.items() if not x.of_classes]
        raise UserError(f"{sample_path}: one probability column per class ({len(probability_columns)} classes), so the "
                        f"submission is scored on its probabilities (Kaggle's multi-class log loss, most often), but "
                        f"--metric is {metric or DEFAULT_METRIC}, which scores the predicted class. Give --metric "
                        f"{' or '.join(shown)}.")


def check_metric_fits_classes(metric: str | None, classes, where) -> str | None:
    """A metric of an ordinal scale (``quadratic_kappa``) takes the classes in their sorted order as the scale:
    names that are numbers but sort otherwise as text (``10`` before ``2``) are refused; other names get a note
    to read (returned), since only the user knows that ``mild`` comes before ``severe``, which sorts after it."""
    m = get_metric(metric)
    if not m.ordinal:
        return None
    classes = [str(c) for c in classes]
    try:
        numbers = [float(c) for c in classes]
    except ValueError:
        return (f"--metric {metric} takes the classes in their sorted order as the scale, near to far: "
                f"{' < '.join(classes)}. If that is not their order, rename them so it is (0_none, 1_mild, ...).")
    if numbers != sorted(numbers):
        raise UserError(f"{where}: --metric {metric} takes the classes in their sorted order as the scale, and "
                        f"these numbers sort otherwise as text: {' < '.join(classes)}. Write them zero-padded "
                        "(01, 02, ..., 10) in train.csv, so that their order as text is their order.")
    return None
