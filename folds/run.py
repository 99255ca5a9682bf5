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
from folds.cli import add_legacy_folds, add_training_options, cli_overrides, legacy_folds  # noqa: E402
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
    g.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    add_training_options(p)
    add_legacy_folds(p)
    return p


def finish_run(runner, result: dict) -> str:
    """The run's submission, the fold mean through the ensemble's own build, and a summary line."""
    from ensemble.build import build, format_table

    cfg = runner.cfg
    sub = build([runner.run_dir], method="mean", out=Path(cfg.submissions_dir) / f"{cfg.name}_folds-mean.csv",
                oof="crops" if cfg.crop_oof else "whole")
    logging.getLogger(__name__).info("%s", format_table(sub["table"], sub["chosen"]))
    line = f"OOF macro-F1 {result['oof']['f1']:.4f}"
    if "oof_crops" in result:
        line += f" | crop-OOF macro-F1 {result['oof_crops']['f1']:.4f}"
    if "test_f1" in sub:
        line += f" | test macro-F1 {sub['test_f1']:.4f} (scored with test_labels.csv, for reporting only)"
    return line + f"\nrun folder: {runner.run_dir}\nsubmission: {sub['out']}\nreport: {sub.get('report')}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stdout, force=True)
    try:
        legacy_folds(args, logging.getLogger("folds.run"), "k")
        cfg = resolve_config(cli_overrides(args), args.preset, args.config, args.params)
        from folds.runner import FoldRunner, summary_table
        runner = FoldRunner.open(cfg, resume=args.resume, force=args.force)
        if args.fold == "full":
            result = runner.run_full(args.full_epochs)
            print(f"full-data model: {result['epochs']} epochs; test probabilities in "
                  f"{runner.fold_dir('full')}. Add it to a soft vote with "
                  f"`python ensemble/build.py {runner.run_dir} --with-full`.")
            return 0
        folds = runner.planned_folds if args.fold == "all" else parse_fold_spec(args.fold, runner.cfg.n_folds)
        result = runner.run(folds)
        done = result.get("fold_results", result["folds"])
        if done:
            print("\n" + summary_table(done))
        if result["complete"]:
            print(finish_run(runner, result))
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; continue with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
