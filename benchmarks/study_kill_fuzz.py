"""Kill a study (`tuning/tune.py`) outright at random moments and run it again until it ends by itself. It must
then hold exactly --n-trials finished trials, none still running, every failed trial's parameters tried again
(or queued for the next run), and no checkpoint or trial lock left behind. A study's "runs they can resume",
tried at moments no test picks: mid-trial, mid-count, as workers start, while a retry is queued.

Examples (a fresh process each; the demo data is made in --work if --data-dir is not given):
    python benchmarks/study_kill_fuzz.py --runs 10 --seed 1                # one process, killed outright
    python benchmarks/study_kill_fuzz.py --runs 10 --seed 2 --workers 2    # 2 local workers: each kill takes
        # the parent alone (its workers must stop by themselves), one worker (the OOM killer's pick: the study
        # goes on without it, and its trial is tried again) or every process (a lost machine)
    python benchmarks/study_kill_fuzz.py --runs 5 --workers 2 -- \
        --storage postgresql://postgres@127.0.0.1:5433/optuna_ci --heartbeat 1   # the database's heartbeat fails
        # a killed worker's trial, and Optuna's callback queues it again

Exit 1 when a study breaks a rule above, or a run fails, or its last start (never killed) hangs.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.kill_fuzz import (children, data_and_extra, fuzz_parser, kill_parent, kill_tree,  # noqa: E402
                                  killed_until_done)
from common import layout  # noqa: E402

TINY = ["--preset", "demo", "--img-size", "32", "--epochs", "3", "--num-workers", "0", "--fold", "0",
        "--pruner", "none"]
STUDY = "fuzz"


def storage_of(extra: list[str]) -> str | None:
    """The ``--storage`` URL the options give (None: each study's own journal file)."""
    return extra[extra.index("--storage") + 1] if "--storage" in extra else None


def study_name(work: Path, extra: list[str]) -> str:
    """One database holds the studies of every run (and of runs before): a name of its own for each."""
    return STUDY if storage_of(extra) is None else f"{STUDY}-{work.name}-{uuid.uuid4().hex[:8]}"


def command(data: Path, work: Path, name: str, n_trials: int, workers: int, extra: list[str]) -> list[str]:
    """The study's command; the same at every start (a study goes on from where it is)."""
    return [sys.executable, str(ROOT / "tuning" / "tune.py"), "--study", name, "--n-trials", str(n_trials),
            "--data-dir", str(data), "--tuning-dir", str(work / "tuning"), "--runs-dir", str(work / "runs"), *TINY,
            *(["--workers", str(workers)] if workers > 1 else []), *extra]


def faults(work: Path, n_trials: int, name: str = STUDY, storage: str | None = None) -> list[str]:
    """How the study ``name`` of ``work`` breaks the rules of a study that ended (none: [])."""
    import optuna
    from optuna.trial import TrialState

    from tuning.storage import make_storage
    from tuning.study import FINISHED, SURPLUS, TRIAL_LOCK

    folder = work / "tuning" / name
    trials = optuna.load_study(study_name=name, storage=make_storage(storage, folder)).get_trials(deepcopy=False)
    found = []
    finished = sum(t.state in FINISHED for t in trials)
    if finished != n_trials:
        found.append(f"{finished} finished trials for --n-trials {n_trials}")
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    if running:
        found.append(f"trials {running} still running")
    with warnings.catch_warnings():  # (its "experimental" warning)
        warnings.simplefilter("ignore")
        # queued again by a stop or a worker found gone (retry_of), or by the database's heartbeat: a retry of a
        # retry names the first trial as its "failed trial", and every one before it in its history
        retried = {t.user_attrs.get("retry_of") for t in trials} | {
            n for t in trials for n in optuna.storages.RetryFailedTrialCallback.retry_history(t)}
    lost = [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS)
            and "diverged" not in t.user_attrs and t.number not in retried]
    if lost:
        found.append(f"failed trials {lost} neither tried again nor queued")
    left = sorted(str(p.relative_to(folder)) for pattern in ("*/*/*.pt", f"*/{TRIAL_LOCK}")
                  for p in (folder / "trials").glob(pattern))
    if left:
        found.append(f"left behind: {left}")
    if not (folder / layout.BEST_PARAMS).is_file():
        found.append(f"no {layout.BEST_PARAMS}")
    return found


def kill_one_worker(proc, rng) -> str:
    """SIGKILL one of the study's worker processes, chosen by ``rng``, as the OOM killer picks one; the parent alone
    where it has started none yet. Which it was, in words."""
    workers = children(proc.pid)
    if not workers:
        kill_parent(proc)
        return "parent: no worker running"
    victim = rng.choice(workers)
    with contextlib.suppress(ProcessLookupError):  # (ended meanwhile: the kill missed, and the study goes on)
        os.kill(victim, signal.SIGKILL)
    return f"worker {workers.index(victim)} of {len(workers)}"


KILLS = {"parent": lambda proc, rng: kill_parent(proc) or "parent", "worker": kill_one_worker,
         "all": lambda proc, rng: kill_tree(proc) or "all"}


def main(argv=None) -> int:
    p = fuzz_parser(__doc__, "study_kill_fuzz", "studies")
    p.add_argument("--n-trials", type=int, default=4, help="the study's --n-trials")
    p.add_argument("--workers", type=int, default=1,
                   help="the study's --workers (each kill then takes the parent alone, one worker or every "
                        "process, by --seed)")
    p.add_argument("--kills", default=",".join(KILLS), help="with --workers: the kinds of kill to draw from "
                   f"({', '.join(KILLS)})")
    args = p.parse_args(argv)
    kinds = args.kills.split(",")
    if not kinds or set(kinds) - set(KILLS):
        p.error(f"--kills {args.kills}: give some of {', '.join(KILLS)}, comma-separated")
    data, extra = data_and_extra(args)
    storage, first = storage_of(extra), args.work / "uninterrupted"
    name = study_name(first, extra)
    started = time.time()
    done = subprocess.run(command(data, first, name, args.n_trials, args.workers, extra), capture_output=True,
                          text=True)
    found = faults(first, args.n_trials, name, storage) if not done.returncode else []
    if done.returncode or found:
        print(f"the uninterrupted study failed (exit {done.returncode}): {found or done.stderr.strip()[-2000:]}")
        return 1
    longest = 1.1 * (time.time() - started)
    print(f"uninterrupted study: {longest / 1.1:.1f} s; each study below is killed at a random moment up to "
          f"{longest:.1f} s, then run again, {args.tries - 1} times at most")
    rng, bad = random.Random(args.seed), 0
    for i in range(args.runs):
        work, how = args.work / f"killed-{args.seed}-{i}", []
        name = study_name(work, extra)

        def kill(proc):  # with workers: the parent alone, one worker, or every process
            kind = rng.choice(kinds) if args.workers > 1 else "all"
            how.append(KILLS[kind](proc, rng))

        kills, failed = killed_until_done(lambda resume, work=work, name=name: command(
            data, work, name, args.n_trials, args.workers, extra), rng, longest, args.tries, kill)
        found = [failed] if failed else faults(work, args.n_trials, name, storage)
        bad += bool(found)
        said = ", ".join(f"{at} s ({kind})" for at, kind in zip(kills, how))
        print(f"{work.name}: killed at [{said}]: " + ("; ".join(found) if found else "ended as a study should"),
              flush=True)
    print(f"{args.runs} studies killed and run again, {bad} broke a rule or failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
