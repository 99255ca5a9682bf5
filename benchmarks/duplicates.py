"""Train paintings that appear twice, those filed under two artists, and test crops cut from a train painting.

    python benchmarks/duplicates.py ../shared/data/wikiart50
    python benchmarks/duplicates.py data --corrections fixes.csv --out /tmp/pairs.csv   # after your fixes
    python benchmarks/duplicates.py data --groups-out groups.csv   # copies share a fold: folds/run.py --groups
    python benchmarks/duplicates.py data --test --test-out /tmp/copies.csv              # test crops seen in train
    python benchmarks/duplicates.py data --calibrate                                    # what strangers score

Each train image becomes a small grey thumbnail, centred and scaled to unit norm; two images whose
thumbnails correlate at ``--threshold`` or above are listed as one painting. On WikiArt-50, of the 28 pairs
at 0.95, 27 were one painting by eye (two photographs of it, or one cropped a little) and one was two
versions of a portrait; below that, paintings of one motif begin to match. A pair under two artists is
label noise: one of the two labels is wrong, and an ``id,artist`` file passed to ``folds/run.py
--corrections`` fixes it once you know which. A pair under one artist usually sits in two folds, the
model learning one copy and being scored on the other. ``--groups-out`` writes the copies as groups (each
pair's images, joined through shared images) for ``folds/run.py --groups``, which keeps a group in one fold.
Whether that makes the OOF more like the test depends on the test: if the test's paintings have copies in
train as often as train's own (``--test`` below; on WikiArt-50 they do), the OOF meets copies as the test
does, and the default split, which does not group them, is the like-for-like one.

``--test`` answers that: it looks for each test crop (about half the width and half the height of its
painting) inside every train painting. A crop whose painting has a copy in train was, in effect, seen in
training: the test score of such crops overstates what the model does on an unseen painting, and the crop
OOF shares that gain only as far as train holds copies of its own paintings. The search is in two steps.
Each painting is squashed to ``COARSE`` px square and each crop to half that (squashing both by the
painting's aspect keeps a half-size crop at its scale), and every window of the painting is correlated with
the crop; the ``CANDIDATES`` best paintings per crop are then checked at ``FINE`` px, high-passed (brush
strokes and edges, not the palette), with the crop at a few fractions of the painting's size, since "about
half" varies and a copy may be framed a little differently. ``--calibrate`` runs the same search for one
seeded half-size crop of each train painting against the other train paintings: the scores of paintings
without a copy show how high a stranger scores on your data, and so where ``--test-threshold`` belongs.
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
from scipy.ndimage import gaussian_filter  # noqa: E402

from common import write_csv  # noqa: E402
from common.atomic import check_writable_folder  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.machine import usable_cores  # noqa: E402
from folds.data import load_dataset  # noqa: E402
from folds.images import read_rgb  # noqa: E402

SIDE = 24  # thumbnail side: the composition, not the brushwork or the photograph's grain
COARSE = 24  # painting side for the crop search's first step; a crop is searched at half of it
FINE = 128  # painting side for the check of each candidate: brush strokes show
CANDIDATES = 16  # paintings checked per crop; on WikiArt-50, 24 found 7% more copies than 8, for 3x the checks
FRACTIONS = (0.45, 0.5, 0.55)  # a test crop's width and height as fractions of its painting's ("about half")
HIGH_PASS = 2.0  # px at FINE: what a Gaussian of this sigma keeps is the palette, not the painting
TEST_THRESHOLD = 0.5  # best check correlation that counts as a copy (benchmarks/RESULTS.md: --calibrate)
MIN_TEXTURE = 0.5  # grey levels (std) of a high-passed crop: a blank one has nothing to match


def thumbnail(path) -> np.ndarray:
    """A unit-norm, zero-mean grey thumbnail. ``read_rgb`` decodes a JPEG at a reduced scale (large
    paintings stay cheap), takes any image mode, and names a file it cannot decode."""
    rgb = Image.fromarray(read_rgb(path, max_side=2 * SIDE))
    return _unit(np.asarray(rgb.convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32).ravel())


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


def copy_groups(pairs: pd.DataFrame) -> pd.DataFrame:
    """``id,group`` for every image in a pair: the images joined by pairs, named after their first id."""
    parent: dict[str, str] = {}

    def root(i: str) -> str:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for a, b in zip(pairs["id_a"], pairs["id_b"]):
        parent[root(a)] = root(b)
    members = sorted(parent, key=lambda i: (len(i), i))  # numeric ids in their order
    first = {}
    for i in members:
        first.setdefault(root(i), i)
    return pd.DataFrame({"id": members, "group": [f"copies-of-{first[root(i)]}" for i in members]})


def painting_views(path) -> tuple[np.ndarray, np.ndarray]:
    """A train painting squashed to ``COARSE`` px square (grey) for the search, and to ``FINE`` px square,
    high-passed, for the check."""
    return _painting_views(Image.fromarray(read_rgb(path, max_side=2 * FINE)).convert("L"))


def _painting_views(grey: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    coarse = np.asarray(grey.resize((COARSE, COARSE), Image.BILINEAR), np.float32)
    return coarse, high_pass(grey.resize((FINE, FINE), Image.BILINEAR))


def crop_views(path) -> tuple[np.ndarray, Image.Image]:
    """A test crop at half the search's side, and its grey image for the check (``templates``)."""
    return _crop_views(Image.fromarray(read_rgb(path, max_side=FINE)).convert("L"))


def _crop_views(grey: Image.Image) -> tuple[np.ndarray, Image.Image]:
    coarse = np.asarray(grey.resize((COARSE // 2, COARSE // 2), Image.BILINEAR), np.float32)
    return coarse, grey


def templates(grey: Image.Image) -> list[np.ndarray]:
    """The crop at each pair of ``FRACTIONS`` of the check's side, high-passed. Made in the check, one crop at
    a time: kept for every crop they would take ~150 KB each (1.9 GB for WikiArt-50's test)."""
    return [high_pass(grey.resize((round(FINE * fx), round(FINE * fy)), Image.BILINEAR))
            for fx in FRACTIONS for fy in FRACTIONS]


def high_pass(grey: Image.Image) -> np.ndarray:
    a = np.asarray(grey, np.float32)
    return a - gaussian_filter(a, HIGH_PASS)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(-1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-3)


def candidate_paintings(paintings: np.ndarray, crops: np.ndarray, k: int = CANDIDATES,
                        exclude: np.ndarray | None = None) -> np.ndarray:
    """For each crop (``COARSE // 2`` square), the ``k`` paintings (``COARSE`` square) holding the window that
    correlates best with it; ``exclude[i]``: a painting crop ``i`` may not pick (its own)."""
    side = COARSE // 2
    windows = np.lib.stride_tricks.sliding_window_view(paintings, (side, side), axis=(1, 2))
    windows = _unit(windows.reshape(len(paintings), -1, side * side))  # (paintings, windows, pixels)
    flat = windows.reshape(-1, side * side)
    q = _unit(crops.reshape(len(crops), -1))
    k = min(k, len(paintings) - (exclude is not None))
    out = np.empty((len(q), k), np.int64)
    chunk = max(1, 2 ** 27 // len(flat))  # crops at a time: their product with every window stays near 512 MB
    for s in range(0, len(q), chunk):
        best = (q[s:s + chunk] @ flat.T).reshape(len(q[s:s + chunk]), len(paintings), -1).max(-1)
        if exclude is not None:
            best[np.arange(len(best)), exclude[s:s + chunk]] = -np.inf
        top = np.argpartition(-best, k - 1, axis=1)[:, :k]
        out[s:s + chunk] = np.take_along_axis(top, np.argsort(-np.take_along_axis(best, top, 1), 1), 1)
    return out


def best_match(painting: np.ndarray, templates: list[np.ndarray]) -> float:
    """The highest normalised correlation of any template at any place inside the painting; -1 if every
    template is flat (a blank crop matches nothing)."""
    import cv2

    scores = [float(cv2.matchTemplate(painting, t, cv2.TM_CCOEFF_NORMED).max())
              for t in templates if t.std() >= MIN_TEXTURE]
    return max(scores, default=-1.0)


def search(paintings: list, crops: list, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each crop's best painting (index) and its check score; ``paintings`` from ``painting_views``, ``crops``
    from ``crop_views``."""
    cand = candidate_paintings(np.stack([c for c, _ in paintings]), np.stack([c for c, _ in crops]),
                               exclude=exclude)

    def check(i: int) -> list[float]:
        mine = templates(crops[i][1])
        return [best_match(paintings[j][1], mine) for j in cand[i]]

    with ThreadPoolExecutor(usable_cores()) as pool:  # OpenCV releases the GIL while it matches
        scores = np.array(list(pool.map(check, range(len(crops)))), np.float32).reshape(len(crops), -1)
    pick = scores.argmax(1)
    return cand[np.arange(len(crops)), pick], scores.max(1)


def find_test_copies(data_dir, threshold: float = TEST_THRESHOLD, corrections=None) -> pd.DataFrame:
    """One row per test crop that looks cut from a train painting: test id, train id, its artist, score;
    best first."""
    ds = load_dataset(data_dir, corrections, check_images=False)
    with ThreadPoolExecutor(usable_cores()) as pool:
        paintings = list(pool.map(painting_views, ds.train["path"]))
        crops = list(pool.map(crop_views, ds.test["path"]))
    j, score = search(paintings, crops)
    df = pd.DataFrame({"test_id": ds.test["id"].to_numpy(), "train_id": ds.train["id"].to_numpy()[j],
                       "artist": ds.train["artist"].to_numpy()[j], "score": score.round(4)})
    return df[df["score"] >= threshold].sort_values("score", ascending=False, ignore_index=True)


def calibrate(data_dir, pairs: pd.DataFrame, corrections=None, seed: int = 0) -> pd.DataFrame:
    """One seeded half-size crop (each side a fraction in ``FRACTIONS``' range) of every train painting,
    searched among the other train paintings: each painting's best match and score, whether the two share
    an artist, and whether it has a copy in train (in ``pairs``, from ``find_duplicates``)."""
    ds = load_dataset(data_dir, corrections, check_images=False)
    rng = np.random.default_rng(seed)
    cuts = [(rng.uniform(min(FRACTIONS), max(FRACTIONS), 2), rng.random(2)) for _ in range(len(ds.train))]

    def views(i):
        grey = Image.fromarray(read_rgb(ds.train["path"].iat[i], max_side=2 * FINE)).convert("L")
        (fx, fy), (ux, uy) = cuts[i]
        w, h = max(1, round(grey.width * fx)), max(1, round(grey.height * fy))
        left, top = round(ux * (grey.width - w)), round(uy * (grey.height - h))
        return _painting_views(grey), _crop_views(grey.crop((left, top, left + w, top + h)))

    with ThreadPoolExecutor(usable_cores()) as pool:
        both = list(pool.map(views, range(len(ds.train))))
    j, score = search([p for p, _ in both], [c for _, c in both], exclude=np.arange(len(both)))
    copied = set(pairs["id_a"]) | set(pairs["id_b"])
    artist = ds.train["artist"].to_numpy()
    return pd.DataFrame({"id": ds.train["id"].to_numpy(), "best_id": ds.train["id"].to_numpy()[j], "score": score,
                         "same_artist": artist == artist[j], "has_copy": ds.train["id"].isin(copied).to_numpy()})


def print_calibration(df: pd.DataFrame, threshold: float) -> None:
    strangers = df.loc[~df["has_copy"], "score"]
    print(f"A seeded half-size crop of each of {len(df)} train paintings, searched among the others:")
    print(f"- {len(strangers)} paintings without a copy in train: best score "
          + ", ".join(f"{name} {strangers.quantile(q):.3f}" for name, q in
                      (("median", 0.5), ("99th percentile", 0.99), ("99.9th", 0.999)))
          + f", max {strangers.max():.3f}; {int((strangers >= threshold).sum())} at or above {threshold}.")
    above = df[~df["has_copy"] & (df["score"] >= threshold)]
    low = df[~df["has_copy"] & (df["score"] < threshold)]
    if len(above) and len(low):  # a stranger matches an artist by chance; a copy the thumbnails missed, its own
        print(f"  Of those at or above, {above['same_artist'].mean():.0%} share their match's artist "
              f"({low['same_artist'].mean():.0%} of those below): a share far above chance means copies the "
              "thumbnails missed (another framing), not strangers.")
    copies = df[df["has_copy"]]
    if len(copies):
        print(f"- {len(copies)} paintings with a copy (a pair at the thumbnail threshold): "
              f"{int((copies['score'] >= threshold).sum())} at or above {threshold}, "
              f"median {copies['score'].median():.3f}.")


@entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data_dir", help="a Dacon-layout data folder (train.csv and the images)")
    p.add_argument("--threshold", type=float, default=0.95, help="thumbnail correlation that counts as one painting")
    p.add_argument("--corrections", help="an id,artist file applied first, as folds/run.py --corrections does")
    p.add_argument("--out", help="also write the pairs to this CSV")
    p.add_argument("--groups-out", help="write the pairs' images as id,group for folds/run.py --groups")
    p.add_argument("--test", action="store_true", help="also list the test crops cut from a train painting")
    p.add_argument("--test-threshold", type=float, default=TEST_THRESHOLD,
                   help="check correlation that counts a test crop as cut from a train painting")
    p.add_argument("--test-out", help="write the test crops found by --test to this CSV")
    p.add_argument("--calibrate", action="store_true",
                   help="search one half-size crop of each train painting among the others: how high strangers score")
    args = p.parse_args(argv)
    for flag, path in (("--out", args.out), ("--groups-out", args.groups_out), ("--test-out", args.test_out)):
        if path:
            check_writable_folder(Path(path).parent, flag)
    if args.test_out and not args.test:
        raise UserError("--test-out needs --test: the test crops are searched only with --test.")
    df = find_duplicates(args.data_dir, args.threshold, args.corrections)
    n = len(pd.concat([df["id_a"], df["id_b"]]).unique())
    print(f"{len(df)} pairs of train images look like one painting (thumbnail correlation >= {args.threshold}), "
          f"{n} images in all; {int(df['two_artists'].sum())} pairs are filed under two artists.")
    show(df, args.out, "pairs")
    if args.groups_out:
        groups = copy_groups(df)
        write_csv(args.groups_out, groups)
        print(f"groups: {args.groups_out} ({len(groups)} images in {groups['group'].nunique()} groups), "
              f"for folds/run.py --groups {args.groups_out}: each group in one fold")
    if args.test:
        copies = find_test_copies(args.data_dir, args.test_threshold, args.corrections)
        print(f"\n{len(copies)} test crops look cut from a train painting (check correlation >= "
              f"{args.test_threshold}), from {copies['train_id'].nunique()} train paintings: the model saw them, "
              "and their test score overstates an unseen painting's.")
        show(copies, args.test_out, "test crops")
    if args.calibrate:
        print()
        print_calibration(calibrate(args.data_dir, df, args.corrections), args.test_threshold)
    return 0


def show(df: pd.DataFrame, out: str | None, what: str) -> None:
    """Print the rows, and write them to ``out`` when asked."""
    if len(df):
        print(df.to_string(index=False))
    if out:
        write_csv(out, df)
        print(f"{what}: {out}")


if __name__ == "__main__":
    sys.exit(main())
