import json
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

from common import UserError
from conftest import ROOT
from folds.config import resolve_config
from tuning.space import DEFAULT_SPACE, load_space
from tuning.storage import make_storage
from tuning.tune import main as tune_main

TINY = ["--epochs", "3", "--img-size", "32", "--num-workers", "0", "--preset", "demo"]
PG_URL = os.environ.get("OPTUNA_TEST_PG", "postgresql://postgres@127.0.0.1:5433/optuna_ci")


def tune(tmp_path, demo_source, *extra):
    return tune_main(["--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"),
                      "--data-dir", str(demo_source), *TINY, *extra])


@pytest.fixture(scope="module")
def demo_study(demo_source, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    assert tune(tmp, demo_source, "--study", "s", "--n-trials", "5") == 0
    return tmp


def load(tmp, name="s"):
    return optuna.load_study(study_name=name, storage=make_storage(None, tmp / "tuning" / name))


def test_default_space_matches_the_recipe_knobs():
    assert set(DEFAULT_SPACE) == {"lr", "step_size", "gamma"}
    assert DEFAULT_SPACE["lr"]["log"] and DEFAULT_SPACE["lr"]["low"] == 1e-5 and DEFAULT_SPACE["lr"]["high"] == 1e-2


def test_space_file_widens_and_is_checked(tmp_path):
    f = tmp_path / "space.yaml"
    f.write_text("dropout: {type: float, low: 0.1, high: 0.5}\n"
                 "optimizer: {type: categorical, choices: [adam, adamw]}\n")
    assert set(load_space(f)) == {"lr", "step_size", "gamma", "dropout", "optimizer"}
    f.write_text("warp_speed: {type: float, low: 1, high: 2}\n")
    with pytest.raises(UserError, match="'warp_speed' is not a training option"):
        load_space(f)
    f.write_text("gamma: {type: float, low: 0.9, high: 0.1}\n")
    with pytest.raises(UserError, match="needs low < high"):
        load_space(f)


def test_a_knob_no_trial_would_use_is_left_out_of_the_default_space_and_refused_from_a_file(tmp_path):
    """StepLR's step_size and gamma under --sched cosine (the strong preset), a pseudo threshold without --pseudo:
    every trial drew them and none used them, so a study spent its trials and its best.json on them, and a plot
    of them read as 'no effect'. The default space leaves them out (a study made before goes on as it was); a
    --space file that names one is refused; 'name: null' leaves a default entry out."""
    from tuning.space import live_space
    from tuning.study import check_identity, fingerprint

    cosine = resolve_config({"data_dir": "x"}, "strong", None)
    space, left_out = live_space(load_space(), cosine)
    assert set(space) == {"lr"} and set(left_out) == {"step_size", "gamma"}
    assert live_space(load_space(), resolve_config({"data_dir": "x"}, None, None))[1] == {}  # StepLR: all used
    f = tmp_path / "space.yaml"
    f.write_text("sched: {type: categorical, choices: [step, cosine]}\n")  # some trials are StepLR's: kept
    assert live_space(load_space(f), cosine)[1] == {}
    f.write_text("pseudo_threshold: {type: float, low: 0.5, high: 0.99}\n")
    with pytest.raises(UserError, match=r"'pseudo_threshold' changes nothing in any trial .* it is hard "
                                        r"pseudo-labels': --pseudo RUN with --pseudo-mode hard"):
        live_space(load_space(f), cosine)
    f.write_text("mix_prob: {type: float, low: 0.2, high: 1.0}\n")  # the default recipe has no MixUp or CutMix
    with pytest.raises(UserError, match="'mix_prob' changes nothing"):
        live_space(load_space(f), resolve_config({"data_dir": "x"}, None, None))
    f.write_text("step_size: null\ngamma: null\ndropout: {type: float, low: 0.1, high: 0.5}\n")
    assert set(load_space(f)) == {"lr", "dropout"}
    f.write_text("lr: null\nstep_size: null\ngamma: null\n")
    with pytest.raises(UserError, match="leaves nothing to tune"):
        load_space(f)
    # a study made with the whole default space under cosine (before): it goes on drawing what it drew
    study = optuna.create_study()
    study.set_user_attr("setup", {"epochs": 3})
    study.set_user_attr("search_space", fingerprint(DEFAULT_SPACE))
    assert check_identity(study, space, {"epochs": 3}, left_out) == DEFAULT_SPACE
    study.set_user_attr("search_space", fingerprint(space))  # one made now
    assert check_identity(study, space, {"epochs": 3}, left_out) == space


def test_a_diverged_trial_scores_zero_so_the_sampler_avoids_its_region(demo_source, tmp_path, monkeypatch):
    """A trial whose loss blows up (the engine's FloatingPointError) completes with 0: as a failed trial
    the sampler would leave it out of its model, and keep drawing there. It says where it diverged."""
    import tuning.objective

    def diverge(*args, **kwargs):
        raise FloatingPointError("training loss is not finite; try a lower --lr or --amp off.")

    monkeypatch.setattr(tuning.objective, "train_fold", diverge)
    assert tune(tmp_path, demo_source, "--study", "d", "--n-trials", "1", "--fold", "0") == 0
    (trial,) = load(tmp_path, "d").trials
    assert trial.state == TrialState.COMPLETE and trial.value == 0.0
    assert trial.user_attrs["diverged"] == "fold 0"
    result = json.loads((tmp_path / "tuning" / "d" / "trials" / "trial_0000" / "result.json").read_text())
    assert result["value"] == 0.0 and result["diverged"] == "fold 0"


def test_a_stopped_trial_is_tried_again_by_the_studys_next_run(demo_source, tmp_path, monkeypatch, caplog):
    """Ctrl-C or SIGTERM in a trial: Optuna marks it FAIL, and its parameters wait for the next run, as a
    killed worker's do (before, only the kill kept them: the clean stop lost them). Optuna's own line for
    the failed trial comes without the traceback it used to print."""
    import tuning.objective

    real = tuning.objective.train_fold

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tuning.objective, "train_fold", stop)
    assert tune(tmp_path, demo_source, "--study", "q", "--n-trials", "1", "--fold", "0") == 130
    failed = [r for r in caplog.records if r.getMessage().startswith("Trial 0 failed with parameters")]
    assert failed and failed[0].exc_info is None and "Traceback" not in caplog.text, caplog.text
    stopped, queued = load(tmp_path, "q").trials
    assert stopped.state == TrialState.FAIL and queued.state == TrialState.WAITING
    assert queued.user_attrs["retry_of"] == stopped.number
    monkeypatch.setattr(tuning.objective, "train_fold", real)
    assert tune(tmp_path, demo_source, "--study", "q", "--n-trials", "1", "--fold", "0") == 0
    retried = load(tmp_path, "q").trials[1]
    assert retried.state == TrialState.COMPLETE and retried.params == stopped.params


def test_a_trial_whose_session_ended_elsewhere_is_tried_again_once_its_heartbeat_is_stale(demo_source, tmp_path,
                                                                                           monkeypatch):
    """A Colab session that ended mid-trial, its study folder resumed in the next (another host): the journal has
    no heartbeat, and the trial stayed RUNNING for good, its parameters never tried. A worker now holds its
    trial's lock with the fold lock's heartbeat: a trial of another host whose heartbeat is 11 minutes old is
    failed and queued again; one that beat a moment ago (a live worker on a shared folder) and one of a worker
    from before the lock are left as they are."""
    from optuna.distributions import FloatDistribution

    from tuning.study import TRIAL_LOCK, trial_dir

    assert tune(tmp_path, demo_source, "--study", "c", "--n-trials", "1", "--fold", "0") == 0
    study = load(tmp_path, "c")
    trials = tmp_path / "tuning" / "c" / "trials"
    ended, live, old = (study.ask({"lr": FloatDistribution(1e-5, 1e-2, log=True)}) for _ in range(3))
    for t, age in ((ended, 11 * 60), (live, 5), (old, None)):
        t.set_user_attr("host", "colab-vm-gone")
        t.set_user_attr("pid", 4242)
        if age is not None:
            lock = trial_dir(trials, t.number) / TRIAL_LOCK
            lock.parent.mkdir(parents=True)
            lock.write_text(json.dumps({"host": "colab-vm-gone", "pid": 4242, "beat": 30}))
            os.utime(lock, (time.time() - age, time.time() - age))
    assert tune(tmp_path, demo_source, "--study", "c", "--n-trials", "2", "--fold", "0") == 0
    by_number = {t.number: t for t in load(tmp_path, "c").trials}
    assert by_number[ended.number].state == TrialState.FAIL
    retried = [t for t in by_number.values() if t.user_attrs.get("retry_of") == ended.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params["lr"] == ended.params["lr"]  # (the other parameters it had not drawn yet)
    assert by_number[live.number].state == by_number[old.number].state == TrialState.RUNNING
    # the stale lock was taken to retry its trial (two workers finding it at once: one retries it) and let go;
    # a trial that ends releases its own: only the live worker's is left
    assert set(trials.glob(f"*/{TRIAL_LOCK}")) == {trial_dir(trials, live.number) / TRIAL_LOCK}
    # a lock copied with the study's folder (cp -r) looks fresh: it goes stale during the session, and the check
    # after each trial finds it then
    import tuning.objective

    real = tuning.objective.train_fold

    def train_and_age(*args, **kwargs):
        lock = trial_dir(trials, live.number) / TRIAL_LOCK
        if lock.exists():  # (until the check takes it)
            os.utime(lock, (time.time() - 660, time.time() - 660))
        return real(*args, **kwargs)

    monkeypatch.setattr(tuning.objective, "train_fold", train_and_age)
    assert tune(tmp_path, demo_source, "--study", "c", "--n-trials", "4", "--fold", "0") == 0
    trials_now = load(tmp_path, "c").trials
    assert trials_now[live.number].state == TrialState.FAIL
    retried = [t.state for t in trials_now if t.user_attrs.get("retry_of") == live.number]
    assert len(retried) == 1 and retried[0] in (TrialState.COMPLETE, TrialState.PRUNED), retried  # trained again


def test_the_files_a_killed_trial_left_are_removed_by_the_studys_next_run(demo_source, tmp_path, capsys):
    """A worker killed mid-trial (SIGKILL, the OOM killer, a Colab session that ended) removed nothing: its trial's
    checkpoints and a checkpoint's half-written temp file stayed for good, since a retry is a new trial. The
    study's next run removes them once the trial has ended (failed, as its worker is gone); a trial still running
    keeps its files, and --keep-checkpoints keeps the checkpoints."""
    from optuna.distributions import FloatDistribution

    from tuning.study import TRIAL_LOCK, trial_dir

    assert tune(tmp_path, demo_source, "--study", "k", "--n-trials", "1", "--fold", "0") == 0
    study = load(tmp_path, "k")
    trials = tmp_path / "tuning" / "k" / "trials"
    old = time.time() - 11 * 60

    def killed_mid_trial(age):
        t = study.ask({"lr": FloatDistribution(1e-5, 1e-2, log=True)})
        t.set_user_attr("host", "colab-vm-gone")
        t.set_user_attr("pid", 4242)
        fold = trial_dir(trials, t.number) / "fold_0"
        fold.mkdir(parents=True)
        for name in ("best.pt", "last.pt", ".last.pt.x1y2.tmp", "history.csv"):
            (fold / name).write_bytes(b"0" * 2**20)
            os.utime(fold / name, (old, old))
        lock = fold.parent / TRIAL_LOCK
        lock.write_text(json.dumps({"host": "colab-vm-gone", "pid": 4242, "beat": 30}))
        os.utime(lock, (time.time() - age, time.time() - age))
        return fold

    ended, live = killed_mid_trial(11 * 60), killed_mid_trial(5)
    assert tune(tmp_path, demo_source, "--study", "k", "--n-trials", "2", "--fold", "0") == 0
    assert sorted(p.name for p in ended.iterdir()) == ["history.csv"]
    assert len(list(live.iterdir())) == 4  # its worker may be alive: its files are its own
    out = "".join(capsys.readouterr())
    assert f"removed 3.0 MB that trials stopped by a kill left in {trials} (their checkpoints" in out, out
    assert set(trials.glob("*/fold_*/*.pt")) == {live / "best.pt", live / "last.pt"}  # clean ends removed their own

    kept = killed_mid_trial(11 * 60)
    assert tune(tmp_path, demo_source, "--study", "k", "--n-trials", "3", "--fold", "0", "--keep-checkpoints") == 0
    assert sorted(p.name for p in kept.iterdir()) == ["best.pt", "history.csv", "last.pt"]


def test_a_stop_that_lands_as_optuna_starts_a_trials_heartbeat_thread_still_ends_the_process(demo_source, tmp_path):
    """A stop (here Ctrl-C) raised as Optuna has started a trial's heartbeat thread, before its with-block began,
    skips the line that tells the thread to stop. The thread is no daemon: Python waited for it at exit for good,
    and it beat for the trial, which was never failed or retried (a study worker on PostgreSQL hung so in
    benchmarks/study_kill_fuzz.py). The command now ends as any stopped one does."""
    args = ["--study", "h", "--n-trials", "1", "--storage", f"sqlite:///{tmp_path}/h.db", "--heartbeat", "1",
            "--data-dir", str(demo_source), "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir",
            str(tmp_path / "runs"), *TINY]
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from optuna.storages._heartbeat import BaseHeartbeatThread\n"
            "def enter(self):\n"
            "    self.start()\n"
            "    raise KeyboardInterrupt  # the stop lands here: the thread runs, and __exit__ is never called\n"
            "BaseHeartbeatThread.__enter__ = enter\n"
            "from tuning.tune import main\n"
            f"sys.exit(main({args!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and "interrupted" in done.stderr, done.stderr[-2000:]


def test_an_ended_trials_lock_goes_unless_a_live_process_holds_it(tmp_path):
    """On a database the heartbeat fails a killed worker's trial, and no worker takes its lock to do it (on the
    journal, fail_orphaned_trials does): the lock stayed for good (found by benchmarks/study_kill_fuzz.py on
    PostgreSQL). The study's next run removes an ended trial's lock whose holder is gone; one that a live process
    holds (a worker paused past the heartbeat, its trial failed meanwhile) stays."""
    import socket

    from optuna.distributions import FloatDistribution

    from tuning.study import TRIAL_LOCK, tidy_trials, trial_dir

    study = optuna.create_study()
    killed, paused = (study.ask({"x": FloatDistribution(0, 1)}) for _ in range(2))
    gone = subprocess.Popen(["true"])
    gone.wait()
    worker = subprocess.Popen(["sleep", "30"])
    try:
        for t, pid in ((killed, gone.pid), (paused, worker.pid)):
            study.tell(t, state=TrialState.FAIL)
            lock = trial_dir(tmp_path, t.number) / TRIAL_LOCK
            lock.parent.mkdir(parents=True)
            lock.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "beat": 30}))
        tidy_trials(study, tmp_path, keep_checkpoints=False)
        assert not (trial_dir(tmp_path, killed.number) / TRIAL_LOCK).exists()
        assert (trial_dir(tmp_path, paused.number) / TRIAL_LOCK).exists()
    finally:
        worker.kill()
        worker.wait()


def test_a_resumed_study_draws_new_parameters_not_its_first_sessions_again(demo_source, tmp_path):
    """Each session of a study (the next Colab or Kaggle session, a rerun that tops it up) seeded its sampler as
    the first did, and so drew the first session's parameters again: trials already trained. Each session is
    still reproducible."""
    short = ["--fold", "0", "--pruner", "none", "--epochs", "1"]
    for n in (1, 2, 3):
        assert tune(tmp_path, demo_source, "--study", "r", "--n-trials", str(n), *short) == 0
    params = [tuple(sorted(t.params.items())) for t in load(tmp_path, "r").trials]
    assert len(params) == 3 and len(set(params)) == 3, params
    assert tune(tmp_path / "again", demo_source, "--study", "r", "--n-trials", "1", *short) == 0
    assert load(tmp_path / "again", "r").trials[0].params == load(tmp_path, "r").trials[0].params


def test_a_time_limit_stops_a_study_between_epochs_and_keeps_its_summary(demo_source, tmp_path, monkeypatch, capsys):
    """--time-limit: the study stops before an epoch that would not fit; the running trial is queued again,
    best.json is written from the finished trials, and the command exits 75. Each look at the clock is a
    minute later here: trial 0's 3 epochs fit in 4 minutes, trial 1's first does not."""
    import itertools

    import folds.deadline

    clock = itertools.count(0, 60)
    monkeypatch.setattr(folds.deadline, "monotonic", lambda: next(clock))
    assert tune(tmp_path, demo_source, "--study", "t", "--n-trials", "2", "--time-limit", "4") == 75
    err = capsys.readouterr().err
    assert "stopped at the time limit (--time-limit: trial_0001/fold_0 epoch 1 was not started" in err, err
    done, stopped, queued = load(tmp_path, "t").trials
    assert (done.state, stopped.state, queued.state) == (TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING)
    assert queued.user_attrs["retry_of"] == stopped.number
    assert json.loads((tmp_path / "tuning" / "t" / "best.json").read_text())["value"] == done.value
    monkeypatch.undo()
    assert tune(tmp_path, demo_source, "--study", "t", "--n-trials", "2") == 0
    retried = load(tmp_path, "t").trials[2]
    assert retried.state == TrialState.COMPLETE and retried.params == stopped.params


def test_demo_study_prunes_and_writes_best_and_plots(demo_study, capsys):
    study = load(demo_study)
    states = [t.state for t in study.trials]
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    assert finished >= 5 and TrialState.PRUNED in states  # the median pruner stopped a bad trial
    for t in study.trials:
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["seed"] == t.number  # each trial its own seed
            trial_dir = demo_study / "tuning" / "s" / "trials" / f"trial_{t.number:04d}"
            result = json.loads((trial_dir / "result.json").read_text())
            assert result["value"] == pytest.approx(t.value)
    best = json.loads((demo_study / "tuning" / "s" / "best.json").read_text())
    assert best["value"] == max(t.value for t in study.trials if t.state == TrialState.COMPLETE)
    for png in ("history.png", "importances.png", "contour_lr_gamma.png"):
        assert (demo_study / "tuning" / "s" / png).read_bytes()[:4] == b"\x89PNG"
    # best.json feeds the fold runner
    cfg = resolve_config({"data_dir": "x"}, None, None, demo_study / "tuning" / "s" / "best.json")
    assert (cfg.lr, cfg.step_size, cfg.gamma) == tuple(best["params"][k] for k in ("lr", "step_size", "gamma"))


def test_rerun_tops_up_and_summary_only(demo_study, demo_source, capsys):
    before = len(load(demo_study).trials)
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "0") == 0
    assert len(load(demo_study).trials) == before
    out = capsys.readouterr().out
    assert "complete" in out and "pruned" in out and "failed" in out
    # the value is the validation crops' F1 (the demo trains for crops): it said "val macro-F1", which a user
    # read as the whole paintings' F1 (the run table's "val-crop F1" is this one)
    assert "best value (validation-crop macro-F1, mean over folds) " in out, out
    # the printed command trains in a folder of its own: under the default name (model and seed) it met a default
    # run trained before the study, which refused it as "made with other settings"
    best = json.loads((demo_study / "tuning" / "s" / "best.json").read_text())
    # the best of the trials is picked on the same validation paintings: by how much that reads it high
    import re
    said = re.search(r"the best of (\d+) trials' scores on the same validation paintings reads about \+([0-9.]+) "
                     r"high .*expect about ([0-9.]+) of its parameters", out)
    complete = [t for t in load(demo_study).trials if t.state == TrialState.COMPLETE]
    assert said and int(said[1]) == len(complete) >= 2, out
    assert float(said[3]) == pytest.approx(best["value"] - float(said[2]), abs=2e-4)
    # best.json keeps it beside the value, for whoever reads the file and not the log
    assert best["read_down"]["trials"] == int(said[1]) and best["read_down"]["optimism"] == pytest.approx(
        float(said[2]), abs=1e-4) and best["read_down"]["expect"] == pytest.approx(float(said[3]), abs=1e-4)
    # each trial's kept rows at its best epoch are the monitored ones: they score its value again, to the digit
    from common.metrics import get_metric
    from folds.stopping import best_epoch_rows, read_val_epochs
    for t in complete:
        trial = demo_study / "tuning" / "s" / "trials" / f"trial_{t.number:04d}"
        kept = best_epoch_rows(read_val_epochs(trial / "fold_0" / "val_epochs.npz"))
        assert get_metric("macro_f1").score(kept["labels"], kept["probs"]) == pytest.approx(t.value, abs=1e-6)
        assert len(set(kept["ids"])) * 2 == len(kept["ids"])  # the validation crops: 2 a painting
    assert f"next: python folds/run.py --params {demo_study / 'tuning' / 's' / 'best.json'} --fold all --name " \
        f"s-trial{best['trial']}\n" in out, out


def test_other_search_space_is_refused_and_study_kept(demo_study, demo_source, tmp_path, capsys):
    before = len(load(demo_study).trials)
    f = tmp_path / "space.json"
    f.write_text(json.dumps({"dropout": {"type": "float", "low": 0.1, "high": 0.5}}))
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "6", "--space", str(f)) == 2
    assert "created with another search space" in capsys.readouterr().err
    assert len(load(demo_study).trials) == before


def test_a_dry_run_times_a_trial_and_the_heaviest_the_space_can_draw_and_writes_nothing(
        demo_study, demo_source, tmp_path, capsys, monkeypatch):
    """A study on a Kaggle version's 12 hours: --dry-run probes a trial's training with the recipe's settings and
    with each model of the space at its largest batch and image size, says how long the trials take, and names
    the heaviest trial a GPU cannot hold (simulated above a batch) before any trial fails on it. No study is
    opened, a new one's folder is not made and an existing one is left as it was."""
    import torch

    import folds.dry_run as dry
    import tuning.dry_run

    plans = []
    real_plan, real_train = tuning.dry_run.plan_study, dry.train_fold
    monkeypatch.setattr(tuning.dry_run, "plan_study", lambda *a, **k: plans.append(real_plan(*a, **k)) or plans[-1])
    space = tmp_path / "space.yaml"
    space.write_text("batch_size: {type: categorical, choices: [8, 16]}\n"
                     "model: {type: categorical, choices: [resnet10t, resnet18]}\n")
    args = ["--study", "new", "--n-trials", "20", "--fold", "0,1", "--space", str(space), "--batch-size", "8"]
    assert tune(tmp_path, demo_source, *args, "--dry-run", "--time-limit", "600") == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "tuning").exists()
    base, *heaviest = plans[-1]["shapes"]
    assert [s["params"] for s in heaviest] == [{"model": "resnet10t", "batch_size": 16},
                                               {"model": "resnet18", "batch_size": 16}]
    assert base["probe"]["predict_per_image"] == 0  # a trial predicts no test images: none are timed
    assert all(s["trial_minutes"] > 0 for s in plans[-1]["shapes"])
    assert "the heaviest trial the space can draw (--model resnet18 --batch-size 16): training" in out, out
    assert "--n-trials 20: about" in out and "--time-limit 600: it fits." in out, out

    def fits_below(limit):
        def train_fold(cfg, *a, **k):
            if cfg.batch_size > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_train(cfg, *a, **k)
        return train_fold

    monkeypatch.setattr(dry, "train_fold", fits_below(8))
    assert tune(tmp_path, demo_source, *args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("ran out of GPU memory; the trials that draw it would fail") == 2, out
    assert "narrow the search space (--space)" in out and "--n-trials 20: about" in out, out
    monkeypatch.setattr(dry, "train_fold", fits_below(4))  # not even the recipe's batch: the lightest that fits
    assert tune(tmp_path, demo_source, *args, "--dry-run") == 0
    assert "--batch-size 8 ran out of GPU memory; it fits with --batch-size 4 --grad-accum-steps 2" in \
        capsys.readouterr().out
    # an existing study (the next session's): read, its folder and its trials as they were; its finished trials
    # count towards --n-trials, and a setup the study would refuse is refused here, not after the probe
    before = _files(demo_study / "tuning" / "s")
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "9", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "5 of its trials are finished" in out and "--n-trials 9: the 4 trial(s) it leaves after the study's 5 " \
        "finished, about" in out, out
    # 4 workers for the 2 trials it leaves: 2 start (the estimate divided the 2 trials' time by 4)
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "7", "--workers", "4", "--dry-run") == 0
    assert "--workers 4: 2 trials at once; on as many GPUs, about" in capsys.readouterr().out
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "5", "--dry-run") == 0
    assert "the command trains none and only summarises it" in capsys.readouterr().out
    assert tune(demo_study, demo_source, "--study", "s", "--n-trials", "9", "--dry-run", "--epochs", "2") == 2
    assert "was created for another training setup ({'epochs': (3, 2)})" in capsys.readouterr().err
    assert _files(demo_study / "tuning" / "s") == before
    assert tune(tmp_path, demo_source, *args, "--dry-run", "--ray", "local") == 2
    assert "--dry-run: Ray's workers train on the cluster's nodes" in capsys.readouterr().err


def test_a_dry_run_reaches_the_database_and_leaves_it_as_it_was(demo_source, tmp_path, capsys):
    """On a cluster the likeliest failure is the database's URL: the dry run connects to it (the real server
    .ci/run starts), makes no table and opens no study; an unreachable one is the study's own clear error."""
    name = f"dry-{uuid.uuid4().hex[:8]}"
    assert tune(tmp_path, demo_source, "--study", name, "--n-trials", "3", "--storage", PG_URL, "--dry-run") == 0
    assert f"--storage {PG_URL}: reached, and left as it was." in capsys.readouterr().out  # no password to hide
    with pytest.raises(KeyError):
        optuna.load_study(study_name=name, storage=PG_URL)
    url = "postgresql://user:secret@127.0.0.1:1/nowhere"
    assert tune(tmp_path, demo_source, "--study", name, "--storage", url, "--dry-run") == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "secret" not in err and "user:***@" in err, err
    assert not (tmp_path / "tuning").exists()
    # the study there (a trial run by another machine): read and counted, not written to
    assert tune(tmp_path, demo_source, "--study", name, "--n-trials", "1", "--fold", "0", "--storage", PG_URL) == 0
    capsys.readouterr()
    trials = optuna.load_study(study_name=name, storage=PG_URL).get_trials()
    assert tune(tmp_path, demo_source, "--study", name, "--n-trials", "3", "--fold", "0", "--storage", PG_URL,
                "--dry-run") == 0
    assert "1 of its trials are finished" in capsys.readouterr().out
    assert optuna.load_study(study_name=name, storage=PG_URL).get_trials() == trials


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_worker_that_opens_the_study_a_moment_later_sees_its_whole_setup(monkeypatch):
    """Two workers start at once on one storage: the second must never read the study half-written
    (it did, and refused a study made for its own setup), and two that wrote different setups at the
    same moment must not both go on."""
    from tuning.study import open_study

    storage, order = optuna.storages.InMemoryStorage(), []
    real = optuna.Study.set_user_attr

    def record(study, key, value):
        order.append(key)
        real(study, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", record)
    args = {"pruner": optuna.pruners.NopPruner(), "seed": 0}
    open_study("a", storage, DEFAULT_SPACE, {"epochs": 3}, **args)
    assert order == ["setup", "search_space"]  # the marker last: who sees it sees the setup too
    open_study("a", storage, DEFAULT_SPACE, {"epochs": 3}, **args)  # the second worker: the same setup

    def other_worker_between(study, key, value):  # another setup lands between this worker's two writes
        if key == "search_space":
            real(study, "setup", {"epochs": 5})
        real(study, key, value)

    monkeypatch.setattr(optuna.Study, "set_user_attr", other_worker_between)
    with pytest.raises(UserError, match="another training setup"):
        open_study("b", storage, DEFAULT_SPACE, {"epochs": 3}, **args)


def test_steps_are_numbered_across_folds(demo_source, tmp_path):
    assert tune(tmp_path, demo_source, "--study", "two", "--n-trials", "1", "--folds", "0,1", "--pruner", "none") == 0
    t = load(tmp_path, "two").trials[0]
    assert t.state == TrialState.COMPLETE
    assert sorted(t.intermediate_values) == list(range(6))  # fold 0: steps 0-2, fold 1: steps 3-5
    assert {"fold_0_f1", "fold_1_f1"} <= set(t.user_attrs)
    # what trained it: a study's sessions may run on other machines and package versions
    manifest = json.loads((tmp_path / "tuning" / "two" / "trials" / "trial_0000" / "manifest.json").read_text())
    assert manifest["trial"] == 0 and manifest["study"] == "two" and manifest["params"] == t.params
    assert manifest["packages"]["timm"] and "commit" in manifest["git"] and manifest["device"]["type"] == "cpu"


def test_a_study_resumed_with_other_package_versions_says_so(demo_source, tmp_path, capsys, monkeypatch):
    """A study's sessions may run on another Kaggle image or machine, where a torch or timm upgrade can change what
    a trial learns; its trials are still compared as one. The study keeps its first session's versions, and a
    session that runs others says which."""
    import folds.manifest

    short = ["--fold", "0", "--pruner", "none", "--epochs", "1"]
    assert tune(tmp_path, demo_source, "--study", "pk", "--n-trials", "1", *short) == 0
    assert "began with other package versions" not in "".join(capsys.readouterr())
    real = folds.manifest.package_versions
    monkeypatch.setattr(folds.manifest, "package_versions", lambda: {**real(), "timm": "0.9.0"})
    said = f"study 'pk' began with other package versions (timm {real()['timm']} then, 0.9.0 now)"
    assert tune(tmp_path, demo_source, "--study", "pk", "--n-trials", "2", *short, "--dry-run") == 0
    assert said in "".join(capsys.readouterr())  # the dry run says it too
    assert tune(tmp_path, demo_source, "--study", "pk", "--n-trials", "2", *short) == 0
    out = "".join(capsys.readouterr())
    assert said in out, out
    trial = tmp_path / "tuning" / "pk" / "trials" / "trial_0001" / "manifest.json"
    assert json.loads(trial.read_text())["packages"]["timm"] == "0.9.0"  # what trained it


def test_empty_study_summary_is_a_clear_error(demo_source, tmp_path, capsys):
    assert tune(tmp_path, demo_source, "--study", "empty", "--n-trials", "0") == 2
    assert "has no completed trial yet" in capsys.readouterr().err


def test_unreachable_storage_is_a_clear_error_without_the_password(demo_source, tmp_path, capsys):
    url = "postgresql://user:secret@127.0.0.1:1/nowhere"
    assert tune(tmp_path, demo_source, "--study", "x", "--storage", url) == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and "secret" not in err and "user:***@" in err


def test_sqlite_with_parallel_workers_is_refused(demo_source, tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    assert tune(tmp_path, demo_source, "--study", "x", "--storage", url, "--workers", "2") == 2
    assert "SQLite is not safe for parallel workers" in capsys.readouterr().err


def test_local_workers_share_one_study(demo_source, tmp_path):
    assert tune(tmp_path, demo_source, "--study", "w", "--n-trials", "3", "--workers", "2", "--pruner", "none") == 0
    trials = load(tmp_path, "w").trials
    # exactly: a trial two workers begin at once for the last place is ended untrained by the later one
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("surplus") for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both workers ran trials
    # one trial left for two workers: it trains in this process, with every core (two split them, one idle)
    assert tune(tmp_path, demo_source, "--study", "w", "--n-trials", "4", "--workers", "2", "--pruner", "none") == 0
    trials = [t for t in load(tmp_path, "w").trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 4 and trials[-1].user_attrs["pid"] == os.getpid()


def test_a_worker_at_the_count_waits_for_the_others_running_trials():
    """Near the end of a study, each of N workers counted only the finished trials, started one more, and the study
    ended N-1 over --n-trials. A worker whose count the others' running trials reach now waits for them: it stops
    once they finish, and goes on where one fails (to be tried again); the looks for gone workers run meanwhile."""
    from optuna.distributions import FloatDistribution

    from tuning.study import StopAtCount

    dist = {"x": FloatDistribution(0, 1)}
    for then, stops in (("finishes", [True]), ("fails", [])):
        study = optuna.create_study()
        for _ in range(2):
            study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=1.0))
        other = study.ask(dist)  # another worker's, running
        stopped, looks = [], []
        study.stop = lambda stopped=stopped: stopped.append(True)

        def look(s, other=other, looks=looks, then=then):  # the other worker's trial ends during the wait
            looks.append(len(looks))
            if len(looks) == 3:
                s.tell(other, 1.0) if then == "finishes" else s.tell(other, state=TrialState.FAIL)

        StopAtCount(3, look, poll=0)(study)
        assert stopped == stops and len(looks) == 3, then
    StopAtCount(4, poll=0)(study)  # 2 finished, none running: room for more, at once
    assert stopped == []


def test_of_two_trials_begun_for_the_last_place_only_the_later_is_over_the_count():
    """The count and the next trial's start were two steps, so two workers that counted at once each began a trial
    for the study's last place, and it ended one over --n-trials (a CI run did). Trial numbers are given in one
    order: the trials begun before a trial decide whether it is over the count. A worker still waiting at the
    count when --time-limit comes stops as a stopped trial does (TimeUp), not by starting a trial to stop it."""
    from optuna.distributions import FloatDistribution

    from common.interrupt import TimeUp
    from folds.deadline import Deadline
    from tuning.study import StopAtCount

    dist = {"x": FloatDistribution(0, 1)}
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=1.0))
    first, second = study.ask(dist), study.ask(dist)
    stop = StopAtCount(3, poll=0)
    assert not stop.over(study, first.number) and stop.over(study, second.number)
    assert not StopAtCount(3, alive=lambda t: t.number != first.number, poll=0).over(study, second.number)  # dead
    assert not StopAtCount(4, poll=0).over(study, second.number)
    # a retry queued after a worker looked for one to pop, and before it made a fresh trial: numbered before the
    # fresh trial, popped after that trial's check. Counted by neither check, both trained: one over the count.
    study = optuna.create_study()
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(params={"x": 0.5}, distributions=dist, value=1.0))
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 1})
    retry = study.get_trials(states=(TrialState.WAITING,))[0]
    fresh = study._storage.create_new_trial(study._study_id)  # as study.ask makes one where it found none queued
    assert retry.number < study._storage.get_trial(fresh).number
    assert stop.over(study, study._storage.get_trial(fresh).number)  # the fresh one gives way
    assert study.ask().number == retry.number and not stop.over(study, retry.number)  # the retry trains
    deadline = Deadline(1e-6)
    time.sleep(0.01)
    with pytest.raises(TimeUp, match="waited for the study's 2 running trial"):
        StopAtCount(3, poll=0, deadline=deadline)(study)


def test_a_stop_before_a_trial_trains_still_queues_its_parameters():
    """A stop that landed in a trial before its training began (as it drew its parameters, or took its lock) failed
    the trial and lost its parameters: only a stop during training queued them again (found by
    benchmarks/study_kill_fuzz.py). A retry's parameters, not drawn yet, are queued again too."""
    from tuning.objective import Objective

    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 3})
    trial = study.ask()
    objective = Objective.__new__(Objective)

    def stopped_at_once(trial):
        raise KeyboardInterrupt

    objective._train = stopped_at_once
    with pytest.raises(KeyboardInterrupt):
        objective(trial)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs) for t in waiting] == [
        ({"x": 0.25}, {"retry_of": trial.number})]


def test_a_surplus_retry_queues_its_parameters_again():
    """A retry (a killed or stopped trial's parameters, queued) that finds the places taken is not lost: its
    parameters are queued again, for the study's next run."""
    from tuning.objective import Objective
    from tuning.study import SurplusTrial

    study = optuna.create_study()
    study.enqueue_trial({"x": 0.25}, user_attrs={"retry_of": 3})
    trial = study.ask()
    params = {"x": trial.suggest_float("x", 0, 1)}
    with pytest.raises(SurplusTrial):
        Objective.end_surplus(trial, params)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.params or t.system_attrs.get("fixed_params"), t.user_attrs) for t in waiting] == [
        ({"x": 0.25}, {"retry_of": 3})]
    assert trial.user_attrs["surplus"]


def test_a_trial_begun_where_a_live_workers_trial_took_the_last_place_is_not_trained(demo_source, tmp_path, capsys,
                                                                                     monkeypatch):
    """A worker that begins a trial where the trials begun before it fill --n-trials (another worker, on this host,
    holds the last one) ends it at once, untrained and not tried again, and waits: here that worker dies, its
    trial is queued again, and this worker trains the retry. The summary counts the trial apart from the failed,
    and Optuna's "failed" lines about it are left out. The other worker's lock beat before this worker started:
    of this host, its live pid is enough."""
    import socket

    from optuna.distributions import FloatDistribution

    import tuning.objective
    from tuning.study import TRIAL_LOCK, trial_dir

    assert tune(tmp_path, demo_source, "--study", "v", "--n-trials", "2", "--fold", "0", "--epochs", "1") == 0
    study = load(tmp_path, "v")
    other = study.ask({"lr": FloatDistribution(1e-5, 1e-2, log=True)})
    worker = subprocess.Popen(["sleep", "60"])
    for k, v in (("host", socket.gethostname()), ("pid", worker.pid)):
        other.set_user_attr(k, v)
    lock = trial_dir(tmp_path / "tuning" / "v" / "trials", other.number) / TRIAL_LOCK
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": worker.pid, "beat": 30}))
    os.utime(lock, (time.time() - 20, time.time() - 20))
    real = tuning.objective.Objective.end_surplus

    def end_surplus_and_the_other_worker_dies(trial, params):
        worker.kill()
        worker.wait()
        real(trial, params)

    monkeypatch.setattr(tuning.objective.Objective, "end_surplus", staticmethod(end_surplus_and_the_other_worker_dies))
    assert tune(tmp_path, demo_source, "--study", "v", "--n-trials", "3", "--fold", "0", "--epochs", "1") == 0
    assert worker.returncode is not None  # the surplus trial was met
    trials = load(tmp_path, "v").trials
    surplus = trials[other.number + 1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"]
    assert not trial_dir(tmp_path / "tuning" / "v" / "trials", surplus.number).exists()
    assert trials[other.number].state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("retry_of") == other.number]
    assert [t.state for t in retried] == [TrialState.COMPLETE]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    out = "".join(capsys.readouterr())
    assert f"trial {surplus.number}: not trained" in out and f"Trial {surplus.number} failed" not in out, out
    assert "3 complete, 0 pruned, 1 failed, 1 not trained" in out, out


def test_a_running_trial_is_waited_for_only_while_its_worker_shows_it_is_alive(tmp_path):
    """A worker at the count waits for the others' running trials, but not for a dead worker's: a lock copied with
    the study's folder (older than this worker), a trial of another host without a lock, or one of this host whose
    pid is gone. A trial of this host just begun, whose worker has not taken its lock yet, is alive."""
    import socket
    import warnings

    from optuna.distributions import FloatDistribution

    from folds.lock import pid_space
    from tuning.study import TRIAL_LOCK, beating_since, gone_worker_checks, trial_dir

    study = optuna.create_study()
    trials = [study.ask({"x": FloatDistribution(0, 1)}) for _ in range(5)]
    since = time.time() - 30
    for t, age in ((trials[0], 5), (trials[1], 60)):  # beaten since this worker started; copied before it
        lock = trial_dir(tmp_path, t.number) / TRIAL_LOCK
        lock.parent.mkdir(parents=True)
        lock.write_text(json.dumps({"host": "other-machine", "pid": 7, "beat": 30}))
        os.utime(lock, (time.time() - age, time.time() - age))
    trials[2].set_user_attr("host", "other-machine")
    gone = subprocess.Popen(["true"])
    gone.wait()
    trials[3].set_user_attr("host", socket.gethostname())
    trials[3].set_user_attr("pid", gone.pid)
    alive = beating_since(tmp_path, since)
    assert [alive(t) for t in study.get_trials(deepcopy=False)] == [True, False, False, False, True]
    # On a database the heartbeat fails a gone worker's trial 2 heartbeats on: a worker at the count waited that
    # long on one killed a moment ago. A trial whose pid has ended in this machine and pid namespace is failed and
    # retried at once (by the storage's own retry); another host's trial, a live one, or one of another container
    # that shares this host name (Docker's --network host: its pids are not this one's) is the heartbeat's.
    here, host = pid_space(), socket.gethostname()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = make_storage(f"sqlite:///{tmp_path}/s.db", tmp_path, heartbeat=1)
        db = optuna.create_study(storage=rdb)
        mine, other, live, container = (db.ask({"x": FloatDistribution(0, 1)}) for _ in range(4))
        for t, where, space, pid in ((mine, host, here, gone.pid), (other, "other-machine", "elsewhere", gone.pid),
                                     (live, host, here, os.getpid()), (container, host, here + "0", gone.pid)):
            t.set_user_attr("host", where)
            t.set_user_attr("pid_space", space)
            t.set_user_attr("pid", pid)
        look, alive = gone_worker_checks(rdb, tmp_path / "db", since)
        assert [alive(t) for t in db.get_trials(deepcopy=False)] == [False, True, True, True]
        look(db)
        trials = db.get_trials()
        assert [t.state for t in trials] == [TrialState.FAIL, *[TrialState.RUNNING] * 3, TrialState.WAITING]
        assert optuna.storages.RetryFailedTrialCallback.retried_trial_number(trials[4]) == mine.number
        assert trials[4].params == trials[0].params
        look(db)  # once only
        assert len(db.get_trials()) == 5
        # Optuna's retry copied its failed trial's user attributes, the dead pid with them, until its own worker's
        # first line wrote its own: a retry just popped was failed for that pid
        popped = db.ask()
        assert popped.number == 4 and not {"host", "pid_space", "pid"} & set(popped.user_attrs)
        look(db)
        assert db.get_trials()[4].state == TrialState.RUNNING and len(db.get_trials()) == 5


def _pg_reachable() -> bool:
    try:
        make_storage(PG_URL, "/tmp", heartbeat=1)
        return True
    except UserError:
        return False


@pytest.mark.skipif(not os.environ.get("REQUIRE_PG") and not _pg_reachable(),
                    reason=f"no PostgreSQL at {PG_URL} (CI starts one with .ci/start-postgres.sh)")
def test_postgres_two_workers_one_killed(demo_source, tmp_path):
    name = f"ci-{uuid.uuid4().hex[:8]}"
    cmd = [sys.executable, str(ROOT / "tuning" / "tune.py"), "--study", name, "--n-trials", "5", "--storage", PG_URL,
           "--heartbeat", "1", "--pruner", "none", "--data-dir", str(demo_source), "--tuning-dir",
           str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"), *TINY]
    storage = make_storage(PG_URL, tmp_path, heartbeat=1)
    a = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    b = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, victim = time.time() + 180, None
    while victim is None:  # kill worker a in the middle of one of its trials
        assert time.time() < deadline and a.poll() is None, a.stderr.read().decode()[-2000:]
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            # "dir" is set once every parameter is drawn: the trial is training (its pid comes before its parameters)
            running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                       if t.user_attrs.get("pid") == a.pid and "dir" in t.user_attrs]
            victim = running[0] if running else None
        except KeyError:
            pass
        time.sleep(0.2)
    time.sleep(0.5)
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert b.wait(timeout=300) == 0, b.stderr.read().decode()[-3000:]
    study = optuna.load_study(study_name=name, storage=storage)
    trials = {t.number: t for t in study.trials}
    assert trials[victim.number].state == TrialState.FAIL
    retries = [t for t in trials.values()
               if optuna.storages.RetryFailedTrialCallback.retried_trial_number(t) == victim.number]
    assert retries and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[victim.number].params == victim.params
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) >= 5  # the study reached its count
    for t in trials.values():  # every other trial's value is intact
        if t.state == TrialState.COMPLETE:
            result = tmp_path / "tuning" / name / "trials" / f"trial_{t.number:04d}" / "result.json"
            assert json.loads(result.read_text())["value"] == pytest.approx(t.value)
    optuna.delete_study(study_name=name, storage=storage)


def test_a_study_of_several_folds_reads_its_best_trial_down_fold_by_fold(tmp_path):
    """A trial's value is the mean of its folds' scores: the study's read-down resamples each fold's paintings on
    their own (``selection_optimism``'s blocks), from each fold's kept rows at its best epoch, as the trial's value
    was scored; the rows of two trials that trained other folds are not set side by side."""
    import numpy as np

    from common.layout import VAL_EPOCHS, fold_dir
    from common.metrics import get_metric
    from ensemble.compare import selection_optimism
    from tuning.study import best_read_down

    rng, f1, sizes = np.random.default_rng(0), get_metric("macro_f1"), {0: 12, 1: 40}
    labels = {k: np.repeat(rng.integers(0, 4, n), 2) for k, n in sizes.items()}  # 2 crops a painting
    ids = {k: np.repeat([f"{k}-{i}" for i in range(n)], 2) for k, n in sizes.items()}
    study, best = optuna.create_study(direction="maximize"), {}
    for t in range(3):
        folds = {k: rng.dirichlet(np.ones(4), (3, len(labels[k]))).astype(np.float32) for k in sizes}  # 3 epochs
        best_epoch = {k: int(np.argmax([f1.score(labels[k], p) for p in folds[k]])) + 1 for k in sizes}
        for k in sizes:
            d = fold_dir(tmp_path / f"trial_{t}", k)
            d.mkdir(parents=True)
            np.savez(d / VAL_EPOCHS, probs=folds[k], labels=labels[k], ids=ids[k], best_epoch=best_epoch[k])
        scores = {k: f1.score(labels[k], folds[k][best_epoch[k] - 1]) for k in sizes}
        best[t] = np.concatenate([folds[k][best_epoch[k] - 1] for k in sizes])
        study.add_trial(optuna.trial.create_trial(
            value=float(np.mean(list(scores.values()))),
            user_attrs={"dir": str(tmp_path / f"trial_{t}"), **{f"fold_{k}_f1": s for k, s in scores.items()}}))
    read = best_read_down(study)
    y, groups = np.concatenate(list(labels.values())), np.concatenate(list(ids.values()))
    blocks = np.repeat([0, 1], [len(labels[0]), len(labels[1])])
    assert read == {"trials": 3, "optimism": pytest.approx(selection_optimism(y, groups, list(best.values()),
                                                                              blocks=blocks))}
    assert read["optimism"] != pytest.approx(selection_optimism(y, groups, list(best.values())))  # not as one fold
    # a fourth trial of fold 0 alone scored other rows: no read-down rather than a wrong one
    study.add_trial(optuna.trial.create_trial(value=0.1, user_attrs={"dir": str(tmp_path / "trial_0"),
                                                                     "fold_0_f1": 0.1}))
    assert best_read_down(study) is None


def test_an_optuna_older_than_the_studies_take_is_refused_in_one_line(monkeypatch, capsys):
    """A notebook image's Optuna 3.6 ended in an ImportError traceback (RetryHeartbeatStaleTrialCallback, from
    4.9; 4.0 to 4.8 name it RetryFailedTrialCallback, which is taken instead)."""
    import importlib

    import tuning
    monkeypatch.setattr(optuna, "__version__", "3.6.2")
    with pytest.raises(SystemExit) as stop:
        importlib.reload(tuning)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: Optuna 3.6.2 is older than this suite's studies take (4.0 ")
    monkeypatch.setattr(optuna, "__version__", "4.0.0")
    importlib.reload(tuning)  # 4.0 is taken
    # 4.0 to 4.8's name of the retry's getter (their RDBStorage keyword, failed_trial_callback, is read from it)
    from types import SimpleNamespace

    from tuning.storage import RETRY_KEYWORD, retry_callback
    assert RETRY_KEYWORD == "heartbeat_stale_trial_callback"  # the pinned Optuna's
    assert retry_callback(SimpleNamespace(get_failed_trial_callback=lambda: "retry")) == "retry"
