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
    with pytest.raises(UserError, match="other data, --n-folds, --split-seed or --groups"):
        load_or_make_folds(tmp_path / "folds.csv", ids, y, 4, 7)
    with pytest.raises(UserError, match="--groups"):  # the same K and seed, with copies kept together
        load_or_make_folds(tmp_path / "folds.csv", ids, y, 5, 7, groups=["g:0"] * 2 + [f"i:{i}" for i in ids[2:]])


def test_groups_keep_copies_in_one_fold_and_the_split_stays_stratified():
    import hashlib

    ids, y = labels()
    groups = [f"i:{i}" for i in ids]
    for a, b in ((0, 1), (2, 3), (30, 31), (50, 51), (62, 63), (40, 64)):  # (40, 64): one painting, two artists
        groups[b] = groups[a]
    f = make_folds(ids, y, 5, 7, groups)
    fold = dict(zip(f["id"], f["fold"]))
    assert all(fold[ids[i]] == fold[ids[j]] for i, j in ((0, 1), (2, 3), (30, 31), (50, 51), (62, 63), (40, 64)))
    counts = pd.crosstab(f["label"], f["fold"])
    assert counts.shape == (4, 5) and (counts.max(axis=1) - counts.min(axis=1) <= 2).all()  # every class in every fold
    assert split_key(ids, y, 5, 7, groups) != split_key(ids, y, 5, 7)
    # without groups, the key a saved split was made with before groups existed
    old = hashlib.sha256(b"K=5;seed=7\n")
    for i, c in zip(ids, y):
        old.update(f"{i}\t{c}\n".encode())
    assert split_key(ids, y, 5, 7) == old.hexdigest()[:16]


def test_a_class_with_fewer_groups_than_k_is_refused():
    ids, y = labels((30, 6))
    groups = [f"i:{i}" for i in ids]
    groups[31] = groups[30]
    groups[33] = groups[32]  # 'c1': 6 images, 4 paintings
    with pytest.raises(UserError, match=r"fewer groups \(--groups\) than --n-folds=5.*'c1' \(4\).*--n-folds 4"):
        make_folds(ids, y, 5, 0, groups)
    assert make_folds(ids, y, 4, 0, groups)["fold"].nunique() == 4


def test_class_smaller_than_k_suggests_smaller_k():
    ids, y = labels((30, 3))
    with pytest.raises(UserError, match=r"fewer images than --n-folds=5.*'c1' \(3\).*--n-folds 3"):
        make_folds(ids, y, 5, 0)


def test_a_class_of_one_image_is_not_told_to_use_a_k_that_cannot_split_it():
    ids, y = labels((30, 4, 1))
    # "Use --n-folds 2 or fewer" was the advice here, which K=2 still refuses
    with pytest.raises(UserError, match=r"'c2' \(1\), 'c1' \(4\)\. Add images, or use --allow-small-classes") as e:
        make_folds(ids, y, 5, 0)
    assert "--n-folds 2" not in str(e.value)


@pytest.mark.parametrize("allow_small", [False, True])
def test_a_split_no_flag_can_make_is_refused_by_its_option(allow_small):
    """--n-folds above every class's size, or above the --groups' count, ended in scikit-learn's ValueError
    traceback with --allow-small-classes; without it, the advice was that flag, which could not split them."""
    ids, y = labels((10, 10, 8))
    with pytest.raises(UserError, match=r"every class has fewer images than --n-folds=12 \(the largest, 'c0', has "
                                        r"10\).*even with --allow-small-classes.*--n-folds 10 or fewer"):
        make_folds(ids, y, 12, 0, allow_small=allow_small)
    groups = [i % 4 for i in range(len(ids))]
    with pytest.raises(UserError, match=r"--groups: 4 groups in all, fewer than --n-folds=5.*--n-folds 4 or fewer"):
        make_folds(ids, y, 5, 0, groups, allow_small=allow_small)
    assert make_folds(ids, y, 10, 0, allow_small=True)["fold"].nunique() == 10  # the largest class's size splits


def test_allow_small_classes_splits_a_long_tail_as_scikit_learn_does(caplog, tmp_path):
    import warnings

    from sklearn.model_selection import StratifiedKFold

    ids, y = labels((30, 12, 3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn's own warning is replaced by the one below
        f = make_folds(ids, y, 5, 0, allow_small=True)
    assert "2 class(es) have fewer images than --n-folds=5: 'c3' (1), 'c2' (3)" in caplog.text
    assert "--allow-small-classes" in caplog.text
    counts = pd.crosstab(f["label"], f["fold"])
    assert counts.loc["c2"].tolist().count(1) == 3 and counts.loc["c3"].sum() == 1  # each image in a fold of its own
    assert (counts.loc[["c0", "c1"]] > 0).all().all()  # the large classes are in every fold, as without small ones
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = np.empty(len(y), dtype=int)
        for k, (_, val) in enumerate(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y)):
            want[val] = k
    assert f["fold"].tolist() == want.tolist()
    # the option only lets a split be made: a saved one is reused without it
    made, _, h = load_or_make_folds(tmp_path / "folds.csv", ids, y, 5, 0, allow_small=True)
    assert load_or_make_folds(tmp_path / "folds.csv", ids, y, 5, 0)[2] == h == assignment_hash(f)
