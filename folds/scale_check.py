"""Do the test images look like the crops the default recipe trains for?

The default (``--crop test-scale``, checkpoints chosen on validation crops) is made for Dacon's test set:
half-width, half-height crops of unseen paintings, a quarter of a train painting's area. Another task in the
same CSV layout (a Kaggle competition, converted as the README shows) usually tests on whole images, and
the default would then train on quarter-area crops and choose its checkpoints on them without a word. The
image sizes tell the two apart from the files' headers alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = 200  # images of each set whose headers are read: enough for a median, a second or less
# A half-width, half-height crop has 25% of the painting's area; a whole image about 100%. Between them:
WHOLE_AREA_SHARE = 0.6


def median_area(paths, n: int = SAMPLE, seed: int = 0) -> float | None:
    """The median pixel count of up to ``n`` of ``paths`` (a seeded sample; headers only, no decoding)."""
    paths = list(paths)
    if not paths:
        return None
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    areas = []
    # a header is not a decompression bomb: read the size of an image over --max-image-pixels too (a build
    # reads headers before it replays its runs' limit; the decode check keeps the limit for decoding)
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        for i in pick:
            try:
                with Image.open(paths[i]) as im:
                    areas.append(im.size[0] * im.size[1])
            except OSError:  # the decode check names unreadable files; a share needs none of them
                continue
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return float(np.median(areas)) if areas else None


def share_of_train_area(train_paths, test_paths) -> float | None:
    """The test images' median area over the train images' (about 0.25 for Dacon's crops); None unreadable."""
    train, test = median_area(train_paths), median_area(test_paths)
    return test / train if train and test else None


def data_area_share(data_dir) -> float | None:
    """``share_of_train_area`` of a data folder's train.csv and test.csv; None where they cannot be read."""
    import pandas as pd

    try:
        train, test = (pd.read_csv(Path(data_dir) / f"{part}.csv", dtype=str, keep_default_na=False,
                                   usecols=["img_path"])["img_path"] for part in ("train", "test"))
    except (OSError, ValueError):
        return None
    return share_of_train_area([Path(data_dir) / p for p in train], [Path(data_dir) / p for p in test])


def looks_whole(share: float | None) -> bool:
    return share is not None and share >= WHOLE_AREA_SHARE


def whole_test_warning(crop: str, ds) -> str | None:
    """A warning when the recipe trains on test-scale crops but the test images look whole (their median area
    over the train images', ``ds.test_area_share``: its headers are read only for that recipe), else None."""
    if crop != "test-scale":
        return None
    share = ds.test_area_share
    if not looks_whole(share):
        return None
    return (f"the test images are about as large as the train images (their median area is {share:.0%} of a "
            "train image's, where a half-width, half-height crop has 25%): they look like whole images, not crops of "
            "unseen paintings as in Dacon's task. The default trains on crops of about a quarter of each image and "
            "chooses its checkpoints on such crops (--crop test-scale, --monitor crop-f1); for whole test images "
            "add --crop whole (it follows the whole-image F1), and --val-crops 0 --crop-oof 0 to skip scoring the "
            "validation images as crops.")
