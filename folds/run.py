"""Train one model per fold and write OOF predictions, test probabilities and a submission.

Examples:
    python folds/run.py --fold all                       # built-in demo data, a few minutes on a CPU
    python folds/run.py --data-dir data/ --fold all      # Dacon data, EfficientNet-B3, 5 folds
    python folds/run.py --data-dir data/ --fold 0,2      # some folds (several processes may share a run)
    python folds/run.py --data-dir data/ --fold all --resume   # continue an interrupted run
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from common import UserError  # noqa: E402
from common.interrupt import TimeUp  # noqa: E402
from common.cli import check_at_least, entry_point, log_to_stdout  # noqa: E402
from folds.cli import add_legacy_folds, add_training_options, cli_overrides, legacy_folds, strip_options  # noqa: E402,E501
from folds.config import parse_fold_spec, resolve_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="folds/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run control")
    g.add_argument("--fold", default="all", help="which folds this process trains: 'all', an index (2), a list "
                   "(0,2), or 'full' (one model on all train data, for the test vote)")
    g.add_argument("--resume", action="store_true", help="continue interrupted folds from their last epoch")
    g.add_argument("--force", action="store_true", help="retrain folds that are already finished")
    g.add_argument("--full-epochs", type=int, help="epochs of --fold full (default: the median best epoch "
                   "of the run's folds)")
    g.add_argument("--time-limit", type=float, metavar="MINUTES", help="stop cleanly (exit 75) before the next "
                   "epoch or fold prediction that would not end within MINUTES of the start, keeping all finished "
                   "work; rerun with --resume. Under a Kaggle or Colab session's limit, leave a margin for one "
                   "fold's predictions and the submission build")
    g.add_argument("--dry-run", action="store_true", help="every check, then a short timed probe of the first "
                   "fold's training and the test's prediction: how long the folds take and, on a GPU, the memory "
                   "the batch needs; nothing is written to the run folder or the submissions")
    g.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    g.add_argument("--no-join", action="store_true", help=argparse.SUPPRESS)  # side-by-side fold processes: train
    # their folds only; the parent joins the run and builds the submission once, after they all end
    g.add_argument("--procs-per-gpu", type=int, default=1, metavar="N", help="train N folds at once on each "
                   "GPU, each in its own process with its share of the CPU cores for its loader (a small "
                   "backbone does not fill a big GPU); the result equals the one-process run (default: 1)")
    g.add_argument("--gpus", default="1", metavar="N", help="spread the folds over N of the visible GPUs, or "
                   "'all' (a Kaggle T4 x2: 2), each fold process on one GPU; with --procs-per-gpu, that many "
                   "on each (default: 1, this process's device)")
    g = p.add_argument_group("scaling out with Ray (pip install -r requirements-ray.txt)")
    g.add_argument("--ray", metavar="ADDRESS", help="run each fold as a Ray task: 'local' (start Ray here), "
                   "'auto' (the cluster this node joined) or HOST:PORT; run folders must be on storage every "
                   "node sees")
    g.add_argument("--ray-runs", nargs="+", metavar="SPEC", help="several runs in one job: YAML/JSON files "
                   "applied over this command's options (e.g. 'seed: 1'), or existing run folders")
    g.add_argument("--ray-gpus", type=float, help="GPUs per fold task (default: 1 on a GPU cluster, 0 on CPU)")
    g.add_argument("--ray-cpus", type=int, help="CPUs per fold task: its loader workers + 1 (default: "
                   "--num-workers + 1, or 2)")
    g.add_argument("--max-retries", type=int, default=3, help="Ray retries of a fold whose worker or node died; "
                   "each retry resumes from last.pt (default: 3; -1: without end)")
    add_training_options(p)
    add_legacy_folds(p)
    return p


def finish_run(runner, result: dict) -> str:
    """The run's submission, the fold mean through the ensemble's own build, and a summary line."""
    from common.metrics import get_metric
    from ensemble.build import build, format_table
    from ensemble.runs import OOF_NAMES
    from folds.stopping import read_down_view

    cfg = runner.cfg
    sub = build([runner.run_dir], method="mean", out=Path(cfg.submissions_dir) / f"{cfg.name}_folds-mean.csv")
    logging.getLogger(__name__).info("%s", format_table(sub["table"], sub["chosen"], sub["oof"], sub["metric"]))
    m = get_metric(cfg.metric)
    read_down = result.get("epoch_optimism")
    view = read_down_view(result.get("fold_results", {}))

    def read(kind: str, score: float) -> str:  # the OOF the folds chose their best epochs on reads high by that
        return (f" (its folds' best epochs, chosen on these paintings, read it about {read_down:+.4f} high: expect "
                f"about {score - read_down:.4f} of one fold model on new {'crops' if kind == 'crops' else 'paintings'})"
                if read_down is not None and kind == view else "")

    line = f"OOF {m.label} {result['oof'][m.key]:.4f}{read('whole', result['oof'][m.key])}"
    if "oof_crops" in result:
        line += f" | crop-OOF {m.label} {result['oof_crops'][m.key]:.4f}{read('crops', result['oof_crops'][m.key])}"
    chosen = next((r for r in sub["table"] if r["method"] == sub["chosen"]), None)
    if chosen is not None and sub["chosen"] != "mean":  # offsets or smoothing over the fold mean: the test is theirs
        line += f" | the submission ({sub['chosen']}): {OOF_NAMES[sub['oof']]} {m.label} {chosen[m.key]:.4f}"
        # it was chosen over the plain mean on these paintings too, and its folds' epochs were: both read it high
        high = sub.get("choice_optimism", 0.0) + (sub.get("epoch_optimism") or 0.0)
        if high:
            line += f" (choosing it, and its folds' best epochs, on these paintings reads it about {high:+.4f} " \
                    f"high: expect about {chosen[m.key] - high:.4f})"
    if f"test_{m.key}" in sub:
        line += f" | test {m.label} {sub['test_' + m.key]:.4f} (scored with test_labels.csv, for reporting only)"
    return line + f"\nrun folder: {runner.run_dir}\nsubmission: {sub['out']}\nreport: {sub.get('report')}"


def side_by_side_processes(args, runner, n_gpus: int, folds: list) -> int:
    """How many fold processes ``--procs-per-gpu`` and ``--gpus`` start for ``folds``: one a fold it trains at
    most (a resumed run with one fold left trains it here, with every core), and none beside this one for the
    full-data model."""
    return 1 if args.fold == "full" else max(1, min(args.procs_per_gpu * n_gpus, len(runner.to_train(folds))))


def run_side_by_side(args, runner, gpus: list, folds: list[int]) -> dict:
    """``--procs-per-gpu N`` (and ``--gpus``): ``folds`` in N processes on each of ``gpus`` at once; then
    this process joins the run, as ``runner.run`` would. It trains nothing itself, so a ``--force``
    it hands on retrains each fold once."""
    runner.check_folds(folds)
    base = runner.deadline.hand_on(strip_options(args.argv, {"--fold": 1, "--procs-per-gpu": 1, "--gpus": 1,
                                                             "--num-workers": 1, "--name": 1}))
    wait_for(start_side_by_side(base, runner.cfg, runner.to_train(folds), args.procs_per_gpu * len(gpus), gpus=gpus))
    return runner.join(runner.finished(folds))


def check_run_control(args) -> None:
    """This command's own options, before the run folder is touched."""
    check_at_least("--full-epochs", args.full_epochs, 1)  # 0 trained nothing and predicted with a random head
    if args.full_epochs is not None and args.fold != "full":  # it was ignored: the folds trained --epochs
        raise UserError(f"--full-epochs {args.full_epochs} sets the full-data model's epochs (--fold full); the folds "
                        f"of --fold {args.fold} train --epochs.")
    check_at_least("--procs-per-gpu", args.procs_per_gpu, 1)  # 0 or less ran one process, as 1 does
    check_at_least("--ray-gpus", args.ray_gpus, 0, "0 (CPU tasks)")
    check_at_least("--ray-cpus", args.ray_cpus, 1)
    check_at_least("--max-retries", args.max_retries, -1, "-1 (retry without end)")  # Ray's own meaning of -1
    if args.dry_run and (args.ray or args.ray_runs):
        raise UserError("--dry-run: a Ray job's fold tasks run on the cluster's nodes; leave --ray out to measure "
                        "one fold task here (on a node of the kind the tasks get).")
    if args.time_limit is not None and (args.ray or args.ray_runs):
        raise UserError("--time-limit: a Ray job's fold tasks are scheduled by the cluster; leave --time-limit out "
                        "(a retried task resumes from its last epoch).")


def fold_gpus(spec: str, cfg, args) -> list:
    """``--gpus``: the GPUs the fold processes spread over, one each; ``[None]``: this process's own device."""
    if str(spec) == "1":
        return [None]
    if str(spec) != "all" and not (str(spec).isdigit() and int(spec) >= 1):
        raise UserError(f"--gpus {spec!r}: give a count of GPUs, like 2, or 'all'.")
    from common.machine import visible_gpus

    visible = visible_gpus()
    if spec == "all" and len(visible) < 2:
        return [None]  # one GPU or none: nothing to spread
    if args.ray or args.ray_runs:
        raise UserError("--gpus: Ray places the fold tasks on the cluster's GPUs itself (--ray-gpus per task).")
    from folds import distributed
    if distributed.world()[1] > 1:
        raise UserError("--gpus: under torchrun each rank already has its GPU; leave --gpus out.")
    if cfg.device not in ("auto", "cuda"):
        raise UserError(f"--gpus {spec} with --device {cfg.device}: each fold process gets one GPU through "
                        "CUDA_VISIBLE_DEVICES; leave --device auto, and choose the GPUs with CUDA_VISIBLE_DEVICES.")
    count = len(visible) if spec == "all" else int(spec)
    if count > len(visible):
        raise UserError(f"--gpus {spec}: this process sees {len(visible)} GPU(s) ({', '.join(visible) or 'none'}).")
    return visible[:count]


def start_side_by_side(base_argv: list[str], cfg, folds: list[int], n: int, share: int | None = None,
                       gpus: list = (None,)) -> list:
    """Start ``n`` processes of this script that train ``folds`` round-robin, each started with
    ``base_argv`` (options that resolve to ``cfg``); they share the run folder through its per-fold
    locks. Each gets ``side_by_side_workers`` loader workers unless the config names them; ``share``:
    how many processes split the cores (more than ``n`` when several runs train at once). ``gpus``:
    process i sees only ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``; None: the parent's devices)."""
    import os

    from common import children
    from common.machine import side_by_side_env, side_by_side_workers, usable_cores
    from common.progress import LINES_ENV

    n = max(1, min(n, len(folds)))  # a process a fold at most: the cores are split among those that start
    groups = [folds[i::n] for i in range(n)]
    cores = usable_cores()
    workers = cfg.workers if cfg.workers is not None else side_by_side_workers(cores, share or n)
    threads = side_by_side_env(cores, share or n)

    def env(i):  # their epoch and progress lines go to this terminal, as lines (no bars: they would clash)
        gpu = gpus[i % len(gpus)]
        return {**os.environ, **threads, LINES_ENV: "1", **({} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu})}

    procs = []
    for i, g in enumerate(groups):
        procs.append(children.start([sys.executable, str(Path(__file__).resolve()), *base_argv, "--name", cfg.name,
                                     "--fold", ",".join(map(str, g)), "--num-workers", str(workers),
                                     "--procs-per-gpu", "1", "--gpus", "1", "--no-join"], env=env(i)))
        procs[-1].folds = g  # named when it fails
    return procs


def wait_for(procs: list) -> None:
    """Their exit codes checked; stopping this process stops them, each releasing its fold lock."""
    from common import children

    codes = children.wait_all(procs)
    time_up = TimeUp.of_children(codes, "fold processes")
    if time_up is not None:
        raise time_up
    if any(codes):
        failed = "; ".join(f"the one for folds {getattr(p, 'folds', '?')} {children.ending(c)}"
                           for p, c in zip(procs, codes) if c)
        raise UserError(f"--procs-per-gpu/--gpus: fold processes exited with {codes}: {failed}. Finished folds and "
                        "epochs are kept; rerun with --resume.")


def run_on_ray(args, cfg) -> int:
    """Every requested fold of every run as a Ray task; then each complete run is joined and built."""
    from common.layout import FULL
    from folds.on_ray import configs_for, run_folds
    from folds.runner import FoldRunner, summary_table

    if not args.ray:
        raise UserError("--ray-runs needs --ray ADDRESS (local, auto or HOST:PORT).")
    runners = [FoldRunner.open(c, resume=True, force=args.force) for c in configs_for(cfg, args.ray_runs or [])]
    names = [r.run_dir for r in runners]
    if len(set(names)) != len(names):
        raise UserError(f"--ray-runs: two runs share a folder ({[str(n) for n in names]}); give each a name or "
                        "another seed or model.")

    def folds_of(runner):
        if args.fold == "full":
            return [FULL]
        return runner.planned_folds if args.fold == "all" else parse_fold_spec(args.fold, runner.cfg.n_folds)

    if args.force:
        for runner in runners:
            for k in folds_of(runner):
                runner.clear_fold(k)
    run_folds(runners, folds_of, address=args.ray, gpus=args.ray_gpus, cpus=args.ray_cpus,
              max_retries=args.max_retries, full_epochs=args.full_epochs)
    for runner in runners:
        if args.fold == "full" or not all(runner.is_done(k) for k in runner.planned_folds):
            print(f"{runner.run_dir}: folds done: {[k for k in runner.planned_folds if runner.is_done(k)]}")
            continue
        result = runner.assemble()
        print("\n" + summary_table(result["fold_results"], runner.cfg.metric))
        print(finish_run(runner, result))
    return 0


def dry_run(args, cfg, n_gpus: int) -> int:
    """``--dry-run``: the checks, the probe and the estimate (``folds.dry_run``); the run folder is left alone."""
    from folds import distributed
    from folds.dry_run import describe, dry_run as plan_run
    from folds.runner import FoldRunner

    if distributed.world()[1] > 1:
        raise UserError("--dry-run: run it in one process, without torchrun; it measures one fold process.")
    from folds.deadline import Deadline

    # the limit as the run would start with it now: whether it leaves time to wait out a silent fold's holder
    runner = FoldRunner.open(cfg, resume=args.resume, force=args.force, dry_run=True,
                             deadline=Deadline(args.time_limit))
    folds = (["full"] if args.fold == "full" else runner.planned_folds if args.fold == "all"
             else parse_fold_spec(args.fold, runner.cfg.n_folds))
    runner.check_folds([k for k in folds if k != "full"])
    print(describe(plan_run(runner, folds, args.time_limit, side_by_side_processes(args, runner, n_gpus, folds),
                            args.full_epochs)))
    return 0


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from folds.deadline import Deadline
    deadline = Deadline(args.time_limit)  # counts from here: the data checks spend the time too
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --procs-per-gpu hands it to its processes
    log_to_stdout(logging.WARNING if args.quiet else logging.INFO)
    try:
        legacy_folds(args, logging.getLogger("folds.run"), "k")
        cfg = resolve_config(cli_overrides(args), args.preset, args.config, args.params)
        from folds import distributed
        from folds.runner import FoldRunner, summary_table
        distributed.init(cfg.device)  # under torchrun: one fold data-parallel on every rank
        if not distributed.is_main():
            logging.getLogger().setLevel(logging.WARNING)
        gpus = fold_gpus(args.gpus, cfg, args)  # checked before the run folder is touched
        check_run_control(args)
        if not args.no_join and args.fold != "full":  # the submission comes after every fold: find out now
            from common.atomic import check_writable_folder
            check_writable_folder(cfg.submissions_dir, f"--submissions-dir {cfg.submissions_dir}")
        if args.ray or args.ray_runs:
            return run_on_ray(args, cfg)
        from folds.engine import check_device
        check_device(cfg.device)
        if args.dry_run:
            return dry_run(args, cfg, len(gpus))
        runner = FoldRunner.open(cfg, resume=args.resume, force=args.force, announce=not args.no_join,
                                 deadline=deadline)
        if args.fold == "full":
            result = runner.run_full(args.full_epochs)
            if not distributed.is_main():
                return 0
            print(f"full-data model: {result['epochs']} epochs; test probabilities in "
                  f"{runner.fold_dir('full')}. Add it to a soft vote with "
                  f"`python ensemble/build.py {runner.run_dir} --with-full`.")
            return 0
        folds = runner.planned_folds if args.fold == "all" else parse_fold_spec(args.fold, runner.cfg.n_folds)
        if side_by_side_processes(args, runner, len(gpus), folds) > 1:  # one fold to train: here, with every core
            result = run_side_by_side(args, runner, gpus, folds)
        else:
            result = runner.run(folds, join=not args.no_join)
        if not distributed.is_main() or args.no_join:
            return 0
        done = result.get("fold_results", result["folds"])
        if done:
            print("\n" + summary_table(done, runner.cfg.metric))
        if result["complete"]:
            print(finish_run(runner, result))
        return 0
    finally:
        from folds import distributed
        distributed.close()


if __name__ == "__main__":
    sys.exit(main())
