"""A built-in synthetic "painters" dataset in Dacon format, generated deterministically.

Six painters differ in palette, stroke direction and grain. Train holds whole paintings
of varied sizes (some greyscale, one palette-mode, one RGBA, one CMYK, to exercise the
RGB conversion); test holds half-width, half-height crops of other paintings, as Dacon's.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from common import write_csv, write_text

VERSION = "demo-v1"
PAINTERS = {  # name: (palette RGB triplets, stroke angle in degrees, grain in px)
    "Azure Stroke": ([(20, 60, 160), (90, 150, 230), (230, 240, 250)], 0, 3),
    "Ochre Diagonal": ([(150, 100, 30), (220, 170, 60), (250, 230, 170)], 45, 6),
    "Crimson Vertical": ([(120, 10, 20), (210, 50, 50), (250, 190, 170)], 90, 4),
    "Verdant Stipple": ([(20, 80, 30), (80, 160, 70), (200, 230, 150)], 135, 2),
    "Violet Sweep": ([(60, 20, 90), (140, 70, 170), (220, 190, 240)], 20, 8),
    "Umber Grid": ([(50, 35, 20), (120, 90, 60), (200, 180, 150)], 160, 5),
}
TRAIN_COUNTS = (36, 28, 22, 18, 14, 10)  # imbalanced, like Dacon
TEST_PAINTINGS = 6  # per painter
CROPS_PER_TEST_PAINTING = 2


def paint(rng: np.random.Generator, palette, angle: float, grain: int, h: int, w: int) -> np.ndarray:
    """One painting: grain-sized noise smeared along the stroke angle, mapped onto a palette."""
    import cv2

    small = rng.random((h // grain + 2, w // grain + 2))
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST if grain > 4 else cv2.INTER_LINEAR)
    a = math.radians(angle + rng.normal(0, 6))
    acc = np.zeros_like(field)
    steps = 14
    for t in range(-steps // 2, steps // 2):
        acc += np.roll(field, (round(t * math.sin(a)), round(t * math.cos(a))), axis=(0, 1))
    f = acc / steps
    f = (f - f.min()) / (np.ptp(f) + 1e-9)
    cols = np.asarray(palette, dtype=np.float64) + rng.normal(0, 14, (3, 3))
    pos = f * 2.0
    lo = np.clip(pos.astype(int), 0, 1)
    frac = (pos - lo)[..., None]
    img = cols[lo] * (1 - frac) + cols[lo + 1] * frac
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, mode: str) -> str:
    im = Image.fromarray(arr, "RGB")
    if mode == "L":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        path = path.with_suffix(".png")
    elif mode == "RGBA":
        im = im.convert("RGBA")
        path = path.with_suffix(".png")
    elif mode == "CMYK":
        im = im.convert("CMYK")
    im.save(path, quality=92) if path.suffix == ".jpg" else im.save(path)
    return path.name


def make_demo_dataset(root, seed: int = 0) -> Path:
    """Write the demo dataset to ``root`` (skipped when an identical one is there).

    >>> make_demo_dataset("runs/demo-data")  # doctest: +SKIP
    PosixPath('runs/demo-data')
    """
    root = Path(root)
    if (root / "VERSION").is_file() and (root / "VERSION").read_text().strip() == f"{VERSION} seed={seed}":
        return root
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_rows, test_rows, labels = [], [], []
    odd_modes = iter(["P", "RGBA", "CMYK"])
    for p, (name, (palette, angle, grain)) in enumerate(PAINTERS.items()):
        for k in range(TRAIN_COUNTS[p]):
            h, w = (int(v) for v in rng.integers(96, 176, size=2))
            arr = paint(rng, palette, angle, grain, h, w)
            mode = "L" if k % 9 == 4 else ("RGB" if k != 1 else next(odd_modes, "RGB"))
            fname = _save(arr, root / "train" / f"{len(train_rows):04d}.jpg", mode)
            train_rows.append((str(len(train_rows)), f"./train/{fname}", name))
        for _ in range(TEST_PAINTINGS):
            h, w = (int(v) for v in rng.integers(112, 192, size=2))
            arr = paint(rng, palette, angle, grain, h, w)
            for _ in range(CROPS_PER_TEST_PAINTING):
                ch, cw = h // 2, w // 2
                y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
                tid = f"TEST_{len(test_rows):05d}"
                _save(arr[y:y + ch, x:x + cw], root / "test" / f"{tid}.jpg", "RGB")
                test_rows.append((tid, f"./test/{tid}.jpg"))
                labels.append((tid, name))
    order = rng.permutation(len(test_rows))  # interleave painters, as a real test set is
    test = pd.DataFrame([test_rows[i] for i in order], columns=["id", "img_path"])
    write_csv(root / "train.csv", pd.DataFrame(train_rows, columns=["id", "img_path", "artist"]))
    write_csv(root / "test.csv", test)
    write_csv(root / "sample_submission.csv", test[["id"]].assign(artist=next(iter(PAINTERS))))
    write_csv(root / "test_labels.csv", pd.DataFrame([labels[i] for i in order], columns=["id", "artist"]))
    write_text(root / "VERSION", f"{VERSION} seed={seed}\n")
    return root
