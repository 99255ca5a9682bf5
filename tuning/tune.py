"""Tune the learning rate and StepLR (and more, with --space) with Optuna.

Examples:
    python tuning/tune.py --study demo --n-trials 6                       # demo data, embedded storage
    python tuning/tune.py --study b3 --n-trials 30 --fold 0 --data-dir data
    python tuning/tune.py --study b3 --n-trials 60 --data-dir data --workers 2          # 2 local workers/GPUs
    python tuning/tune.py --study b3 --n-trials 60 --data-dir data \\
        --storage postgresql://user:pw@db-host/optuna                      # run the same on every machine
    python tuning/tune.py --study b3 --n-trials 0                          # summary, best.json, plots only
    python tuning/tune.py --study b3 --n-trials 30 --data-dir data --dry-run   # does it fit? nothing written
    python folds/run.py --data-dir data --params tuning/b3/best.json       # train with the best parameters

--n-trials is the study's total of finished (complete + pruned) trials: a rerun tops it up.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import UserError, children, layout  # noqa: E402
from common.atomic import check_writable_folder  # noqa: E402
from common.interrupt import TimeUp  # noqa: E402
from common.cli import check_at_least, entry_point, log_to_stdout  # noqa: E402
from folds.cli import add_legacy_folds, add_training_options, cli_overrides, legacy_folds, strip_options  # noqa: E402,E501
from folds.config import parse_fold_spec, resolve_config  # noqa: E402
from tuning.study import FINISHED, PRUNERS  # noqa: E402

log = logging.getLogger("tuning")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuning/tune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("study")
    g.add_argument("--study", required=True, help="study name; outputs go to tuning/<study>/")
    g.add_argument("--n-trials", type=int, default=20, help="target number of finished trials in the study "
                   "(default: 20; 0 only summarises)")
    g.add_argument("--fold", default="0", help="folds each trial trains, e.g. 0 or 0,1, as --fold in "
                   "folds/run.py (default: 0)")
    g.add_argument("--storage", help="RDB URL shared by several machines, e.g. postgresql://user:pw@host/db "
                   "(default: a journal file tuning/<study>/journal.log, no server)")
    g.add_argument("--workers", dest="study_workers", type=int, default=1, help="local worker processes on this "
                   "study, one per GPU when there are several (default: 1)")
    g.add_argument("--pruner", default="median", choices=sorted(PRUNERS),
                   help="prune bad trials after each epoch (default: median)")
    g.add_argument("--space", help="YAML/JSON that widens or changes the search space (e.g. dropout, optimizer); "
                   "'step_size: null' leaves a default entry out")
    g.add_argument("--heartbeat", type=int, default=30, help="seconds between RDB heartbeats; a trial silent "
                   "for twice this is marked FAIL and retried (default: 30)")
    g.add_argument("--sampler-seed", type=int, default=0, help="TPE sampler seed (default: 0); a resumed "
                   "study mixes in its number of trials so far, so a session never redraws another's parameters")
    g.add_argument("--tuning-dir", default="tuning", help="where study folders live (default: tuning)")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep each trial's .pt files")
    g.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop before an epoch that would not end "
                   "within MINUTES of the start, as folds/run.py does: the running trial is queued again, the "
                   "summary and best.json are written, and the command exits with 75; rerun it to go on")
    g.add_argument("--dry-run", action="store_true", help="every check, then a short timed probe of a trial's "
                   "training, with the recipe's settings and with the heaviest the space can draw: how long the "
                   "trials take and, on a GPU, the memory they need; no study is opened and nothing is written")
    g.add_argument("--ray", metavar="ADDRESS", help="start the --workers as Ray tasks ('local', 'auto' or "
                   "HOST:PORT); across machines the storage must be PostgreSQL")
    g.add_argument("--ray-gpus", type=float, help="GPUs per Ray worker (default: 1 on a GPU cluster, 0 on CPU)")
    g.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    # Options of a run folder do not apply to a study: they are not offered here.
    add_training_options(p, skip=("--name", "--submissions-dir", "--holdout", "--params", "--keep-last"))
    add_legacy_folds(p)
    return p


def trials_left(args, study) -> int:
    """How many of ``--n-trials`` the study has yet to finish."""
    return args.n_trials - len(study.get_trials(deepcopy=False, states=FINISHED))


def workers_to_start(args, study) -> int:
    """The workers ``--workers`` starts, as local processes or Ray tasks: no more than the trials the study leaves
    (a resumed study with one trial left trains it in one worker, with every core, where 4 workers split the cores
    in four or hold 4 of the cluster's GPUs); 0 where none is left."""
    return max(0, min(args.study_workers, trials_left(args, study)))


def _worker_env(i: int, n: int) -> dict:
    """Worker i's environment, of ``n``: its share of the cores as torch's threads, and one of this process's
    GPUs each, round-robin, when it has several."""
    from common.machine import side_by_side_env, usable_cores, visible_gpus

    env, gpus = {**os.environ, **side_by_side_env(usable_cores(), n)}, visible_gpus()
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]  # as the parent names it: "2,3" gives "2" and "3"
    return env


def _ray_worker(argv: list[str], cwd: str) -> int:
    """One Optuna worker in a Ray task: this script's own main, on the shared study, from the driver's
    folder (relative paths mean the same on every node of a shared file system)."""
    os.chdir(cwd)
    return main(argv)


def run_workers_on_ray(args, n: int) -> None:
    """``n`` Optuna workers as Ray tasks on one study. A worker lost with its node is retried
    by Optuna's heartbeat (PostgreSQL), as without Ray."""
    from folds.on_ray import connect

    ray = connect(args.ray)
    gpus = args.ray_gpus if args.ray_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
    argv = list(args.argv)
    remote = ray.remote(_ray_worker)
    own = strip_options(argv, {"--ray": 1, "--ray-gpus": 1, "--workers": 1})
    refs = [remote.options(num_gpus=gpus, num_cpus=1, name=f"optuna-{args.study}-{i}").remote(
        [*own, "--worker-index", str(i), "--workers", "1"], os.getcwd()) for i in range(n)]
    log.info("Ray: %d Optuna worker%s on study %s", n, "s" * (n > 1), args.study)
    codes = ray.get(refs)
    if any(codes):
        log.warning("Ray worker exit codes: %s", codes)


def check_tuner_args(args) -> None:
    """The study's own options, each with the value shown; called before any file or study is touched."""
    if args.n_trials < 0:
        raise UserError(f"--n-trials must be 0 (summary only) or more, but got {args.n_trials}.")
    if args.study_workers < 1:
        raise UserError(f"--workers must be at least 1, but got {args.study_workers}.")
    if args.ray and args.ray != "local" and (args.storage is None or args.storage.startswith("sqlite")):
        raise UserError(f"--ray {args.ray} with {'the journal file' if args.storage is None else 'SQLite'}: workers on "
                        "other machines do not share this disk. Use a PostgreSQL --storage URL (see README), or "
                        "--ray local.")
    if args.dry_run and args.ray:
        raise UserError("--dry-run: Ray's workers train on the cluster's nodes; leave --ray out to measure a trial "
                        "on this machine.")
    if args.time_limit is not None and args.ray:
        raise UserError("--time-limit: Ray schedules the workers; leave --time-limit out (a lost trial is retried).")
    if args.heartbeat < 1:
        raise UserError(f"--heartbeat must be at least 1 second, but got {args.heartbeat}.")
    if not 0 <= args.sampler_seed <= 2**32 - args.study_workers:  # worker i seeds its sampler with seed + i
        raise UserError(f"--sampler-seed must be in 0..2**32-{args.study_workers}, but got {args.sampler_seed}.")
    check_at_least("--ray-gpus", args.ray_gpus, 0, "0 (CPU workers)")
    name = args.study.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"--study {args.study!r}: use a plain name (it becomes the folder tuning/<study>/).")
    check_writable_folder(Path(args.tuning_dir) / name, f"--tuning-dir {args.tuning_dir}")


def run(args) -> int:
    from folds.config import RUN_CONTROL, learning_settings
    from folds.prepare import prepare_run, split_store
    from folds.init_from import check_init_source
    from folds.pseudo import check_source
    from folds.scale_check import whole_test_warning
    from folds.split import save_folds
    from tuning.objective import Objective
    from tuning.space import check_corners, live_space, load_space
    from tuning.storage import check_parallel_safe, make_storage
    from tuning.study import (StopAtCount, best_read_down, gone_worker_checks,
                              make_pruner, open_study, package_note, save_plots, summary, tidy_trials, write_best)

    # Every argument is checked before anything is created: a bad value must not pin a study.
    legacy_folds(args, log, "spec")
    check_tuner_args(args)
    cfg = resolve_config(cli_overrides(args), args.preset, args.config)
    if not args.ray:  # Ray's workers train on their own nodes' devices
        from folds.engine import check_device
        check_device(cfg.device)
    fold_ids = parse_fold_spec(args.fold, cfg.n_folds)
    space = load_space(args.space)
    check_corners(space, cfg, args.space)
    space, left_out = live_space(space, cfg, args.space)
    check_parallel_safe(args.storage, args.study_workers)
    pruner = make_pruner(args.pruner, cfg.epochs * len(fold_ids))
    study_dir = Path(args.tuning_dir) / args.study
    prep = prepare_run(cfg, study_dir / "folds.csv", write_split=False)
    cfg, ds = prep.cfg, prep.ds
    warning = whole_test_warning(cfg.crop, ds) if args.worker_index is None else None
    if warning:  # the study's trials would tune a recipe made for another test set
        log.warning(warning)
    if cfg.pseudo:  # before the study exists: the source must fit this split, its folds finished
        check_source(cfg.pseudo, ds.classes, prep.split_hash, fold_ids, cfg.pseudo_oof)
    if cfg.init_from:  # the same, for the run each trial's folds start from
        if "model" in space:
            raise UserError(f"--init-from {cfg.init_from}: every trial starts from that run's weights, of one "
                            "architecture; leave 'model' out of --space.")
        check_init_source(cfg, ds.classes, prep.split_hash, fold_ids)
    # The study's "same experiment" key: every learning setting except what the trials vary.
    # (the knobs the space leaves out change no trial: a study made before they were left out still compares)
    setup = {**learning_settings(cfg, exclude={*space, *left_out, "seed"}), "folds": fold_ids,
             "split_hash": prep.split_hash, "data_hash": ds.data_hash()}
    if args.dry_run:  # before the storage is made: nothing is written
        return dry_run(args, cfg, prep, fold_ids, space, setup, study_dir, left_out)
    storage = make_storage(args.storage, study_dir, heartbeat=args.heartbeat)
    save_folds(study_dir / "folds.csv", prep.folds, prep.split_key, split_store(cfg))
    seed = args.sampler_seed + (args.worker_index or 0)
    study, space = open_study(args.study, storage, space, setup, pruner=pruner, seed=seed, left_out=left_out)
    if args.worker_index is None:
        say_left_out(left_out, space)
        note = package_note(study)
        if note:
            log.warning(note)
    time_up = None  # --time-limit reached: raised once the summary and best.json are written

    if args.ray and args.worker_index is None:
        if (workers := workers_to_start(args, study)) > 0:
            run_workers_on_ray(args, workers)
    elif (workers := workers_to_start(args, study)) > 1 and args.worker_index is None:
        argv = args.deadline.hand_on(args.argv)  # the workers stop at this process's limit
        if cfg.workers is None:  # the workers split the cores, as side-by-side fold processes do
            from common.machine import side_by_side_workers, usable_cores
            argv += ["--num-workers", str(side_by_side_workers(usable_cores(), workers))]
        procs = [children.start([sys.executable, str(Path(__file__).resolve()), *argv, "--worker-index", str(i),
                                 "--workers", "1"], env=_worker_env(i, workers))
                 for i in range(workers)]
        codes = children.wait_all(procs)  # stopping the study stops its workers, each failing its trial
        time_up = TimeUp.of_children(codes, "workers")
        if time_up is None and any(codes):  # the study goes on: its next run retries their trials
            log.warning("worker exit codes: %s (%s)", codes,
                        "; ".join(f"worker {i} {children.ending(c)}" for i, c in enumerate(codes) if c))
    elif args.n_trials > 0:
        trials_dir = study_dir / "trials"
        # a gone worker's trial: failed by the database's heartbeat, or by its lock (a lock copied with the study's
        # folder looks fresh until 10 minutes without a beat), or where it is of this host, by its pid
        look, alive = gone_worker_checks(storage, trials_dir, args.started)
        look(study)  # now: a gone worker's trial, failed, has its files tidied below in this session
        freed = tidy_trials(study, trials_dir, args.keep_checkpoints)  # a killed worker's trials: never resumed
        if freed:
            log.warning("removed %.1f MB that trials stopped by a kill left in %s (%s).", freed / 2**20, trials_dir,
                        "half-written files" if args.keep_checkpoints else
                        "their checkpoints, as a trial is never resumed, and half-written files")
        if trials_left(args, study) > 0:  # (after the tidy: a gone worker's trial failed counts as not finished)
            stop = StopAtCount(args.n_trials, look, alive, deadline=args.deadline)
            objective = Objective(cfg, ds, prep.folds, fold_ids, space, trials_dir, args.keep_checkpoints,
                                  deadline=args.deadline, over=stop.over)
            try:
                study.optimize(objective, n_trials=2 * args.n_trials, catch=(Exception,), gc_after_trial=True,
                               callbacks=[stop])
            except TimeUp as e:  # the trial is queued again; the finished ones are summarised below
                time_up = e
    if args.worker_index is not None:
        if time_up is not None:
            raise time_up
        return 0
    read = best_read_down(study)  # the bootstrap once, for the summary and best.json
    print(summary(study, read))
    # the training setup a run needs besides the tuned parameters: every learning setting, where the data
    # and runs are, and whether the data's small classes may be split; not this machine's or run folder's controls
    machine = RUN_CONTROL - {"data_dir", "runs_dir", "allow_small_classes"}
    setup_cfg = {k: v for k, v in cfg.to_dict().items() if k not in machine}
    best = write_best(study, study_dir / layout.BEST_PARAMS, args.storage, setup_cfg, read)
    plots = save_plots(study, study_dir)
    print(f"best parameters and training setup: {best}\nnext: {layout.read_json(best)['use']}")
    print("plots: " + ", ".join(str(p) for p in plots))
    if time_up is not None:
        raise time_up
    return 0


def say_left_out(left_out: dict, space: dict) -> None:
    """The default space's knobs that no trial would use (``tuning.space.live_space``), where the study's space
    leaves them out (one made before they were left out goes on drawing them)."""
    from folds.config import NEEDS

    names = [name for name in left_out if name not in space]
    if names:
        log.info("the search space leaves out %s: no trial it can draw would use them (they are %s).",
                 ", ".join(names), "; ".join(sorted({NEEDS[name][0] for name in names})))


def dry_run(args, cfg, prep, fold_ids, space, setup: dict, study_dir, left_out: dict) -> int:
    """``--dry-run``: the probe and the estimate (``tuning.dry_run``), after every check the study makes: the
    storage reached and, where the study is there already (the next session of a study), read and not opened for
    writing, its space and setup compared with this command's and its finished trials counted."""
    from tuning.dry_run import describe_study, plan_study
    from tuning.objective import Objective
    from tuning.storage import existing_storage
    from tuning.study import check_identity, find_study, package_note

    storage, storage_note = existing_storage(args.storage, study_dir)  # one connection: reached, and read
    study = find_study(args.study, storage)
    if study is not None and "search_space" in study.user_attrs:  # else its first worker stopped before it was set
        space = check_identity(study, space, setup, left_out)
        note = package_note(study, keep=False)
        if note:
            log.warning(note)
    say_left_out(left_out, space)
    finished = 0 if study is None else len(study.get_trials(deepcopy=False, states=FINISHED))
    objective = Objective(cfg, prep.ds, prep.folds, fold_ids, space, study_dir / "trials")
    extra = {k: len(e.paths) for k in fold_ids if (e := objective.pseudo_images(cfg, k)) is not None}
    plan = plan_study(cfg, prep.ds, prep.folds, fold_ids, space, n_trials=args.n_trials, finished=finished,
                      extra_images=extra, workers=args.study_workers, time_limit=args.time_limit)
    print(describe_study(plan, study_dir) + (f"\n{storage_note}." if storage_note else ""))
    return 0


@entry_point
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from folds.deadline import Deadline
    args.deadline = Deadline(args.time_limit)  # counts from here: the data checks spend the time too
    args.started = time.time()  # another worker's running trial is waited for once its lock has beaten since
    args.argv = argv  # the workers get the same options
    log_to_stdout(logging.INFO if args.worker_index is None else logging.WARNING)
    import optuna
    optuna.logging.set_verbosity(optuna.logging.INFO)
    from tuning.storage import stop_heartbeat_threads
    try:
        return run(args)
    finally:  # however it ended: a heartbeat thread left running would keep the process alive for good
        stop_heartbeat_threads()


if __name__ == "__main__":
    sys.exit(main())
