"""One fold data-parallel under torchrun (gloo on the CPU): 2 ranks, the demo data."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, tiny_args


def torchrun(demo_source, tmp_path, *extra, epochs=2):
    args = tiny_args(demo_source, tmp_path, **{"--epochs": epochs, "--n-folds": 2, "--num-workers": 0,
                                               "--name": "ddp", "--fold": 0})
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(29500 + os.getpid() % 1000), str(ROOT / "folds" / "run.py"), *args, *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def test_two_ranks_train_one_fold_and_only_rank_0_writes(demo_source, tmp_path):
    # with accumulation: the ranks average their gradients once per group (DDP's no_sync between)
    proc = subprocess.run(torchrun(demo_source, tmp_path, "--grad-accum-steps", "2"), cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    # a write from rank 1 raises (common.atomic), so a clean exit means rank 0 wrote every file
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    fold = tmp_path / "runs" / "ddp" / "fold_0"
    for f in ("done.json", "best.pt", "history.csv", "oof.csv", "oof_crops.csv", "test_probs.csv"):
        assert (fold / f).is_file(), f
    folds = pd.read_csv(tmp_path / "runs" / "ddp" / "folds.csv", dtype=str)
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    # predictions were sharded across the ranks and gathered: every validation painting, once, in order
    assert list(oof["id"]) == list(folds.loc[folds["fold"] == "0", "id"])
    test = pd.read_csv(fold / "test_probs.csv", dtype={"id": str})
    assert len(test) == len(pd.read_csv(demo_source / "test.csv"))
    assert np.allclose(test.iloc[:, 1:].sum(axis=1), 1, atol=1e-4)
    assert list(pd.read_csv(fold / "history.csv")["epoch"]) == [1, 2]
    # and each gathered row is its own painting's: the fold's weights, predicting here in one process, agree
    from folds.config import saved_config
    from folds.predict import Predictor, predict_crop_oof
    run = tmp_path / "runs" / "ddp"
    classes = json.loads((run / "classes.json").read_text())
    val = pd.read_csv(demo_source / "train.csv", dtype=str).set_index("id").loc[oof["id"]].reset_index()
    val["path"] = [str(demo_source / p) for p in val["img_path"]]
    predictor = Predictor(saved_config(run), len(classes), fold)
    np.testing.assert_allclose(predictor.predict(val["path"]), oof[classes].to_numpy(), atol=1e-5)
    crops = pd.read_csv(fold / "oof_crops.csv", dtype={"id": str})
    n_crops = int(crops["crop"].max()) + 1
    np.testing.assert_allclose(predict_crop_oof(predictor, val, n_crops), crops[classes].to_numpy(), atol=1e-5)


def test_each_rank_takes_its_share_of_the_same_balanced_draw(monkeypatch):
    from folds.loader import ImageDataset, make_loader
    y = np.array([0] * 40 + [1] * 8 + [2] * 2)
    data = ImageDataset(["x"] * 50, y, transform=None)
    full = [i for i, _ in make_loader(data, 5, train=True, balanced=True, seed=3, epoch=2).sampler]
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append([i for i, _ in make_loader(data, 5, train=True, balanced=True, seed=3, epoch=2).sampler])
    assert len(shares[0]) == len(shares[1]) == 25  # equal steps on every rank, as DDP needs
    assert shares[0] == full[0::2] and shares[1] == full[1::2]  # one draw, split


def test_gather_rows_is_the_identity_in_one_process():
    from folds.distributed import gather_rows, my_rows, shard
    rows = np.arange(12).reshape(6, 2)
    assert (gather_rows(rows, 6) == rows).all() and (shard(np.arange(5)) == np.arange(5)).all()
    assert my_rows(6) == slice(0, 6)


def test_each_rank_predicts_one_block_of_rows_so_a_paintings_crops_stay_on_one_rank(monkeypatch):
    """Rows rank::size sent a painting's crops (listed in a row) to every rank, each decoding the painting."""
    import folds.distributed
    for size in (2, 3, 4):
        blocks = []
        for rank in range(size):
            monkeypatch.setattr(folds.distributed, "world", lambda: (rank, size))
            blocks.append(np.repeat(np.arange(7), 5)[folds.distributed.my_rows(35)])
        assert np.concatenate(blocks).tolist() == np.repeat(np.arange(7), 5).tolist()  # in order, each row once
        assert sum(len(set(a) & set(b)) for a, b in zip(blocks, blocks[1:])) <= size - 1  # split at block edges only


def test_a_killed_ddp_fold_resumes(demo_source, tmp_path):
    cmd = torchrun(demo_source, tmp_path, epochs=4)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    history = tmp_path / "runs" / "ddp" / "fold_0" / "history.csv"
    deadline = time.time() + 300
    while not history.is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
    proc.wait()
    fold = history.parent
    assert not (fold / "done.json").exists()
    done_before = len(pd.read_csv(history))
    proc = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    h = pd.read_csv(history)
    assert list(h["epoch"]) == list(range(1, len(h) + 1)) and len(h) >= done_before
    assert json.loads((fold / "done.json").read_text())["epochs_run"] == len(h)


def test_the_ranks_of_a_torchrun_killed_outright_stop_and_the_fold_resumes(demo_source, tmp_path):
    """torchrun starts each rank in a session of its own and passes every stop on, but killed outright (SIGKILL:
    `kill -9`, `timeout -k`, a notebook's restart) it passes none: its ranks trained on, holding their fold and
    its GPU memory, or waited half an hour for its store. Each rank now watches its parent and stops cleanly
    when it is gone: its lock released, its finished epochs kept for --resume."""
    cmd = torchrun(demo_source, tmp_path, epochs=30)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    fold = tmp_path / "runs" / "ddp" / "fold_0"
    deadline = time.time() + 300
    while not (fold / "history.csv").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # the agent alone: its ranks are in sessions of their own
    # the ranks hold the agent's stderr: its end comes once both have ended
    _, err = proc.communicate(timeout=150)  # (a rank blocked where no signal is seen would end at 60 s)
    # each rank stops at its own watch, or, where the other's stop broke a collective first, on that: no traceback
    assert "torchrun, which started this rank, has ended without stopping it; stopping here." in err, err
    assert err.count("stopped (SIGTERM)") + err.count("stopped (torchrun ended") == 2 and "Traceback" not in err, err
    assert not (fold / "lock").exists() and not (fold / "done.json").exists()
    epochs = len(pd.read_csv(fold / "history.csv"))
    assert epochs < 30
    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    h = pd.read_csv(fold / "history.csv")
    assert list(h["epoch"]) == list(range(1, len(h) + 1)) and len(h) > epochs  # on from where it stopped
    assert json.loads((fold / "done.json").read_text())["epochs_run"] == len(h)


def test_a_rank_whose_torchrun_ended_while_it_started_stops_too(monkeypatch):
    """torchrun killed while its ranks still import torch: the parent each read first, the agent, is gone by
    the time its watch starts; it stops at the first look. Not yet in the process group (torch's wait for the
    store retries through a signal), it ends at once, having nothing to keep; in it, it stops as at a kill, and
    ends itself only where that stop never reaches Python."""
    from common import children

    gone = subprocess.Popen(["true"])
    gone.wait()
    stops = []

    def end(code):  # os._exit ends the process; here it ends the call
        stops.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(children.os, "kill", lambda pid, sig: stops.append((pid, sig)))
    monkeypatch.setattr(children.os, "_exit", end)
    monkeypatch.setattr(children, "STUCK_SECONDS", 0)
    for joined, expected in ((False, [143]), (True, [(os.getpid(), signal.SIGTERM), 143])):
        stops.clear()
        monkeypatch.setattr(children, "_joined", lambda joined=joined: joined)
        with pytest.raises(SystemExit):
            children._stop_when_orphaned(gone.pid)  # at once, not after a poll
        assert stops == expected, joined


def test_a_collective_broken_by_the_other_ranks_stop_is_this_ranks_stop_too(monkeypatch, capsys):
    """Once torchrun is gone, the rank whose watch fired first stops and closes its connections; the other, in a
    collective, got gloo's "Connection closed by peer" traceback before its own watch fired. It is a stop."""
    from common import children
    from common.cli import entry_point

    @entry_point
    def in_a_collective():
        raise RuntimeError("[gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:36260.\nmore")

    monkeypatch.setattr(children, "launcher_gone", lambda: True)
    assert in_a_collective() == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.startswith("stopped (torchrun ended; [gloo/transport/tcp/pair.cc:561] Connection closed by peer") \
        and "more" not in err and "Traceback" not in err, err
    monkeypatch.setattr(children, "launcher_gone", lambda: False)  # elsewhere: an error, as before
    with pytest.raises(RuntimeError):
        in_a_collective()
