"""Stratified K-fold split, saved as ``folds.csv`` with a hash, and reused on rerun.

The split has its own seed (``split_seed``), apart from the training seed, so runs with
other seeds or backbones on the same data share one split: stacking needs that. With ``groups``
(``--groups``: copies of one painting, say), the images of a group share a fold
(``StratifiedGroupKFold``), so a model is never scored on a copy of what it learnt.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from common import UserError, write_csv

log = logging.getLogger(__name__)


def split_key(ids, labels, n_folds: int, split_seed: int, groups=None) -> str:
    """Hash of what determines the split: ids, labels, K, the split seed and the groups, if any (a split
    without groups keeps the key it had before groups existed)."""
    h = hashlib.sha256(f"K={n_folds};seed={split_seed}\n".encode())
    tails = [""] * len(ids) if groups is None else [f"\t{g}" for g in groups]
    for i, y, t in zip(map(str, ids), map(str, labels), tails):
        h.update(f"{i}\t{y}{t}\n".encode())
    return h.hexdigest()[:16]


def assignment_hash(folds: pd.DataFrame) -> str:
    """Hash of the actual (id, fold) assignment: equal hashes mean identical OOF rows."""
    h = hashlib.sha256()
    for i, f in zip(folds["id"].astype(str), folds["fold"].astype(int)):
        h.update(f"{i}\t{f}\n".encode())
    return h.hexdigest()[:16]


def make_folds(ids, labels, n_folds: int = 5, split_seed: int = 42, groups=None,
               allow_small: bool = False) -> pd.DataFrame:
    """Assign each row a fold with StratifiedKFold(shuffle=True, random_state=split_seed), or with
    StratifiedGroupKFold where ``groups`` (one per row) keep rows together.

    A class with fewer images (or groups) than K is refused, unless ``allow_small``: then it is split
    as scikit-learn splits it, validated in as many folds as it has images, and said in a warning."""
    if n_folds < 2:
        raise UserError(f"--n-folds must be at least 2, but got {n_folds}.")
    labels = pd.Series(list(labels))
    rows = labels.value_counts()  # largest first
    if groups is None:
        counts, what = rows, "images"
    else:  # a class needs a group of its own in every fold
        counts, what = pd.Series(list(groups)).groupby(labels.to_numpy()).nunique(), "groups (--groups)"
    # what no flag can split: scikit-learn refuses K folds over fewer groups, or where every class has fewer images
    if groups is not None and (n_groups := len(set(groups))) < n_folds:
        raise UserError(f"--groups: {n_groups} groups in all, fewer than --n-folds={n_folds}: a fold would validate "
                        f"no group. Use --n-folds {n_groups} or fewer.")
    if rows.max() < n_folds:
        raise UserError(f"every class has fewer images than --n-folds={n_folds} (the largest, {str(rows.index[0])!r}, "
                        f"has {int(rows.max())}): no stratified split exists, even with --allow-small-classes. Use "
                        f"--n-folds {int(rows.max())} or fewer.")
    small = counts[counts < n_folds]
    if len(small):
        worst = ", ".join(f"{str(k)!r} ({int(v)})" for k, v in small.sort_values().head(5).items())
        if not allow_small:
            smaller = (f"Use --n-folds {int(counts.min())} or fewer, add" if counts.min() >= 2  # K=1: no split
                       else "Add")
            raise UserError(f"{len(small)} class(es) have fewer {what} than --n-folds={n_folds}: {worst}. "
                            f"{smaller} images, or use --allow-small-classes (such a class is validated in "
                            "fewer folds, and one of a single image is never learnt by the fold that validates it).")
        log.warning("%d class(es) have fewer %s than --n-folds=%d: %s. With --allow-small-classes each is validated "
                    "in as many folds as it has %s, and a class of one is never learnt by the fold that validates "
                    "it: its OOF rows are wrong, as a test image of a class the model never saw would be. (The "
                    "balanced sampler draws every class alike, so a small class's images are drawn many times an "
                    "epoch; --balance-power 0.5 draws them less.)", len(small), what, n_folds, worst, what.split()[0])
    x = np.zeros(len(labels))
    with warnings.catch_warnings():  # scikit-learn's "least populated class" warning: said above, in full
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        fold = _assign(x, labels, n_folds, split_seed, groups)
    return pd.DataFrame({"id": list(map(str, ids)), "label": labels.values, "fold": fold})


def _assign(x, labels, n_folds, split_seed, groups) -> np.ndarray:
    """Each row's fold: its validation fold in scikit-learn's split."""
    if groups is None:
        parts = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=split_seed).split(x, labels)
    else:
        parts = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=split_seed).split(
            x, labels, list(groups))
    fold = np.empty(len(labels), dtype=int)
    for k, (_, val) in enumerate(parts):
        fold[val] = k
    return fold


def fold_rows(folds: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``k``'s training and validation rows of the train set, by the split's ``fold`` column."""
    fold_of = folds["fold"].to_numpy()
    return np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)


def load_or_make_folds(path: Path | None, ids, labels, n_folds: int, split_seed: int, shared_dir: Path | None = None,
                       write: bool = True, groups=None, allow_small: bool = False):
    """Return (folds, key, assignment_hash); reuse ``path`` (or a shared copy) when it matches.

    A saved split made from other data, K, seed or groups is refused rather than silently replaced:
    a run's finished folds were trained on it. ``write=False`` leaves saving to ``save_folds``
    (a caller with more checks to make first). ``path`` None: the run has no split of its own to reuse.
    """
    key = split_key(ids, labels, n_folds, split_seed, groups)
    candidates = ([Path(path)] if path is not None else []) + ([Path(shared_dir) / f"{key}.csv"] if shared_dir else [])
    for p in candidates:
        if p.is_file():
            folds = pd.read_csv(p, dtype={"id": str, "label": str, "split_key": str}, keep_default_na=False)
            saved_key = folds["split_key"].iloc[0] if "split_key" in folds else None
            if saved_key != key:
                raise UserError(f"{p}: this run's saved split was made from other data, --n-folds, "
                                f"--split-seed or --groups (split key {saved_key} != {key}). Use a new --name, or "
                                "delete the run folder to start over.")
            folds = folds[["id", "label", "fold"]]
            break
    else:
        folds = make_folds(ids, labels, n_folds, split_seed, groups, allow_small)
    if write:
        save_folds(path, folds, key, shared_dir)
    return folds, key, assignment_hash(folds)


def save_folds(path: Path, folds: pd.DataFrame, key: str, shared_dir: Path | None = None) -> None:
    """The split into ``path`` and the shared ``splits/<key>.csv``, where not there yet."""
    out = folds.assign(split_key=key)
    if not Path(path).is_file():
        write_csv(path, out)
    if shared_dir and not (Path(shared_dir) / f"{key}.csv").is_file():
        write_csv(Path(shared_dir) / f"{key}.csv", out)
