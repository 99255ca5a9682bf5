"""Train paintings that appear twice, and those filed under two artists.

    python benchmarks/duplicates.py ../shared/data/wikiart50
    python benchmarks/duplicates.py data --corrections fixes.csv --out /tmp/pairs.csv   # after your fixes

Each train image becomes a small grey thumbnail, centred and scaled to unit norm; two images whose
thumbnails correlate at ``--threshold`` or above are listed as one painting. On WikiArt-50, of the 28 pairs
at 0.95, 27 were one painting by eye (two photographs of it, or one cropped a little) and one was two
versions of a portrait; below that, paintings of one motif begin to match. A pair under two artists is
label noise: one of the two labels is wrong, and an ``id,artist`` file passed to ``folds/run.py
--corrections`` fixes it once you know which. A pair under one artist usually sits in two folds, the
model learning one copy and being scored on the other; the split does not group them, since whether the
test's paintings have copies in train is not known.
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from common import write_csv  # noqa: E402
from common.atomic import check_writable_folder  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.machine import usable_cores  # noqa: E402
from folds.data import load_dataset, read_rgb  # noqa: E402

SIDE = 24  # thumbnail side: the composition, not the brushwork or the photograph's grain


def thumbnail(path) -> np.ndarray:
    """A unit-norm, zero-mean grey thumbnail. ``read_rgb`` decodes a JPEG at a reduced scale (large
    paintings stay cheap), takes any image mode, and names a file it cannot decode."""
    rgb = Image.fromarray(read_rgb(path, max_side=2 * SIDE))
    a = np.asarray(rgb.convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32).ravel()
    a -= a.mean()
    return a / max(float(np.linalg.norm(a)), 1e-6)  # a blank image stays zero: it matches nothing


def similar_pairs(x: np.ndarray, threshold: float, chunk: int = 2048) -> list[tuple[int, int, float]]:
    """Index pairs (i < j) whose rows of ``x`` correlate at ``threshold`` or above, in row chunks."""
    pairs = []
    for start in range(0, len(x), chunk):
        sim = x[start:start + chunk] @ x.T
        i, j = np.nonzero(sim >= threshold)
        keep = j > i + start
        pairs += [(int(a + start), int(b), float(sim[a, b])) for a, b in zip(i[keep], j[keep])]
    return pairs


def find_duplicates(data_dir, threshold: float = 0.95, corrections=None) -> pd.DataFrame:
    """One row per pair of train images that look like one painting: ids, artists, similarity; the pairs
    under two artists first."""
    train = load_dataset(data_dir, corrections, check_images=False).train
    with ThreadPoolExecutor(usable_cores()) as pool:  # PIL releases the GIL while it decodes
        x = np.stack(list(pool.map(thumbnail, train["path"])))
    rows = [{"id_a": train["id"].iat[i], "artist_a": train["artist"].iat[i], "id_b": train["id"].iat[j],
             "artist_b": train["artist"].iat[j], "similarity": round(s, 4)} for i, j, s in similar_pairs(x, threshold)]
    df = pd.DataFrame(rows, columns=["id_a", "artist_a", "id_b", "artist_b", "similarity"])
    df["two_artists"] = df["artist_a"] != df["artist_b"]
    return df.sort_values(["two_artists", "similarity"], ascending=False, ignore_index=True)


@entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_dir", help="a Dacon-layout data folder (train.csv and the images)")
    p.add_argument("--threshold", type=float, default=0.95, help="thumbnail correlation that counts as one painting")
    p.add_argument("--corrections", help="an id,artist file applied first, as folds/run.py --corrections does")
    p.add_argument("--out", help="also write the pairs to this CSV")
    args = p.parse_args(argv)
    if args.out:
        check_writable_folder(Path(args.out).parent, "--out")
    df = find_duplicates(args.data_dir, args.threshold, args.corrections)
    n = len(pd.concat([df["id_a"], df["id_b"]]).unique())
    print(f"{len(df)} pairs of train images look like one painting (thumbnail correlation >= {args.threshold}), "
          f"{n} images in all; {int(df['two_artists'].sum())} pairs are filed under two artists.")
    if len(df):
        print(df.to_string(index=False))
    if args.out:
        write_csv(args.out, df)
        print(f"pairs: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
