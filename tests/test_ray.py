"""Folds and Optuna workers on a local Ray cluster (2 CPU cores), with a worker killed mid-epoch."""
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, learned_history, tiny_args
from folds.run import main as run_main

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")


@pytest.fixture(autouse=True, scope="module")
def _shutdown_ray():
    yield
    ray.shutdown()  # the in-process drivers started a local instance


def test_a_killed_fold_task_is_retried_resumes_and_matches_the_plain_run(demo_source, tmp_path):
    opts = {"--epochs": 5, "--n-folds": 2, "--num-workers": 0}
    assert run_main(tiny_args(demo_source, tmp_path, **opts, **{"--name": "plain"})) == 0
    args = [sys.executable, str(ROOT / "folds" / "run.py"), *tiny_args(demo_source, tmp_path, **opts, **{
        "--name": "onray", "--ray": "local", "--ray-cpus": 2})]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    fold = tmp_path / "runs" / "onray" / "fold_1"
    deadline = time.time() + 600  # Ray's start on a busy 2-core machine took over 300 s once
    while not ((fold / "history.csv").is_file() and (fold / "lock").is_file()):  # fold 1 is mid-training
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    holder = json.loads((fold / "lock").read_text())
    assert holder.get("owner")  # the Ray task's id: its retry takes the lock over
    os.kill(holder["pid"], signal.SIGKILL)  # the Ray worker process training fold 1
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    assert "resuming" in out  # the retry continued from last.pt
    for k in (0, 1):
        a = learned_history(tmp_path / "runs" / "plain" / f"fold_{k}" / "history.csv")
        b = learned_history(tmp_path / "runs" / "onray" / f"fold_{k}" / "history.csv")
        pd.testing.assert_frame_equal(a, b)
    a, b = (pd.read_csv(tmp_path / "runs" / n / "oof.csv", dtype={"id": str}) for n in ("plain", "onray"))
    pd.testing.assert_frame_equal(a, b, atol=1e-6)
    subs = [pd.read_csv(tmp_path / "subs" / f"{n}_folds-mean.csv", dtype=str) for n in ("plain", "onray")]
    pd.testing.assert_frame_equal(*subs)


def test_several_runs_in_one_ray_job(demo_source, tmp_path):
    for s in (1, 2):
        (tmp_path / f"seed{s}.yaml").write_text(f"seed: {s}\nname: s{s}\n")
    args = tiny_args(demo_source, tmp_path, **{"--epochs": 1, "--n-folds": 2, "--num-workers": 0, "--ray": "local",
                                               "--name": None})
    assert run_main([*args, "--ray-runs", str(tmp_path / "seed1.yaml"), str(tmp_path / "seed2.yaml")]) == 0
    for s in (1, 2):
        assert json.loads((tmp_path / "runs" / f"s{s}" / "config.json").read_text())["seed"] == s
        assert (tmp_path / "subs" / f"s{s}_folds-mean.csv").is_file()
    # a finished fold whose test probabilities are lost (or for another test set) is predicted again by a task
    lost = tmp_path / "runs" / "s1" / "fold_0" / "test_probs.csv"
    kept = {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/fold_*/*") if p != lost}
    lost.unlink()
    assert run_main([*args, "--ray-runs", str(tmp_path / "seed1.yaml"), str(tmp_path / "seed2.yaml")]) == 0
    assert lost.is_file()
    assert {p: p.stat().st_mtime for p in kept} == kept  # nothing trained, nothing else written


def test_optuna_workers_on_ray_share_one_study(demo_source, tmp_path, capsys):
    from tuning.tune import main as tune_main
    base = ["--study", "r", "--tuning-dir", str(tmp_path / "tuning"), "--runs-dir", str(tmp_path / "runs"),
            "--data-dir", str(demo_source), "--preset", "demo", "--img-size", "32", "--epochs", "1",
            "--num-workers", "0", "--pruner", "none", "--workers", "2", "--ray", "local"]
    assert tune_main([*base, "--n-trials", "2"]) == 0
    import optuna

    from tuning.storage import make_storage
    study = optuna.load_study(study_name="r", storage=make_storage(None, tmp_path / "tuning" / "r"))
    hosts = {t.user_attrs.get("pid") for t in study.trials}
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 2 and len(hosts) == 2
    assert "Ray: 2 Optuna workers on study r" in capsys.readouterr().out
    # resumed with one trial left, the study starts one task (one GPU held), and with none left, none
    finished = len([t for t in study.trials if t.state.name == "COMPLETE"])
    assert tune_main([*base, "--n-trials", str(finished + 1)]) == 0
    assert "Ray: 1 Optuna worker on study r" in capsys.readouterr().out
    assert tune_main([*base, "--n-trials", str(finished + 1)]) == 0
    assert "Ray: " not in capsys.readouterr().out
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == finished + 1


def test_ray_across_machines_refuses_a_local_storage(demo_source, tmp_path, capsys):
    from tuning.tune import main as tune_main
    rc = tune_main(["--study", "x", "--tuning-dir", str(tmp_path / "t"), "--data-dir", str(demo_source),
                    "--ray", "auto", "--workers", "2"])
    assert rc == 2 and "do not share this disk" in capsys.readouterr().err
