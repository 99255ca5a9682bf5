"""Predict probabilities with batched TTA, on whole images or on fixed crops.

The "crop OOF" predicts each validation painting as fixed, seeded half-width, half-height
crops, the shape of Dacon's test images, so OOF scores the model on the test's distribution.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch
from tqdm.auto import tqdm

from ensemble.merge import merge
from ensemble.tta import BatchedTTA
from folds.engine import InputPipe, Precision


def crop_boxes(ids, n_crops: int, seed: int = 0) -> list[tuple[float, float, float, float]]:
    """``n_crops`` half-size boxes per id as (x0, y0, x1, y1) fractions; fixed by (seed, id)."""
    boxes = []
    for i in ids:
        rng = np.random.default_rng([seed, hash_id(i)])
        for _ in range(n_crops):
            x0, y0 = rng.uniform(0, 0.5, size=2)
            boxes.append((float(x0), float(y0), float(x0) + 0.5, float(y0) + 0.5))
    return boxes


def hash_id(i) -> int:
    # Python's hash() is salted per process; this one is stable across runs and machines.
    return zlib.crc32(str(i).encode())


@torch.no_grad()
def predict_probs(model, loader, prec: Precision, inputs: InputPipe, tta: str = "none", merge_mode: str = "mean",
                  desc: str = "predict") -> np.ndarray:
    """(N, K) probabilities: every TTA view of a batch in one forward pass, merged on probabilities."""
    model.eval()
    wrapped = BatchedTTA(model, tta)
    out = []
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        with prec.autocast():
            views = wrapped(inputs(x))
        out.append(merge(views.float().cpu().numpy(), merge_mode))
    return np.concatenate(out).astype(np.float32)
