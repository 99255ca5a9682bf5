"""Check a submission against sample_submission.csv before it is written; read an answer key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, write_csv


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, classes) -> None:
    """Same ids in the same order, same count, class names from train, no empty cells."""
    if list(sub.columns) != list(sample.columns):
        raise UserError(f"submission columns {list(sub.columns)} differ from sample_submission's {list(sample.columns)}.")
    if len(sub) != len(sample):
        raise UserError(f"submission has {len(sub)} rows; sample_submission has {len(sample)}.")
    ids, ref = sub["id"].astype(str).to_numpy(), sample["id"].astype(str).to_numpy()
    if (ids != ref).any():
        i = int((ids != ref).argmax())
        raise UserError(f"submission id at row {i} is {ids[i]!r}; sample_submission has {ref[i]!r} there. "
                        "Rows must follow sample_submission's order.")
    empty = sub["artist"].isna() | (sub["artist"].astype(str).str.strip() == "")
    if empty.any():
        raise UserError(f"submission has {int(empty.sum())} empty artist cell(s), first at row {int(empty.argmax())}.")
    unknown = sorted(set(sub["artist"].astype(str)) - set(map(str, classes)))
    if unknown:
        raise UserError(f"submission names artists not in train: {unknown[:5]}.")


def write_submission(path, ids, labels, sample: pd.DataFrame, classes) -> Path:
    """Order predictions like sample_submission, validate, then write atomically."""
    pred = pd.Series(list(labels), index=list(map(str, ids)))
    missing = sorted(set(sample["id"].astype(str)) - set(pred.index))
    if missing:
        raise UserError(f"no prediction for sample_submission id(s) {missing[:5]}; no CSV written.")
    sub = pd.DataFrame({"id": sample["id"].astype(str), "artist": pred.loc[sample["id"].astype(str)].to_numpy()})
    validate_submission(sub, sample, classes)
    return write_csv(path, sub)


ANSWER_KEY = "test_labels.csv"


def answer_key(data_dir, ids, classes) -> np.ndarray | None:
    """Class indices of ``ids`` from ``data_dir/test_labels.csv`` (demo, WikiArt-50), or None without one.

    For reporting only: choices are made by (crop-)OOF, never by the test labels.
    """
    path = Path(data_dir) / ANSWER_KEY
    if not path.is_file():
        return None
    key = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("id")["artist"]
    missing = sorted(set(map(str, ids)) - set(key.index))[:5]
    if missing:
        raise UserError(f"{path}: no label for test id(s) {missing}.")
    truth = key.loc[list(map(str, ids))]
    unknown = sorted(set(truth) - set(classes))[:5]
    if unknown:
        raise UserError(f"{path}: artist(s) {unknown} are not among the run's classes.")
    return truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
