"""Every failure found up front, with a clear message, and nothing lost (issue: reliability).

Each test here failed on the main branch before the fix it names.
"""
import json
import os
import pickle
import re
import stat
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from common import UserError, write_text
from conftest import ROOT, tiny_args
from ensemble.build import main as build_main
from folds.run import main as run_main
from tuning.storage import mask, make_storage
from tuning.tune import main as tune_main

# -- 1. credentials are masked in every message ---------------------------------------------
SECRET_URLS = [
    "postgresql//u:secretpw@127.0.0.1:1/x",              # '//' without ':' (the reported leak)
    "postgresql://u:pre@secretpw@127.0.0.1:1/x",         # unescaped '@' in the password
    "postgresql:/u:secretpw@127.0.0.1:1/x",
    "postgresql:secretpw@127.0.0.1:1/x",
    "postgresql://u:secretpw@127.0.0.1:1/x",             # well formed, nothing listens there
    "postgresql://u:secretpw",                           # the host forgotten
    "mysql://u:secretpw@127.0.0.1:1/x",                  # a driver that is not installed
    "postgresql+nosuchdriver://u:secretpw@127.0.0.1/x",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_mask_hides_the_password(url):
    assert "secretpw" not in mask(url)


@pytest.mark.parametrize("url", SECRET_URLS)
def test_storage_errors_never_print_the_password(url, demo_source, tmp_path_factory, capsys):
    tmp = tmp_path_factory.getbasetemp() / "storage-errors"
    rc = tune_main(["--study", "x", "--n-trials", "1", "--storage", url, "--tuning-dir", str(tmp / "tuning"),
                    "--runs-dir", str(tmp / "runs"), "--data-dir", str(demo_source), "--preset", "demo"])
    out = capsys.readouterr()
    assert rc == 2, out
    assert "secretpw" not in out.out + out.err, out
    assert out.err.startswith("error: --storage") and "Traceback" not in out.err


def test_rdb_storage_uses_the_current_retry_api(tmp_path):
    from tuning.storage import has_heartbeat
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rdb = make_storage(f"sqlite:///{tmp_path}/s.db", tmp_path)
    assert has_heartbeat(rdb) and not has_heartbeat(make_storage(None, tmp_path))


# -- 7. tuner arguments are checked before the storage is touched ------------------------------
@pytest.mark.parametrize("args,message", [
    (["--n-trials", "-1"], "--n-trials must be 0"),
    (["--heartbeat", "0"], "--heartbeat must be at least 1"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--time-limit", "-5"], "--time-limit -5.0: give the minutes this command may take, above 0"),
    (["--folds", "9"], "--fold '9'"),
    (["--sampler-seed", "-1"], "--sampler-seed must be in 0..2**32-1, but got -1"),  # numpy's traceback
    (["--ray-gpus", "-1"], "--ray-gpus must be 0 (CPU workers) or more, but got -1.0"),
    (["--space", "SPACE:gamma: {type: float, low: 0.5, high: 2}"], "a trial with {'lr': 1e-05, 'step_size': 2, "
     "'gamma': 2} would not run: --gamma must be in (0, 1]"),  # each trial would fail, its message in Optuna's log
    (["--space", "SPACE:balance_power: {type: float, low: 0.3, high: 1}", "--no-balanced-sampler"],
     "--balance-power 0.3 with --no-balanced-sampler"),
    (["--space", "SPACE:mixup: {type: float, low: 0, high: 0.8}", "--batch-size", "15"], "--batch-size must be even"),
    # the model's own questions: each trial would fail in its first fold, with timm's traceback
    (["--space", "SPACE:drop_path: {type: float, low: 0, high: 0.2}", "--model", "vgg11"],
     "'drop_path': 0.2} would not run: --drop-path 0.2: timm's vgg11 has no stochastic depth"),
    (["--space", "SPACE:model: {type: categorical, choices: [resnet10t, resnet10x]}"],
     "'model': 'resnet10x'} would not run: --model 'resnet10x' is not a timm model"),
])
def test_bad_tuner_arguments_create_no_study(args, message, demo_source, tmp_path, capsys):
    args = list(args)
    for i, a in enumerate(args):
        if a.startswith("SPACE:"):
            (tmp_path / "space.yaml").write_text(a[len("SPACE:"):] + "\n")
            args[i] = str(tmp_path / "space.yaml")
    rc = tune_main(["--study", "x", "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"),
                    "--data-dir", str(demo_source), "--preset", "demo", *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "tuning").exists()


@pytest.mark.parametrize("args,message", [
    (["--img-size", "0"], "--img-size must be at least 16"),  # 0 was read as unset: the model's own size
    (["--img-size", "-3"], "--img-size must be at least 16"),  # a pydantic traceback from albumentations
    (["--num-workers", "-1"], "--num-workers must be 0"),  # torch's ValueError traceback
    (["--weight-decay", "-0.1"], "--weight-decay must be 0"),  # trained, growing the weights
    (["--seed", "-1"], "--seed must be in 0..2**32-1"),  # numpy's ValueError traceback
    (["--split-seed", "4294967296"], "--split-seed must be in 0..2**32-1"),
    (["--fold", "full", "--full-epochs", "0"], "--full-epochs must be at least 1"),  # predicted with a random head
    (["--full-epochs", "9"], "--full-epochs 9 sets the full-data model's epochs (--fold full)"),  # ignored, silently
    (["--procs-per-gpu", "0"], "--procs-per-gpu must be at least 1, but got 0"),  # ran as 1, silently
    (["--ray-cpus", "0"], "--ray-cpus must be at least 1, but got 0"),
    (["--max-retries", "-2"], "--max-retries must be -1 (retry without end) or more, but got -2"),
    (["--time-limit", "0"], "--time-limit 0.0: give the minutes"),
    (["--cache", "--cache-dir", "/proc/version/x"], "--cache-dir /proc/version/x: /proc/version is a file, not a"),
    (["--grad-accum-steps", "0"], "--grad-accum-steps must be at least 1"),
    (["--clip-grad", "-1"], "--clip-grad must be 0 (off) or more"),
    (["--layer-decay", "1.5"], "--layer-decay must be 0 (off) or a factor in (0, 1]"),
    (["--drop-path", "1"], "--drop-path must be in [0, 1)"),
    # timm's TypeError and AssertionError tracebacks, when the fold built its model
    (["--model", "vgg11", "--drop-path", "0.1"], "--drop-path 0.1: timm's vgg11 has no stochastic depth"),
    (["--model", "dla34", "--grad-checkpointing"], "--grad-checkpointing: timm's dla34 does not support"),
    # found only when the submission was written, after every fold had trained
    (["--submissions-dir", "/dev/null/subs"], "--submissions-dir /dev/null/subs: /dev/null is a file, not a folder"),
])
def test_bad_run_options_are_one_line_errors_before_anything_is_written(args, message, demo_source, tmp_path, capsys):
    rc = run_main([*tiny_args(demo_source, tmp_path), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_config_and_params_take_the_run_or_study_folder_itself(tmp_path):
    """'--config runs/a' (the folder, config.json left off) said 'file not found' of a folder that is there; a run's
    folder now gives its config.json, a study's its best.json, and any other folder is named as a folder."""
    from folds.config import read_config_file

    run, study = tmp_path / "runs" / "a", tmp_path / "tuning" / "s"
    run.mkdir(parents=True), study.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"lr": 0.01, "epochs": 3}))
    (run / "manifest.json").write_text("{}")
    (study / "best.json").write_text(json.dumps({"params": {"lr": 0.02}, "config": {"epochs": 4}}))
    assert read_config_file(run, "--config") == read_config_file(run / "config.json", "--config")
    assert read_config_file(study, "--params")["lr"] == 0.02
    with pytest.raises(UserError, match=r"^--config .*tuning/s: a folder without config.json; give a run folder "
                                        r"\(runs/<name>\) or a JSON or YAML file\.$"):
        read_config_file(study, "--config")
    with pytest.raises(UserError, match=r"^--space .*runs/a: a folder; give a JSON or YAML file\.$"):
        read_config_file(run, "--space")


def test_an_option_that_does_nothing_in_its_recipe_is_a_warning_that_names_its_need():
    """'--preset strong --step-size 3 --gamma 0.5' trained a cosine schedule, silently; so did a pseudo threshold
    without --pseudo. No preset trips it (the run's warnings, before the folds; a study's space leaves them out)."""
    from folds.config import PRESETS, recipe_warnings, resolve_config

    said = recipe_warnings(resolve_config({"data_dir": "d", "step_size": 3, "gamma": 0.5, "pseudo_threshold": 0.8,
                                           "pseudo_siblings": False, "clip_mode": "agc"}, "strong"))
    assert said == ["--step-size 3 does nothing here: it is StepLR's: --sched step.",
                    "--gamma 0.5 does nothing here: it is StepLR's: --sched step.",
                    "--clip-mode agc does nothing here: it is gradient clipping's: --clip-grad above 0.",
                    "--no-pseudo-siblings does nothing here: it is pseudo-labelling's: --pseudo RUN.",
                    "--pseudo-threshold 0.8 does nothing here: it is hard pseudo-labels': --pseudo RUN with "
                    "--pseudo-mode hard."], said
    assert not recipe_warnings(resolve_config({"data_dir": "d", "step_size": 3, "gamma": 0.5, "clip_grad": 1.0,
                                               "clip_mode": "agc"}))  # StepLR, clipping on: each is used
    assert not any(recipe_warnings(resolve_config({"data_dir": "d"}, preset)) for preset in PRESETS)


def test_a_warm_up_as_long_as_the_run_is_a_warning_that_names_both_options(demo_source, tmp_path, capsys):
    """Valid (a two-epoch smoke run of the strong preset means it), but the lr never reaches --lr."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": "0", "--warmup-epochs": 1})
    assert run_main(args) == 0
    said = capsys.readouterr().out  # the log (warnings only, -q)
    assert "--warmup-epochs 1 with --epochs 1: every epoch is warm-up" in said and "--lr 0.002" in said, said
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--fold": "0",
                                                        "--warmup-epochs": 1, "--name": "ok"})) == 0
    said = capsys.readouterr().out
    assert "warm-up" not in said and "look like whole images" not in said  # the demo's test images are crops


def test_a_run_resumed_with_other_package_versions_says_so_and_each_fold_keeps_its_own(demo_source, tmp_path,
                                                                                       capsys, monkeypatch):
    """A run's folds may span sessions: the next Kaggle version resumes it on a newer image, where a torch or timm
    upgrade can change what a fold learns, and its folds are still ensembled as one run. Its manifest keeps the
    first session's versions; a session that runs others says which, and each fold's done.json keeps its own."""
    import folds.manifest

    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": "0"})
    assert run_main(args) == 0
    assert "other package versions" not in capsys.readouterr().out
    real = folds.manifest.package_versions()
    monkeypatch.setattr(folds.manifest, "package_versions", lambda: {**real, "timm": "0.9.0"})
    assert run_main([*args, "--fold", "1"]) == 0
    said = capsys.readouterr().out
    assert f"t: its first folds were trained with other package versions (timm {real['timm']} then, 0.9.0 now)" \
        in said, said
    run = tmp_path / "runs" / "t"
    assert [json.loads((run / f"fold_{k}" / "done.json").read_text())["packages"]["timm"] for k in (0, 1)] == [
        real["timm"], "0.9.0"]


def test_whole_test_images_under_the_crop_recipe_are_a_warning(demo_dir, tmp_path, capsys, monkeypatch):
    """A Kaggle task converted to this layout tests on whole images; the default trained on quarter-area crops and
    chose its checkpoints on them without a word. A pseudo round there augmented the whole test images as crops of
    a painting (area 32-100% under --crop whole, where the train images take 8-100%)."""
    train = pd.read_csv(demo_dir / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(demo_dir / "test.csv", dtype=str, keep_default_na=False)
    for i, rel in enumerate(test["img_path"]):  # each test image a whole train-size image
        (demo_dir / rel).write_bytes((demo_dir / train["img_path"][i % len(train)]).read_bytes())
    args = tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": "0"})
    assert run_main(args) == 0
    said = capsys.readouterr().out
    assert "the test images are about as large as the train images" in said and "add --crop whole" in said, said
    assert run_main(args + ["--crop", "whole", "--name", "w", "--fold", "all"]) == 0
    assert "look like whole images" not in capsys.readouterr().out
    # the build and compare.py choose and score on the whole-painting OOF there (--oof auto), and say so
    from ensemble.build import main as build_main
    from ensemble.compare import main as compare_main
    run = str(tmp_path / "runs" / "w")
    assert build_main([run, "--out", str(tmp_path / "w.csv"), "--no-report"]) == 0
    said = capsys.readouterr().out
    assert "note: --oof auto: the test images look whole" in said, said
    assert json.loads((tmp_path / "w_blend.json").read_text())["oof"] == "whole"
    assert compare_main([run, "--draws", "100"]) == 0
    assert capsys.readouterr().out.startswith("whole-painting OOF macro-F1 on 128 rows")
    # the run folders on another machine, the data elsewhere: auto says it could not look, --data-dir finds it
    moved = demo_dir.rename(tmp_path / "moved")
    try:
        assert compare_main([run, "--draws", "100"]) == 0
        said = capsys.readouterr().out
        assert said.startswith("crop-OOF macro-F1") and f"note: --oof auto: the runs' data folder {demo_dir} is not " \
            "here, so the crop OOF is used; --data-dir names where it is, or --oof whole chooses" in said, said
        assert compare_main([run, "--draws", "100", "--data-dir", str(moved)]) == 0
        assert capsys.readouterr().out.startswith("whole-painting OOF macro-F1 on 128 rows")
        assert compare_main([run, "--data-dir", str(tmp_path / "nowhere")]) == 2
        assert "error: --data-dir" in capsys.readouterr().err
    finally:
        moved.rename(demo_dir)
    # the table of runs ranks them by the same OOF, and says why
    from ensemble.table import main as table_main
    assert table_main([str(tmp_path / "runs"), "--out", str(tmp_path / "table.csv")]) == 0
    assert "note: --sort auto: the test images look whole" in capsys.readouterr().out
    oof = pd.read_csv(tmp_path / "table.csv")["oof"].dropna()
    assert len(oof) == 2 and oof.is_monotonic_decreasing
    import folds.train
    made, real = [], folds.train.training_images
    monkeypatch.setattr(folds.train, "training_images", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    assert run_main(args + ["--crop", "whole", "--name", "pw", "--pseudo", run, "--pseudo-threshold", "0",
                            "--no-pseudo-oof"]) == 0
    data = made[0]  # the train images, then every test image: each with the train images' pipeline (index 0)
    assert len(data) > len(data.transform) and list(data.transform_of) == [0] * len(data)


# -- 2. ids that pandas reads as missing --------------------------------------------------------
NA_IDS = ["NA", "N/A", "null", "nan", "NaN", "None", "#N/A", "-nan"]


def set_ids(data_dir, train_ids, test_ids):
    train = pd.read_csv(data_dir / "train.csv", dtype=str, keep_default_na=False)
    train.loc[: len(train_ids) - 1, "id"] = train_ids
    train.to_csv(data_dir / "train.csv", index=False)
    for name in ("test.csv", "sample_submission.csv", "test_labels.csv"):
        df = pd.read_csv(data_dir / name, dtype=str, keep_default_na=False)
        df.loc[: len(test_ids) - 1, "id"] = test_ids
        df.to_csv(data_dir / name, index=False)


def test_ids_that_look_missing_survive_the_full_run_and_the_build(demo_dir, tmp_path):
    set_ids(demo_dir, NA_IDS, NA_IDS[::-1])
    args = tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 2})
    assert run_main(args) == 0
    run = tmp_path / "runs" / "t"
    oof = pd.read_csv(run / "oof.csv", dtype=str, keep_default_na=False)
    assert set(NA_IDS) <= set(oof["id"]) and (oof["id"] != "").all()
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str, keep_default_na=False)
    for sub in (tmp_path / "subs" / "t_folds-mean.csv",):
        got = pd.read_csv(sub, dtype=str, keep_default_na=False)
        assert list(got["id"]) == list(sample["id"]) and (got["artist"] != "").all()
    out = tmp_path / "subs" / "stack.csv"
    assert build_main([str(run), "--method", "stack", "--out", str(out), "--no-report"]) == 0
    assert list(pd.read_csv(out, dtype=str, keep_default_na=False)["id"]) == list(sample["id"])
    assert run_main(args) == 0  # a rerun assembles again without trouble


@pytest.mark.parametrize("csv", ["train.csv", "test.csv", "sample_submission.csv"])
def test_empty_id_is_refused_up_front(csv, demo_dir, tmp_path, capsys):
    df = pd.read_csv(demo_dir / csv, dtype=str, keep_default_na=False)
    df.loc[3, "id"] = ""
    df.to_csv(demo_dir / csv, index=False)
    assert run_main(tiny_args(demo_dir, tmp_path)) == 2
    assert f"{csv}: empty 'id' at line 5" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t").exists()


# -- the table-driven bad-input test through the CLI ------------------------------------------
def edit(name, fn):
    def apply(d):
        df = pd.read_csv(d / name, dtype=str, keep_default_na=False)
        fn(df).to_csv(d / name, index=False)
    return apply


def damage(rel, how):
    def apply(d):
        p = d / rel
        data = p.read_bytes()
        p.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not an image", "empty": b""}[how])
    return apply


def korean_excel_artist(d):
    """Line 5's artist in cp949, as Excel on a Korean Windows saves a "CSV"."""
    lines = (d / "train.csv").read_bytes().split(b"\n")
    lines[4] = lines[4].rsplit(b",", 1)[0] + b"," + "화가".encode("cp949")
    (d / "train.csv").write_bytes(b"\n".join(lines))


def first_test_image(d):
    return pd.read_csv(d / "test.csv", dtype=str)["img_path"].iloc[0].removeprefix("./")


BAD_INPUTS = {
    # CSV defects
    "missing column": (edit("train.csv", lambda df: df.drop(columns="img_path")), r"train\.csv: missing column"),
    "duplicate id": (edit("test.csv", lambda df: pd.concat([df, df.iloc[[0]]])), r"test\.csv: duplicate id"),
    "no rows": (edit("train.csv", lambda df: df.iloc[:0]), r"train\.csv: has a header but no rows"),
    "one class": (edit("train.csv", lambda df: df.assign(artist="X")), r"at least 2 classes"),
    "escaping path": (edit("train.csv", lambda df: df.assign(img_path="../../etc/passwd")), r"leaves the data folder"),
    "sample ids differ": (edit("sample_submission.csv", lambda df: df.iloc[1:]), r"sample_submission\.csv: ids do not"),
    # more than two columns: a sample of one probability column per class, whose columns must be the classes
    "sample of three columns": (edit("sample_submission.csv", lambda df: df.assign(extra="x")),
                                r"sample_submission\.csv: its probability columns \(one per class\) must be "
                                r".*train\.csv's 6 artist values; .* columns that are no class \['artist', 'extra'\]"),
    "train without the sample's class column": (edit("train.csv", lambda df: df.rename(columns={"artist": "label"})),
                                                r"train\.csv: missing column\(s\) \['artist'\]"),
    # a class named like a probability file's own column would overwrite it: the join failed after training
    "artist named label": (edit("train.csv", lambda df: df.assign(artist=df["artist"].replace(df["artist"].iloc[2],
                                                                                              "label"))),
                           r"train\.csv: the artist name\(s\) \['label'\] at lines? .* column names"),
    "two spellings of an artist": (edit("train.csv", lambda df: df.assign(artist=df["artist"].where(
        df.index != 3, " " + df["artist"].iloc[3] + "  "))),
        r"train\.csv: the artist values .* differ only in spaces, so they would be trained as 2 classes "
        r"\(.* at line 5\)"),
    "cp949 train.csv": (korean_excel_artist, r"train\.csv: not UTF-8 text at line 5 \(byte 0xb0\)\. Save it as UTF-8"),
    # image defects
    "truncated train jpeg": (damage("train/0003.jpg", "truncate"),
                             r"train\.csv line 5: './train/0003\.jpg'.*truncated"),
    "garbage train image": (damage("train/0004.jpg", "garbage"), r"train\.csv line 6: .*cannot decode"),
    "empty test image": (lambda d: damage(first_test_image(d), "empty")(d), r"test\.csv line 2: .*cannot decode"),
    "missing image": (lambda d: (d / "train" / "0005.jpg").unlink(), r"image not found: './train/0005\.jpg'"),
    # why it may be missing, where the folder shows it (a CSV made on Windows or macOS, or by hand)
    "image named in another case": (edit("train.csv", lambda df: df.assign(img_path=df["img_path"].str.upper())),
                                    r"image not found: './TRAIN/0000\.JPG' .*its folder 'TRAIN' is not in the data "
                                    r"folder, which holds: .*train/"),
    "image file named in another case": (
        edit("train.csv", lambda df: df.assign(img_path=df["img_path"].str.replace("0003.jpg", "0003.JPG"))),
        r"image not found: './train/0003\.JPG' at line 5 .*'0003\.jpg' is there, a name of another case"),
    "image path with a trailing space": (edit("train.csv", lambda df: df.assign(img_path=df["img_path"] + " ")),
                                         r"its img_path has spaces at its ends, and the file without them exists"),
    # id defects
    "empty train id": (edit("train.csv", lambda df: df.assign(id=df["id"].where(df.index != 2, ""))),
                       r"train\.csv: empty 'id' at line 4"),
    "blank test id": (edit("test.csv", lambda df: df.assign(id=df["id"].where(df.index != 0, "  "))),
                      r"test\.csv: empty 'id' at line 2"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_table_through_the_cli(case, demo_dir, tmp_path, capsys):
    damage_fn, message = BAD_INPUTS[case]
    damage_fn(demo_dir)
    assert run_main(tiny_args(demo_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err, re.S), err
    assert not (tmp_path / "runs" / "t").exists() and not (tmp_path / "subs").exists()


def test_bad_input_in_a_real_subprocess(demo_dir, tmp_path):
    damage("train/0003.jpg", "truncate")(demo_dir)
    proc = subprocess.run([sys.executable, str(ROOT / "folds" / "run.py"), *tiny_args(demo_dir, tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "train.csv line 5: './train/0003.jpg'" in proc.stderr


# -- 5. checkpoints and outputs: a message naming the file --------------------------------------
@pytest.fixture(scope="module")
def small_run(demo_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("small")
    assert run_main(tiny_args(demo_source, out, **{"--epochs": 2, "--n-folds": 2, "--keep-last": True})) == 0
    assert (out / "runs" / "t" / "fold_1" / "last.pt").is_file()
    return out


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/painter-cv-pwned",))


@pytest.mark.parametrize("damage_kind", ["truncated last.pt", "garbage last.pt", "corrupt best.pt", "evil best.pt"])
def test_broken_checkpoints_name_the_file(damage_kind, small_run, demo_source, tmp_path, capsys):
    import shutil
    shutil.copytree(small_run / "runs", tmp_path / "runs")
    fold = tmp_path / "runs" / "t" / "fold_1"
    (fold / "done.json").unlink()  # an interrupted fold: the resume reads last.pt, then best.pt
    name = damage_kind.split()[1]
    path = fold / name
    if damage_kind.startswith("truncated"):
        path.write_bytes(path.read_bytes()[:1000])
    elif damage_kind.startswith("garbage") or damage_kind.startswith("corrupt"):
        path.write_bytes(b"\x00" * 64)
    else:
        with open(path, "wb") as f:
            pickle.dump(Evil(), f)
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--resume": True})) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "Traceback" not in err, err
    assert "--fold 1 --force" in err
    if damage_kind.startswith("evil"):
        assert "could run code" in err and not os.path.exists("/tmp/painter-cv-pwned")
    else:
        assert "corrupt" in err


@pytest.mark.parametrize("command", ["build", "run"])
@pytest.mark.parametrize("damage", ["config.json", "fold_0/done.json", "classes.json gone"])
def test_a_run_folders_damaged_or_missing_json_file_is_named_in_one_line(command, damage, small_run, demo_source,
                                                                       tmp_path, capsys):
    """A hand-edited config.json (a trailing comma), a done.json cut short by a copy, or a classes.json a copy
    left out: the build and the rerun died with json's or the file system's traceback."""
    import shutil
    shutil.copytree(small_run / "runs", tmp_path / "runs")
    run = tmp_path / "runs" / "t"
    f = run / damage.split()[0]
    if damage.endswith("gone"):
        f.unlink()
    else:
        f.write_text(f.read_text()[:-20])  # cut short
    if command == "build":
        rc = build_main([str(run), "--out", str(tmp_path / "sub.csv")])
    else:
        rc = run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--keep-last": True}))
    err = capsys.readouterr().err
    if command == "run" and damage.endswith("gone"):  # the rerun writes its run files again before it reads them
        assert rc == 0 and f.is_file(), err
        return
    what = "missing from its run folder" if damage.endswith("gone") else "not valid JSON"
    assert rc == 2 and err.startswith(f"error: {f}: {what}") and "Traceback" not in err, err


@pytest.mark.parametrize("value", ["nan", "", "inf"])
def test_probabilities_that_are_not_finite_are_refused_with_their_line(value, small_run, demo_source, tmp_path,
                                                                        capsys):
    """A NaN row (a damaged file, or a run from before the divergence check) turned every soft vote it
    joined into NaN, whose argmax is the first artist: a valid-looking, wrong submission."""
    import shutil
    shutil.copytree(small_run / "runs", tmp_path / "runs")
    run = tmp_path / "runs" / "t"
    f = run / "fold_1" / "test_probs.csv"
    lines = f.read_text().splitlines()
    cells = lines[4].split(",")
    lines[4] = ",".join([cells[0], value, *cells[2:]])  # the fourth test row's first probability
    f.write_text("\n".join(lines) + "\n")
    assert build_main([str(run), "--out", str(tmp_path / "sub.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f} line 5: probabilities that are empty or not finite"), err
    assert "--force" in err and not (tmp_path / "sub.csv").exists()
    if value == "nan":  # a pseudo-label round reads the same file through the same check
        assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--fold": "1",
                                                            "--name": "p", "--pseudo": run})) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {f} line 5: probabilities that are empty or not finite"), err


@pytest.mark.parametrize("command,args,message", [
    ("run", ["--runs-dir", "FILE"], "--runs-dir FILE: FILE is a file, not a folder"),  # the demo data's traceback
    ("run", ["--data-dir", "DATA", "--runs-dir", "FILE"], "--runs-dir FILE: FILE is a file, not a folder"),
    ("tune", ["--study", "s", "--tuning-dir", "FILE"], "--tuning-dir FILE: FILE is a file, not a folder"),
    ("tune", ["--study", "s", "--runs-dir", "FILE"], "--runs-dir FILE: FILE is a file, not a folder"),
    ("table", ["RUNS", "--out", "FOLDER"], "--out FOLDER: is a folder; give a .csv file path."),
    ("export", ["RUN", "--no-wheels", "--out", "FILE"], "--out FILE: FILE is a file, not a folder"),
])
def test_a_file_or_folder_in_the_way_of_an_output_is_a_one_line_error(command, args, message, small_run, demo_source,
                                                                      tmp_path, capsys):
    """Each was a traceback (NotADirectoryError, IsADirectoryError), the run's and the study's after the
    data checks."""
    from ensemble.export import main as export_main
    from ensemble.table import main as table_main

    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    names = {"FILE": str(tmp_path / "afile"), "FOLDER": str(tmp_path / "afolder"), "DATA": str(demo_source),
             "RUNS": str(small_run / "runs"), "RUN": str(small_run / "runs" / "t")}
    args = [names.get(a, a) for a in args]
    main = {"run": run_main, "tune": tune_main, "table": table_main, "export": export_main}[command]
    rc = main(args + (["--n-trials", "1", "--epochs", "1"] if command == "tune" else []))
    err = capsys.readouterr().err
    for name, value in names.items():
        message = message.replace(name, value)
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert (tmp_path / "afile").read_text() == "x" and not any((tmp_path / "afolder").iterdir())


def test_build_out_under_a_file_is_refused_before_work(small_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub.csv"
    assert build_main([str(small_run / "runs" / "t"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: --out {out}: {tmp_path / 'afile'} is a file, not a folder" in err


@pytest.mark.parametrize("command,args,message", [
    ("build", ["--inner-folds", "1"], "--inner-folds must be at least 2, but got 1."),  # taken as 2, silently
    ("build", ["RUN/"], "RUN/: this run folder is given twice (also as RUN); an ensemble counts each run once"),
    ("predict", ["--batch-size", "0"], "--batch-size must be at least 1, but got 0."),  # read as "the run's"
    ("predict", ["--num-workers", "-1"], "--num-workers must be 0 (load in the main process) or more"),  # traceback
    ("predict", ["RUN/"], "RUN/: this run folder is given twice (also as RUN)"),  # each run's folds count twice
    ("predict", ["--out", "FOLDER"], "--out FOLDER: is a folder; give a .csv file path."),  # after every prediction
])
def test_bad_ensemble_options_are_one_line_errors_before_any_work(command, args, message, small_run, demo_source,
                                                                  tmp_path, capsys):
    from ensemble.predict import main as predict_main

    run = str(small_run / "runs" / "t")
    (tmp_path / "a folder").mkdir()
    args = [a.replace("RUN", run).replace("FOLDER", str(tmp_path / "a folder")) for a in args]
    folders = [a for a in args if a.startswith(run)]  # more run folders: before the options
    options = [a for a in args if a not in folders]  # after the command's own --out: the last --out counts
    out = tmp_path / "sub.csv"
    if command == "build":
        rc = build_main([run, *folders, "--out", str(out), *options])
    else:
        rc = predict_main([run, *folders, "--data-dir", str(demo_source), "--out", str(out), *options])
    err = capsys.readouterr().err
    assert rc == 2 and message.replace("RUN", run).replace("FOLDER", str(tmp_path / "a folder")) in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("raise_from,code", [("print", 141), ("elsewhere", 1)])
def test_output_piped_into_head_ends_quietly_and_other_broken_pipes_still_show(raise_from, code):
    # `python ensemble/table.py | head`: the reader leaves; a shell tool stops quietly (141), not with a traceback
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from common.cli import entry_point\n"
              "@entry_point\n"
              "def main():\n"
              "    if sys.argv[1] == 'print':\n"
              "        for i in range(200000): print('a line of the table', i)\n"
              "    raise BrokenPipeError('a worker pipe')  # not stdout: a real error\n"
              "sys.exit(main())\n")
    p = subprocess.Popen([sys.executable, "-c", script, raise_from], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if raise_from == "print":
        p.stdout.close()  # the reader has gone before the first line
    out, err = p.communicate(timeout=60)
    assert p.returncode == code
    assert ("Traceback" in err.decode()) == (code == 1), err.decode()


def test_a_fresh_machines_font_cache_line_does_not_stand_among_the_results(tmp_path):
    # a new Colab or Kaggle kernel has no matplotlib cache: its "generated new fontManager" (an INFO line)
    # came between the build's method table and its scores
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from common.cli import log_to_stdout\n"
              "log_to_stdout()\n"
              "import ensemble.report\n"
              "import logging; logging.getLogger('ensemble.build').info('the run says this')\n")
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "fresh")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "the run says this\n"
    assert (tmp_path / "fresh").is_dir()  # the cache was made, so the line would have been logged


def test_worker_errors_reach_the_user_as_the_same_one_line_error(tmp_path):
    from folds.augment import eval_transform
    from folds.loader import ImageDataset, batches, make_loader

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    messages = []
    for workers in (0, 1):
        data = ImageDataset([bad], [0], eval_transform(32, (0.5,) * 3, (0.5,) * 3))
        with pytest.raises(UserError) as err:
            list(batches(make_loader(data, 1, train=False, num_workers=workers)))
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "\n" not in messages[1] and messages[1].startswith(f"{bad}: cannot decode")


# -- 6. a bad --weights value is found before the run folder is written ---------------------------
def test_bad_weights_write_nothing_and_a_fresh_folder_takes_new_settings(demo_source, tmp_path, capsys):
    bad = tiny_args(demo_source, tmp_path, **{"--weights": str(tmp_path / "nope.safetensors"), "--epochs": 1,
                                                "--n-folds": 2})
    assert run_main(bad) == 2
    assert "nope.safetensors: file not found" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "t").exists()
    # a folder whose folds never started (an earlier run stopped before training) takes new settings
    from folds.config import resolve_config
    from folds.runner import FoldRunner
    cfg = resolve_config({"data_dir": str(demo_source), "runs_dir": str(tmp_path / "runs"), "name": "t",
                          "lr": 0.5, "n_folds": 3}, "demo")
    FoldRunner.open(cfg)
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["lr"] == 0.5
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2})) == 0
    assert json.loads((tmp_path / "runs" / "t" / "config.json").read_text())["n_folds"] == 2


# -- 8. written files follow the umask ----------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(umask, mode, tmp_path):
    from common import save_torch
    old = os.umask(umask)
    try:
        write_text(tmp_path / "a.txt", "x")
        save_torch(tmp_path / "b.pt", {"w": torch.zeros(1)})
    finally:
        os.umask(old)
    for f in ("a.txt", "b.pt"):
        assert stat.S_IMODE((tmp_path / f).stat().st_mode) == mode


def test_windows_is_told_to_use_wsl_in_one_line_not_a_traceback():
    """On Windows every command died importing the signal handling (no SIGHUP there), with a traceback."""
    code = "import os; os.name = 'nt'; import common"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("painter-cv runs on Linux or macOS") and "run it in WSL2" in p.stderr


def test_a_file_system_without_unix_modes_still_takes_the_writes(tmp_path, monkeypatch):
    """FAT or exFAT (a USB disk) refuses a mode its files cannot hold with EPERM: every write of a run there
    was a traceback (the umask's chmod), before the first epoch was kept."""
    import errno

    def fat_chmod(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", fat_chmod)
    write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x" and not list(tmp_path.glob(".a.txt.*"))


@pytest.mark.parametrize("signum,raised", [("SIGTERM", "Stopped"), ("SIGHUP", "Stopped"),
                                           ("SIGINT", "KeyboardInterrupt")])
def test_a_stop_during_a_checkpoint_write_waits_for_the_file(signum, raised, tmp_path):
    """SIGTERM or Ctrl-C that lands inside torch.save is raised once the file is whole. Raised inside
    it, torch's zip writer turned the stop into a RuntimeError traceback (seen in the stop test)."""
    import signal

    from common import interrupt, save_torch

    def stop_mid_write(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signum))  # the handler runs here, inside the write
        return real_save(*args, **kwargs)

    sig = getattr(signal, signum)
    # as from a terminal: a job started under nohup or with & (CI's, perhaps) has SIGHUP or SIGINT ignored
    default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
    before = signal.signal(sig, default)
    real_save, torch.save = torch.save, stop_mid_write
    try:
        with pytest.raises(KeyboardInterrupt) as stop, interrupt.stops_as_exceptions():
            save_torch(tmp_path / "last.pt", {"w": torch.arange(3)})
        assert signal.getsignal(sig) is default  # the handler is put back
    finally:
        torch.save = real_save
        signal.signal(sig, before)
    assert type(stop.value).__name__ == raised
    assert torch.load(tmp_path / "last.pt")["w"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_a_stop_that_lands_in_a_destructor_is_not_lost():
    """A SIGTERM (a scheduler's, a side-by-side parent's, torchrun's) that landed while a DataLoader iterator joined
    its workers in its ``__del__`` raised there, where Python drops exceptions ("Exception ignored in"): the stop
    was lost, the run trained on, and every later SIGTERM was ignored. It now comes again a moment later."""
    import signal
    import time

    from common import interrupt

    class Joining:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the destructor
            started = time.time()
            while time.time() - started < 0.2:  # workers being joined
                pass

    with pytest.raises(interrupt.Stopped), interrupt.stops_as_exceptions():
        Joining()  # destroyed at once
        for _ in range(200):
            time.sleep(0.01)

    class Broken:  # any other exception a destructor drops is still reported, as Python does
        def __del__(self):
            raise ValueError("a destructor's own error")

    seen, before = [], sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with interrupt.stops_as_exceptions(), interrupt.stops_as_exceptions():  # (nested, as a command in a test)
            Broken()
        assert [type(u.exc_value) for u in seen] == [ValueError] and sys.unraisablehook == seen.append
    finally:
        sys.unraisablehook = before


def test_nohup_still_keeps_a_run_going():
    """`nohup` ignores SIGHUP so that a run outlives its terminal; the stop handlers leave it ignored."""
    import signal

    from common import interrupt

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with interrupt.stops_as_exceptions():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_read_only_file_system_is_a_one_line_error(tmp_path, monkeypatch):
    """A Kaggle dataset under /kaggle/input is read-only: writing there raised OSError [Errno 30], a traceback."""
    import errno
    import tempfile

    from common import write_text

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=r"cannot write .*x\.txt: its file system is read-only .*/kaggle/working"):
        write_text(tmp_path / "x.txt", "hello")


def test_a_full_disk_is_a_one_line_error_and_the_run_resumes(demo_source, tmp_path, capsys, monkeypatch):
    """The second last.pt goes to /dev/full (ENOSPC, as a full /kaggle/working gives): a one-line error
    that says what to do; the first epoch's checkpoint is whole, the lock released, the run resumes."""
    import common.atomic

    real_fdopen, writes = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(name).startswith(".last.pt."):
            writes.append(name)
            if len(writes) == 2:
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)
                os.close(full)
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(common.atomic.os, "fdopen", fdopen)
    args = tiny_args(demo_source, tmp_path, **{"--fold": "0"})
    assert run_main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: cannot write "), err
    assert "last.pt: no space left on its disk" in err and "--resume" in err
    fold = tmp_path / "runs" / "t" / "fold_0"
    assert torch.load(fold / "last.pt", weights_only=False)  # the first epoch's, whole
    assert not (fold / "lock").exists() and not list(fold.glob(".*.tmp"))
    monkeypatch.undo()
    assert run_main([*args, "--resume"]) == 0


def test_a_run_folder_is_shareable_under_a_group_umask(small_run):
    run = small_run / "runs" / "t"
    for f in (run / "config.json", run / "fold_0" / "best.pt", small_run / "subs" / "t_folds-mean.csv"):
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f  # readable by group and others (umask 022)


# -- 9. learned blends over pure noise score at chance in the inner CV ---------------------------
def noise_run(root, name, data_dir, ids, labels, classes, seed, n_crops=3, oof_probs=None):
    from common import layout, write_csv, write_json
    rng = np.random.default_rng(seed)
    run = root / name
    write_json(run / layout.CONFIG, {"data_dir": str(data_dir), "n_folds": 2, "holdout": False})
    write_json(run / layout.CLASSES, classes)
    write_json(run / layout.MANIFEST, {"split_hash": "same"})
    fold = np.arange(len(ids)) % 2
    if oof_probs is None:
        oof_probs = rng.dirichlet(np.ones(len(classes)), len(ids) * n_crops)
    oof = layout.prob_frame(oof_probs, classes,
                            id=np.repeat(ids, n_crops), crop=np.tile(np.arange(n_crops), len(ids)),
                            fold=np.repeat(fold, n_crops), label=np.repeat(labels, n_crops))
    write_csv(run / layout.OOF_CROPS, oof)
    test_ids = np.array([f"t{i}" for i in range(20)])
    pd.DataFrame({"id": test_ids, "artist": classes[0]}).to_csv(data_dir / "sample_submission.csv", index=False)
    for k in range(2):
        write_json(layout.fold_dir(run, k) / layout.DONE, {"best_f1": 0.0})
        write_csv(layout.fold_dir(run, k) / layout.TEST_PROBS,
                  layout.prob_frame(rng.dirichlet(np.ones(len(classes)), len(test_ids)), classes, id=test_ids))
    return run


@pytest.mark.parametrize("method", ["weighted", "stack", "stack --stacker rf", "mean --offsets",
                                    "weighted --offsets", "stack --offsets"])
def test_learned_blends_over_noise_score_at_chance_in_the_inner_cv(method, tmp_path, capsys):
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    ids = np.array([f"p{i}" for i in range(300)])
    labels = np.array(classes)[rng.integers(0, 3, len(ids))]
    runs = [noise_run(tmp_path, f"r{s}", tmp_path, ids, labels, classes, seed=s) for s in range(3)]
    out = tmp_path / "sub.csv"
    assert build_main([*map(str, runs), "--method", *method.split(), "--out", str(out), "--no-report"]) == 0
    printed = capsys.readouterr().out
    row = [line for line in printed.splitlines() if "(chosen)" in line][0]
    f1 = float(row.split(")")[1].split()[0])
    assert "inner CV" in row and f1 < 0.42, printed  # chance is about 1/3 for 3 balanced classes
    # these runs' data folder has no train.csv or images: the default smoothing is off, and says why
    assert "neighbour smoothing is off: it needs the run's images" in printed


def test_offsets_are_kept_by_default_only_where_their_honest_score_beats_the_method(tmp_path, capsys):
    """A class the argmax never picks (macro-F1 rewards it): the offsets win the inner CV and are kept.
    Probabilities already right on every row: the offsets cannot beat them, and are left off."""
    from ensemble.saved_blend import load_blend
    rng = np.random.default_rng(1)
    classes = ["big", "small"]
    ids = np.array([f"p{i}" for i in range(220)])
    labels = np.array(["big"] * 200 + ["small"] * 20)
    under = np.column_stack([np.full(660, 0.6), np.full(660, 0.4)])
    under[600:] += [-0.08, 0.08]  # the small class is likelier on its own crops, never the argmax
    under = np.clip(under + rng.normal(0, 0.01, under.shape), 0.01, 1)
    right = np.where(np.repeat(labels, 3)[:, None] == np.array(classes), 0.9, 0.1)
    for name, probs, kept in (("under", under / under.sum(1, keepdims=True), True), ("right", right, False)):
        run = noise_run(tmp_path, name, tmp_path, ids, labels, classes, seed=0, oof_probs=probs)
        out = tmp_path / f"{name}.csv"
        assert build_main([str(run), "--out", str(out), "--no-report"]) == 0  # --offsets auto, the default
        printed = capsys.readouterr().out
        assert f"per-class offsets {'kept' if kept else 'left off'}" in printed, printed
        assert ("mean+offsets (chosen)" in printed) is kept and load_blend(tmp_path / f"{name}_blend.json")[1][
            "offsets"] is kept
        assert build_main([str(run), "--out", str(out), "--no-report", "--offsets", "off"]) == 0
        assert "per-class offsets" not in capsys.readouterr().out


@pytest.mark.parametrize("device, message", [
    ("cdua", r"--device 'cdua': not a device"),
    pytest.param("cuda", r"--device cuda: this process sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_a_device_this_machine_lacks_is_refused_before_the_run_folder_is_made(device, message, demo_source,
                                                                               tmp_path, capsys):
    assert run_main(tiny_args(demo_source, tmp_path, **{"--device": device})) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(message, err), err
    assert not (tmp_path / "runs" / "t").exists()
    assert tune_main(["--study", "x", "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"),
                      "--data-dir", str(demo_source), "--preset", "demo", "--device", device]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "tuning").exists()


def test_out_of_gpu_memory_is_a_one_line_error_that_names_the_options(demo_source, tmp_path, capsys, monkeypatch):
    import folds.runner

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(folds.runner, "train_fold", oom)
    assert run_main(tiny_args(demo_source, tmp_path, **{"--fold": "0"})) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: fold 0: the GPU ran out of memory"), err
    assert "--batch-size 32" in err and "it had no finished epoch" in err and "--grad-accum-steps 2" in err
    assert "--grad-checkpointing (and --resume)" in err  # the one remedy the same run folder accepts
    assert not (tmp_path / "runs" / "t" / "fold_0" / "lock").exists()  # released: a rerun can take the fold


def test_a_diverged_fold_is_a_one_line_error_that_names_the_settings(demo_source, tmp_path, capsys):
    """A learning rate that blows the loss up to NaN: the engine's check ends the fold with an error that
    names the optimizer, lr and precision and says a resume would diverge again (it was a traceback)."""
    assert run_main(tiny_args(demo_source, tmp_path, **{"--fold": "0", "--lr": 9.9, "--optimizer": "sgd",
                                                        "--preset": "demo"})) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: fold 0: the model diverged"), err
    assert "--lr 9.9" in err and "diverges again" in err and "--clip-grad" in err
    assert not (tmp_path / "runs" / "t" / "fold_0" / "lock").exists()
