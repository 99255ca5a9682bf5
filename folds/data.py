"""Read and validate Dacon-format CSVs, and load images as RGB.

Every problem a user can fix raises :class:`UserError` naming the file and row.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from common import UserError

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ("id", "img_path", "artist")
TEST_COLUMNS = ("id", "img_path")
SUBMISSION_COLUMNS = ("id", "artist")
MAX_LISTED = 5


@dataclass
class Dataset:
    """The validated competition data: train rows, test rows and the label encoding."""

    data_dir: Path
    train: pd.DataFrame  # id, img_path, artist, path (absolute), label (int)
    test: pd.DataFrame  # id, img_path, path
    sample_submission: pd.DataFrame
    classes: list
    test_labels: pd.DataFrame | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def data_hash(self) -> str:
        """Hash of train ids and labels: identical data gives identical splits."""
        h = hashlib.sha256()
        for i, a in zip(self.train["id"].astype(str), self.train["artist"].astype(str)):
            h.update(f"{i}\t{a}\n".encode())
        return h.hexdigest()[:16]


def _rows(idx) -> str:
    """Data rows as the user sees them in an editor (header is line 1)."""
    idx = list(idx)
    shown = ", ".join(str(int(i) + 2) for i in idx[:MAX_LISTED])
    more = f" and {len(idx) - MAX_LISTED} more" if len(idx) > MAX_LISTED else ""
    return f"line {shown}{more}" if len(idx) == 1 else f"lines {shown}{more}"


def read_csv(path: Path, columns) -> pd.DataFrame:
    """Read a CSV as strings and check its columns, emptiness and duplicate ids."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found. Expected Dacon layout: train.csv, test.csv, "
                        "sample_submission.csv and the image folders in --data-dir.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; it needs a header {','.join(columns)} and rows.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot parse as CSV ({e}).") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
                        f"The header must be {','.join(columns)}.")
    if len(df) == 0:
        raise UserError(f"{path}: has a header but no rows.")
    for c in columns:
        blank = df.index[df[c].str.strip() == ""]
        if len(blank):
            raise UserError(f"{path}: empty '{c}' at {_rows(blank)}.")
    dup = df.index[df["id"].duplicated(keep=False)]
    if len(dup):
        ids = sorted(set(df.loc[dup, "id"]))[:MAX_LISTED]
        raise UserError(f"{path}: duplicate id(s) {ids} at {_rows(dup)}; ids must be unique.")
    return df


def resolve_paths(df: pd.DataFrame, data_dir: Path, csv_path: Path, check_images: bool = True) -> pd.Series:
    """Turn relative ``img_path`` values into absolute paths inside ``data_dir``.

    Absolute paths and paths that climb out with ``..`` are refused: a CSV must not
    make the tool read files outside the data folder.
    """
    root = data_dir.resolve()
    out, bad_abs, bad_escape, missing = [], [], [], []
    for i, rel in zip(df.index, df["img_path"]):
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
            bad_abs.append(i)
            out.append(None)
            continue
        if ".." in PurePosixPath(rel.replace("\\", "/")).parts:
            bad_escape.append(i)
            out.append(None)
            continue
        # Checked lexically, not after resolve(): a symlinked image (common on Kaggle) is fine.
        p = Path(os.path.normpath(root / rel))
        if root not in p.parents:
            bad_escape.append(i)
        elif check_images and not p.is_file():
            missing.append(i)
        out.append(p)
    if bad_abs:
        raise UserError(f"{csv_path}: img_path must be relative to the CSV's folder (like ./train/0000.jpg); "
                        f"absolute path {df.loc[bad_abs[0], 'img_path']!r} at {_rows(bad_abs)}.")
    if bad_escape:
        raise UserError(f"{csv_path}: img_path {df.loc[bad_escape[0], 'img_path']!r} at {_rows(bad_escape)} "
                        f"leaves the data folder {root}; refusing it. Keep images under the data folder.")
    if missing:
        raise UserError(f"{csv_path}: image not found: {df.loc[missing[0], 'img_path']!r} at {_rows(missing)} "
                        f"(looked in {root}).")
    return pd.Series(out, index=df.index, dtype=object)


def check_readable(df: pd.DataFrame, csv_path: Path) -> None:
    """Open each image header (cheap, no full decode) so a corrupt file fails now, not mid-fold."""
    bad = []
    for i, p in zip(df.index, df["path"]):
        try:
            with Image.open(p) as im:
                im.size  # noqa: B018 - touching the header is the check
        except (UnidentifiedImageError, OSError) as e:
            bad.append((i, e))
    if bad:
        i, e = bad[0]
        raise UserError(f"{csv_path}: unreadable image {df.loc[i, 'img_path']!r} at {_rows([b[0] for b in bad])} "
                        f"({type(e).__name__}). Replace or remove the file(s).")


def apply_corrections(train: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Override labels from an ``id,artist`` CSV and log each change."""
    fixes = read_csv(path, SUBMISSION_COLUMNS)
    known = set(train["id"])
    unknown = fixes.index[~fixes["id"].isin(known)]
    if len(unknown):
        raise UserError(f"{path}: id {fixes.loc[unknown[0], 'id']!r} at {_rows(unknown)} is not in train.csv.")
    classes = set(train["artist"])
    new_cls = fixes.index[~fixes["artist"].isin(classes)]
    if len(new_cls):
        raise UserError(f"{path}: artist {fixes.loc[new_cls[0], 'artist']!r} at {_rows(new_cls)} "
                        "is not a class in train.csv; check the spelling.")
    train = train.copy()
    pos = {v: k for k, v in train["id"].items()}
    for fid, artist in zip(fixes["id"], fixes["artist"]):
        old = train.at[pos[fid], "artist"]
        if old != artist:
            log.info("correction: id %s: %r -> %r", fid, old, artist)
            train.at[pos[fid], "artist"] = artist
    return train


def load_dataset(data_dir, corrections=None, check_images: bool = True) -> Dataset:
    """Read train.csv, test.csv and sample_submission.csv from ``data_dir`` and validate them.

    >>> ds = load_dataset("../shared/data/wikiart50")  # doctest: +SKIP
    >>> ds.num_classes, len(ds.train), len(ds.test)    # doctest: +SKIP
    (50, 5912, 12670)
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: not a folder. Point it at the folder holding train.csv.")
    train_csv, test_csv, sub_csv = data_dir / "train.csv", data_dir / "test.csv", data_dir / "sample_submission.csv"
    train = read_csv(train_csv, TRAIN_COLUMNS)
    test = read_csv(test_csv, TEST_COLUMNS)
    sub = read_csv(sub_csv, SUBMISSION_COLUMNS)
    if corrections:
        train = apply_corrections(train, Path(corrections))
    train["path"] = resolve_paths(train, data_dir, train_csv, check_images)
    test["path"] = resolve_paths(test, data_dir, test_csv, check_images)
    if check_images:
        check_readable(train, train_csv)
        check_readable(test, test_csv)
    if set(sub["id"]) != set(test["id"]) or len(sub) != len(test):
        extra = sorted(set(sub["id"]) - set(test["id"]))[:MAX_LISTED]
        lack = sorted(set(test["id"]) - set(sub["id"]))[:MAX_LISTED]
        raise UserError(f"{sub_csv}: ids do not match {test_csv}: only in the submission {extra}, "
                        f"only in test {lack}.")
    classes = sorted(train["artist"].unique())
    train["label"] = train["artist"].map({c: i for i, c in enumerate(classes)}).astype(int)
    labels = None
    labels_csv = data_dir / "test_labels.csv"
    if labels_csv.is_file():
        labels = read_csv(labels_csv, SUBMISSION_COLUMNS)
        unknown = labels.index[~labels["artist"].isin(classes)]
        if len(unknown):
            raise UserError(f"{labels_csv}: artist {labels.loc[unknown[0], 'artist']!r} at {_rows(unknown)} "
                            f"is not among the {len(classes)} train classes: the test class set does not match "
                            "train.csv. Fix the labels or the train data.")
        if set(labels["id"]) != set(test["id"]):
            raise UserError(f"{labels_csv}: ids do not match {test_csv}.")
    return Dataset(data_dir, train.reset_index(drop=True), test.reset_index(drop=True), sub, classes, labels)


def read_rgb(path, max_side: int | None = None) -> np.ndarray:
    """Decode any image mode (L, P, CMYK, RGBA, I;16 ...) to an HxWx3 uint8 RGB array.

    ``max_side`` lets JPEG decode at reduced scale (``draft``), far cheaper for huge paintings.
    """
    try:
        with Image.open(path) as im:
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            im = to_rgb(im)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: cannot decode image ({e}).") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert to RGB; transparent pixels become white, as a painting's canvas would be."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        im = Image.fromarray((arr / hi * 255).astype(np.uint8), "L")
    return im.convert("RGB")
