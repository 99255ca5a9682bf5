import numpy as np
import pandas as pd
import pytest

from common import UserError
from folds.split import assignment_hash, load_or_make_folds, make_folds, split_key


def labels(n_per_class=(30, 20, 12, 7)):
    y = np.concatenate([[f"c{i}"] * n for i, n in enumerate(n_per_class)])
    return [str(i) for i in range(len(y))], y


def test_partition_and_stratification():
    ids, y = labels()
    f = make_folds(ids, y, n_folds=5, split_seed=1)
    assert sorted(f["id"]) == sorted(ids)  # every row exactly once
    assert set(f["fold"]) == set(range(5))
    counts = pd.crosstab(f["label"], f["fold"])
    # stratified: each class spread over folds within one image
    assert (counts.max(axis=1) - counts.min(axis=1) <= 1).all()


def test_split_seed_changes_assignment_and_hash():
    ids, y = labels()
    a, b = make_folds(ids, y, 5, 1), make_folds(ids, y, 5, 2)
    assert assignment_hash(a) != assignment_hash(b)
    assert assignment_hash(a) == assignment_hash(make_folds(ids, y, 5, 1))
    assert split_key(ids, y, 5, 1) != split_key(ids, y, 5, 2)
    assert split_key(ids, y, 5, 1) != split_key(ids, y, 4, 1)


def test_saved_split_is_reused(tmp_path):
    ids, y = labels()
    f1, key1, h1 = load_or_make_folds(tmp_path / "run" / "folds.csv", ids, y, 5, 7, shared_dir=tmp_path / "splits")
    # tamper with the saved file: a reuse must read it back, not recompute
    saved = pd.read_csv(tmp_path / "run" / "folds.csv", dtype=str)
    saved.loc[0, "fold"], saved.loc[1, "fold"] = saved.loc[1, "fold"], saved.loc[0, "fold"]
    saved.to_csv(tmp_path / "run" / "folds.csv", index=False)
    f2, key2, h2 = load_or_make_folds(tmp_path / "run" / "folds.csv", ids, y, 5, 7)
    assert key1 == key2
    assert h2 == assignment_hash(saved.astype({"fold": int}))
    # another run on the same data shares the split through the shared copy
    f3, _, h3 = load_or_make_folds(tmp_path / "other" / "folds.csv", ids, y, 5, 7, shared_dir=tmp_path / "splits")
    assert h3 == h1


def test_saved_split_from_other_settings_is_refused(tmp_path):
    ids, y = labels()
    load_or_make_folds(tmp_path / "folds.csv", ids, y, 5, 7)
    with pytest.raises(UserError, match="other data, --n-folds or --split-seed"):
        load_or_make_folds(tmp_path / "folds.csv", ids, y, 4, 7)


def test_class_smaller_than_k_suggests_smaller_k():
    ids, y = labels((30, 3))
    with pytest.raises(UserError, match=r"fewer images than --n-folds=5.*'c1' \(3\).*--n-folds 3"):
        make_folds(ids, y, 5, 0)
