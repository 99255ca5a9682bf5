"""Every run in a runs folder, one line each: what it is, how far it got, and its cross-validation.

Examples:
    python ensemble/table.py                                  # the runs in runs/
    python ensemble/table.py /kaggle/working/runs --sort whole --out runs.csv

Runs are sorted by the OOF score that ``ensemble/build.py`` would choose by (``--sort auto``): the crop OOF,
or the whole-image OOF where the test images look whole or the runs have no crop OOF, each run's by the
metric it was trained for (macro-F1 unless ``settings`` names another ``metric``); a run with folds
still to train shows the mean of its finished folds, marked ``*``. ``epoch_choice`` is how high choosing each
fold's best epoch on its validation paintings reads that OOF (the folds' mean). ``settings`` lists what a run does
differently from the defaults, so two runs can be told apart; ``split`` tells which runs share a split,
as a weighted blend or a stack of them needs. Each unfinished run gets the command that finishes it
with its own saved options, and a fold that a live process holds shows as training (with how long its holder
has been silent, where it missed its beats: a session that ended, whose lock is taken over after 10 min). Test
scores are not shown: a choice is made on the OOF, and ``ensemble/build.py`` reports the test where labels exist.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import UserError, layout, write_csv  # noqa: E402
from common.atomic import check_out_file  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.metrics import get_metric  # noqa: E402
from ensemble.runs import resolve_oof  # noqa: E402
from folds.config import PATH_SETTINGS, PRESETS, RunConfig, learning_settings, saved_config  # noqa: E402
from folds.lock import FoldLock  # noqa: E402
from folds.stopping import epoch_read_down  # noqa: E402

SORTS = {"crop": "crop_oof", "whole": "oof", "name": "run", "minutes": "minutes"}
AUTO = "auto"  # the OOF the build would use (ensemble.runs.resolve_oof)
SHOWN_APART = {"model", "img_size"}  # settings with their own column


def differences(cfg: RunConfig) -> str:
    """The learning settings that differ from the nearest preset's, as ``key=value`` (files by name), after
    ``preset=NAME`` where that preset is not the default: a config keeps its settings, not the preset that
    gave them, and a ``strong`` run listed against the default took a dozen columns' width."""
    own = {k: v for k, v in learning_settings(cfg).items() if k not in SHOWN_APART}

    def against(preset: str) -> list[str]:
        base = RunConfig(**PRESETS[preset]).to_dict()
        return [f"{k}={Path(v).name if k in PATH_SETTINGS and v else v}" for k, v in own.items() if v != base[k]]

    nearest = min(PRESETS, key=lambda p: (len(against(p)), p != "default"))  # a tie: the default
    return " ".join((["preset=" + nearest] if nearest != "default" else []) + against(nearest))


def run_row(run: Path) -> tuple[dict, str | None]:
    """One run's line, and the command that finishes it (None when finished)."""
    cfg = saved_config(run)
    planned = layout.planned_folds(cfg)
    done = {k: layout.read_json(layout.fold_dir(run, k) / layout.DONE)
            for k in planned if layout.is_done(run, k)}
    training = []  # folds a live process holds now
    for k in planned:
        lock = FoldLock(layout.fold_dir(run, k) / layout.LOCK)
        holder = None if k in done else lock.holder()
        if holder:
            # a holder that missed its beats (a session that ended) until its lock may be taken over
            silent = f", silent {lock.silent_for() / 60:.0f} of {FoldLock.stale_after(holder) // 60} min" \
                if lock.missed_beats(holder) else ""
            training.append(f"{k} ({holder['host']}:{holder['pid']}{silent})")
    manifest = run / layout.MANIFEST
    complete = len(done) == len(planned)
    scores = layout.read_json(run / layout.SCORES) if complete and (run / layout.SCORES).is_file() else {}

    metric = get_metric(cfg.metric).key  # the run's own competition metric

    def score(oof_key: str, fold_key: str) -> float:
        if scores.get(oof_key):
            return scores[oof_key][metric]
        finished = [d[fold_key][metric] for d in done.values() if d.get(fold_key)]  # scores, not probabilities
        return float(np.mean(finished)) if finished else float("nan")

    first = next(iter(done.values()), {})
    row = {"run": run.name, "model": cfg.model, "img": first.get("img_size", cfg.img_size),
           "folds": f"{len(done)}/{len(planned)}" + (" +full" if layout.is_done(run, layout.FULL) else ""),
           "complete": complete, "crop_oof": score("oof_crops", "crop_oof"), "oof": score("oof", "oof"),
           # how high choosing each fold's best epoch on its validation paintings reads the OOF it chose on (the
           # crop OOF by default): a run of more epochs, or noisier ones, reads higher (folds.stopping)
           "epoch_choice": epoch_read_down(done),
           "minutes": round(sum(d.get("minutes", 0.0) for d in done.values()), 1),
           "split": layout.read_json(manifest).get("split_hash", "") if manifest.is_file() else "",
           "status": "done" if complete else ("training fold " + ", ".join(training) if training else "unfinished"),
           "settings": differences(cfg), "metric": cfg.metric}
    todo = [k for k in planned if k not in done]
    return row, (layout.fold_command(run, ",".join(map(str, todo)), "--resume") if todo and not training else None)


def run_folders(runs_dir) -> list[Path]:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: not a folder. Give the runs folder (folds/run.py --runs-dir; default runs).")
    return sorted(p for p in runs_dir.iterdir() if (p / layout.CONFIG).is_file())


def resolve_sort(sort: str, runs_dir) -> tuple[str, str | None]:
    """``--sort``, with auto resolved as the build resolves ``--oof auto``, from the first run by name; and
    its note when the test images decided."""
    if sort != AUTO:
        return sort, None
    runs = run_folders(runs_dir)
    if not runs:
        return "crop", None
    oof, note = resolve_oof(AUTO, runs[0], option="--sort")
    return {"crops": "crop", "whole": "whole"}[oof], note


def runs_table(runs_dir, sort: str = AUTO) -> tuple[pd.DataFrame, list[str]]:
    """Every run folder under ``runs_dir`` (a folder with a config.json), sorted; and the commands that
    finish the unfinished ones. A run whose files cannot be read is listed as damaged, not skipped."""
    sort = resolve_sort(sort, runs_dir)[0]
    rows, commands = [], []
    for run in run_folders(runs_dir):
        try:
            row, command = run_row(run)
        except UserError as e:  # a damaged or missing JSON file: its message names the file
            row, command = {"run": run.name, "status": f"damaged ({str(e).split('; ')[0]})"}, None
        except (OSError, ValueError, KeyError, TypeError) as e:  # a half-copied or hand-edited folder
            row, command = {"run": run.name, "status": f"damaged ({type(e).__name__}: {e})"}, None
        rows.append(row)
        if command:
            commands.append(command)
    df = pd.DataFrame(rows, columns=["run", "model", "img", "folds", "complete", "crop_oof", "oof", "epoch_choice",
                                     "minutes", "split", "status", "settings", "metric"])
    df["img"] = pd.to_numeric(df["img"]).astype("Int64")  # 288, not 288.0 beside a damaged row's blank
    key = SORTS[sort]
    df = df.sort_values(key, ascending=key in ("run",), na_position="last", kind="stable", ignore_index=True)
    return df, commands


def partial(df: pd.DataFrame) -> pd.Series:
    """Rows whose scores are the mean of some finished folds (not a damaged row, which has none)."""
    return df["complete"].eq(False) & df["crop_oof"].notna()


def show(df: pd.DataFrame) -> str:
    """The table as text: scores to 4 places, a partial run's marked ``*``."""
    view = df.drop(columns=["complete", "metric"]).astype(object)  # settings names a metric other than macro-F1
    mark = partial(df)
    for c in ("crop_oof", "oof"):
        view[c] = ["" if pd.isna(v) else f"{v:.4f}" + ("*" if m else "") for v, m in zip(df[c], mark)]
    view["epoch_choice"] = ["" if pd.isna(v) else f"{v:+.4f}" for v in df["epoch_choice"]]
    # every column reads from the left, under its name: pandas right-aligned the text, and a long settings cell
    # pushed the short ones far from their header
    view = view.where(view.notna(), "").astype(str)  # not fillna: pandas 2 warns that it downcasts object columns

    def left(width: int):
        return lambda cell: f"{cell:<{width}}"

    text = view.to_string(index=False, justify="left",
                          formatters={c: left(max(len(c), view[c].str.len().max())) for c in view})
    return "\n".join(line.rstrip() for line in text.split("\n"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs_dir", nargs="?", default="runs", help="the runs folder (default: runs)")
    p.add_argument("--sort", choices=[AUTO, *sorted(SORTS)], default=AUTO, help="order of the rows, best first "
                   "(default: auto, the OOF score that ensemble/build.py chooses by: crop, or whole where the test "
                   "images look whole or the runs have no crop OOF)")
    p.add_argument("--out", help="also write the table to this CSV")
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_out_file(args.out)
    sort, note = resolve_sort(args.sort, args.runs_dir)
    df, commands = runs_table(args.runs_dir, sort)
    if df.empty:
        print(f"{args.runs_dir}: no run folders (folders with a {layout.CONFIG}).")
        return 0
    print(show(df))
    if note:
        print(f"\nnote: {note}")
    by_metric = df.dropna(subset=["metric"]).groupby("metric")["run"].agg(", ".join)
    if len(by_metric) > 1:  # one column, scores of two kinds: the ensemble tools refuse to mix them unasked
        kinds = "; ".join(f"{m}: {r}" for m, r in by_metric.items())
        print(f"\nnote: these runs were trained for different metrics ({kinds}); each row's scores are by its "
              "own, so rank within one metric, or score them all by one with `python ensemble/compare.py RUNS "
              "--metric NAME`.")
    if partial(df).any():
        print("\n* the mean of the finished folds' scores")
    if commands:
        print("\nTo finish the unfinished runs:")
        print("\n".join(f"  {c}" for c in commands))
    if args.out:
        write_csv(args.out, df)
        print(f"\ntable: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
