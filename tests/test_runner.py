import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common import UserError
from conftest import ROOT, learned_history, tiny_args
from ensemble.submission import validate_submission
from folds.run import main


def started_run(args, cwd, until: Path, **popen) -> subprocess.Popen:
    """``folds/run.py ARGS`` in a process of its own, returned once ``until`` exists (a fold mid-training)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "folds" / "run.py"), *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **popen.pop("env", {})}, **popen)
    deadline = time.time() + 240
    while not until.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def finished_run(demo_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(tiny_args(demo_source, out)) == 0
    return out / "runs" / "t", out


def test_tiny_run_learns(finished_run):
    run, _ = finished_run
    scores = json.loads((run / "scores.json").read_text())
    # 6 painters: chance macro-F1 is about 0.17
    assert scores["oof"]["f1"] > 0.6, scores
    assert scores["oof_crops"]["f1"] > 0.5, scores
    history = pd.read_csv(run / "fold_0" / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_f1", "val_acc", "val_qwk",
                                     "val_neg_log_loss", "val_crop_loss", "val_crop_f1", "val_crop_acc", "val_crop_qwk",
                                     "val_crop_neg_log_loss", "lr", "lr_end", "seconds", "train_seconds", "loader_wait"]
    # the training pass is part of the epoch (its validation the rest), its wait for images part of the pass
    assert ((history["loader_wait"] >= 0) & (history["loader_wait"] < history["train_seconds"])
            & (history["train_seconds"] < history["seconds"])).all()


def test_the_fold_table_shows_the_score_each_best_epoch_was_chosen_on(finished_run):
    """Under the default crop recipe a fold's best epoch is chosen on its validation crops: the table showed the
    whole paintings' F1 and loss beside it, scores that chose nothing (0.489 for a fold chosen at 0.456)."""
    from folds.runner import summary_table

    run, _ = finished_run
    dones = {k: json.loads((run / f"fold_{k}" / "done.json").read_text()) for k in range(5)}
    head, _, *rows = summary_table(dones).splitlines()
    assert head.split() == ["fold", "best", "epoch", "val-crop", "F1", "val-crop", "loss", "OOF", "F1", "crop-OOF",
                            "F1", "epoch", "choice", "minutes"]
    for row, done in zip(rows, dones.values()):
        assert done["monitor"] == "crop-f1" and done["best_score"] == done["best_crop_f1"]
        assert row.split()[2:4] == [f"{done['best_crop_f1']:.4f}", f"{done['best_crop_loss']:.4f}"], row
    whole = {k: {**d, "monitor": "f1"} for k, d in dones.items()}  # a --crop whole run's: its whole paintings'
    assert summary_table(whole).splitlines()[2].split()[2] == f"{dones[0]['best_f1']:.4f}"


def test_each_folds_best_epoch_chosen_on_the_paintings_its_crop_oof_scores_is_read_down(finished_run, capsys):
    """A fold's best epoch is chosen on its validation paintings, and its crop-OOF then scores those same paintings:
    the run's crop-OOF read high by that choice, and nothing said so. Every epoch's monitored rows are kept
    (``val_epochs.npz``), the choice among them is read down by a bootstrap (``epoch_optimism``), and the fold table,
    scores.json and the run's last line say what to expect of one fold model on new crops."""
    from types import SimpleNamespace

    import torch

    from common.metrics import get_metric
    from ensemble.compare import selection_optimism
    from folds.run import finish_run
    from folds.runner import summary_table
    from folds.train import Validation
    from folds.stopping import best_epoch_rows, read_val_epochs

    run, out = finished_run
    dones = {k: json.loads((run / f"fold_{k}" / "done.json").read_text()) for k in range(5)}
    f1 = get_metric("macro_f1")
    for k, done in dones.items():
        kept = read_val_epochs(run / f"fold_{k}" / "val_epochs.npz")
        assert kept["probs"].shape[0] == done["epochs_run"] and int(kept["best_epoch"]) == done["best_epoch"]
        assert len(kept["ids"]) == 2 * len(set(kept["ids"]))  # the validation crops, 2 a painting: what chose it
        best = best_epoch_rows(kept)
        assert f1.score(best["labels"], best["probs"]) == pytest.approx(done["best_score"], abs=1e-6)
        assert done["epoch_optimism"] == pytest.approx(
            selection_optimism(kept["labels"], kept["ids"], list(kept["probs"]), "macro_f1"), abs=1e-9)
    assert any(d["epoch_optimism"] > 0 for d in dones.values()), dones  # tiny folds, 4 epochs: choosing adds
    rows = summary_table(dones).splitlines()
    assert [r.split()[-2] for r in rows[2:7]] == [f"{d['epoch_optimism']:+.4f}" for d in dones.values()]
    assert rows[-1].startswith("epoch choice: how high choosing each fold's best epoch on its validation paintings "
                               "reads their crop-OOF")
    scores = json.loads((run / "scores.json").read_text())
    read_down = np.mean([d["epoch_optimism"] for d in dones.values()])
    assert scores["epoch_optimism"] == pytest.approx(read_down)
    # a reader of the whole-painting OOF, or one scoring by another metric (build.py --metric), gets none: the
    # figure reads down the crop-OOF, in macro-F1
    from folds.stopping import epoch_read_down
    assert epoch_read_down(dones, "crops", "macro_f1") == pytest.approx(read_down)
    assert epoch_read_down(dones, "whole", "macro_f1") is None and epoch_read_down(dones, "crops", "accuracy") is None
    # the run's last line, as folds/run.py prints it (the build itself is another test's)
    runner = SimpleNamespace(cfg=SimpleNamespace(submissions_dir=out / "subs", name="t", metric="macro_f1"),
                             run_dir=run)
    line = finish_run(runner, {**scores, "fold_results": dones}).splitlines()[0]
    crop = scores["oof_crops"]["f1"]
    assert (f"crop-OOF macro-F1 {crop:.4f} (its folds' best epochs, chosen on these paintings, read it about "
            f"{read_down:+.4f} high: expect about {crop - read_down:.4f} of one fold model on new crops)") in line, line
    assert line.startswith(f"OOF macro-F1 {scores['oof']['f1']:.4f} | "), line  # the whole OOF chose nothing
    # epochs alike read 0; an epoch chosen by the loss is not read down in F1
    v = Validation.__new__(Validation)
    v.labels, v.ids, v.monitored = best["labels"], best["ids"], np.ones(len(best["labels"]), bool)
    v.epochs = [torch.from_numpy(best["probs"])] * 3
    assert v.epoch_optimism("crop-f1", "macro_f1") == pytest.approx(0.0, abs=1e-12)
    assert v.epoch_optimism("crop-loss", "macro_f1") is None and v.epoch_optimism("crop-acc", "macro_f1") is None
    capsys.readouterr()


def test_the_runs_last_line_gives_the_submissions_own_cv_beside_its_test_score(tmp_path, monkeypatch):
    """Where the build chooses offsets (or smoothing) over the plain fold mean, the test score printed is the
    submission's: it stood beside the plain mean's crop-OOF alone (0.198 beside a test 0.281, whose method
    scored 0.253 on the same OOF), which read as a CV far below the leaderboard."""
    from types import SimpleNamespace

    import ensemble.build
    from folds.run import finish_run

    table = [{"method": "mean", "f1": 0.1983}, {"method": "mean+offsets", "f1": 0.2533}]
    sub = {"table": table, "chosen": "mean+offsets", "oof": "crops", "metric": "macro_f1", "test_f1": 0.2813,
           "out": tmp_path / "s.csv", "report": None}
    monkeypatch.setattr(ensemble.build, "build", lambda *a, **k: sub)
    monkeypatch.setattr(ensemble.build, "format_table", lambda *a, **k: "the method table")
    runner = SimpleNamespace(cfg=SimpleNamespace(submissions_dir=tmp_path, name="b", metric="macro_f1"),
                             run_dir=tmp_path / "b")
    result = {"oof": {"f1": 0.1717}, "oof_crops": {"f1": 0.1983}}
    assert finish_run(runner, result).splitlines()[0] == (
        "OOF macro-F1 0.1717 | crop-OOF macro-F1 0.1983 | the submission (mean+offsets): crop-OOF macro-F1 0.2533 | "
        "test macro-F1 0.2813 (scored with test_labels.csv, for reporting only)")
    # chosen over the plain mean on these paintings, by folds whose best epochs were chosen on them: read down by both
    sub.update(choice_optimism=0.0125, epoch_optimism=0.0310)
    assert "| the submission (mean+offsets): crop-OOF macro-F1 0.2533 (choosing it, and its folds' best epochs, on " \
           "these paintings reads it about +0.0435 high: expect about 0.2098) | test" in finish_run(runner, result)
    sub.update(epoch_optimism=None)  # a loss chose the epochs: the choice of the method alone
    assert "reads it about +0.0125 high: expect about 0.2408) | test" in finish_run(runner, result)
    sub["chosen"] = "mean"  # the fold mean itself: its scores are the run's
    assert finish_run(runner, result).splitlines()[0].startswith("OOF macro-F1 0.1717 | crop-OOF macro-F1 0.1983 | "
                                                                 "test macro-F1 0.2813")


def test_oof_covers_every_train_id_once(finished_run, demo_source):
    run, _ = finished_run
    train = pd.read_csv(demo_source / "train.csv", dtype=str)
    oof = pd.read_csv(run / "oof.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(train["id"])
    classes = json.loads((run / "classes.json").read_text())
    assert list(oof.columns) == ["id", "fold", "label", *classes]
    assert (oof.set_index("id").loc[train["id"], "label"].to_numpy() == train["artist"].to_numpy()).all()
    folds = pd.read_csv(run / "folds.csv", dtype={"id": str})
    assert (oof.set_index("id")["fold"].loc[folds["id"]].to_numpy() == folds["fold"].to_numpy()).all()
    crops = pd.read_csv(run / "oof_crops.csv", dtype={"id": str})
    assert crops.groupby("id").size().eq(2).all() and set(crops["id"]) == set(train["id"])


def test_outputs_and_submission_match_sample(finished_run, demo_source):
    run, out = finished_run
    for f in ("config.json", "manifest.json", "folds.csv", "classes.json", "oof.csv", "scores.json"):
        assert (run / f).is_file(), f
    # the runner writes run files only; the fold mean is the ensemble's, built through its merger
    assert not (run / "test_probs.csv").exists()
    assert (out / "subs" / "t_folds-mean_probs.csv").is_file() and (out / "subs" / "t_folds-mean_report.md").is_file()
    for k in range(5):
        for f in ("history.csv", "best.pt", "test_probs.csv", "oof.csv", "done.json"):
            assert (run / f"fold_{k}" / f).is_file()
        assert not (run / f"fold_{k}" / "last.pt").exists()  # deleted once the fold is done (--keep-last keeps it)
    manifest = json.loads((run / "manifest.json").read_text())
    assert {"packages", "git", "data_hash", "split_hash", "device", "fold_minutes"} <= set(manifest)
    sample = pd.read_csv(demo_source / "sample_submission.csv", dtype=str)
    sub = pd.read_csv(out / "subs" / "t_folds-mean.csv", dtype=str)
    validate_submission(sub, sample, json.loads((run / "classes.json").read_text()))
    assert list(sub["id"]) == list(sample["id"])


def test_finished_folds_are_skipped_and_changed_settings_refused(finished_run, demo_source, capsys):
    run, out = finished_run
    before = (run / "fold_0" / "done.json").stat().st_mtime
    assert main(tiny_args(demo_source, out)) == 0
    assert (run / "fold_0" / "done.json").stat().st_mtime == before
    assert main(tiny_args(demo_source, out, **{"--lr": 0.5})) == 2
    assert "made with other settings (lr: 0.002 -> 0.5)" in capsys.readouterr().err


def test_a_finished_fold_held_by_another_process_is_not_predicted_twice(demo_dir, tmp_path, capsys, monkeypatch):
    # two processes resume one run folder after test.csv changed (side-by-side fold processes, a second machine):
    # the fold another one is predicting again is waited for, and its prediction serves this process too
    import shutil
    import threading

    from folds import runner as runner_module
    from folds.lock import FoldLock

    monkeypatch.setattr(runner_module, "LOCK_POLL_SECONDS", 0.1, raising=False)
    args = tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 2})
    assert main(args) == 0
    run, other = tmp_path / "runs" / "t", tmp_path / "other"
    shutil.copytree(run, other / "runs" / "t")
    sample = pd.read_csv(demo_dir / "sample_submission.csv", dtype=str, keep_default_na=False)
    for name in ("test.csv", "sample_submission.csv", "test_labels.csv"):  # two crops fewer
        df = pd.read_csv(demo_dir / name, dtype=str, keep_default_na=False)
        df.iloc[2:].to_csv(demo_dir / name, index=False)
    # what the other process writes: the copy, predicted again
    assert main(tiny_args(demo_dir, other, **{"--epochs": 1, "--n-folds": 2})) == 0
    predicted = {f: (other / "runs" / "t" / "fold_0" / f).read_bytes() for f in ("test_probs.csv", "done.json")}
    holder = FoldLock(run / "fold_0" / "lock", owner="the other process")
    assert holder.acquire()
    waiting = threading.Event()  # this process found the fold held (however long its start took)
    wait = getattr(runner_module.FoldRunner, "_wait_for_lock", None)
    monkeypatch.setattr(runner_module.FoldRunner, "_wait_for_lock",
                        lambda self, *a: waiting.set() or wait(self, *a), raising=False)

    def other_process():
        waiting.wait(120)
        time.sleep(0.5)
        for f, data in predicted.items():
            (run / "fold_0" / f".{f}.tmp").write_bytes(data)
            os.replace(run / "fold_0" / f".{f}.tmp", run / "fold_0" / f)
        holder.release()

    thread = threading.Thread(target=other_process)
    thread.start()
    capsys.readouterr()
    assert main([a for a in args if a != "-q"]) == 0
    thread.join()
    out = capsys.readouterr().out
    assert "fold 0 is held by host" in out and "waiting for it" in out
    assert "fold 0: test.csv changed" not in out  # the other process predicted it
    assert "fold 1: test.csv changed since its test probabilities were written" in out
    assert (run / "fold_0" / "test_probs.csv").read_bytes() == predicted["test_probs.csv"]
    assert not (run / "fold_0" / "lock").exists() and not (run / "fold_1" / "lock").exists()
    sub = pd.read_csv(tmp_path / "subs" / "t_folds-mean.csv", dtype=str)
    assert sub["id"].tolist() == sample["id"].iloc[2:].tolist()


def test_a_run_folder_or_study_from_before_head_init_goes_on_as_it_began(demo_source, tmp_path, capsys):
    # --head-init zero became the default; a folder, a study and a best.json made before it started their heads
    # with timm's init, and reading today's default for them would mix two recipes in one run or study
    import optuna

    from folds.config import resolve_config, saved_config
    from tuning.study import open_study
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--head-init": "zero", "--fold": "0"})
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    config = json.loads((run / "config.json").read_text())
    assert config["head_init"] == "zero" and resolve_config({"data_dir": "x"}).head_init == "zero"
    assert resolve_config({}, "demo").head_init == resolve_config({}, "seed").head_init == "timm"
    del config["head_init"]  # as an older checkout wrote it
    (run / "config.json").write_text(json.dumps(config))
    assert saved_config(run).head_init == "timm"
    capsys.readouterr()
    assert main([*args[:-2], "--fold", "1"]) == 2
    said = capsys.readouterr().err
    assert "head_init: 'timm' -> 'zero'" in said and f"--config {run / 'config.json'}" in said, said
    # the folder's own config goes on with what it did
    assert main(["-q", "--config", str(run / "config.json"), "--fold", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["head_init"] == "timm"
    assert (run / "fold_1" / "done.json").is_file()
    # a best.json of a study from before: the study's setup tuned timm's head; a hand-written layer is partial
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"params": {"lr": 0.01}, "config": {"data_dir": str(demo_source), "epochs": 2}}))
    assert resolve_config({}, None, None, best).head_init == "timm"
    best.write_text(json.dumps({"params": {"lr": 0.01, "head_init": "zero"}, "config": {"epochs": 2}}))
    assert resolve_config({}, None, None, best).head_init == "zero"
    (tmp_path / "layer.json").write_text(json.dumps({"epochs": 2, "data_dir": "x"}))
    assert resolve_config({}, None, tmp_path / "layer.json").head_init == "zero"
    # a study from before, reopened: as it tuned (timm) it goes on; today's default is another setup
    storage = optuna.storages.InMemoryStorage()
    pruner = optuna.pruners.NopPruner()
    open_study("s", storage, {"lr": {}}, {"epochs": 2}, pruner=pruner, seed=0)
    open_study("s", storage, {"lr": {}}, {"epochs": 2, "head_init": "timm"}, pruner=pruner, seed=0)
    with pytest.raises(UserError, match=r"another training setup \(\{'head_init': \('timm', 'zero'\)\}\)"):
        open_study("s", storage, {"lr": {}}, {"epochs": 2, "head_init": "zero"}, pruner=pruner, seed=0)


def test_a_changed_test_set_is_predicted_again_by_the_finished_folds(demo_dir, tmp_path, capsys):
    # a corrected test.csv after the folds were trained: their probabilities were for other ids, and the run's
    # submission (and any build) failed after all its training; the folds' best weights predict the new set
    args = tiny_args(demo_dir, tmp_path, **{"--epochs": 1, "--n-folds": 2})
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    probs = {k: pd.read_csv(run / f"fold_{k}" / "test_probs.csv", dtype={"id": str}).set_index("id") for k in (0, 1)}
    for name in ("test.csv", "sample_submission.csv", "test_labels.csv"):  # two crops fewer, in another order
        df = pd.read_csv(demo_dir / name, dtype=str, keep_default_na=False)
        df.iloc[2:].iloc[::-1].to_csv(demo_dir / name, index=False)
    (run / "fold_1" / "test_probs.csv").unlink()  # and one fold's probabilities lost
    trained = {k: (run / f"fold_{k}" / "best.pt").stat().st_mtime for k in (0, 1)}
    capsys.readouterr()
    assert main([a for a in args if a != "-q"]) == 0  # the fold lines are INFO
    out = capsys.readouterr().out
    assert "fold 0: test.csv changed since its test probabilities were written (72 ids then, 70 now, 70 in both)" in out
    assert "fold 1: test_probs.csv is missing; predicting the test again with its best weights" in out
    ids = pd.read_csv(demo_dir / "test.csv", dtype=str)["id"].tolist()
    for k in (0, 1):
        again = pd.read_csv(run / f"fold_{k}" / "test_probs.csv", dtype={"id": str}).set_index("id")
        assert again.index.tolist() == ids
        assert (run / f"fold_{k}" / "best.pt").stat().st_mtime == trained[k]  # not trained again
        pd.testing.assert_frame_equal(again, probs[k].loc[ids], atol=1e-6)  # the same weights
    sub = pd.read_csv(tmp_path / "subs" / "t_folds-mean.csv", dtype=str)
    assert sub["id"].tolist() == pd.read_csv(demo_dir / "sample_submission.csv", dtype=str)["id"].tolist()
    # nothing changed: nothing is predicted again
    assert main([a for a in args if a != "-q"]) == 0
    assert "predicting the test again" not in capsys.readouterr().out
    # a corrected release under the same ids: one crop is another image now
    test = pd.read_csv(demo_dir / "test.csv", dtype=str)
    first, other = (demo_dir / p for p in test["img_path"][:2])
    first.write_bytes(other.read_bytes())
    from ensemble.build import main as build_main  # a build alone would submit the old images' predictions
    assert build_main([str(run), "--out", str(tmp_path / "b.csv"), "--no-report"]) == 2
    assert "its test probabilities are for other images than" in capsys.readouterr().err
    assert main([a for a in args if a != "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("the test images changed since its test probabilities were written (the same ids)") == 2, out
    again = pd.read_csv(run / "fold_0" / "test_probs.csv", dtype={"id": str}).set_index("id")
    row = again.loc[test["id"][:2]].to_numpy()
    np.testing.assert_allclose(row[0], row[1], atol=1e-6)  # the first crop is predicted as the image it now is


def test_after_each_fold_a_process_says_how_long_its_folds_left_take(demo_source, tmp_path, capsys):
    """A Kaggle version ends at 12 hours: after each fold it trains, a process says how long the folds it has
    left take at the pace of those it trained (finished folds it skips neither count nor are counted)."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 3})
    assert main(args + ["--fold", "0"]) == 0
    capsys.readouterr()
    assert main([a for a in args if a != "-q"] + ["--fold", "all", "--time-limit", "600"]) == 0
    out = "".join(capsys.readouterr())
    assert re.search(r"ends one sooner\); (600|59\d) min of --time-limit are left", out), out
    line = r"fold 1 took \d+\.\d min; the 1 fold\(s\) left here \(2\) take about \d+\.\d min at that pace"
    assert re.search(line, out), out
    assert "fold 0 took" not in out and "fold 2 took" not in out  # skipped, and the last


def test_the_image_cache_lives_where_cache_dir_says(demo_source, tmp_path):
    # --runs-dir on Google Drive or NFS keeps the run safe; its cache belongs on the machine's own disk
    local = tmp_path / "local-disk"
    args = {"--epochs": 1, "--n-folds": 2, "--cache": True}
    assert main(tiny_args(demo_source, tmp_path, **args, **{"--fold": "0", "--cache-dir": local})) == 0
    assert list(local.glob("max*/*/*.npy")) and (local / "verified.txt").is_file()
    assert not (tmp_path / "runs" / "cache").exists()
    # where the cache lives does not change what a fold learns: a new machine's disk resumes the run
    assert main(tiny_args(demo_source, tmp_path, **args, **{"--fold": "1", "--cache-dir": tmp_path / "other"})) == 0
    assert list((tmp_path / "other").glob("max*/*/*.npy")) and (tmp_path / "subs" / "t_folds-mean.csv").is_file()


def test_bad_input_is_a_clear_error_without_traceback(tmp_path, capsys):
    assert main(tiny_args(tmp_path / "missing", tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data-dir") and "Traceback" not in err
    assert main(["--fold", "7", *tiny_args(tmp_path / "missing", tmp_path)[1:]]) == 2


def test_a_fold_taken_under_its_lock_removes_the_half_writes_of_a_killed_process(demo_source, tmp_path, capsys):
    """SIGKILL mid-write (the OOM killer, a lost machine) leaves an atomic write's hidden temp file: a checkpoint's
    is about 3x the weights, kept unseen on a 20 GB Kaggle disk or a 15 GB Drive. The next process to take the fold
    removes those untouched for a minute; a young one (a live writer's) and the user's own files stay."""
    fold = tmp_path / "runs" / "t" / "fold_0"
    fold.mkdir(parents=True)
    old, young, mine = fold / ".last.pt.k1ll3d.tmp", fold / ".best.pt.l1v3.tmp", fold / ".notes.tmp.txt"
    for p, content in ((old, b"x" * 3_000_000), (young, b"y"), (mine, b"z")):
        p.write_bytes(content)
    os.utime(old, (time.time() - 120, time.time() - 120))
    args = [a for a in tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 0}) if a != "-q"]
    assert main(args) == 0
    assert not old.exists() and young.exists() and mine.exists() and (fold / "done.json").is_file()
    assert "fold 0: removed 2.9 MB of files that a killed process left half-written" in "".join(capsys.readouterr())


def test_killed_run_resumes_to_a_complete_result(demo_source, tmp_path):
    run = tmp_path / "runs" / "t"
    # kill in the middle of fold 1, after its first epoch (history.csv is written after last.pt)
    proc = started_run(tiny_args(demo_source, tmp_path, **{"--epochs": 6}), tmp_path, run / "fold_1" / "history.csv")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "fold_1" / "done.json").is_file()
    fold0 = (run / "fold_0" / "done.json").stat().st_mtime
    epochs_before = len(pd.read_csv(run / "fold_1" / "history.csv"))
    # without --resume the half-trained fold is not silently thrown away
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 6})) == 2
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 6, "--resume": True})) == 0
    assert (run / "fold_0" / "done.json").stat().st_mtime == fold0  # finished fold not redone
    history = pd.read_csv(run / "fold_1" / "history.csv")
    assert list(history["epoch"]) == list(range(1, len(history) + 1)) and len(history) >= epochs_before
    assert (tmp_path / "subs" / "t_folds-mean.csv").is_file()
    assert len(pd.read_csv(run / "oof.csv")) == len(pd.read_csv(demo_source / "train.csv"))


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_side_by_side_run_stops_its_fold_processes_and_resumes(demo_source, tmp_path, how):
    """SIGTERM to the parent (a scheduler, `kill`, a notebook's stop) reaches its fold processes: each
    unwinds like Ctrl-C, releasing its fold lock, and nothing is left training. Before, they trained
    on, holding their folds. A parent that cannot pass the stop on (SIGKILL: the OOM killer, a
    notebook's restart) ends them too, through the pipe only it held open; before, they trained on."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 12, "--n-folds": 3, "--patience": 12})
    run = tmp_path / "runs" / "t"
    proc = subprocess.Popen([sys.executable, str(ROOT / "folds" / "run.py"), *args, "--procs-per-gpu", "2"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 240
    while not all((run / f"fold_{k}" / "history.csv").is_file() for k in (0, 1)):  # both mid-fold
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    holders = [json.loads((run / f"fold_{k}" / "lock").read_text())["pid"] for k in (0, 1)]
    proc.send_signal(how)
    err = proc.communicate(timeout=120)[1].decode()  # the fold processes share the pipe: it ends with them
    assert proc.returncode == (143 if how == signal.SIGTERM else -signal.SIGKILL), err[-2000:]
    assert err.count("stopped (SIGTERM)") == (3 if how == signal.SIGTERM else 2), err[-2000:]  # each fold process
    assert "Traceback" not in err, err[-2000:]
    assert ("has ended without stopping it" in err) == (how == signal.SIGKILL), err[-2000:]
    # the fold processes have ended, and released their locks (the kernel closes an exiting process's pipe a
    # moment before it shows it as ended: on a loaded machine that moment was seen to last)
    deadline = time.time() + 10
    while not all(_ended(pid) for pid in holders) and time.time() < deadline:
        time.sleep(0.05)
    assert all(_ended(pid) for pid in holders), [(pid, _state(pid)) for pid in holders]
    assert not any((run / f"fold_{k}" / "lock").exists() for k in (0, 1, 2))
    assert not (run / "fold_1" / "done.json").exists()  # stopped one epoch in
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 12, "--n-folds": 3, "--patience": 12,
                                                    "--resume": True})) == 0
    assert len(pd.read_csv(run / "oof.csv")) == len(pd.read_csv(demo_source / "train.csv"))


@pytest.mark.parametrize("delay", [0.0, 0.8])
def test_a_stop_sent_to_every_process_of_the_job_ends_as_cleanly_as_one_sent_to_the_run(demo_source, tmp_path, delay):
    """Slurm's preemption, `pkill -f` or `kill -- -PGID` signal the DataLoader's workers too. torch then raised
    "DataLoader worker ... is killed by signal: Terminated" from its SIGCHLD handler while the run unwound from
    the stop: a traceback and exit 1 (4 runs in 5) in place of the clean stop and 143."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 12, "--patience": 12, "--num-workers": 2})
    run = tmp_path / "runs" / "t"
    # training, its loader's workers running
    proc = started_run(args, tmp_path, run / "fold_0" / "history.csv", start_new_session=True)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGTERM)  # the run and its workers, as a scheduler signals a job
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "stopped (SIGTERM)" in err, err[-2000:]
    assert not (run / "fold_0" / "lock").exists() and len(pd.read_csv(run / "fold_0" / "history.csv")) >= 1


BROKEN_HANDSHAKE = """
import os, socket, sys, time
sys.path.insert(0, {root!r})
from multiprocessing import resource_sharer
from common.cli import entry_point

def broken_handshake():
    resource_sharer.DupFd(os.dup(1))  # a descriptor shared with another process: the sharer's thread listens
    peer = socket.socket(socket.AF_UNIX)
    peer.connect(resource_sharer._resource_sharer._address)
    peer.close()  # the other process dies before it has authenticated
    time.sleep(1)
    try:
        1 / 0
    except ZeroDivisionError:  # any other report still comes out
        sys.excepthook(*sys.exc_info())
    print("went on")
    return 0

sys.exit(entry_point(broken_handshake)() if sys.argv[1] == "cli" else broken_handshake())
"""


def test_a_handshake_broken_by_a_dying_worker_leaves_no_traceback(tmp_path):
    """A loader worker killed while it fetched a shared tensor's descriptor (the OOM killer) left the resource
    sharer thread's EOFError or BrokenPipeError traceback beside the clear error (once in a run of the suite, in
    the test below); an entry point drops that report, and only that one."""
    script = tmp_path / "handshake.py"
    script.write_text(BROKEN_HANDSHAKE.format(root=str(ROOT)))
    plain, cli = (subprocess.run([sys.executable, str(script), how], capture_output=True, text=True, timeout=60)
                  for how in ("plain", "cli"))
    assert plain.returncode == 0 and "Traceback" in plain.stderr and "resource_sharer.py" in plain.stderr
    assert cli.returncode == 0 and cli.stdout == "went on\n" and "resource_sharer.py" not in cli.stderr, cli.stderr
    assert cli.stderr.startswith("Traceback") and cli.stderr.endswith("ZeroDivisionError: division by zero\n")
    assert cli.stderr.count("Traceback") == 1


def test_a_loader_worker_killed_by_the_oom_killer_is_one_clear_error_and_the_fold_resumes(demo_source, tmp_path):
    """The kernel's out-of-memory killer takes a loader worker (Colab's 12 GB): torch's RuntimeError came out as a
    long traceback through the model's forward pass. Now it is one line that says what Killed most often means
    and how to go on; the epochs trained so far are kept, and --resume with fewer workers finishes the run."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 12, "--patience": 12, "--num-workers": 2})
    run = tmp_path / "runs" / "t"
    proc = started_run(args, tmp_path, run / "fold_0" / "history.csv")
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(int(workers[0]), signal.SIGKILL)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 1 and "Traceback" not in err, err[-2000:]
    assert err.startswith("error: a data-loader worker process died (DataLoader worker (pid") and "Killed" in err
    assert "--resume" in err and "--num-workers" in err
    assert not (run / "fold_0" / "lock").exists() and (run / "fold_0" / "last.pt").is_file()
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 12, "--patience": 12, "--num-workers": 0,
                                                    "--resume": True})) == 0
    assert len(pd.read_csv(run / "oof.csv")) == len(pd.read_csv(demo_source / "train.csv"))


def test_other_runtime_errors_keep_their_traceback():
    from common.cli import entry_point

    @entry_point
    def failing():
        raise RuntimeError("a real bug")

    with pytest.raises(RuntimeError, match="a real bug"):
        failing()


def test_a_time_limit_stops_between_pieces_of_work_and_the_resumed_run_equals_the_plain_one(
        demo_source, tmp_path, monkeypatch, capsys):
    """--time-limit (a Kaggle session's end, which would keep no output): the run stops before the first
    piece of work that would not end in time, exits 75, and keeps everything finished; --resume then ends
    with the uninterrupted run's result. Each look at the clock is a minute later here, so the stop is at
    the eleventh look: fold 0's 4 epochs and prediction, the line after fold 0 that says the minutes left,
    fold 1's 4 epochs, then fold 1's prediction."""
    import itertools

    import folds.deadline

    over = {"--epochs": 4, "--n-folds": 3, "--patience": 10}
    clock = itertools.count(0, 60)
    monkeypatch.setattr(folds.deadline, "monotonic", lambda: next(clock))
    assert main([*tiny_args(demo_source, tmp_path, **over), "--time-limit", "11"]) == 75
    err = capsys.readouterr().err
    assert "stopped at the time limit (--time-limit: fold 1's prediction (its epochs are done) was not started" in err
    assert "a fold run with --resume" in err and "Traceback" not in err, err
    run = tmp_path / "runs" / "t"
    assert (run / "fold_0" / "done.json").is_file() and not (run / "fold_1" / "done.json").is_file()
    assert len(pd.read_csv(run / "fold_1" / "history.csv")) == 4 and (run / "fold_1" / "last.pt").is_file()
    assert not (run / "fold_2").exists() and not list(run.glob("fold_*/lock"))
    assert main([*tiny_args(demo_source, tmp_path, **over), "--time-limit", "0.5"]) == 2  # the same, without --resume
    monkeypatch.undo()
    assert main(tiny_args(demo_source, tmp_path, **over, **{"--resume": True})) == 0
    assert main(tiny_args(demo_source, tmp_path, **over, **{"--name": "plain"})) == 0
    a, b = (pd.read_csv(tmp_path / "runs" / n / "oof.csv", dtype={"id": str}) for n in ("t", "plain"))
    pd.testing.assert_frame_equal(a, b)


def test_the_first_folds_prediction_is_estimated_from_the_pace_of_its_validation(monkeypatch):
    """No prediction has been timed before the first fold's: its time is estimated from the validation
    images its epochs scored (one decode and one view at the first epoch's pace, which decoded them;
    the other TTA views at the later epochs' pace, which scored the kept batches)."""
    import folds.deadline
    from common.interrupt import TimeUp
    from folds.deadline import Deadline

    now = [0.0]
    monkeypatch.setattr(folds.deadline, "monotonic", lambda: now[0])
    d = Deadline(minutes=10)
    assert d.prediction_estimate(1000, 4) == 0  # nothing scored in this process: no estimate
    d.scored(30, 100, decoded=True)  # 0.3 s an image
    assert d.prediction_estimate(1000, 4) == pytest.approx(1000 * 4 * 0.3)  # no later epoch yet: an upper bound
    d.scored(12, 100, decoded=False)
    d.scored(10, 100, decoded=False)  # 0.1 s an image
    assert d.prediction_estimate(1000, 4) == pytest.approx(1000 * (0.3 + 3 * 0.1))
    now[0] = 1.0
    d.before("prediction", "fold 0's prediction", estimate=598)  # 599 s left: it fits
    with pytest.raises(TimeUp, match="its prediction would take about 10.0 min at the pace its validation"):
        d.before("prediction", "fold 0's prediction", estimate=d.prediction_estimate(1000, 4))
    d.took("prediction", 30)  # once one was timed, that is what the next one needs
    d.before("prediction", "fold 1's prediction", estimate=10_000)


def test_a_time_limit_stops_before_a_first_fold_prediction_that_would_not_end_in_time(demo_source, tmp_path,
                                                                                         monkeypatch, capsys):
    """On a Kaggle kernel a version killed at the limit keeps none of its outputs: with 10 ms left after its
    epochs, fold 0's prediction (of its validation images and every test image) is not started, and the
    run exits 75 with the fold's epochs kept for --resume."""
    import folds.deadline

    clock = iter([0.0] + [60.0 * i for i in range(1, 5)] + [299.99] * 20)  # the start, 4 epochs, then 10 ms left
    monkeypatch.setattr(folds.deadline, "monotonic", lambda: next(clock))
    over = {"--epochs": 4, "--n-folds": 3, "--patience": 10, "--fold": "0"}
    assert main([*tiny_args(demo_source, tmp_path, **over), "--time-limit", "5"]) == 75
    err = capsys.readouterr().err
    assert "fold 0's prediction (its epochs are done) was not started: 0 s were left" in err, err
    assert "at the pace its validation images were scored" in err
    fold = tmp_path / "runs" / "t" / "fold_0"
    assert len(pd.read_csv(fold / "history.csv")) == 4 and (fold / "last.pt").is_file()
    assert not (fold / "done.json").exists()


def test_fold_processes_stopped_by_the_time_limit_stop_their_parent_the_same_way():
    """Side by side, each fold process stops at the parent's limit (it gets the minutes left) and exits
    75; the parent then says the same, rather than calling it a failure."""
    from common.interrupt import TimeUp
    from folds.run import wait_for

    def exiting(*codes):
        return [subprocess.Popen([sys.executable, "-c", f"raise SystemExit({c})"]) for c in codes]

    with pytest.raises(TimeUp, match=r"fold processes \[1\] of 2"):
        wait_for(exiting(0, 75))
    with pytest.raises(UserError, match=r"exited with \[75, 1\]"):  # a real failure is still one
        wait_for(exiting(75, 1))


def test_a_failed_fold_process_is_named_with_its_folds_and_how_it_ended():
    """The OOM killer takes a whole fold process (-9): the parent said only "exited with [-9, 0]"."""
    from folds.run import wait_for

    procs = [subprocess.Popen([sys.executable, "-c", code]) for code in
             ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "raise SystemExit(0)", "raise SystemExit(2)")]
    for p, folds in zip(procs, ([0, 3], [1, 4], [2])):
        p.folds = folds
    with pytest.raises(UserError, match=r"exited with \[-9, 0, 2\]: the one for folds \[0, 3\] was killed by SIGKILL: "
                                        r"most often the kernel's out-of-memory killer.*; the one for folds \[2\] "
                                        r"exited with 2 \(its own error is above\)\. .*--resume"):
        wait_for(procs)


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat")
    return stat.read_text().rsplit(")", 1)[1].split()[0] if stat.is_file() else "gone"


def _ended(pid: int) -> bool:
    """Gone, or a zombie: an orphan's exit status waits for whatever reaps orphans here (a container's
    first process may never do it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return _state(pid) in ("Z", "gone")


def test_seed_preset_is_one_holdout_split_without_tta(demo_source, tmp_path):
    args = tiny_args(demo_source, tmp_path, **{"--preset": "seed", "--model": "resnet10t", "--weights": "none",
                                                "--epochs": 2, "--name": "seed", "--tta": None})
    assert main(args) == 0
    run = tmp_path / "runs" / "seed"
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["holdout"], cfg["crop"], cfg["tta"]) == (True, "whole", "none")
    assert (run / "fold_0" / "done.json").is_file() and not (run / "fold_1").exists()
    oof = pd.read_csv(run / "oof.csv")
    assert set(oof["fold"]) == {0} and len(oof) == (pd.read_csv(run / "folds.csv")["fold"] == 0).sum()
    assert (tmp_path / "subs" / "seed_folds-mean.csv").is_file()


def test_fold_lock_keeps_a_second_process_off_a_live_fold(tmp_path):
    from folds.lock import FoldLock

    mine = FoldLock(tmp_path / "lock")
    assert mine.acquire()
    other = FoldLock(tmp_path / "lock")
    other.me = {"host": other.me["host"], "pid": os.getpid() + 1_000_000}  # another process
    (tmp_path / "lock").write_text(json.dumps({"host": mine.me["host"], "pid": os.getppid()}))  # a live holder
    assert not other.acquire()
    (tmp_path / "lock").write_text(json.dumps({"host": mine.me["host"], "pid": 2**22 + 12345}))  # a dead one
    assert other.acquire()  # stale: taken over
    mine.release()  # not the holder any more: leaves the lock alone
    assert (tmp_path / "lock").is_file()
    # Another container on this machine (Docker's --network host: this host name, its own pids): its holder's
    # pid means nothing here, so its lock is judged by its heartbeat, as another host's is. By the host name,
    # a live fold was taken over and trained twice.
    container = {"host": mine.me["host"], "pid_space": mine.me["pid_space"] + "0", "pid": 2**22 + 12345, "beat": 30}
    (tmp_path / "lock").write_text(json.dumps(container))
    assert not other.acquire()
    os.utime(tmp_path / "lock", (time.time() - 3600, time.time() - 3600))
    assert other.acquire()  # silent for an hour: taken over
    other.release()


TAKE_IN_ANOTHER_PID_NAMESPACE = """
import sys
sys.path.insert(0, {root!r})
from folds.lock import FoldLock
print(FoldLock({path!r}).acquire())
"""


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid needs root or user namespaces")
def test_a_process_in_another_pid_namespace_with_this_host_name_leaves_a_live_fold_alone(tmp_path):
    """A container on this machine under Docker's --network host has its host name and its own pids: the live
    holder's pid is not there, so by the host name it took the fold over, and the fold was trained twice."""
    from folds.lock import FoldLock

    mine = FoldLock(tmp_path / "lock")
    assert mine.acquire()
    code = TAKE_IN_ANOTHER_PID_NAMESPACE.format(root=str(ROOT), path=str(tmp_path / "lock"))
    took = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert took.stdout.strip() == "False", took.stdout + took.stderr
    assert json.loads((tmp_path / "lock").read_text()) == mine.me
    mine.release()


def test_a_fold_another_process_finishes_while_this_one_takes_its_lock_is_not_trained_again(
        finished_run, demo_source, monkeypatch, capsys):
    """Processes sharing a runs folder (``--fold all`` on each machine): one looks at a fold just before another
    writes its done.json and releases its lock, then takes the free lock (on a network folder the look may be
    older still). It trained the finished fold again from scratch, its last.pt gone: a fold's time lost and its
    files replaced. The look is made again under the lock."""
    import folds.runner
    from folds.lock import FoldLock

    run, out = finished_run
    done = run / "fold_0" / "done.json"
    kept = {f: f.stat().st_mtime_ns for f in (done, run / "fold_0" / "test_probs.csv")}
    hidden = done.with_name("done.json.elsewhere")
    done.rename(hidden)  # not yet written when this process looks
    acquire = FoldLock.acquire

    def the_other_process_finishes_first(self):
        hidden.rename(done)  # ... and released its lock: this one takes it
        return acquire(self)

    monkeypatch.setattr(FoldLock, "acquire", the_other_process_finishes_first)
    monkeypatch.setattr(folds.runner, "train_fold", lambda *a, **k: pytest.fail("a finished fold was trained again"))
    assert main([a for a in tiny_args(demo_source, out) if a != "-q"] + ["--fold", "0"]) == 0
    assert "fold 0 already finished" in "".join(capsys.readouterr())
    assert {f: f.stat().st_mtime_ns for f in kept} == kept
    assert not (run / "fold_0" / "lock").exists()


def _rewrite_settings(run, **changed):
    """What a second process with other settings on the same --name does while the folder has no finished epoch."""
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, **changed}))


@pytest.mark.parametrize("when", ["before its first epoch", "after its first epoch"])
def test_a_process_whose_run_settings_another_process_rewrote_stops_before_mixing_two_recipes(
        when, demo_source, tmp_path, monkeypatch, capsys):
    """Two processes started at nearly the same time on one --name with other settings: each found a folder
    that had not started, so the second rewrote config.json (and the split) while the first prepared or
    trained its first epoch, and the run mixed two recipes. The settings are now checked under the fold's
    lock and after every epoch."""
    from folds.lock import FoldLock

    run = tmp_path / "runs" / "t"
    hook = "acquire" if when == "before its first epoch" else "lost"
    real = getattr(FoldLock, hook)

    def and_another_process_rewrites_the_settings(self):
        result = real(self)
        _rewrite_settings(run, lr=0.5)
        return result

    monkeypatch.setattr(FoldLock, hook, and_another_process_rewrites_the_settings)
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 3, "--n-folds": 2, "--fold": 0})) == 2
    err = capsys.readouterr().err
    assert f"fold 0: another process rewrote {run / 'config.json'} with other settings while this one ran " \
           "(the folder's -> this process's: lr: 0.5 -> 0.002)" in err, err
    history = run / "fold_0" / "history.csv"
    assert (not history.exists()) if hook == "acquire" else len(pd.read_csv(history)) == 1
    assert not (run / "fold_0" / "lock").exists() and not (run / "fold_0" / "done.json").exists()


def test_new_settings_are_refused_while_another_process_trains_the_folders_first_epoch(demo_source, tmp_path,
                                                                                        capsys):
    """A folder whose folds have not finished an epoch takes new settings; not while a live process trains one
    of them with the old ones."""
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 0})
    assert main(args) == 0
    run = tmp_path / "runs" / "t"
    for f in (run / "fold_0").iterdir():
        f.unlink()  # as if its first epoch had not ended yet
    (run / "fold_0" / "lock").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid(), "beat": 30}))
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 1, "--lr": 0.01})) == 2
    assert f"{run} was made with other settings (lr: 0.002 -> 0.01), and another process is training fold_0 " \
           "with the old ones" in capsys.readouterr().err
    (run / "fold_0" / "lock").unlink()  # that process is gone: the folder takes the new settings
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 1, "--lr": 0.01})) == 0
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01


def test_a_fold_whose_holder_lets_go_while_this_process_looks_is_not_skipped(demo_source, tmp_path, monkeypatch,
                                                                             capsys):
    """The lock was held when this process tried it and free when it read who held it: the fold was skipped
    as "being trained by another process" (and taken over "120 min after its last heartbeat"). It is tried
    once more: a fold the holder finished is then skipped as finished (the look under the lock), any other
    is trained."""
    from folds.lock import FoldLock

    acquire, tries = FoldLock.acquire, []

    def held_at_the_first_try(self):
        tries.append(self.path)
        return len(tries) > 1 and acquire(self)

    monkeypatch.setattr(FoldLock, "acquire", held_at_the_first_try)
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 0})) == 0
    assert len(tries) == 2 and (tmp_path / "runs" / "t" / "fold_0" / "done.json").is_file()
    assert "being trained by" not in "".join(capsys.readouterr())
    assert FoldLock.stale_after({}) == FoldLock.stale_after({"host": "h", "pid": 1, "beat": 30})


def test_a_lock_beats_while_held_and_a_lost_machines_lock_is_taken_over(demo_source, tmp_path, monkeypatch, capsys):
    """A Colab session that ended (or a machine lost) on a shared runs folder leaves a lock with another host
    name, which no pid check can judge. The heartbeat was touched once per epoch, so such a lock was honoured
    for 2 h: a reconnected session's --resume skipped the fold it had been training. Now the holder beats
    from a thread of its own, whatever an epoch takes, and a lock silent for STALE_SECONDS is taken over."""
    import threading

    import folds.lock
    import folds.runner
    from folds.lock import STALE_SECONDS, FoldLock

    monkeypatch.setattr(folds.lock, "HEARTBEAT_SECONDS", 0.05)
    path = tmp_path / "lock"
    mine = FoldLock(path)
    assert mine.acquire()
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime < 5  # beaten by the thread, with no epoch ending
    mine.release()
    assert not path.exists()
    # taken over while this holder was paused: it beats no more, or the new holder's lock would look live
    # after that holder is gone
    assert mine.acquire()
    path.write_text(json.dumps({"host": "other-machine", "pid": 7, "beat": 30}))
    time.sleep(0.3)  # a beat already under way when the lock changed hands ends first
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    time.sleep(0.5)
    assert time.time() - path.stat().st_mtime > 3000
    mine.release()
    assert path.is_file()
    path.unlink()

    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2})
    lock = tmp_path / "runs" / "t" / "fold_0" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "colab-vm-that-ended", "pid": 4242, "beat": 30}))  # beaten just now
    # (its holder beats: this process comes back to the fold, sees the beat and leaves the fold to it)
    beating, stop = threading.Thread(target=lambda: [os.utime(lock) for _ in iter(lambda: stop.wait(0.05), True)]), \
        threading.Event()
    monkeypatch.setattr(folds.runner, "LOCK_POLL_SECONDS", 0.1)
    beating.start()
    try:
        assert main([a for a in args if a != "-q"] + ["--fold", "0"]) == 0
    finally:
        stop.set()
        beating.join()
    out = "".join(capsys.readouterr())
    assert "fold 0 is being trained by host colab-vm-that-ended, pid 4242, last heartbeat" in out, out
    assert f"{STALE_SECONDS // 60} min after its last heartbeat (or delete {lock} now)" in out
    assert "fold 0: its holder beat; it is training the fold, which is left to it." in out, out
    assert not (lock.parent / "done.json").exists()
    old = time.time() - STALE_SECONDS - 1  # silent for longer: that session has ended
    # (an older checkout's lock, without "beat", was touched once per epoch: it keeps the 2-hour limit)
    lock.write_text(json.dumps({"host": "older-checkout", "pid": 4242}))
    os.utime(lock, (old, old))
    assert FoldLock(lock).holder() == {"host": "older-checkout", "pid": 4242}
    lock.write_text(json.dumps({"host": "colab-vm-that-ended", "pid": 4242, "beat": 30}))
    os.utime(lock, (old, old))
    assert FoldLock(lock).holder() is None
    assert main(args + ["--fold", "0", "--resume"]) == 0
    assert (lock.parent / "done.json").is_file() and not lock.exists()


def test_a_fold_whose_holder_went_silent_is_taken_over_once_the_others_are_done(demo_source, tmp_path, monkeypatch,
                                                                                capsys):
    """A Kaggle version copies the last version's runs back (a copy's lock looks freshly beaten), or a Colab
    session reconnects within minutes of the one that ended: the fold that session held was skipped, the others
    trained, and the run ended unfinished, to be run again 10 minutes later by hand. Now the process comes back
    to it when its other folds are done, waits out the holder's silence, and takes it over as that rerun would;
    where --time-limit leaves too little for the wait, the holder is only watched: one that beats keeps its fold
    (exit 0), and a silent one makes the command say with 75 (as at any stop at the limit) to run it again."""
    import folds.lock
    import folds.runner

    monkeypatch.setattr(folds.runner, "LOCK_POLL_SECONDS", 0.1)
    args = [a for a in tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2}) if a != "-q"]
    lock = tmp_path / "runs" / "t" / "fold_0" / "lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-machine", "pid": 7, "beat": 30}))
    beating = threading.Event()

    def beat():  # a live holder elsewhere: its lock's mtime changes
        while not beating.wait(0.2):
            os.utime(lock)

    threading.Thread(target=beat, daemon=True).start()
    try:  # fold 1 trains; the 10 min wait does not fit: the holder is watched, beats, and keeps its fold
        assert main(args + ["--time-limit", "5"]) == 0
    finally:
        beating.set()
    out = "".join(capsys.readouterr())
    assert "fold 0 is being trained by host another-machine" in out and "skipping it for now" in out, out
    # the limit leaves no time to wait out a silent holder here: the note names the rerun, not this process
    assert "ended), a rerun with --resume takes the fold over 10 min after" in out, out
    assert "fold 0: --time-limit leaves" in out and "watches for up to 90 s whether its holder" in out, out
    assert "fold 0: its holder beat; it is training the fold, which is left to it." in out, out
    assert (lock.parent.parent / "fold_1" / "done.json").is_file() and not (lock.parent / "done.json").exists()

    # copied from the last Kaggle version with its time: silent for 2 min, 3 beats missed, likely gone; 8 min
    # to go before it may be taken over do not fit, and the run is not finished: 75, run it again with --resume
    lock.write_text(json.dumps({"host": "last-kaggle-version", "pid": 7, "beat": 30}))
    os.utime(lock, (time.time() - 120, time.time() - 120))
    assert main(args + ["--time-limit", "5"]) == 75
    out = "".join(capsys.readouterr())
    assert "stopped at the time limit (--time-limit: fold(s) 0 were not taken over: their holder is silent" in out
    assert re.search(r"may be taken over only in [78]\.\d min; a later run with --resume takes them", out), out
    assert not (lock.parent / "done.json").exists()

    monkeypatch.setattr(folds.lock, "STALE_SECONDS", 3)
    lock.write_text(json.dumps({"host": "last-kaggle-version", "pid": 7, "beat": 30}))
    started = time.time()
    assert main(args) == 0
    out = "".join(capsys.readouterr())
    assert "ended), this process, once its other folds are done, takes the fold over" in out, out
    assert "fold 0: this process waits up to" in out and "then takes the fold over" in out, out
    assert time.time() - started >= 3 - 0.5  # the lock was taken over only once silent for STALE_SECONDS
    assert (lock.parent / "done.json").is_file() and not lock.exists()
    assert (tmp_path / "runs" / "t" / "scores.json").is_file()  # the run joined: every fold is done


def test_a_torchrun_group_does_not_come_back_to_a_held_fold(demo_source, tmp_path, monkeypatch):
    """Each rank would read the lock on its own and might call the group's run_fold alone: a hang."""
    from folds import distributed
    from folds.config import saved_config
    from folds.runner import FoldRunner

    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--fold": 1})) == 0
    runner = FoldRunner.open(saved_config(tmp_path / "runs" / "t"), resume=True)
    monkeypatch.setattr(FoldRunner, "run_fold", lambda self, k, *a: pytest.fail("a rank came back to the fold"))
    monkeypatch.setattr(distributed, "world", lambda: (1, 2))
    assert runner.come_back([0]) == {}  # free: a plain process would train it now
    monkeypatch.setattr(distributed, "world", lambda: (0, 1))
    with pytest.raises(pytest.fail.Exception):
        runner.come_back([0])


def test_a_process_whose_fold_was_taken_over_while_it_was_paused_stops(demo_source, tmp_path, monkeypatch, capsys):
    """Paused (Ctrl-Z) for longer than STALE_SECONDS, a holder beats no more and another process takes the fold
    over; when it wakes it must not train on beside that one: it stops after the epoch, leaving the lock alone."""
    from folds.lock import FoldLock

    lost = FoldLock.lost

    def taken_while_paused(self):
        self.path.write_text(json.dumps({"host": "other-machine", "pid": 7}))
        return lost(self)

    monkeypatch.setattr(FoldLock, "lost", taken_while_paused)
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 3, "--n-folds": 2, "--fold": 0})) == 2
    err = capsys.readouterr().err
    assert "this process no longer holds the fold: it was taken over by host other-machine, pid 7" in err, err
    fold = tmp_path / "runs" / "t" / "fold_0"
    assert json.loads((fold / "lock").read_text())["host"] == "other-machine"  # left to its holder
    assert len(pd.read_csv(fold / "history.csv")) == 1 and not (fold / "done.json").exists()


def _contend(path, barrier, results, i):
    from folds.lock import FoldLock
    lock = FoldLock(path)
    barrier.wait()
    won = lock.acquire()
    results[i] = won
    if won:
        import time as t
        t.sleep(0.5)  # hold it while the others try


@pytest.mark.parametrize("stale_first", [False, True])
def test_fold_lock_has_exactly_one_winner_among_many_contenders(tmp_path, stale_first):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for attempt in range(5):
        path = tmp_path / f"lock{attempt}"
        if stale_first:  # a dead process's lock: every contender tries to break it at once
            import socket
            path.write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 12345}))
        n = 12
        barrier, results = ctx.Barrier(n), ctx.Array("b", [0] * n)
        procs = [ctx.Process(target=_contend, args=(path, barrier, results, i)) for i in range(n)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sum(results[:]) == 1, list(results[:])


def test_resume_replays_the_uninterrupted_run_exactly(demo_source, tmp_path):
    from dataclasses import replace

    import numpy as np
    import torch

    from folds.config import resolve_config
    from folds.data import load_dataset
    from folds.engine import Precision
    from folds.train import train_fold

    cfg = resolve_config({"data_dir": str(demo_source), "img_size": 32, "epochs": 3, "workers": 0,
                          "patience": 10}, "demo")
    ds = load_dataset(demo_source)
    tr, va = np.arange(0, len(ds.train), 2), np.arange(1, len(ds.train), 2)
    full = train_fold(cfg, ds, tr, va, tmp_path / "full")

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, ds, tr, va, tmp_path / "cut", on_epoch=stop_after_first)
    # resumed with --deterministic and --grad-checkpointing (run-control options): on the CPU they change no digit
    resumed = train_fold(replace(cfg, deterministic=True, grad_checkpointing=True), ds, tr, va, tmp_path / "cut",
                         resume=True)
    assert torch.are_deterministic_algorithms_enabled()
    Precision.resolve("cpu")  # torch's setting is global: back to the default for the tests after this one
    a = learned_history(tmp_path / "full" / "history.csv")
    b = learned_history(tmp_path / "cut" / "history.csv")
    pd.testing.assert_frame_equal(a, b)
    assert resumed["best_epoch"] == full["best_epoch"]
    # the epochs before the cut kept their validation rows in last.pt: the read-down of the best epoch's choice
    # sets all of them side by side, as the uninterrupted fold did
    from folds.stopping import read_val_epochs
    kept = [read_val_epochs(tmp_path / d / "val_epochs.npz") for d in ("full", "cut")]
    assert kept[1]["probs"].shape[0] == 3
    np.testing.assert_allclose(kept[0]["probs"], kept[1]["probs"], atol=1e-6)
    assert resumed["epoch_optimism"] == pytest.approx(full["epoch_optimism"], abs=1e-9)


def test_several_fold_processes_on_one_device_equal_one_process(demo_source, tmp_path):
    # one thread per process on both sides: CPU kernels then add up in the same order
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name, extra in (("one", []), ("three", ["--procs-per-gpu", "3"])):
        args = tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 3, "--name": name, "--num-workers": 0})
        proc = subprocess.run([sys.executable, str(ROOT / "folds" / "run.py"), *args, *extra], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (pd.read_csv(tmp_path / "runs" / n / "oof.csv", dtype={"id": str}) for n in ("one", "three"))
    pd.testing.assert_frame_equal(a, b)
    subs = [pd.read_csv(tmp_path / "subs" / f"{n}_folds-mean.csv", dtype=str) for n in ("one", "three")]
    pd.testing.assert_frame_equal(*subs)
    # --force goes to the fold processes, and the parent, which only joins, trains nothing again
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 3, "--name": "three", "--num-workers": 0})
    args.remove("-q")  # the fold lines say which process trained what
    proc = subprocess.run([sys.executable, str(ROOT / "folds" / "run.py"), *args, "--fold", "0,1", "--force",
                           "--procs-per-gpu", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert [out.count(f"fold {k}: ") for k in (0, 1)] == [2, 2], out  # its paintings line and its OOF line
    assert "already finished" not in out and "OOF macro-F1" in out


def test_side_by_side_processes_use_the_cores_without_oversubscribing_them():
    from common.machine import side_by_side_workers

    for cores, procs in ((16, 6), (16, 3), (16, 2), (8, 3), (2, 2), (2, 1)):
        w = side_by_side_workers(cores, procs)
        # each main thread counts as half a core: together they fit the machine ...
        assert procs * (w + 0.5) <= cores, (cores, procs, w)
        # ... and leave less than one more worker per process idle
        assert procs * (w + 1.5) > cores, (cores, procs, w)
    assert side_by_side_workers(16, 6) == 2  # was 1: 6 processes on 16 cores left 4 cores idle


def test_side_by_side_processes_share_the_cores_as_torch_threads(monkeypatch):
    """Each process's torch would start as many threads as the machine has cores: two demo fold processes on 2
    cores took 15x as long an epoch. The fold processes and Optuna's local workers get their share of the cores
    (``OMP_NUM_THREADS``, read as torch starts), unless the user set it."""
    import argparse

    from common.machine import side_by_side_env
    from folds.config import RunConfig
    from folds.run import start_side_by_side
    from tuning.tune import _worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [side_by_side_env(c, n) for c, n in ((16, 3), (2, 2), (2, 3))] == [
        {"OMP_NUM_THREADS": "5"}, {"OMP_NUM_THREADS": "1"}, {"OMP_NUM_THREADS": "1"}]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, env=None, **_: started.append(env) or argparse.Namespace())
    start_side_by_side([], RunConfig(name="r", workers=0), [0, 1, 2, 3, 4], 3)
    assert [e["OMP_NUM_THREADS"] for e in started] == ["5"] * 3
    started.clear()  # two folds for 3 processes: 2 start, and the cores are split in two, not in three
    start_side_by_side([], RunConfig(name="r", workers=0), [0, 1], 3)
    assert [e["OMP_NUM_THREADS"] for e in started] == ["8"] * 2
    assert _worker_env(0, 4)["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting is kept
    assert side_by_side_env(16, 3) == {} and _worker_env(0, 4)["OMP_NUM_THREADS"] == "2"


def test_default_workers_count_the_cores_this_process_was_given_and_share_them_between_torchrun_ranks(monkeypatch):
    import os

    from folds import loader

    monkeypatch.setattr(os, "cpu_count", lambda: 128)  # the node; a Slurm job or container got 4 of its cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader.default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert loader.default_workers() == 8  # at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 torchrun ranks on this node: 4 cores each
    assert loader.default_workers() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert loader.default_workers() == 0  # a core each: the main process loads


def fake_gpus(monkeypatch, n: int, visible: str | None = None):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_gpus_spread_the_fold_processes_one_gpu_each(monkeypatch):
    """A Kaggle T4 x2: --gpus all puts each fold process on one GPU through CUDA_VISIBLE_DEVICES,
    --procs-per-gpu of them on each, round-robin over the folds."""
    import argparse

    from common import UserError
    from common.progress import LINES_ENV
    from folds.config import RunConfig
    from folds.run import fold_gpus, start_side_by_side

    args = argparse.Namespace(ray=None, ray_runs=None)
    fake_gpus(monkeypatch, 2)
    assert fold_gpus("all", RunConfig(), args) == fold_gpus("2", RunConfig(), args) == ["0", "1"]
    assert fold_gpus("1", RunConfig(), args) == [None]  # the default: this process's device
    fake_gpus(monkeypatch, 2, visible="3,GPU-5f2e")  # the parent was given two GPUs: the children get those names
    assert fold_gpus("all", RunConfig(), args) == ["3", "GPU-5f2e"]
    from tuning.tune import _worker_env  # Optuna's local workers take one GPU each the same way
    assert [_worker_env(i, 3)["CUDA_VISIBLE_DEVICES"] for i in range(3)] == ["3", "GPU-5f2e", "3"]
    started = []
    def popen(argv, env=None, **_):
        started.append((argv, env))
        return argparse.Namespace()  # a stand-in process

    monkeypatch.setattr(subprocess, "Popen", popen)
    start_side_by_side([], RunConfig(name="r", workers=0), [0, 1, 2, 3, 4], 4, gpus=["0", "1"])
    folds = [a[a.index("--fold") + 1] for a, _ in started]
    assert folds == ["0,4", "1", "2", "3"]
    assert [e["CUDA_VISIBLE_DEVICES"] for _, e in started] == ["0", "1", "0", "1"]
    started.clear()
    start_side_by_side([], RunConfig(name="r", workers=0), [0, 1, 2], 3)  # --procs-per-gpu alone: one device
    assert [e["CUDA_VISIBLE_DEVICES"] for _, e in started] == ["3,GPU-5f2e"] * 3  # the parent's own
    assert all(e[LINES_ENV] for _, e in started)  # lines, not bars that would clash on one terminal
    started.clear()  # options the user abbreviated (argparse takes --gpu for --gpus) do not reach the children
    start_side_by_side(["--gpu", "2", "--procs", "2"], RunConfig(name="r", workers=0), [0, 1], 2)
    from folds.run import build_parser
    child = build_parser().parse_args(started[0][0][2:])
    assert (child.gpus, child.procs_per_gpu, child.no_join, child.fold) == ("1", 1, True, "0")

    for spec, n, cfg, message in (("3", 2, RunConfig(), "sees 2 GPU"), ("2", 0, RunConfig(), "sees 0 GPU"),
                                  ("two", 2, RunConfig(), "a count of GPUs"),
                                  ("2", 2, RunConfig(device="cuda:1"), "leave --device auto")):
        fake_gpus(monkeypatch, n)
        with pytest.raises(UserError, match=message):
            fold_gpus(spec, cfg, args)
    fake_gpus(monkeypatch, 0)
    assert fold_gpus("all", RunConfig(), args) == [None]  # no GPU to spread over: one process, as without it
    with pytest.raises(UserError, match="Ray places"):
        fold_gpus("2", RunConfig(), argparse.Namespace(ray="local", ray_runs=None))


def test_gpus_the_machine_lacks_are_refused_before_the_run_folder_is_made(demo_source, tmp_path, capsys):
    from folds.run import main as run_main

    assert run_main(tiny_args(demo_source, tmp_path, **{"--gpus": "2"})) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --gpus 2: this process sees 0 GPU(s)") and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "t").exists()


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_dry_run_checks_times_and_estimates_each_fold_and_writes_nothing(demo_source, tmp_path, capsys,
                                                                           monkeypatch):
    """A Kaggle version ends at 12 hours: --dry-run says in seconds whether the folds fit, from a probe of the
    run's own training and prediction, and leaves the run folder (new, or half-trained) as it was."""
    import folds.dry_run as dry

    plans = []
    real = dry.dry_run
    monkeypatch.setattr(dry, "dry_run", lambda *a, **k: plans.append(real(*a, **k)) or plans[-1])
    args = tiny_args(demo_source, tmp_path, **{"--n-folds": 3, "--epochs": 3})
    run = tmp_path / "runs" / "t"
    assert main(args + ["--dry-run", "--time-limit", "600"]) == 0
    out = capsys.readouterr().out
    assert not run.exists() and not (tmp_path / "subs").exists()
    plan = plans[-1]
    assert plan["training"] == [0, 1, 2] and plan["probe"]["epochs"] == 2 and plan["probe"]["fold"] == 0
    test = len(pd.read_csv(demo_source / "test.csv"))
    for k, d in plan["folds_detail"].items():
        assert d["epochs"] == 3 and d["views"] == 2  # --tta hflip
        assert d["predicted_images"] == d["val_paintings"] * 3 + test  # whole, 2 crop-OOF crops; the test
        assert d["epoch_seconds"] > 0 and plan["fold_minutes"][k] > 0
    assert "dry run of" in out and "--time-limit 600: it fits." in out, out

    # a fold interrupted after its epochs: refused without --resume, as the run refuses it; with it, only its
    # predictions are left, while the finished fold is not counted at all
    assert main(args + ["--fold", "0,1", "--keep-last"]) == 0
    (run / "fold_0" / "done.json").unlink()
    before = _files(run)
    assert main(args + ["--dry-run"]) == 2
    assert "fold 0 was interrupted" in capsys.readouterr().err
    assert main(args + ["--dry-run", "--resume", "--time-limit", "1e-6"]) == 0
    plan, out = plans[-1], capsys.readouterr().out
    assert plan["training"] == [0, 2] and plan["probe"]["fold"] == 0
    assert plan["folds_detail"][0]["epochs"] == 0 and plan["folds_detail"][2]["epochs"] == 3
    assert plan["fold_minutes"][0] < plan["fold_minutes"][2]
    assert "it does not fit" in out and "--resume goes on" in out, out
    assert main(args + ["--dry-run", "--fold", "1"]) == 0
    assert "nothing to train" in capsys.readouterr().out and plans[-1]["training"] == []
    # 3 processes asked for 3 folds, one of them finished: 2 start (the estimate said 3 would share the machine)
    assert main(args + ["--dry-run", "--resume", "--fold", "0,1,2", "--procs-per-gpu", "3"]) == 0
    assert plans[-1]["processes"] == 2 and "the 2 fold processes share" in capsys.readouterr().out
    # a fold another machine holds (a lock copied with the run folder looks alive until it misses its beats): the
    # run would skip it, and the dry run says so, with the run's own line, rather than time it
    (run / "fold_0" / "lock").write_text(json.dumps({"host": "last-kaggle-version", "pid": 7, "beat": 30}))
    assert main(args + ["--dry-run", "--resume", "--fold", "0,1"]) == 0
    out = capsys.readouterr().out
    assert plans[-1]["training"] == [] and "fold 0 is being trained by host last-kaggle-version, pid 7, last " \
        "heartbeat 0 s ago; the run would skip it for now. If that process is gone (its machine, or a Colab or " \
        "Kaggle session, ended), the run, once its other folds are done, takes the fold over 10 min after its last " \
        "heartbeat" in out and "fold 1 is finished" in out, out
    # under a --time-limit shorter than that wait, the run would not take it over: a rerun would
    assert main(args + ["--dry-run", "--resume", "--fold", "0,1", "--time-limit", "5"]) == 0
    assert "Kaggle session, ended), a rerun with --resume takes the fold over 10 min after" in capsys.readouterr().out
    # one whose holder has missed its beats: the run would come back to it, wait out the rest and train it
    os.utime(run / "fold_0" / "lock", (time.time() - 300, time.time() - 300))
    assert main(args + ["--dry-run", "--resume", "--fold", "0,1"]) == 0
    plan, out = plans[-1], capsys.readouterr().out
    assert plan["training"] == [0] and plan["silent"][0] == pytest.approx(300, abs=30)
    assert plan["wait_minutes"] == pytest.approx(5, abs=0.5)  # fold 1 is finished: nothing to train first
    assert plan["minutes"] == pytest.approx(plan["fold_minutes"][0] + plan["wait_minutes"])
    assert "fold 0's holder has missed its beats: the run would come back to it once its other folds are done and " \
           "take it over once its lock is silent long enough (in about 5 min); it is counted below, with 5 min of " \
           "waiting after the other folds." in out, out
    (run / "fold_0" / "lock").unlink()
    # the full-data model: its epochs are the finished folds' median best epoch, as --fold full trains it
    assert main(args + ["--dry-run", "--fold", "full"]) == 0
    assert plans[-1]["folds_detail"]["full"]["epochs"] == json.loads((run / "fold_1" / "done.json").read_text())[
        "best_epoch"] and plans[-1]["folds_detail"]["full"]["val_paintings"] == 0
    # other settings on a started folder: refused as the run refuses them
    assert main(args + ["--dry-run", "--lr", "0.1"]) == 2
    assert "was made with other settings" in capsys.readouterr().err
    assert _files(run) == before
    assert main(args + ["--dry-run", "--ray", "local"]) == 2


def test_a_dry_run_whose_batch_does_not_fit_finds_the_lightest_change_that_does(demo_source, tmp_path, capsys,
                                                                                 monkeypatch):
    """A Colab T4 has 15 GiB: where the batch does not fit, the dry run tries the same run with gradient
    checkpointing, then half batches with twice the accumulation, and estimates the first that fits; where
    none does, one error lists what was tried. (The GPU's out-of-memory error is simulated above a batch.)"""
    import torch

    import folds.dry_run as dry

    def fits_below(limit, checkpointed_limit):
        def train_fold(cfg, *args, **kwargs):
            if cfg.batch_size > (checkpointed_limit if cfg.grad_checkpointing else limit):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(cfg, *args, **kwargs)
        return train_fold

    real = dry.train_fold
    args = tiny_args(demo_source, tmp_path, **{"--n-folds": 2, "--epochs": 2, "--batch-size": 16})
    monkeypatch.setattr(dry, "train_fold", fits_below(8, 16))
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("--batch-size 16 ran out of GPU memory; it fits with --grad-checkpointing, which the figures below are "
            "for (the same run, slower") in out, out
    monkeypatch.setattr(dry, "train_fold", fits_below(4, 8))
    assert main(args + ["--dry-run"]) == 0
    assert ("it fits with --batch-size 8 --grad-accum-steps 2 --grad-checkpointing, which the figures below are for "
            "(a new run's recipe") in capsys.readouterr().out
    monkeypatch.setattr(dry, "train_fold", fits_below(1, 1))
    assert main(args + ["--dry-run"]) == 2
    err = capsys.readouterr().err
    assert ("the GPU ran out of memory with resnet10t at 32 px and --batch-size 16, and also with "
            "--grad-checkpointing; --batch-size 8 --grad-accum-steps 2 --grad-checkpointing; --batch-size 4 "
            "--grad-accum-steps 4 --grad-checkpointing; --batch-size 2 --grad-accum-steps 8 --grad-checkpointing "
            "(nothing was written)") in err
    assert not (tmp_path / "runs" / "t").exists()


def test_an_albumentations_too_old_for_the_pipelines_is_named_before_anything_is_written(demo_source, tmp_path,
                                                                                        capsys, monkeypatch):
    """A notebook image's albumentations 1.3 has no Affine(border_mode=...): the first fold failed with a
    TypeError after the run folder was written. Its constructor's refusal is simulated here."""
    import folds.augment

    def old_affine(*args, border_mode=None, **kwargs):
        if border_mode is not None:
            raise TypeError("Affine.__init__() got an unexpected keyword argument 'border_mode'")

    monkeypatch.setattr(folds.augment.A, "Affine", old_affine)
    monkeypatch.setattr(folds.augment.A, "__version__", "1.3.1")
    assert main(tiny_args(demo_source, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: albumentations 1.3.1 cannot build this suite's augmentations (TypeError: "), err
    assert "pip install -r requirements.txt" in err and not (tmp_path / "runs" / "t").exists()
