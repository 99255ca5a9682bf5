"""Read run folders written by the fold runner: OOF, crop OOF and per-fold test probabilities.

The folder's layout comes from ``common.layout``; this never imports training code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, layout
from ensemble.merge import merge


@dataclass
class RunOutputs:
    """One run's predictions, rows aligned to its OOF file."""

    path: Path
    config: dict
    classes: list
    split_hash: str
    oof: pd.DataFrame  # id, [crop], fold, label, <classes>
    test_ids: np.ndarray
    fold_test: dict  # fold -> (n_test, K) probabilities
    full_test: np.ndarray | None = None  # the --fold full model, if trained
    fold_scores: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def oof_probs(self) -> np.ndarray:
        return self.oof[self.classes].to_numpy(dtype=np.float64)

    def test_probs(self, with_full: bool = False) -> np.ndarray:
        """The fold mean of the test probabilities; the full-data model joins as one more member."""
        members = list(self.fold_test.values()) + ([self.full_test] if with_full and self.full_test is not None else [])
        return merge(np.stack(members), "mean")


def load_run(path, oof: str = "crops") -> RunOutputs:
    """Load a finished run; ``oof`` picks the crop OOF ('crops') or the whole-image OOF ('whole')."""
    path = Path(path)
    if not (path / layout.CONFIG).is_file():
        raise UserError(f"{path}: not a run folder (no {layout.CONFIG}). Pass folders like runs/<name>.")
    config = json.loads((path / layout.CONFIG).read_text())
    classes = json.loads((path / layout.CLASSES).read_text())
    manifest = json.loads((path / layout.MANIFEST).read_text())
    planned = layout.planned_folds(config)
    unfinished = [k for k in planned if not layout.is_done(path, k)]
    if unfinished:
        raise UserError(f"{path}: folds {unfinished} are not finished; finish them with "
                        f"`{layout.fold_command(path, ','.join(map(str, unfinished)), '--resume')}`.")
    fname = layout.OOF_FILES[oof]
    if not (path / fname).is_file():
        raise UserError(f"{path}/{fname} is missing" + (" (the run was made with --crop-oof 0); use --oof whole."
                                                         if oof == "crops" else "."))
    df = layout.read_probs(path / fname, classes)
    fold_test, ids = {}, None
    for k in planned:
        f = layout.fold_dir(path, k) / layout.TEST_PROBS
        if not f.is_file():
            raise UserError(f"{f}: test probabilities are missing; rerun that fold with "
                            f"`{layout.fold_command(path, str(k), '--force')}`.")
        t = layout.read_probs(f, classes)
        if ids is None:
            ids = t["id"].to_numpy()
        elif not np.array_equal(ids, t["id"].to_numpy()):
            raise UserError(f"{f}: test ids differ from fold 0's.")
        fold_test[k] = t[classes].to_numpy(dtype=np.float64)
    full = layout.fold_dir(path, layout.FULL) / layout.TEST_PROBS
    full_test = None
    if full.is_file():
        t = layout.read_probs(full, classes)
        full_test = t.set_index("id").loc[ids, classes].to_numpy(dtype=np.float64)
    scores = {k: json.loads((layout.fold_dir(path, k) / layout.DONE).read_text()) for k in planned}
    return RunOutputs(path, config, classes, manifest["split_hash"], df, ids, fold_test, full_test, scores)


def check_compatible(runs: list[RunOutputs], need_same_split: bool) -> list[RunOutputs]:
    """Same classes, same test ids, same OOF rows; and one split when OOF is used to fit.

    Returns the runs with OOF rows and test rows in the first run's order (the inputs are untouched).
    """
    first = runs[0]
    for r in runs[1:]:
        if r.classes != first.classes:
            extra = sorted(set(r.classes) ^ set(first.classes))[:5]
            raise UserError(f"{r.path} has other classes than {first.path} (differing: {extra}); runs must be "
                            "trained on the same train.csv.")
        if not np.array_equal(np.sort(r.test_ids), np.sort(first.test_ids)):
            raise UserError(f"{r.path}: test ids differ from {first.path}'s.")
        if need_same_split and r.split_hash != first.split_hash:
            raise UserError(f"{r.path} was trained on another split than {first.path} (split hash {r.split_hash} "
                            f"!= {first.split_hash}). Fitting weights or a stacker across different folds leaks "
                            "validation rows into training. Rerun with the same --n-folds, --split-seed and --groups "
                            "(the default shares them), or use --method mean/gmean/vote.")
    keys = [c for c in ("id", "crop") if c in first.oof]  # the whole-painting OOF has one row per id
    order = first.oof.set_index(keys).index  # a MultiIndex of one level would not select rows by id
    aligned = [first]
    for r in runs[1:]:
        rows = r.oof.set_index(keys).index
        if len(rows) != len(order) or not rows.sort_values().equals(order.sort_values()):
            raise UserError(f"{r.path}: its OOF rows differ from {first.path}'s (other --crop-oof?).")
        pos = pd.Series(np.arange(len(r.test_ids)), index=r.test_ids).loc[first.test_ids].to_numpy()
        aligned.append(replace(
            r, oof=r.oof.set_index(rows).loc[order].reset_index(drop=True), test_ids=first.test_ids,
            fold_test={k: v[pos] for k, v in r.fold_test.items()},
            full_test=None if r.full_test is None else r.full_test[pos]))
    return aligned
