"""Neighbour smoothing: each test crop's probabilities mixed with those of its sibling crops.

Dacon's test set holds several half-size crops of every unseen painting (WikiArt-50: five), and
averaging the predictions of one painting's crops is close to predicting the whole painting.
Two ways of finding a crop's siblings are offered, and the crop OOF chooses:

- its ``k`` nearest crops by colour: crops of one painting share its palette, so a colour
  histogram finds them far better than chance (68% of the 4 nearest on WikiArt-50). Each crop
  becomes ``(1 - w) * p + w * mean(p of its k nearest crops)``;
- the crops it shares pixels with (``ensemble.siblings``): of the colour neighbours, those whose
  overlap correlates above a threshold, joined into groups. Each crop's log-probabilities become
  ``(1 - w) * log p + w * mean(log p of the other crops of its group)``, renormalised (a weighted
  geometric mean); a crop with no sibling found keeps its own.

Neither needs a model or weights. The way, ``k`` or the threshold, and ``w`` are chosen on the
crop OOF, which has the same structure (several crops of each validation painting), in pools of
the test set's size, so the neighbour density matches; off is one of the choices. The OOF score
is honest: the pools are split in two halves, and each half is scored with the choice made on the
other. This assumes the test set has several crops per painting, as Dacon's does. When its crops
look less alike than the OOF's (one crop per painting), ``sibling_check`` turns the colour way
off and says why; the overlap way finds no siblings there, and changes nothing.

``ensemble/build.py`` uses it by default (``--neighbours auto``; ``off`` leaves the soft vote as it
is). On the full WikiArt-50 data (a frozen-feature probe, ``benchmarks/neighbours.py --probe``;
benchmarks/RESULTS.md) the crop OOF chose the overlap groups: honest crop-OOF +0.106, and the
test crops moved by as much (fold mean +0.111), against +0.058 and +0.067 by colour alone.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image

from common.metrics import macro_f1
from ensemble import siblings as sib
from ensemble.merge import EPS, merge
from folds.images import read_rgb
from folds.loader import crop_array

BINS = (16, 4, 4)  # HSV: hue finely, saturation and value coarsely (a palette, not a brightness)
SIDE = 64  # every crop is resized to this before its histogram, so crop size and JPEG noise matter less
GRID_K = (2, 4, 8, 16)
GRID_W = (0.3, 0.5, 0.7, 0.9)  # and off, always a candidate
POOL_SEED = 0


def colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """A crop's HSV histogram, square-rooted (Hellinger), as a unit-sum-of-squares vector."""
    im = Image.fromarray(rgb).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR).convert("HSV")
    hsv = np.asarray(im).reshape(-1, 3).astype(np.int64) * np.array(BINS) // 256
    idx = (hsv[:, 0] * BINS[1] + hsv[:, 1]) * BINS[2] + hsv[:, 2]
    h = np.bincount(idx, minlength=int(np.prod(BINS))).astype(np.float32)
    return np.sqrt(h / h.sum())


def describe(paths, crops=None, workers: int = 8) -> np.ndarray:
    """(N, D) colour descriptors of images, or of ``crops`` of them (one (x0, y0, x1, y1) box per path)."""
    return look(paths, crops, workers)[0]


def look(paths, crops=None, workers: int = 8) -> tuple[np.ndarray, list]:
    """The colour descriptors of images (or of ``crops`` of them), and what sibling matching keeps
    of each (``siblings.keep_grey``). Each image is decoded once, however many of its crops are
    asked for. The last few results are kept: a benchmark builds several runs of one split, whose
    crop OOF and test set are the same images."""
    return _look(tuple(str(p) for p in paths), None if crops is None else tuple(map(tuple, crops)), workers)


@lru_cache(maxsize=4)
def _look(paths: tuple, crops: tuple | None, workers: int) -> tuple[np.ndarray, list]:
    rows_of: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
        rows_of.setdefault(p, []).append(i)

    def one(path):
        # JPEGs decode at a reduced scale that keeps a half-size crop above 2 * SIDE px: about 2x faster on
        # 1000 px paintings, histograms within 0.996 cosine of a full decode (WikiArt-50's are smaller: unchanged)
        img = read_rgb(path, max_side=4 * SIDE)  # the crop OOF's predictions crop the same way (crop_array)
        views = [img if crops is None else crop_array(img, crops[i]) for i in rows_of[path]]
        return [colour_histogram(v) for v in views], [sib.keep_grey(v) for v in views]

    out, kept = np.empty((len(paths), int(np.prod(BINS))), np.float32), [None] * len(paths)
    with ThreadPoolExecutor(max(1, workers)) as ex:  # PIL releases the GIL while it decodes
        for path, (hists, greys) in zip(rows_of, ex.map(one, rows_of)):
            out[rows_of[path]] = hists
            for i, g in zip(rows_of[path], greys):
                kept[i] = g
    out.setflags(write=False)  # shared by later calls
    return out, kept


def nearest(desc: np.ndarray, k: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows (cosine, after centring): (indices, similarities)."""
    d = desc - desc.mean(0)
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    k = min(k, len(d) - 1)
    idx, sim = np.empty((len(d), k), np.int64), np.empty((len(d), k), np.float32)
    for s in range(0, len(d), chunk):
        block = d[s:s + chunk] @ d.T
        block[np.arange(len(block)), np.arange(s, s + len(block))] = -np.inf  # not itself
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(block, top, 1).argsort(axis=1)[:, ::-1]
        idx[s:s + chunk] = np.take_along_axis(top, order, 1)
        sim[s:s + chunk] = np.take_along_axis(block, idx[s:s + chunk], 1)
    return idx, sim


@dataclass
class Looks:
    """What the smoothing knows of a set of crops: each crop's nearest crops by colour (most similar
    first), and the overlap scores of those candidate pairs (``siblings``; none when not searched)."""

    neighbours: np.ndarray
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))
    overlap: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    _groups: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, neighbours, kept=None, pools=None) -> "Looks":
        """``neighbours`` alone, or with the overlap scores of their first ``siblings.CANDIDATES``
        when ``kept`` (``siblings.keep_grey`` per row) is given. ``pools``: row sets that no
        neighbour crosses, scored one at a time (the scoring's memory grows with the crops at once)."""
        neighbours = np.asarray(neighbours)
        if kept is None:
            return cls(neighbours)
        pairs = sib.candidate_pairs(neighbours[:, :sib.CANDIDATES])
        overlap = np.empty(len(pairs), np.float32)
        pools = pools or [np.arange(len(neighbours))]
        pool_of = np.zeros(len(neighbours), np.int64)
        for p, rows in enumerate(pools):
            pool_of[rows] = p
        for p, rows in enumerate(pools):
            mine = np.flatnonzero(pool_of[pairs[:, 0]] == p)
            local = np.minimum(np.searchsorted(rows, pairs[mine]), len(rows) - 1)
            if not np.array_equal(rows[local], pairs[mine]):
                raise ValueError("a neighbour crosses the pools")
            overlap[mine] = sib.overlap_scores([kept[r] for r in rows], local)
        return cls(neighbours, pairs, overlap)

    def group(self, threshold: float) -> np.ndarray:
        if threshold not in self._groups:
            self._groups[threshold] = sib.groups(len(self.neighbours), self.pairs, self.overlap, threshold)
        return self._groups[threshold]

    def consensus(self, probs: np.ndarray) -> tuple[np.ndarray, float]:
        """Each crop's probabilities replaced by its overlap group's geometric mean (``siblings.group_consensus``
        at ``siblings.CONSENSUS_THRESHOLD``: nothing chosen on labels), and the share with a sibling found."""
        groups = self.group(sib.CONSENSUS_THRESHOLD)
        return sib.group_consensus(probs, groups), float(sib.has_sibling(groups).mean())

    def subset(self, rows: np.ndarray) -> "Looks":
        """These rows alone, renumbered (the pools never link rows of two halves)."""
        pos = np.full(len(self.neighbours), -1, np.int64)
        pos[rows] = np.arange(len(rows))
        inside = (pos[self.pairs] >= 0).all(axis=1)
        return Looks(pos[self.neighbours[rows]], pos[self.pairs[inside]], self.overlap[inside])


def _as_looks(looks) -> Looks:
    return looks if isinstance(looks, Looks) else Looks(np.asarray(looks))


@dataclass(frozen=True)
class Smoothing:
    """Off, the ``k`` nearest by colour (``threshold`` 0), or the overlap groups above ``threshold``; weight ``w``."""

    k: int = 0
    w: float = 0.0
    threshold: float = 0.0

    @property
    def on(self) -> bool:
        return self.w > 0 and (self.k > 0 or self.threshold > 0)

    def apply(self, probs: np.ndarray, looks) -> np.ndarray:
        """``looks``: a ``Looks``, or each row's nearest rows, most similar first (at least ``k`` columns)."""
        if not self.on:
            return probs
        looks = _as_looks(looks)
        if self.threshold > 0:
            # crops of one painting are separate views of it, so their evidence multiplies: a geometric mean
            # of the group (mean log-probabilities), mixed in by merge's gmean. It beat the arithmetic mean
            # by 0.014 honest crop-OOF on WikiArt-50's probe (benchmarks/RESULTS.md)
            others, found = sib.group_mean_of_others(np.log(np.clip(probs, EPS, 1.0)), looks.group(self.threshold))
            out = np.array(probs, dtype=np.float64, copy=True)
            out[found] = merge(np.stack([probs[found], np.exp(others[found])]), "gmean", weights=[1 - self.w, self.w])
            return out
        return (1 - self.w) * probs + self.w * probs[looks.neighbours[:, :self.k]].mean(axis=1)

    def describe(self) -> str:
        if not self.on:
            return "off"
        if self.threshold > 0:
            return f"overlap siblings above {self.threshold}, w={self.w}"
        return f"k={self.k}, w={self.w}"

    def saved(self) -> dict:
        return {"k": self.k, "w": self.w, "threshold": self.threshold}

    @classmethod
    def from_saved(cls, saved: dict | None) -> "Smoothing":
        if not saved:
            return cls()
        return cls(int(saved["k"]), float(saved["w"]), float(saved.get("threshold", 0.0)))  # older blends: colour


def oof_pools(groups, pool_rows: int, seed: int = POOL_SEED) -> list[np.ndarray]:
    """The OOF rows split into pools of about ``pool_rows`` rows (the test set's size), whole
    paintings to a pool: a crop meets as many look-alikes as a test crop does."""
    paintings = np.unique(groups)
    n_pools = max(1, int(round(len(groups) / max(1, pool_rows))))
    parts = np.array_split(np.random.default_rng(seed).permutation(paintings), n_pools)
    return [np.flatnonzero(np.isin(groups, part)) for part in parts]


def pool_neighbours(desc: np.ndarray, pools: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest rows within each pool, as indices into all rows, and their similarities."""
    k = min(k, min(len(p) for p in pools) - 1)
    idx, sim = np.empty((len(desc), k), np.int64), np.empty((len(desc), k), np.float32)
    for rows in pools:
        i, s = nearest(desc[rows], k)
        idx[rows], sim[rows] = rows[i], s
    return idx, sim


def choose(probs, y, looks, grid_k=GRID_K, grid_w=GRID_W,
           grid_threshold=sib.THRESHOLDS, score=macro_f1) -> tuple[Smoothing, float]:
    """The smoothing with the best ``score`` (the competition metric's) on these rows; off is always a
    candidate, the overlap groups only where ``looks`` has overlap scores."""
    looks = _as_looks(looks)
    best = (score(y, probs), Smoothing())
    candidates = [Smoothing(k, w) for k in grid_k if k <= looks.neighbours.shape[1] for w in grid_w]
    if len(looks.pairs):
        candidates += [Smoothing(0, w, t) for t in grid_threshold for w in grid_w]
    for s in candidates:
        f = score(y, s.apply(probs, looks))
        if f > best[0] + 1e-9:
            best = (f, s)
    return best[1], best[0]


def oof_looks(groups, desc, pool_rows: int, kept=None) -> tuple[Looks, list[np.ndarray], np.ndarray]:
    """The crop OOF's looks within pools of about the test set's size (two pools at least, for the
    honest halves), the pools, and each crop's similarity to its nearest crops."""
    pools = oof_pools(groups, min(pool_rows, len(groups) // 2))
    neighbours, sim = pool_neighbours(desc, pools, max(max(GRID_K), sib.CANDIDATES))
    return Looks.of(neighbours, kept, pools), pools, sim  # candidate pairs never cross pools


def fit_on_oof(probs, y, groups, desc, pool_rows: int, kept=None, score=macro_f1) -> dict:
    """Choose the smoothing on the crop OOF (with overlap siblings when ``kept``, the crops'
    ``siblings.keep_grey``, is given); return the choice, its honest OOF probabilities, the looks
    it chose on, the pools' size, and the median similarity of a crop to its nearest crop and to the nearest crop of
    another painting (what ``sibling_check`` compares a test set with).

    Honest: the pools are split in two halves, each half's rows smoothed with the (k, w) chosen
    on the other half. The final choice is made on all rows, and is off when the honest score
    does not beat the unsmoothed one. When the OOF is too small for pools of at least half the
    test set's size, sparser pools would put more siblings among a crop's k nearest by colour than
    the test will, so the choice would overrate the colour way: then only the overlap groups above
    ``siblings.CONSENSUS_THRESHOLD`` are candidates (a link between two paintings' crops needs their
    pixels to match: 0.3% of the links in pools of the test's size on WikiArt-50, so a sparser pool
    overrates them far less), and without overlap scores it stays off."""
    looks, pools, sim = oof_looks(groups, desc, pool_rows, kept)
    neighbours = looks.neighbours
    pool_size = int(np.median([len(p) for p in pools]))
    sparse = pool_size < pool_rows / 2
    grid = {"grid_k": (), "grid_threshold": (sib.CONSENSUS_THRESHOLD,)} if sparse else {}
    halves = [np.concatenate(pools[0::2]), np.concatenate(pools[1::2])]
    honest = np.array(probs, dtype=np.float64, copy=True)
    for fit_rows, score_rows in (halves, halves[::-1]):
        s, _ = choose(probs[fit_rows], y[fit_rows], looks.subset(fit_rows), score=score, **grid)
        honest[score_rows] = s.apply(probs, looks)[score_rows]
    chosen, _ = choose(probs, y, looks, score=score, **grid)
    density = (f"the crop OOF has too few crops for pools of the test set's density ({pool_size:,} crops a pool "
               f"against {pool_rows:,} test crops)")
    reason = None
    if sparse and not len(looks.pairs):
        reason = f"{density}, so its choice would overrate the smoothing"
    elif score(y, honest) < score(y, probs):
        reason = "it did not beat the method alone on the honest crop OOF"
    if reason:
        chosen, honest = Smoothing(), np.array(probs, dtype=np.float64, copy=True)
    elif sparse:  # on, but say why the colour way was not a candidate
        reason = (f"only the overlap groups above {sib.CONSENSUS_THRESHOLD} were candidates: {density}, which would "
                  "overrate the colour way")
    stranger = groups[neighbours] != groups[:, None]  # the nearest crop of another painting
    return {"smoothing": chosen, "honest_oof": honest, "pool_size": pool_size, "reason": reason, "looks": looks,
            "oof_sibling": float(np.median(sim[:, 0])),
            "oof_stranger": float(np.median(sim[np.arange(len(sim)), stranger.argmax(1)][stranger.any(1)]))}


def sibling_check(oof_sibling: float, oof_stranger: float, test_nearest: np.ndarray) -> str | None:
    """A warning when the test crops' nearest look-alikes are no closer than the OOF's nearest
    crops of *other* paintings: then the test set likely holds one crop per painting, and the
    choice made on the OOF (where every crop has siblings) would overrate the smoothing.

    ``oof_sibling``, ``oof_stranger``: ``fit_on_oof``'s medians; ``test_nearest``: each test
    crop's similarity to its nearest other test crop."""
    test = float(np.median(test_nearest))
    if test < (oof_sibling + oof_stranger) / 2:
        return (f"the test crops look less alike than the crop OOF's (median similarity to the nearest crop "
                f"{test:.2f}; in the OOF {oof_sibling:.2f}, and {oof_stranger:.2f} to another painting's crop): "
                "the test set may not hold several crops per painting, which the smoothing assumes, so it is off.")
    return None


def crop_files(data_dir, oof_frame, test_ids) -> tuple[list, list, list]:
    """Where a run's crop-OOF rows (id, crop) and test ids are: each OOF row's train image and crop
    box (as the crop OOF cut them), and each test crop's image."""
    from folds.data import load_dataset
    from folds.predict import crop_oof_boxes

    ds = load_dataset(data_dir, check_images=False)
    train_path = dict(zip(ds.train["id"], ds.train["path"]))
    test_path = dict(zip(ds.test["id"], ds.test["path"]))
    ids = oof_frame["id"].to_numpy()
    return ([train_path[i] for i in ids], crop_oof_boxes(ids, oof_frame["crop"]), [test_path[i] for i in test_ids])


def for_runs(data_dir, oof_frame, probs, y, test_ids, test_probs, workers: int = 8, score=macro_f1) -> dict:
    """Choose the smoothing on a run's crop OOF (rows: id, crop) by ``score`` (the competition metric's) and
    apply it to the test crops.

    Returns the smoothing applied to the test (off when the test crops do not look like several
    per painting), the one chosen on the OOF, the honest OOF probabilities, the OOF's looks, the
    smoothed test probabilities, what a saved blend keeps, and notes."""
    oof_paths, boxes, test_paths = crop_files(data_dir, oof_frame, test_ids)
    oof_desc, kept = look(oof_paths, boxes, workers)
    ids = oof_frame["id"].to_numpy()
    fit = fit_on_oof(probs, y, ids, oof_desc, pool_rows=len(test_ids), kept=kept, score=score)
    saved = {**fit["smoothing"].saved(), "oof_sibling": fit["oof_sibling"], "oof_stranger": fit["oof_stranger"]}
    test, notes = smooth_test(test_paths, test_probs, saved, workers)
    notes.insert(0, f"neighbour smoothing chosen on the crop OOF (pools of {fit['pool_size']:,} crops; the test "
                    f"set has {len(test_ids):,}): {fit['smoothing'].describe()}"
                    + (f": {fit['reason']}" if fit["reason"] else ""))
    return {"smoothing": fit["smoothing"] if test is not test_probs else Smoothing(), "saved": saved,
            "chosen_on_oof": fit["smoothing"], "oof_looks": fit["looks"],
            "honest_oof": fit["honest_oof"], "test": test, "notes": notes}


def smooth_test(paths, probs, saved: dict | None, workers: int = 8) -> tuple[np.ndarray, list[str]]:
    """A test set's probabilities smoothed as ``saved`` (the choice and the OOF's similarities, from
    ``for_runs``) says. By colour neighbours: unchanged, with a note, when its crops do not look like
    several per painting. By overlap: only crops with a sibling found change, and a note says how many."""
    s = Smoothing.from_saved(saved)
    if not s.on or len(probs) < 2:
        return probs, []
    looks, sim = _test_looks(tuple(str(p) for p in paths), workers, s.threshold > 0)
    if s.threshold > 0:
        found = sib.has_sibling(looks.group(s.threshold))
        return s.apply(probs, looks), [f"overlap siblings found for {found.mean():.0%} of the {len(probs):,} "
                                       "test crops"]
    warning = sibling_check(saved["oof_sibling"], saved["oof_stranger"], sim[:, 0])
    if warning:
        return probs, [warning]
    return s.apply(probs, looks), []


def consensus(paths, probs, workers: int = 8, crops=None) -> tuple[np.ndarray, float]:
    """Each crop's probabilities replaced by the geometric mean of its overlap group's (its own
    included, every crop weighing the same), and the share of crops with a sibling found. The
    crops are images, or ``crops`` (one (x0, y0, x1, y1) box per path) of them.

    Nothing is fitted on labels, so nothing leaks: pseudo-labels use it, where fold k's labels
    must not depend on fold k's validation paintings. On WikiArt-50's probe its test macro-F1
    equals the smoothing chosen on the crop OOF (benchmarks/RESULTS.md)."""
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) < 2:
        return probs, 0.0
    return _test_looks(tuple(str(p) for p in paths), workers, True,
                       None if crops is None else tuple(map(tuple, crops)))[0].consensus(probs)


# Sized for a study: each trial's folds take the consensus of the test crops and of each fold's own
# crop-OOF crops (folds.pseudo), and those looks do not change between trials.
@lru_cache(maxsize=8)
def _test_looks(paths: tuple, workers: int, overlap: bool, crops: tuple | None = None) -> tuple[Looks, np.ndarray]:
    """A test set's neighbours by colour (and their overlap scores), and the nearest one's similarity.
    Kept: a benchmark smooths several methods' and fold models' predictions of the same test set."""
    desc, kept = look(paths, crops, workers)
    neighbours, sim = nearest(desc, max(max(GRID_K), sib.CANDIDATES))
    return Looks.of(neighbours, kept if overlap else None), sim
