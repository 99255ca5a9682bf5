"""How well the neighbour smoothing's colour histogram finds a crop's sibling crops, at the
test set's density, and whether the test crops look the same way.

    python benchmarks/neighbours.py ../shared/data/wikiart50 --paintings 2534

A pool of ``--paintings`` random train paintings, ``--crops`` crop-OOF boxes each, stands in for
the test set. It prints the share of each crop's 4 nearest crops that are its siblings or of the
same artist. With test_labels.csv it prints the same-artist share among the test crops, and the
median similarity to the nearest crop in both (reported only; nothing is chosen here).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ensemble import neighbours as nb  # noqa: E402
from folds.data import load_dataset  # noqa: E402
from folds.predict import CROP_OOF_SEED, crop_boxes  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--paintings", type=int, default=2534, help="train paintings in the pool (default: 2534, "
                   "WikiArt-50's test paintings)")
    p.add_argument("--crops", type=int, default=5, help="crops per painting (default: 5)")
    p.add_argument("--workers", type=int, default=8)
    a = p.parse_args(argv)
    ds = load_dataset(a.data_dir, check_images=False)
    pick = ds.train.iloc[np.random.default_rng(0).permutation(len(ds.train))[:a.paintings]]
    t = time.time()
    desc = nb.describe(np.repeat(pick["path"].to_numpy(), a.crops),
                       crop_boxes(pick["id"], a.crops, CROP_OOF_SEED), a.workers)
    seconds = time.time() - t
    painting = np.repeat(np.arange(len(pick)), a.crops)
    artist = np.repeat(pick["label"].to_numpy(), a.crops)
    idx, sim = nb.nearest(desc, 4)
    row = {"pool_crops": len(desc), "sibling_at_4": round(float((painting[idx] == painting[:, None]).mean()), 3),
           "same_artist_at_4": round(float((artist[idx] == artist[:, None]).mean()), 3),
           "median_nearest_similarity": round(float(np.median(sim[:, 0])), 3),
           "crops_per_s": round(len(desc) / seconds, 1)}
    if ds.test_labels is not None:
        labels = ds.test_labels.set_index("id").loc[ds.test["id"], "artist"].to_numpy()
        idx, sim = nb.nearest(nb.describe(ds.test["path"], workers=a.workers), 4)
        row.update(test_crops=len(labels),
                   test_same_artist_at_4=round(float((labels[idx] == labels[:, None]).mean()), 3),
                   test_median_nearest_similarity=round(float(np.median(sim[:, 0])), 3))
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
