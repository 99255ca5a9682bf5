"""Kill a fold run outright (SIGKILL, as the OOM killer or a lost machine does) at random moments and resume it
with --resume until it ends: its OOF files and submission must equal those of the same command run once,
uninterrupted. "Never a lost fold" and "runs they can resume", tried at moments no test picks by hand: mid-epoch,
mid-checkpoint, mid-prediction, mid-join.

Examples (a fresh process each; the demo data is made in --work if --data-dir is not given):
    python benchmarks/kill_fuzz.py --runs 20 --seed 1
    python benchmarks/kill_fuzz.py --runs 10 --seed 2 -- --procs-per-gpu 2     # the parent alone is killed
    python benchmarks/kill_fuzz.py --runs 5 --torchrun 2                      # torchrun and its ranks are killed

Exit 1 when a run differs from the uninterrupted one, or fails, or its last start (never killed) hangs.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from common import layout  # noqa: E402
COMPARED = (layout.OOF, layout.OOF_CROPS)  # the run's files; the submission files beside them, as built
TINY = ["--preset", "demo", "--img-size", "32", "--epochs", "3", "--n-folds", "2", "--num-workers", "1",
        "--crop-oof", "2"]


def command(data: Path, work: Path, name: str, extra: list[str], resume: bool, ranks: int = 0) -> list[str]:
    """The run's command; under torchrun with ``ranks`` processes (gloo on the CPU) where given."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
    return [*(launch if ranks else [sys.executable]), str(ROOT / "folds" / "run.py"), "--data-dir", str(data),
            "--runs-dir", str(work / "runs"), "--submissions-dir", str(work / "subs"), *TINY, *extra, "--name", name,
            "--fold", "all", "-q", *(["--resume"] if resume else [])]


def outputs(work: Path, name: str) -> dict:
    """The run's OOF files, and the files its build wrote to the submissions folder (the submission and its
    probabilities: every CSV named after the run), read as frames."""
    run = work / "runs" / name
    files = {f: run / f for f in COMPARED if (run / f).is_file()}
    files.update({p.name.removeprefix(name): p for p in sorted((work / "subs").glob(f"{name}_*.csv"))})
    return {k: pd.read_csv(p, dtype={"id": str}, keep_default_na=False) for k, p in files.items()}


def differences(reference: dict, got: dict) -> list[str]:
    """The files of ``got`` that differ from ``reference``'s, or that it lacks (``outputs`` each)."""
    return [k for k in reference if k not in got or not reference[k].equals(got[k])]


HANG_FACTOR = 5  # the last start is not killed: it must end within this many times one uninterrupted run


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the command's group: a lost machine, the OOM killer's sweep, `kill -9 -PGID`."""
    os.killpg(proc.pid, signal.SIGKILL)


def kill_parent(proc: subprocess.Popen) -> None:
    """SIGKILL the command's own process alone: its child processes must then end by themselves."""
    proc.send_signal(signal.SIGKILL)


def parents() -> dict[int, int]:
    """Every process's parent, from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        parent[int(stat.parent.name)] = int(fields[1])
    return parent


def children(pid: int) -> list[int]:
    """The processes ``pid`` started itself (a study's workers, torchrun's ranks), in pid order."""
    return sorted(p for p, pp in parents().items() if pp == pid)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc; those in sessions of their own too."""
    parent = parents()
    found, todo = [], [pid]
    while todo:
        above = todo.pop()
        below = [p for p, pp in parent.items() if pp == above]
        found += below
        todo += below
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the command and every process below it, those that started sessions of their own included (a
    study's workers, torchrun's ranks): the whole machine lost at once."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def killed_until_done(cmd_of, rng: random.Random, longest: float, tries: int, kill) -> tuple[list, str]:
    """Start the command, kill it (``kill(proc)``) at a random moment up to ``longest`` seconds, and start it again
    with --resume; the ``tries``-th start is not killed, and must end by itself within ``HANG_FACTOR`` x
    ``longest`` (a resumed run whose start-up fills most of the kill window, as torchrun's does, could otherwise be
    killed before it gets anywhere at every start). What a kill leaves (workers that must stop by themselves, or a
    study that goes on without the worker it lost) must end within that time too: the fuzz waited on it for good.
    Returns the kill moments and how it ended ("" when well)."""
    kills, resume = [], False
    for i in range(tries):
        proc = subprocess.Popen(cmd_of(resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        last = i == tries - 1
        at = HANG_FACTOR * longest if last else rng.uniform(0.3, longest)
        try:
            _, err = proc.communicate(timeout=at)
            return kills, "" if proc.returncode == 0 else f"exit {proc.returncode}: {err.strip()[-2000:]}"
        except subprocess.TimeoutExpired:
            if last:  # hung: nothing of it may stay
                kill_tree(proc)
                proc.communicate()
                return kills, f"its last start, not killed, did not end in {at:.0f} s (hung)"
            kill(proc)
            kills.append(round(at, 1))
            try:
                proc.communicate(timeout=HANG_FACTOR * longest)
            except subprocess.TimeoutExpired:  # (its pipe is open while any process of it lives)
                kill_tree(proc)
                proc.communicate()
                return kills, f"what the kill at {at:.1f} s left did not end in {HANG_FACTOR * longest:.0f} s (hung)"
            resume = True
    return kills, "no start"


def fuzz_parser(doc: str, work: str, what: str) -> argparse.ArgumentParser:
    """The options every kill fuzz shares (this one's and ``study_kill_fuzz.py``'s); ``what``: what it kills."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, help="a data folder (default: the demo data, made in --work)")
    p.add_argument("--work", type=Path, default=Path(work), help=f"where the {what} go")
    p.add_argument("--runs", type=int, default=10, help=f"killed {what} to try")
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--tries", type=int, default=12,
                   help="starts of each; the last is not killed, and must end by itself")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: options every start adds")
    return p


def data_and_extra(args) -> tuple[Path, list[str]]:
    """The data folder (the demo data, made in --work once, where --data-dir is not given), and the options after
    --."""
    data = args.data_dir
    if data is None:
        from folds.demo import make_demo_dataset
        data = args.work / "demo-data"
        if not (data / "train.csv").is_file():
            make_demo_dataset(data)
    return data, args.extra[1:] if args.extra[:1] == ["--"] else args.extra


def main(argv=None) -> int:
    p = fuzz_parser(__doc__, "kill_fuzz", "runs")
    p.add_argument("--torchrun", type=int, default=0, metavar="N",
                   help="run each fold data-parallel under torchrun with N ranks, the uninterrupted run too")
    args = p.parse_args(argv)
    data, extra = data_and_extra(args)
    side_by_side = "--procs-per-gpu" in extra or "--gpus" in extra
    started = time.time()
    done = subprocess.run(command(data, args.work, "uninterrupted", extra, False, args.torchrun), capture_output=True,
                          text=True)
    if done.returncode:
        print(f"the uninterrupted run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        return 1
    longest = 1.1 * (time.time() - started)
    print(f"uninterrupted run: {longest / 1.1:.1f} s; each run below is killed at a random moment up to "
          f"{longest:.1f} s, then resumed, {args.tries - 1} times at most")
    reference, rng, bad = outputs(args.work, "uninterrupted"), random.Random(args.seed), 0
    for i in range(args.runs):
        name = f"killed-{args.seed}-{i}"
        kills, failed = killed_until_done(lambda resume, name=name: command(data, args.work, name, extra, resume,
                                                                            args.torchrun),
                                          rng, longest, args.tries, kill_parent if side_by_side else kill_group)
        if failed:
            bad += 1
            print(f"{name}: killed at {kills} s: FAILED, {failed}", flush=True)
            continue
        got = outputs(args.work, name)
        differ = differences(reference, got)
        bad += bool(differ)
        print(f"{name}: killed at {kills} s: " + (f"DIFFERS in {differ}" if differ else "the same"), flush=True)
    print(f"{args.runs} runs killed and resumed, {bad} differed or failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
