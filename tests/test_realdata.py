"""A smoke run on a small subset of the real WikiArt-50 data; skipped when it is absent."""
import shutil

import pandas as pd
import pytest

from conftest import WIKIART, tiny_args
from ensemble.submission import validate_submission
from folds.run import main

pytestmark = pytest.mark.skipif(not (WIKIART / "train.csv").is_file(), reason=f"{WIKIART} is not here")


def test_real_data_smoke(tmp_path):
    train = pd.read_csv(WIKIART / "train.csv", dtype=str, keep_default_na=False)
    keep = train["artist"].value_counts().index[:4]
    sub = train[train["artist"].isin(keep)].groupby("artist").head(8)
    labels = pd.read_csv(WIKIART / "test_labels.csv", dtype=str, keep_default_na=False)
    test_ids = labels[labels["artist"].isin(keep)].head(12)["id"]
    test = pd.read_csv(WIKIART / "test.csv", dtype=str, keep_default_na=False)
    test = test.set_index("id").loc[test_ids].reset_index()
    data = tmp_path / "w50"
    for part, df in (("train", sub), ("test", test)):
        (data / part).mkdir(parents=True)
        for p in df["img_path"]:
            shutil.copy(WIKIART / p, data / p)
    sub.to_csv(data / "train.csv", index=False)
    test.to_csv(data / "test.csv", index=False)
    test[["id"]].assign(artist=keep[0]).to_csv(data / "sample_submission.csv", index=False)
    args = tiny_args(data, tmp_path, **{"--preset": "default", "--model": "tf_efficientnet_lite0", "--weights": "none",
                                        "--epochs": 1, "--n-folds": 2, "--img-size": 64, "--name": "w50"})
    assert main(args) == 0
    out = pd.read_csv(tmp_path / "subs" / "w50_folds-mean.csv", dtype=str)
    validate_submission(out, test[["id"]].assign(artist=""), sorted(keep))
