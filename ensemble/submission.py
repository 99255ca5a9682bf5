"""Check a submission against sample_submission.csv before it is written; read an answer key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, write_csv
from folds.data import ANSWER_KEY, SAMPLE_CSV, SUBMISSION_COLUMNS, Columns, read_csv, read_sample


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, classes) -> None:
    """Same header, ids in the same order, same count, class names from train, no empty cells. ``sample`` is
    sample_submission.csv as written: its first column is the id, its second the class."""
    if list(sub.columns) != list(sample.columns):
        raise UserError(f"submission columns {list(sub.columns)} differ from sample_submission's "
                        f"{list(sample.columns)}.")
    if len(sub) != len(sample):
        raise UserError(f"submission has {len(sub)} rows; sample_submission has {len(sample)}.")
    id_col, cls_col = sample.columns
    ids, ref = sub[id_col].astype(str).to_numpy(), sample[id_col].astype(str).to_numpy()
    if (ids != ref).any():
        i = int((ids != ref).argmax())
        raise UserError(f"submission id at row {i} is {ids[i]!r}; sample_submission has {ref[i]!r} there. "
                        "Rows must follow sample_submission's order.")
    empty = sub[cls_col].isna() | (sub[cls_col].astype(str).str.strip() == "")
    if empty.any():
        raise UserError(f"submission has {int(empty.sum())} empty {cls_col} cell(s), first at row "
                        f"{int(empty.argmax())}.")
    unknown = sorted(set(sub[cls_col].astype(str)) - set(map(str, classes)))
    if unknown:
        raise UserError(f"submission names {cls_col} values not in train: {unknown[:5]}.")


def write_submission(path, ids, labels, sample: pd.DataFrame, classes) -> Path:
    """Order predictions like sample_submission, with its header, validate, then write atomically."""
    id_col, cls_col = sample.columns
    order = sample[id_col].astype(str)
    pred = pd.Series(list(labels), index=list(map(str, ids)))
    missing = sorted(set(order) - set(pred.index))
    if missing:
        raise UserError(f"no prediction for sample_submission id(s) {missing[:5]}; no CSV written.")
    sub = pd.DataFrame({id_col: order, cls_col: pred.loc[order].to_numpy()})
    validate_submission(sub, sample, classes)
    return write_csv(path, sub)


def answer_key(data_dir, ids, classes) -> np.ndarray | None:
    """Class indices of ``ids`` from ``data_dir/test_labels.csv`` (demo, WikiArt-50; the sample submission's
    header), or None without one.

    For reporting only: choices are made by (crop-)OOF, never by the test labels.
    """
    path = Path(data_dir) / ANSWER_KEY
    if not path.is_file():
        return None
    sample = Path(data_dir) / SAMPLE_CSV
    names = read_sample(sample)[1] if sample.is_file() else Columns()  # the key is spelled like the sample
    key = read_csv(path, SUBMISSION_COLUMNS, names=names).set_index("id")["artist"]
    missing = sorted(set(map(str, ids)) - set(key.index))[:5]
    if missing:
        raise UserError(f"{path}: no label for test id(s) {missing}.")
    truth = key.loc[list(map(str, ids))]
    unknown = sorted(set(truth) - set(classes))[:5]
    if unknown:
        raise UserError(f"{path}: {names.cls} value(s) {unknown} are not among the run's classes.")
    return truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
