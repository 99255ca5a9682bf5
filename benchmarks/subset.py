"""Write a small Dacon-format subset of a dataset (symlinked images) for quick CPU checks.

    python benchmarks/subset.py ../shared/data/wikiart50 /tmp/w50-small --classes 6 --per-class 10 --test 60
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--test", type=int, default=60)
    a = p.parse_args(argv)
    src, dst = Path(a.src), Path(a.dst)
    train = pd.read_csv(src / "train.csv", dtype=str)
    keep = train["artist"].value_counts().index[: a.classes]
    train = train[train["artist"].isin(keep)].groupby("artist").head(a.per_class)
    labels = pd.read_csv(src / "test_labels.csv", dtype=str)
    labels = labels[labels["artist"].isin(keep)].head(a.test)
    test = pd.read_csv(src / "test.csv", dtype=str).set_index("id").loc[labels["id"]].reset_index()
    for df in (train, test):
        for rel in df["img_path"]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            if not (dst / rel).exists():
                os.symlink((src / rel).resolve(), dst / rel)
    train.to_csv(dst / "train.csv", index=False)
    test.to_csv(dst / "test.csv", index=False)
    test[["id"]].assign(artist=keep[0]).to_csv(dst / "sample_submission.csv", index=False)
    labels.to_csv(dst / "test_labels.csv", index=False)
    print(dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
