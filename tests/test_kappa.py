"""A task of grades on an ordinal scale, scored by the quadratic weighted kappa (APTOS, PANDA): the metric, the
order of its classes, and a run that keeps its checkpoints and chooses its blend by it."""
import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from common import UserError
from common.metrics import METRICS, check_metric_fits_classes, quadratic_kappa
from conftest import tiny_args
from ensemble.build import main as build_main
from folds.run import main as run_main


def test_the_kappa_is_scikit_learns_over_every_class_in_sorted_order():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 400)
    near = np.clip(y + rng.integers(-1, 2, 400), 0, 4)  # off by one grade at most
    far = np.where(rng.random(400) < 0.3, 4 - y, y)  # as many misses, further off
    for pred in (near, far, y, rng.integers(0, 5, 400)):
        want = cohen_kappa_score(y, pred, labels=np.arange(6), weights="quadratic")
        assert quadratic_kappa(y, np.eye(6)[pred]) == pytest.approx(want, abs=1e-12)  # a 6th class, never seen
        assert quadratic_kappa(y, pred) == pytest.approx(want, abs=1e-12)
    # twice the misses, each one grade off, against fewer that are far off: the near ones score higher
    assert (near != y).mean() > 2 * (far != y).mean() and quadratic_kappa(y, near) > 2 * quadratic_kappa(y, far)
    m = METRICS["quadratic_kappa"]
    assert m.ordinal and m.of_classes and not m.classes_equal and m.key == "qwk"


def test_the_scale_is_the_classes_sorted_order_and_numbers_must_sort_as_numbers():
    assert check_metric_fits_classes("quadratic_kappa", ["0", "1", "2", "3", "4"], "train.csv") is None
    assert check_metric_fits_classes("quadratic_kappa", ["01", "02", "10"], "train.csv") is None
    with pytest.raises(UserError, match=r"train.csv: --metric quadratic_kappa .* 1 < 10 < 2\. .*zero-padded"):
        check_metric_fits_classes("quadratic_kappa", ["1", "10", "2"], "train.csv")
    said = check_metric_fits_classes("quadratic_kappa", ["mild", "moderate", "none"], "train.csv")
    assert "mild < moderate < none" in said and "rename them" in said
    assert check_metric_fits_classes("macro_f1", ["1", "10", "2"], "train.csv") is None  # no scale: any order


def grades(data_dir, names):
    """The demo's six classes renamed to ``names``, in train.csv and the answer key."""
    train = pd.read_csv(data_dir / "train.csv", dtype=str)
    rename = dict(zip(sorted(train["artist"].unique()), names))
    for f in ("train.csv", "test_labels.csv"):
        df = pd.read_csv(data_dir / f, dtype=str)
        df.assign(artist=df["artist"].map(rename)).to_csv(data_dir / f, index=False)


def test_a_task_of_grades_keeps_its_checkpoints_and_its_blend_by_the_kappa(demo_dir, tmp_path, capsys):
    grades(demo_dir, ["1", "2", "3", "4", "5", "10"])  # 10 sorts before 2 as text
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--metric": "quadratic_kappa", "--epochs": 2})) == 2
    assert "1 < 10 < 2 < 3 < 4 < 5" in capsys.readouterr().err and not (tmp_path / "runs" / "t").exists()
    grades(demo_dir, ["0", "1", "2", "3", "4", "5"][::-1])  # back to six grades; the colours' order is kept
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--metric": "quadratic_kappa", "--epochs": 2})) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "t"
    done = json.loads((run / "fold_0" / "done.json").read_text())
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert (done["monitor"], done["metric"]) == ("crop-qwk", "quadratic_kappa")
    assert history["val_crop_qwk"][done["best_epoch"] - 1] == pytest.approx(history["val_crop_qwk"].max())
    scores = json.loads((run / "scores.json").read_text())
    assert f"crop-OOF quadratic kappa {scores['oof_crops']['qwk']:.4f}" in out
    assert build_main([str(run), "--method", "best", "--out", str(tmp_path / "best.csv")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^method +crop-OOF quadratic kappa +macro-F1 +accuracy +neg. log loss  note$", out, re.M)
    assert "highest honest crop-OOF quadratic kappa" in out and re.search(r"^mean\+offsets ", out, re.M)
    report = (tmp_path / "best_report.md").read_text()
    assert "| method | crop-OOF quadratic kappa | crop-OOF macro-F1 |" in report
    sub = pd.read_csv(tmp_path / "best.csv", dtype=str)
    assert set(sub["artist"]) <= {"0", "1", "2", "3", "4", "5"}
