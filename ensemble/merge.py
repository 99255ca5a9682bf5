"""One merger for TTA views, fold models and runs: probabilities in, probabilities out.

Every mode takes an array of shape (n_members, n_rows, n_classes) of probabilities and
returns (n_rows, n_classes) rows that sum to 1. Merging logits is deliberately not offered:
a geometric mean of negative logits is NaN (ttach's gmean/tsharpen do exactly that).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-7


def _normalise(p: np.ndarray) -> np.ndarray:
    return p / p.sum(axis=-1, keepdims=True)


def mean(probs: np.ndarray, weights=None) -> np.ndarray:
    """Soft vote: the (weighted) arithmetic mean."""
    return _normalise(np.average(probs, axis=0, weights=weights))


def gmean(probs: np.ndarray, weights=None) -> np.ndarray:
    """Geometric mean of probabilities, renormalised; clipped so a zero never gives -inf."""
    logp = np.log(np.clip(probs, EPS, 1.0))
    return _normalise(np.exp(np.average(logp, axis=0, weights=weights)))


def vote(probs: np.ndarray, weights=None) -> np.ndarray:
    """Hard majority vote as vote shares; ties go to the higher mean probability."""
    n, rows, k = probs.shape
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    shares = np.zeros((rows, k))
    winners = probs.argmax(axis=-1)
    for m in range(n):
        shares[np.arange(rows), winners[m]] += w[m]
    shares /= w.sum()
    return _normalise(shares + 1e-3 * mean(probs, weights))  # tie-break far below one vote


MERGERS = {"mean": mean, "gmean": gmean, "vote": vote}


def merge(probs, mode: str = "mean", weights=None) -> np.ndarray:
    """Merge stacked probabilities with a named mode.

    >>> merge(np.array([[[0.8, 0.2]], [[0.4, 0.6]]]), "mean")
    array([[0.6, 0.4]])
    """
    if mode not in MERGERS:
        raise ValueError(f"merge mode must be one of {sorted(MERGERS)}, but got {mode!r}")
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected (members, rows, classes), got shape {probs.shape}")
    return MERGERS[mode](probs, weights)
