"""Pseudo-labels from a finished run, kept honest: fold k learns only from fold k's predictions.

A run's fold-mean test prediction carries information from every train painting, fold k's
validation paintings included. Training fold k of a new run on it would leak those paintings
into the model that is then scored on them, and the OOF would flatter. So fold k of the new
run takes the test images as labelled by fold k of the source run, whose model never saw
fold k's validation paintings; that needs the same split, which is checked. The full-data
model has no validation paintings, so it takes the source's fold mean.

Crops of one painting should share its label. By default each test crop first takes the
consensus of its overlap group (``ensemble.neighbours.consensus``: the crops it shares pixels
with). That fits nothing on labels, so fold k's pseudo-labels still depend on nothing but fold
k's model and the test pixels. On WikiArt-50's probe, of the crop-OOF crops kept at 0.9, 88% were
right against 75% alone, with as many kept (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from common import UserError, layout
from ensemble.merge import merge

log = logging.getLogger(__name__)


def check_source(run, classes, split_hash: str, folds) -> Path:
    """The source run folder, checked: same classes, same split, the needed folds finished."""
    run = Path(run)
    if not (run / layout.CONFIG).is_file():
        raise UserError(f"--pseudo {run}: not a run folder (no {layout.CONFIG}).")
    if json.loads((run / layout.CLASSES).read_text()) != list(classes):
        raise UserError(f"--pseudo {run}: trained on other classes than this run's train.csv.")
    theirs = json.loads((run / layout.MANIFEST).read_text()).get("split_hash")
    if theirs != split_hash:
        raise UserError(f"--pseudo {run}: made on another split (split hash {theirs} != {split_hash}). Fold k may "
                        "only learn from fold k's test predictions of the same split, or its validation paintings "
                        "leak in; use the same --n-folds and --split-seed as that run.")
    missing = [k for k in folds if not layout.is_done(run, k)]
    if missing:
        raise UserError(f"--pseudo {run}: folds {missing} are not finished; finish them first.")
    return run


def fold_probs(run: Path, fold, test_ids, classes) -> np.ndarray:
    """The source's test probabilities that fold ``fold`` may learn from, in ``test_ids`` order."""
    config = json.loads((run / layout.CONFIG).read_text())
    sources = layout.planned_folds(config) if fold == layout.FULL else [fold]
    probs = []
    for k in sources:
        df = layout.read_frame(layout.fold_dir(run, k) / layout.TEST_PROBS).set_index("id")
        missing = sorted(set(map(str, test_ids)) - set(df.index))[:5]
        if missing:
            raise UserError(f"--pseudo {run}: fold {k} has no test probabilities for ids {missing}.")
        probs.append(df.loc[list(map(str, test_ids)), list(classes)].to_numpy(dtype=np.float64))
    return merge(np.stack(probs), "mean")


def pseudo_labels(run: Path, fold, test, classes, mode: str = "hard", threshold: float = 0.9,
                  siblings: bool = True, workers: int = 8):
    """(paths, targets) of the test images for fold ``fold``: confident class indices (hard) or
    probability rows (soft); with ``siblings``, each crop's probabilities are first its overlap
    group's consensus."""
    probs = fold_probs(run, fold, test["id"].to_numpy(), classes)
    if siblings:
        from ensemble.neighbours import consensus  # the image side (PIL, scipy) only when asked for
        probs, found = consensus(test["path"], probs, workers)
        log.info("fold %s pseudo-labels: %.0f%% of the %d test crops take their siblings' consensus", fold,
                 100 * found, len(probs))
    if mode == "soft":
        return list(test["path"]), probs.astype(np.float32)
    keep = probs.max(axis=1) >= threshold
    return list(test["path"][keep]), probs[keep].argmax(axis=1)
