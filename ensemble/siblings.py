"""Sibling crops: crops cut from one painting, found by the pixels they share.

Two half-width, half-height crops of one painting always overlap: their left edges both lie in
the painting's left half, so they are less than a crop's width apart (the same for the top
edges). Where they overlap they hold the same pixels, at the same scale. So a pair of crops is
scored by the best normalised cross-correlation over every shift that leaves at least
``MIN_OVERLAP`` of a crop overlapping, between grey, high-passed ``SIDE`` px patches of both
at one common scale (one FFT product per pair). A colour histogram finds look-alikes; this
finds the same painting: in WikiArt-50's crop OOF, at the test set's density, 98.7% of the pairs
scoring above 0.7 were siblings (99.7% above 0.8), against 69% of the 4 nearest by colour
(benchmarks/RESULTS.md).

Only each crop's ``CANDIDATES`` nearest crops by colour (``ensemble.neighbours``) are scored, so
the cost grows with the number of crops, not its square. Pairs above a threshold link crops, and
the linked groups (connected components) stand for the paintings: a sibling missed as a
candidate, or one that overlaps too little, still joins through a third crop.

Crops of one painting have about the same size, but each crop is its own file (no common
scale is known), so sizes are compared in steps of ``RATIO``: a pair is scored at the scale that
brings the smaller crop to about ``SIDE`` px, and pairs more than ``LEVELS`` steps apart in size
are not compared (not siblings of "about half-size" crops).
"""
from __future__ import annotations

import math
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ensemble.merge import EPS, merge

SIDE = 32  # patch side: a 112 px crop shrinks about 3.5x; enough texture to tell paintings apart
RATIO = 1.1  # size steps between scale levels
LEVELS = 2  # crops more than 2 steps (about 21%) apart in size are not compared
KEEP = math.ceil(SIDE * RATIO ** (LEVELS + 1))  # kept grey side: room for the largest partner's scale
MIN_OVERLAP = 0.2  # of a patch's area; smaller overlaps correlate by chance too often
MIN_STD = 1.0  # grey levels: flat (blank, single-colour) patches have no texture to match
CANDIDATES = 16  # nearest crops by colour scored per crop
THRESHOLDS = (0.6, 0.7, 0.8)  # the choices of link threshold, chosen on the crop OOF
# where nothing may be chosen on labels (pseudo-labels): the strictest link, 99.7% of its links join
# crops of one painting on WikiArt-50's crop OOF (benchmarks/RESULTS.md)
CONSENSUS_THRESHOLD = max(THRESHOLDS)


def keep_grey(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """What sibling matching keeps of a crop: its grey image with the shorter side at most
    ``KEEP`` px (uint8), and the shorter side it had (its scale)."""
    im = Image.fromarray(rgb).convert("L")
    w, h = im.size
    f = min(1.0, KEEP / min(w, h))
    if f < 1:
        im = im.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
    return np.asarray(im, np.uint8), min(w, h)


def level(side: int) -> int:
    return int(math.floor(math.log(max(side, 1)) / math.log(RATIO)))


def patch(grey: np.ndarray, side: int, lvl: int) -> np.ndarray:
    """The crop at the scale where a ``RATIO ** lvl`` px side becomes ``SIDE`` px: centre
    ``SIDE`` x ``SIDE``, high-passed (brush strokes and edges, not the palette's gradients)."""
    f = SIDE / RATIO ** lvl * side / min(grey.shape)  # from the kept image's pixels
    h, w = grey.shape
    im = Image.fromarray(grey).resize((max(SIDE, round(w * f)), max(SIDE, round(h * f))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - SIDE) // 2, (h - SIDE) // 2
    g = np.asarray(im.crop((left, top, left + SIDE, top + SIDE)), np.float32)
    return g - gaussian_filter(g, 2.0)


def candidate_pairs(neighbours: np.ndarray) -> np.ndarray:
    """(i, j) with i < j for each row and its nearest rows (indices into the same rows), once each."""
    n, k = neighbours.shape
    pairs = np.sort(np.stack([np.repeat(np.arange(n), k), neighbours.ravel()], 1), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(pairs, axis=0)


def overlap_scores(kept: list, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Each pair's best normalised cross-correlation over the shifts with at least ``MIN_OVERLAP``
    overlap; -1 for pairs too far apart in size or with a flat patch. ``kept``: ``keep_grey`` per row."""
    out = np.full(len(pairs), -1.0, np.float32)
    if not len(pairs):
        return out
    lv = np.array([level(side) for _, side in kept])[pairs]  # (pairs, 2)
    comparable = np.abs(lv[:, 0] - lv[:, 1]) <= LEVELS
    scale = lv.min(axis=1)  # the smaller crop sets the scale
    for lvl in np.unique(scale[comparable]):
        rows = np.flatnonzero(comparable & (scale == lvl))
        crops = np.unique(pairs[rows])
        patches = np.stack([patch(kept[c][0], kept[c][1], lvl) for c in crops])
        out[rows] = _ncc(patches, np.searchsorted(crops, pairs[rows]), chunk)
    return out


def _ncc(patches: np.ndarray, pairs: np.ndarray, chunk: int) -> np.ndarray:
    """Zero-padded FFT correlation of each pair, divided by both patches' energy over the overlap
    at each shift (itself a correlation with the overlap's mask)."""
    import torch

    P = 2 * SIDE  # zero padding: no wrap-around between shifts
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a build at the end of a GPU run
    g = torch.from_numpy(patches).to(dev)
    flat = g.flatten(1).std(1) < MIN_STD
    spec = torch.fft.rfft2(g, s=(P, P))
    mask = torch.fft.rfft2(torch.ones(SIDE, SIDE, device=dev), s=(P, P))
    energy = torch.cat([torch.fft.irfft2(torch.fft.rfft2(b * b, s=(P, P)) * mask.conj(), s=(P, P))
                        for b in g.split(chunk)])  # of x over the overlap; in chunks, for the peak memory
    too_small = torch.fft.irfft2(mask * mask.conj(), s=(P, P)) < MIN_OVERLAP * SIDE * SIDE - 0.5
    pr = torch.from_numpy(pairs).to(dev)
    out = torch.empty(len(pairs), device=dev)
    for s in range(0, len(pairs), chunk):
        i, j = pr[s:s + chunk, 0], pr[s:s + chunk, 1]
        r = torch.fft.irfft2(spec[i] * spec[j].conj(), s=(P, P))
        back = torch.roll(torch.flip(energy[j], (1, 2)), (1, 1), (1, 2))  # j's energy at the opposite shift
        r = r * torch.rsqrt((energy[i] * back).clamp_min(1e-3))
        r[:, too_small] = -1
        out[s:s + chunk] = r.flatten(1).amax(1)
    out[flat[pr[:, 0]] | flat[pr[:, 1]]] = -1
    return out.cpu().numpy()


def groups(n: int, pairs: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """A group label per row: rows linked by pairs scoring above ``threshold``, directly or through others."""
    linked = pairs[scores > threshold]
    graph = coo_matrix((np.ones(len(linked)), (linked[:, 0], linked[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def has_sibling(label: np.ndarray) -> np.ndarray:
    """Whether each row's group (``groups``) holds another row."""
    return np.bincount(label)[label] > 1


def _group_totals(values: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group's sum of ``values`` and its number of rows (``label``: ``groups``)."""
    _, inv, count = np.unique(label, return_inverse=True, return_counts=True)
    total = np.zeros((len(count), values.shape[1]))
    np.add.at(total, inv, values)
    return total[inv], count[inv]


def group_consensus(probs: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each row's group's geometric mean of probabilities, its own row included and every row
    weighing the same, renormalised by merge's gmean: one prediction per group."""
    total, count = _group_totals(np.log(np.clip(probs, EPS, 1.0)), label)
    return merge(np.exp(total / count[:, None])[None], "gmean")


def group_mean_of_others(probs: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean of the other rows in its group, and whether it has any (``label``: ``groups``)."""
    total, count = _group_totals(probs, label)
    others = count - 1
    return (total - probs) / np.maximum(others, 1)[:, None], others > 0
