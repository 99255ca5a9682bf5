"""A pre-resized image cache: decode each image once, keep a copy at most ``max_side`` pixels.

Real Dacon paintings are around 1000 px; training reads them at 288. Decoding a large JPEG
for every sample keeps the GPU waiting. The cache stores each image as an uncompressed
``.npy`` (no decode at all), shrunk so its longer side is at most twice the input size:
test-scale crops (half the side) then still have about the model's resolution.
Files are keyed by path, size, mtime and ``max_side``, written atomically, and shared by
DataLoader workers, folds, runs and processes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from common import atomic_write
from folds.images import read_rgb


class ImageCache:
    """``root`` None: the same shrunk images, made in memory and never stored (``ensemble/predict.py``: an
    exported run on a read-only Kaggle dataset sees its images as its folds did)."""

    def __init__(self, root, max_side: int):
        self.root = None if root is None else Path(root) / f"max{int(max_side)}"
        self.max_side = int(max_side)

    def key(self, path) -> Path:
        st = os.stat(path)
        h = hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        return self.root / h[:2] / f"{h}.npy"

    def get(self, path) -> np.ndarray:
        if self.root is None:
            return shrink(read_rgb(path, max_side=self.max_side), self.max_side)
        cached = self.key(path)
        try:
            return np.load(cached)
        except (FileNotFoundError, ValueError, EOFError):
            pass
        img = shrink(read_rgb(path, max_side=self.max_side), self.max_side)
        with atomic_write(cached, "wb") as f:
            np.save(f, img)
        return img

    def fill(self, paths, workers: int = 0) -> None:
        """Decode everything up front (in parallel threads: PIL and cv2 release the GIL)."""
        from concurrent.futures import ThreadPoolExecutor

        todo = [p for p in paths if not self.key(p).is_file()]
        if workers and len(todo) > 1:
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(self.get, todo))
        else:
            for p in todo:
                self.get(p)


def shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def cache_root(cfg) -> Path:
    """The folder of the image cache and of the decode check's record: ``--cache-dir``, or ``<runs_dir>/cache``."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.runs_dir) / "cache"


def image_cache(cfg, size: int, store: bool = True) -> ImageCache | None:
    """The shared on-disk cache for this input size (at most twice the size), or None without --cache.
    ``store=False``: the same images, shrunk in memory only (a run's model sees what it was trained on)."""
    return ImageCache(cache_root(cfg) if store else None, 2 * size) if cfg.cache else None
