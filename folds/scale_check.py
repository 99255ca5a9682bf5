"""Do the test images look like the crops the default recipe trains for?

The default (``--crop test-scale``, checkpoints chosen on validation crops) is made for Dacon's test set:
half-width, half-height crops of unseen paintings, a quarter of a train painting's area. Another task in the
same CSV layout (a Kaggle competition, converted as the README shows) usually tests on whole images, and
the default would then train on quarter-area crops and choose its checkpoints on them without a word. The
image sizes tell the two apart from the files' headers alone.
"""
from __future__ import annotations

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
    for i in pick:
        try:
            with Image.open(paths[i]) as im:
                areas.append(im.size[0] * im.size[1])
        except OSError:  # the decode check names unreadable files; a share needs none of them
            continue
    return float(np.median(areas)) if areas else None


def whole_test_warning(crop: str, train_paths, test_paths) -> str | None:
    """A warning when the recipe trains on test-scale crops but the test images look whole, else None."""
    if crop != "test-scale":
        return None
    train, test = median_area(train_paths), median_area(test_paths)
    if not train or not test or test / train < WHOLE_AREA_SHARE:
        return None
    return (f"the test images are about as large as the train images (their median area is {test / train:.0%} of a "
            "train image's, where a half-width, half-height crop has 25%): they look like whole images, not crops of "
            "unseen paintings as in Dacon's task. The default trains on crops of about a quarter of each image and "
            "chooses its checkpoints on such crops (--crop test-scale, --monitor crop-f1); for whole test images "
            "add --crop whole (it follows the whole-image F1).")
