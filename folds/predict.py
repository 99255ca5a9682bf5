"""Predict probabilities with batched TTA, on whole images or on fixed crops.

The "crop OOF" predicts each validation painting as fixed, seeded half-width, half-height
crops, the shape of Dacon's test images, so OOF scores the model on the test's distribution.
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np
import torch

from common.progress import progress
from ensemble.merge import merge
from ensemble.tta import BatchedTTA, n_views
from folds import distributed
from folds.augment import CROP_SIDE, eval_transform
from folds.backbone import load_best
from folds.cache import image_cache
from folds.engine import InputPipe, Precision
from folds.loader import ImageDataset, batches, make_loader, num_workers


# Crop boxes are fixed across runs, so crop-OOF rows line up for stacking; the per-epoch
# validation crops use another seed (they are a monitor, not the reported crop OOF).
CROP_OOF_SEED = 20240607
VAL_CROP_SEED = 20240608


def crop_boxes(ids, n_crops: int, seed: int = 0) -> list[tuple[float, float, float, float]]:
    """``n_crops`` half-size boxes per id as (x0, y0, x1, y1) fractions; fixed by (seed, id)."""
    boxes = []
    for i in ids:
        rng = np.random.default_rng([seed, hash_id(i)])
        for _ in range(n_crops):
            x0, y0 = rng.uniform(0, 1 - CROP_SIDE, size=2)
            boxes.append((float(x0), float(y0), float(x0) + CROP_SIDE, float(y0) + CROP_SIDE))
    return boxes


class PaintingViews(NamedTuple):
    """Each painting whole, then its fixed crops, one row after another: one pass decodes a painting once
    for all its rows (``ImageDataset(reuse_decoded=True)``). ``whole`` marks the whole-painting rows."""
    paths: list
    boxes: list  # None: the whole painting
    whole: np.ndarray

    @classmethod
    def of(cls, paths, ids, n_crops: int, seed: int) -> "PaintingViews":
        boxes = crop_boxes(ids, n_crops, seed)
        rows, row_boxes = [], []
        for i, path in enumerate(paths):
            rows += [path] * (1 + n_crops)
            row_boxes += [None, *boxes[i * n_crops:(i + 1) * n_crops]]
        return cls(rows, row_boxes, np.array([b is None for b in row_boxes], dtype=bool))


def crop_oof_boxes(ids, crop) -> list[tuple]:
    """The box of each crop-OOF row (``ids[j]``, crop index ``crop[j]``), as the crop OOF cut it."""
    ids, crop = [str(i) for i in ids], np.asarray(crop, dtype=int)
    order, n = list(dict.fromkeys(ids)), int(crop.max()) + 1 if len(crop) else 0
    box_of = dict(zip(order, np.reshape(crop_boxes(order, n, CROP_OOF_SEED), (-1, n, 4))))
    return [tuple(map(float, box_of[i][c])) for i, c in zip(ids, crop)]


def hash_id(i) -> int:
    # Python's hash() is salted per process; this one is stable across runs and machines.
    return zlib.crc32(str(i).encode())


def pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` with zero images appended up to ``size`` rows (their predictions are dropped)."""
    return x if len(x) >= size else torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])


@torch.no_grad()
def predict_probs(model, loader, prec: Precision, inputs: InputPipe, tta: str = "none",
                  desc: str = "predict", fixed_shape: bool | None = None) -> np.ndarray:
    """(N, K) probabilities: every TTA view of a batch in one forward pass, merged on probabilities.

    ``fixed_shape`` (default: on CUDA with cuDNN autotuning) pads the last, smaller batch to the
    loader's batch size. cuDNN autotunes every convolution again for each new input shape, and
    each validation set, crop set and test set would bring one more in the first epoch; in eval
    mode a row's output does not depend on the rest of its batch, so padding changes nothing else.
    """
    return predict_probs_each([model], loader, prec, inputs, tta, desc, fixed_shape)[0]


@torch.no_grad()
def predict_probs_each(models: list, loader, prec: Precision, inputs: InputPipe, tta: str = "none",
                       desc: str = "predict", fixed_shape: bool | None = None) -> np.ndarray:
    """(M, N, K): ``predict_probs`` of each of the M ``models`` (a run's fold models), from one pass over
    ``loader``: each batch is decoded and sent to the device once, then goes through every model."""
    wrapped = [BatchedTTA(m.eval(), tta) for m in models]
    if fixed_shape is None:
        fixed_shape = prec.device.type == "cuda" and torch.backends.cudnn.benchmark
    out = [[] for _ in models]
    dataset = getattr(loader, "dataset", None)  # its length: the count without the last batch's shortfall
    for batch in progress(batches(loader), len(loader), desc, unit="images", scale=loader.batch_size or 1,
                          items=None if dataset is None else len(dataset)):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        n = len(x)
        if fixed_shape and loader.batch_size:
            x = pad_batch(x, loader.batch_size)
        x = inputs(x)
        for each, model in zip(out, wrapped):
            with prec.autocast():
                views = model(x)[:, :n]
            each.append(merge(views.float().cpu().numpy(), "mean"))
    return np.stack([np.concatenate(each) for each in out]).astype(np.float32)


def predict_crop_oof(predictor: "Predictor", val, n_crops: int, desc: str = "crop OOF") -> np.ndarray:
    """(len(val) * n_crops, K): the validation paintings ``val`` (id, path) as their fixed crop-OOF
    crops, ``n_crops`` per painting in order: the rows of ``oof_crops.csv``."""
    return predictor.predict(np.repeat(val["path"].to_numpy(), n_crops),
                             crops=crop_boxes(val["id"], n_crops, CROP_OOF_SEED), desc=desc)


class Predictor:
    """A finished fold's best weights with the eval transform, the image cache and TTA; or several folds
    (``fold_dir`` a list), whose models predict each batch in turn: an image is decoded once for all of them,
    and ``predict`` gives their mean (a new test set's fold mean: ``ensemble/predict.py``), ``predict_each``
    each one's. ``cfgs``: one config a fold, where the folds are of several runs (seeds of one backbone) that
    share the eval transform, precision and TTA; the first one's loader settings are used.

    >>> p = Predictor(cfg, ds.num_classes, Path("runs/demo/fold_0"))     # doctest: +SKIP
    >>> p.predict(ds.test["path"]).shape                                   # doctest: +SKIP
    (72, 6)
    """

    def __init__(self, cfg, num_classes: int, fold_dir, store_cache: bool = True, cfgs=None):
        fold_dirs = list(fold_dir) if isinstance(fold_dir, (list, tuple)) else [fold_dir]
        cfgs = list(cfgs) if cfgs is not None else [cfg] * len(fold_dirs)
        loaded = [load_best(c, num_classes, d) for c, d in zip(cfgs, fold_dirs)]
        self.models = [model for model, *_ in loaded]
        _, dcfg, self.prec, self.inputs = loaded[0]
        seen = {(tuple(d["input_size"]), tuple(d["mean"]), tuple(d["std"]), p.describe()) for _, d, p, _ in loaded}
        if len(seen) > 1:  # one loader and one input pipe feed them all
            raise ValueError(f"the folds' eval transforms or precisions differ: {sorted(seen)}")
        size = dcfg["input_size"][-1]
        self.transform = eval_transform(size, dcfg["mean"], dcfg["std"])
        self.cache = image_cache(cfg, size, store=store_cache)  # a --cache run's images, shrunk as in training
        self.batch_size, self.workers, self.tta = cfg.batch_size * 2, num_workers(cfg), cfg.tta
        self.views = n_views(cfg.tta)

    def predict(self, paths, crops=None, desc: str = "predict") -> np.ndarray:
        """(N, K) probabilities of whole images, or of ``crops`` (one box per path, None: the whole image) of
        them; a painting's rows one after another are decoded once (``PaintingViews``). Several models: their mean.

        ``desc`` names the phase; the progress line adds the count and the TTA views.
        """
        each = self.predict_each(paths, crops, desc)
        return each[0] if len(each) == 1 else merge(each, "mean")

    def predict_each(self, paths, crops=None, desc: str = "predict") -> np.ndarray:
        """(M, N, K): ``predict``'s rows for each of the M models, from one pass."""
        paths = list(paths)
        what = "images" if crops is None else "crops" if None not in crops else "images and crops"
        models = f" x {len(self.models)} models" if len(self.models) > 1 else ""
        desc = f"{desc}: {len(paths):,} {what} x {self.views} views{models}"
        rows = distributed.my_rows(len(paths))  # under torchrun: this rank's block, all of them gathered after
        data = ImageDataset(paths[rows], None, self.transform, cache=self.cache,
                            crops=None if crops is None else list(crops)[rows], reuse_decoded=crops is not None)
        loader = make_loader(data, self.batch_size, train=False, num_workers=self.workers,
                             pin_memory=self.prec.device.type == "cuda")
        each = predict_probs_each(self.models, loader, self.prec, self.inputs, self.tta, desc=desc)
        return np.stack([distributed.gather_rows(e, len(paths)) for e in each])


