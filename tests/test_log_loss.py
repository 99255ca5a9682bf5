"""A task scored by the multi-class log loss on a submission of one probability column per class (Kaggle's Dog
Breed Identification): the metric, its calibration, and a run from the sample submission to the CSV."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from common import UserError
from common.metrics import METRICS, neg_log_loss
from conftest import ROOT, tiny_args
from ensemble.build import main as build_main
from ensemble.export import main as export_main
from folds.data import load_dataset
from folds.run import main as run_main


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_log_loss_is_kaggles_and_scores_the_probabilities():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), 200)
    y = rng.integers(0, 4, 200)  # class 4 never true: the loss still spreads over all 5 columns
    assert neg_log_loss(y, p) == pytest.approx(-log_loss(y, p, labels=range(5)), abs=1e-12)
    assert neg_log_loss(y, p.astype(np.float32)) == pytest.approx(neg_log_loss(y, p), abs=1e-6)  # rows off 1 a little
    sure_and_wrong = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert neg_log_loss([1, 1], sure_and_wrong) == pytest.approx(-np.log(1e15) / 2)  # clipped at 1e-15, not infinite
    with pytest.raises(ValueError, match="probability rows"):
        neg_log_loss(y, p.argmax(axis=1))
    m = METRICS["neg_log_loss"]
    assert not m.of_classes and not m.classes_equal and m.board_sign == -1


def test_the_calibration_finds_the_temperature_of_over_sure_probabilities():
    """The probabilities made three times too sure (logits x 3): under the log loss the build's offsets are
    scikit-learn's temperature scaling, which finds a temperature of about 3 and takes back most of the loss, on
    every row for a vote and on rows it was not fit on for a blender that learns; under macro-F1 they stay offsets."""
    from ensemble.blend import DecisionOffsets, TemperatureCalibration, honest_oof, make_blend

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1.5, (3000, 6)) + np.array([0.8, 0.4, 0, 0, -0.4, -0.8])
    y = np.array([rng.choice(6, p=q) for q in softmax(logits)])  # labels drawn from the true probabilities
    sure = softmax(3 * logits)
    X = np.hstack([sure, sure])  # two runs alike
    for method in ("mean", "weighted", "stack"):
        blend = make_blend(method, offsets=True, n_members=2, metric="neg_log_loss")
        assert isinstance(blend, TemperatureCalibration), method
        fitted = blend.fit(X, y)
        if method != "stack":  # the stack calibrates its own logistic regression, already near 1
            assert fitted.temperature_ == pytest.approx(3, rel=0.1), method
        p = fitted.predict_proba(X)
        assert np.allclose(p.sum(axis=1), 1)
        assert neg_log_loss(y, p) > neg_log_loss(y, softmax(logits)) - 0.01 > neg_log_loss(y, sure) + 0.3, method
        honest = honest_oof(blend, X, y, np.arange(len(y)))  # scored on rows it was not fit on, as the build does
        assert neg_log_loss(y, honest) > neg_log_loss(y, sure) + 0.3, method
    assert isinstance(make_blend("mean", offsets=True, metric="macro_f1"), DecisionOffsets)


def test_the_temperature_over_a_stacker_is_fit_on_paintings_it_never_saw():
    """Five near-identical crops a painting, labels unrelated to the probabilities: a stacker learns noise. Fit on
    one crop of a painting it is sure of the siblings, so a temperature fit on an inner split that parts them
    found the stacker nearly right (1.28) and scored worse than a uniform guess; split by painting, the
    temperature softens the noise to near uniform, in the build's fit and in its honest score."""
    from ensemble.blend import fit_blend, honest_oof, make_blend

    rng = np.random.default_rng(0)
    paintings, crops, k = 300, 5, 6
    X = np.hstack([np.repeat(rng.dirichlet(np.ones(k), paintings), crops, axis=0) for _ in range(2)])
    X *= np.exp(rng.normal(0, 0.05, X.shape))
    X[:, :k] /= X[:, :k].sum(axis=1, keepdims=True)
    X[:, k:] /= X[:, k:].sum(axis=1, keepdims=True)
    y, groups = np.repeat(rng.integers(0, k, paintings), crops), np.repeat(np.arange(paintings), crops)
    blend = make_blend("stack", offsets=True, n_members=2, metric="neg_log_loss")
    assert fit_blend(blend, X, y, groups).temperature_ > 4
    assert neg_log_loss(y, honest_oof(blend, X, y, groups)) > -np.log(k) - 0.02


def test_the_calibration_takes_a_class_of_one_painting():
    """Runs made with --allow-small-classes: a class of one painting is absent from the rows the blend learns
    from in one fold of the honest score, where scikit-learn's calibration, knowing y's classes only, failed
    with an IndexError beside the blends' columns. It is calibrated on the classes it has, the other at 0."""
    import warnings

    from ensemble.blend import fit_blend, honest_oof, make_blend

    rng = np.random.default_rng(0)
    paintings, crops, k = 60, 3, 4  # fewer crops of the lone painting than inner folds
    labels = rng.integers(0, k - 1, paintings)
    labels[7] = k - 1  # one painting of the last class
    y, groups = np.repeat(labels, crops), np.repeat(np.arange(paintings), crops)
    logits = rng.normal(0, 1, (len(y), k))
    logits[np.arange(len(y)), y] += 2
    X = np.hstack([softmax(logits)] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly
        for method in ("mean", "weighted", "stack"):
            blend = make_blend(method, offsets=True, n_members=2, metric="neg_log_loss")
            p = fit_blend(blend, X, y, groups).predict_proba(X)
            assert p.shape == (len(y), k) and np.allclose(p.sum(axis=1), 1), method
            honest = honest_oof(blend, X, y, groups)
            assert np.allclose(honest.sum(axis=1), 1) and (honest[y == k - 1, k - 1] == 0).all(), method
    # a blend saved before the calibration knew its classes (every class in its rows): read as it was fit
    fitted = fit_blend(make_blend("mean", offsets=True, n_members=2, metric="neg_log_loss"), X, y, groups)
    del fitted.present_
    assert np.array_equal(fitted.predict_proba(X), fitted.model_.predict_proba(X))


def per_class_sample(data_dir, order=None) -> list:
    """The data folder's sample submission made one probability column per class (Kaggle's kind), in ``order``
    (default: the classes' own); returns the classes."""
    classes = sorted(pd.read_csv(data_dir / "train.csv", dtype=str)["artist"].unique())
    sample = pd.read_csv(data_dir / "sample_submission.csv", dtype=str, keep_default_na=False)[["id"]]
    for c in order or classes:
        sample[c] = 1 / len(classes)
    sample.to_csv(data_dir / "sample_submission.csv", index=False)
    return classes


def test_a_task_scored_by_log_loss_submits_a_probability_per_class(demo_dir, tmp_path, capsys):
    classes = per_class_sample(demo_dir)
    order = classes[::-1]  # the sample's column order, not the classes' sorted one
    per_class_sample(demo_dir, order)
    assert load_dataset(demo_dir, check_images=False).classes == classes
    runs = tmp_path / "runs"
    # trained for a metric of the predicted class, the submission of probabilities would be chosen for another score
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--epochs": 2})) == 2
    err = capsys.readouterr().err
    assert "one probability column per class" in err and "Give --metric neg_log_loss" in err
    assert not (runs / "t").exists() and not (tmp_path / "subs").exists()  # refused before the run was written
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--epochs": 2, "--metric": "neg_log_loss"})) == 0
    out = capsys.readouterr().out
    run = runs / "t"
    done = json.loads((run / "fold_0" / "done.json").read_text())
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert (done["monitor"], done["metric"]) == ("crop-neg_log_loss", "neg_log_loss")
    assert np.allclose(history["val_crop_neg_log_loss"], -history["val_crop_loss"])  # the one log loss
    scores = json.loads((run / "scores.json").read_text())
    assert f"crop-OOF neg. log loss {scores['oof_crops']['neg_log_loss']:.4f}" in out
    assert "val-crop -log loss" in out and "val-crop loss" not in out  # the fold table shows the log loss once
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub = pd.read_csv(tmp_path / "subs" / "t_folds-mean.csv", dtype={"id": str}, keep_default_na=False)
    assert list(sub.columns) == ["id", *order] and list(sub["id"]) == list(sample["id"])
    assert np.allclose(sub[order].sum(axis=1), 1, atol=1e-6)
    probs = pd.read_csv(tmp_path / "subs" / "t_folds-mean_probs.csv", dtype={"id": str}).set_index("id")
    assert np.allclose(sub.set_index("id")[order].to_numpy(), probs.loc[sub["id"], order].to_numpy())

    # the build chooses by the log loss, and its calibration is scored honestly like the offsets
    best = tmp_path / "subs" / "best.csv"
    assert build_main([str(run), "--method", "best", "--out", str(best), "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "crop-OOF neg. log loss" in out and "highest honest crop-OOF neg. log loss" in out
    meta = json.loads(best.with_name("best_blend.json").read_text())
    table = {r.split()[0]: r for r in out.splitlines() if r.startswith(("mean", "vote"))}
    assert meta["metric"] == "neg_log_loss" and "vote" in table  # the hard vote is scored, and loses
    built = pd.read_csv(best, dtype={"id": str}, keep_default_na=False)
    assert build_main([str(run), "--offsets", "on", "--out", str(tmp_path / "cal.csv"), "--no-report"]) == 0
    said = re.search(r"the calibration's temperature: ([0-9.]+) \(above 1", capsys.readouterr().out)
    cal = joblib.load(tmp_path / "cal_blend.joblib")
    assert said and float(said.group(1)) == pytest.approx(cal.temperature_, abs=5e-4) and cal.temperature_ > 0
    assert list(built.columns) == ["id", *order]
    # an offline kernel's export writes the same kind of submission with the fitted blend, on the test set again
    export, again = tmp_path / "export", tmp_path / "again.csv"
    assert export_main(["--blend", str(best.with_name("best_blend.json")), "--out", str(export), "--no-wheels"]) == 0
    proc = subprocess.run([sys.executable, str(export / "code" / "ensemble" / "predict.py"), str(export),
                           "--data-dir", str(demo_dir), "--out", str(again)], cwd=tmp_path, capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    redone = pd.read_csv(again, dtype={"id": str}, keep_default_na=False)
    assert list(redone.columns) == list(built.columns)
    assert np.allclose(redone[order].to_numpy(), built[order].to_numpy(), atol=1e-5)

    # the leaderboard shows a log loss, lower the better: the CV stands beside it as one, and ranks alike
    from ensemble.leaderboard import main as leaderboard_main
    assert build_main([str(run), "--method", "vote", "--out", str(tmp_path / "subs" / "vote.csv"), "--no-report"]) == 0
    capsys.readouterr()
    metas = {f.name.removesuffix("_blend.json") + ".csv": json.loads(f.read_text())
             for f in (tmp_path / "subs").glob("*_blend.json")}
    # a loss, read up by what a build's choice among candidates added (--method best, --offsets auto), and by
    # what each fold's choice of its best epoch by that loss added
    cv = {name: -(meta["cv"]["neg_log_loss"] - meta["choice_optimism"] - meta["epoch_optimism"])
          for name, meta in metas.items()}
    assert metas["best.csv"]["choice_optimism"] > 0 and metas["best.csv"]["epoch_optimism"] > 0
    assert len(cv) == 3 and cv["vote.csv"] > min(cv.values())  # the hard vote is the worst, even calibrated
    pd.DataFrame({"submission": list(cv), "public": [v + 0.01 for v in cv.values()]}).to_csv(tmp_path / "lb.csv",
                                                                                               index=False)
    assert leaderboard_main([str(tmp_path / "subs"), "--lb", str(tmp_path / "lb.csv")]) == 0
    out = capsys.readouterr().out
    assert "CV against public: Spearman's rank correlation +1.00 over 3 submissions" in out
    assert "a log loss as the leaderboard shows it, a loss (lower is better)" in out
    rows = [line.split() for line in out.splitlines() if line.endswith(".csv") or ".csv " in line]
    assert float(rows[0][3]) == pytest.approx(min(cv.values()), abs=1e-4)  # best first: the lowest loss


def test_a_sample_of_a_column_per_class_must_name_the_classes_of_train(demo_dir):
    classes = per_class_sample(demo_dir)
    per_class_sample(demo_dir, [*classes[1:], "nobody"])
    with pytest.raises(UserError, match=rf"classes without a column \['{classes[0]}'\], columns that are no class "
                                        r"\['nobody'\]"):
        load_dataset(demo_dir, check_images=False)
    per_class_sample(demo_dir, classes)
    train = pd.read_csv(demo_dir / "train.csv", dtype=str)
    train.assign(source="museum").to_csv(demo_dir / "train.csv", index=False)  # which column is the class?
    with pytest.raises(UserError, match=r"train.csv: the sample submission has a column per class.*found \['id', "
                                        r"'img_path', 'artist', 'source'\]"):
        load_dataset(demo_dir, check_images=False)
    train.rename(columns={"artist": "breed"}).to_csv(demo_dir / "train.csv", index=False)
    pd.read_csv(demo_dir / "test_labels.csv", dtype=str).rename(columns={"artist": "breed"}).to_csv(
        demo_dir / "test_labels.csv", index=False)
    ds = load_dataset(demo_dir, check_images=False)  # the class column is train.csv's one besides id and img_path
    assert ds.columns.cls == "breed" and ds.columns.probabilities == tuple(classes)
    assert ds.test_labels is not None


def test_the_readmes_dog_breed_recipe_makes_a_folder_that_runs(demo_source, tmp_path):
    """The README's commands for Kaggle's Dog Breed Identification, run as written on a folder of that shape (made
    from the demo's images): the data folder they write is read as a task of a probability column per class."""
    from PIL import Image

    kaggle = tmp_path / "input" / "dog-breed-identification"
    for split in ("train", "test"):
        (kaggle / split).mkdir(parents=True)
    train = pd.read_csv(demo_source / "train.csv", dtype=str)
    test = pd.read_csv(demo_source / "test.csv", dtype=str)
    breeds = sorted(train["artist"].unique())
    for frame, split in ((train, "train"), (test, "test")):
        frame["dog"] = [f"{split[:2]}{i:04d}" for i in range(len(frame))]  # Kaggle's ids: the file name, no suffix
        for dog, rel in zip(frame["dog"], frame["img_path"]):
            Image.open(demo_source / rel).convert("RGB").save(kaggle / split / f"{dog}.jpg")
    train[["dog", "artist"]].set_axis(["id", "breed"], axis=1).to_csv(kaggle / "labels.csv", index=False)
    pd.DataFrame({"id": test["dog"], **{b: 1 / len(breeds) for b in breeds}}).to_csv(kaggle / "sample_submission.csv",
                                                                                      index=False)
    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "dog-breed-identification" in b)
    making = block[:block.index("python folds/run.py")].replace("/kaggle/input", str(tmp_path / "input"))
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "-euc", making], cwd=work, env=env, check=True)
    ds = load_dataset(work / "data")
    assert (ds.columns.id, ds.columns.cls, ds.columns.probabilities) == ("id", "breed", tuple(breeds))
    assert ds.classes == breeds and len(ds.train) == len(train) and len(ds.test) == len(test)
    assert list(ds.train["artist"]) == list(train["artist"])
