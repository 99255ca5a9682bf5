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

The crop OOF of train paintings cannot see what pseudo-labelling gives the test crops: the model
learns the very crops it is then scored on, and that gain is transductive. So by default fold k
also learns its own validation paintings' crop-OOF crops, labelled the same way by fold k of the
source (its crop OOF: a model that never saw them; their true labels are never read). Its crop
OOF then scores crops it has pseudo-labelled, as the test does, and a pseudo round can be judged
by it like any other recipe.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common import UserError, layout
from ensemble.merge import merge
from folds.scale_check import looks_whole

log = logging.getLogger(__name__)


def check_source(run, classes, split_hash: str, folds, own_crops: bool = False) -> Path:
    """The source run folder, checked: same classes, same split, the needed folds finished, and,
    where fold k is to learn its own crop-OOF crops, a source whose fold k never learned them."""
    run = layout.check_run_folder(run, "--pseudo")
    if own_crops:
        check_own_crops_unlearned(run)
    return layout.check_fold_source(run, "--pseudo", classes, split_hash, folds,
                                    "learn from fold k's test predictions")


def check_own_crops_unlearned(run: Path) -> None:
    """Refuse to label fold k's own crops with a source whose fold k had learned them.

    A source that was itself a pseudo round with its own crops trained fold k on the very crops
    its crop OOF then predicts; labels taken from there have already been fitted once, and a
    second round's crop OOF overstates: on WikiArt-50 it gained 0.032 while the single-fold test
    gained nothing (benchmarks/RESULTS.md, tenth session).
    """
    from folds.config import saved_config

    source = saved_config(run)
    if source.pseudo and source.pseudo_oof:
        raise UserError(f"--pseudo {run}: that run is itself a pseudo-label round (--pseudo {source.pseudo}) whose "
                        "fold k learned fold k's crop-OOF crops, so labelling them again from its crop OOF makes this "
                        "run's crop OOF overstate. Start from the first round's source instead, or add "
                        "--no-pseudo-oof to learn from its test crops alone (the crop OOF then stays honest but "
                        "does not see the gain on the test crops).")


def fold_probs(run: Path, fold, test, classes) -> np.ndarray:
    """The source's test probabilities that fold ``fold`` may learn from, in the order of ``test`` (the test
    set's frame, as it is now)."""
    from folds.data import images_hash

    config = layout.read_json(run / layout.CONFIG)
    sources = layout.planned_folds(config) if fold == layout.FULL else [fold]
    test_ids, now = test["id"].to_numpy(), images_hash(test)
    again = f"{layout.predict_test_again(run)}."
    probs = []
    for k in sources:
        df = layout.read_probs(layout.fold_dir(run, k) / layout.TEST_PROBS, classes).set_index("id")
        missing = sorted(set(map(str, test_ids)) - set(df.index))[:5]
        if missing:
            raise UserError(f"--pseudo {run}: fold {k} has no test probabilities for ids {missing} (test.csv changed "
                            f"since it predicted); {again}")
        saved = layout.read_json(layout.fold_dir(run, k) / layout.DONE).get("test_hash")
        if saved not in (None, now):
            raise UserError(f"--pseudo {run}: fold {k} predicted other test images under these ids (the test set "
                            f"changed since); {again}")
        probs.append(df.loc[list(map(str, test_ids)), list(classes)].to_numpy(dtype=np.float64))
    return merge(np.stack(probs), "mean")


class PseudoImages(NamedTuple):
    """Pseudo-labelled images for one fold: class indices (hard) or probability rows (soft), each
    image's crop box (None: the whole image file), and whether the image is a test-size crop of a
    painting (then its training crops are cut at the painting's scale: ``folds.augment.crop_scale``)."""
    paths: list
    targets: np.ndarray
    boxes: list
    of_crop: list

    def __add__(self, other: "PseudoImages") -> "PseudoImages":
        return PseudoImages(self.paths + other.paths, np.concatenate([self.targets, other.targets]),
                            self.boxes + other.boxes, self.of_crop + other.of_crop)


def _labelled(paths, boxes, probs, mode: str, threshold: float, siblings: bool, workers: int, what: str,
              of_crop: bool = True):
    """``probs`` as pseudo-labels of ``paths`` (or of their ``boxes``; None: the whole images): with
    ``siblings`` each crop first takes its overlap group's consensus; hard mode keeps the confident
    crops' argmax, soft mode every crop's probabilities. ``of_crop``: whether the images are test-size
    crops of paintings."""
    if siblings:
        from ensemble.neighbours import consensus  # the image side (PIL, scipy) only when asked for
        probs, found = consensus(paths, probs, workers, crops=boxes)
        log.info("%s: %.0f%% of the %d crops take their siblings' consensus", what, 100 * found, len(probs))
    boxes = [None] * len(paths) if boxes is None else list(boxes)
    if mode == "soft":
        return PseudoImages(list(paths), probs.astype(np.float32), boxes, [of_crop] * len(paths))
    keep = np.flatnonzero(probs.max(axis=1) >= threshold)
    return PseudoImages([paths[i] for i in keep], probs[keep].argmax(axis=1), [boxes[i] for i in keep],
                        [of_crop] * len(keep))


def pseudo_labels(run: Path, fold, test, classes, mode: str = "hard", threshold: float = 0.9,
                  siblings: bool = True, workers: int = 8, test_whole: bool = False) -> PseudoImages:
    """The test images for fold ``fold``: confident class indices (hard) or probability rows (soft);
    with ``siblings``, each crop's probabilities are first its overlap group's consensus.
    ``test_whole``: the test images are whole images (``folds.scale_check.looks_whole``), not crops."""
    probs = fold_probs(run, fold, test, classes)
    return _labelled(list(test["path"]), None, probs, mode, threshold, siblings, workers,
                     f"fold {fold} pseudo-labels of the test {'images' if test_whole else 'crops'}",
                     of_crop=not test_whole)


def own_crop_labels(run: Path, fold, train, classes, mode: str = "hard", threshold: float = 0.9,
                    siblings: bool = True, workers: int = 8) -> PseudoImages:
    """Fold ``fold``'s own validation paintings as the source's crop OOF cut and predicted them
    (fold ``fold`` of the source: a model that never saw them), labelled as ``pseudo_labels``
    labels the test. The source's true-label column is never read."""
    from folds.predict import crop_oof_boxes

    f = layout.fold_dir(run, fold) / layout.OOF_CROPS
    if not f.is_file():
        raise UserError(f"--pseudo {run}: fold {fold} has no crop OOF ({f}); it was trained with --crop-oof 0. "
                        "Add --no-pseudo-oof to learn from the test crops alone.")
    df = layout.read_probs(f, classes)
    path_of = dict(zip(train["id"].astype(str), train["path"]))
    unknown = sorted(set(df["id"]) - set(path_of))[:5]
    if unknown:
        raise UserError(f"--pseudo {run}: fold {fold}'s crop OOF names paintings not in this train.csv: {unknown}.")
    probs = df[list(classes)].to_numpy(dtype=np.float64)
    return _labelled([path_of[i] for i in df["id"]], crop_oof_boxes(df["id"], df["crop"]), probs, mode, threshold,
                     siblings, workers, f"fold {fold} pseudo-labels of its own crop-OOF crops")


def fold_pseudo_images(run, fold, ds, cfg, workers: int = 8) -> tuple[PseudoImages, int]:
    """Everything fold ``fold`` learns from ``run``'s predictions: the test crops and, with
    ``cfg.pseudo_oof``, its own crop-OOF crops (not for the full-data model, which has none).
    Also returns how many of them are test crops."""
    args = (cfg.pseudo_mode, cfg.pseudo_threshold, cfg.pseudo_siblings, workers)
    # a Kaggle task's whole test images are augmented as the train images are, not as crops of a painting
    test = pseudo_labels(run, fold, ds.test, ds.classes, *args, test_whole=looks_whole(ds.test_area_share))
    if not cfg.pseudo_oof or fold == layout.FULL:
        return test, len(test.paths)
    return test + own_crop_labels(run, fold, ds.train, ds.classes, *args), len(test.paths)
