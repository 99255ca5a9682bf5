"""Check a submission against sample_submission.csv before it is written; read an answer key."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, write_csv
from folds.data import (ANSWER_KEY, SAMPLE_CSV, SUBMISSION_COLUMNS, Columns, probability_columns, read_csv,
                        read_sample)


def validate_submission(sub: pd.DataFrame, sample: pd.DataFrame, classes) -> None:
    """Same header, ids in the same order, same count, no empty cells; class names from train, or (a sample of a
    column per class) probabilities in [0, 1]. ``sample`` is sample_submission.csv as written: its first column is
    the id."""
    if list(sub.columns) != list(sample.columns):
        raise UserError(f"submission columns {list(sub.columns)} differ from sample_submission's "
                        f"{list(sample.columns)}.")
    if len(sub) != len(sample):
        raise UserError(f"submission has {len(sub)} rows; sample_submission has {len(sample)}.")
    id_col = sample.columns[0]
    ids, ref = sub[id_col].astype(str).to_numpy(), sample[id_col].astype(str).to_numpy()
    if (ids != ref).any():
        i = int((ids != ref).argmax())
        raise UserError(f"submission id at row {i} is {ids[i]!r}; sample_submission has {ref[i]!r} there. "
                        "Rows must follow sample_submission's order.")
    per_class = probability_columns(sample)
    if per_class:
        p = sub[per_class].to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(p) & (p >= 0) & (p <= 1)).all(axis=1)
        if bad.any():
            raise UserError(f"submission has {int(bad.sum())} row(s) with a probability outside [0, 1], first at "
                            f"row {int(bad.argmax())}.")
        return
    cls_col = sample.columns[1]
    empty = sub[cls_col].isna() | (sub[cls_col].astype(str).str.strip() == "")
    if empty.any():
        raise UserError(f"submission has {int(empty.sum())} empty {cls_col} cell(s), first at row "
                        f"{int(empty.argmax())}.")
    unknown = sorted(set(sub[cls_col].astype(str)) - set(map(str, classes)))
    if unknown:
        raise UserError(f"submission names {cls_col} values not in train: {unknown[:5]}.")


def write_submission(path, ids, probs, sample: pd.DataFrame, classes) -> Path:
    """The submission of probability rows (one column per class of ``classes``): each row's most probable class,
    or (a sample of one column per class) its probabilities, in the sample's column order; ordered like
    sample_submission, with its header, validated, then written atomically."""
    id_col = sample.columns[0]
    order = sample[id_col].astype(str)
    probs = np.asarray(probs, dtype=np.float64)
    rows = pd.Series(np.arange(len(probs)), index=list(map(str, ids)))
    missing = sorted(set(order) - set(rows.index))
    if missing:
        raise UserError(f"no prediction for sample_submission id(s) {missing[:5]}; no CSV written.")
    probs = probs[rows.loc[order].to_numpy()]
    per_class = probability_columns(sample)
    if per_class:
        where = {str(c): i for i, c in enumerate(classes)}
        lacking = [c for c in per_class if c not in where]
        if lacking:
            raise UserError(f"sample_submission's column(s) {lacking[:5]} are not among the run's classes; no CSV "
                            "written.")
        sub = pd.DataFrame(probs[:, [where[c] for c in per_class]], columns=per_class)
        sub.insert(0, id_col, order.to_numpy())
    else:
        sub = pd.DataFrame({id_col: order.to_numpy(), sample.columns[1]: np.asarray(classes)[probs.argmax(axis=1)]})
    validate_submission(sub, sample, classes)
    return write_csv(path, sub)


def probabilities_path(submission) -> Path:
    """Where a submission's probability rows go, beside it: ``<csv stem>_probs.csv`` (every class's probability
    for each id, for a later soft vote or a look at the unsure rows)."""
    submission = Path(submission)
    return submission.with_name(submission.stem + "_probs.csv")


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
    names = names.with_class_of(path, SUBMISSION_COLUMNS)  # or names its class column itself (a column per class)
    key = read_csv(path, SUBMISSION_COLUMNS, names=names).set_index("id")["artist"]
    missing = sorted(set(map(str, ids)) - set(key.index))[:5]
    if missing:
        raise UserError(f"{path}: no label for test id(s) {missing}.")
    truth = key.loc[list(map(str, ids))]
    unknown = sorted(set(truth) - set(classes))[:5]
    if unknown:
        raise UserError(f"{path}: {names.cls} value(s) {unknown} are not among the run's classes.")
    return truth.map({c: i for i, c in enumerate(classes)}).to_numpy()
