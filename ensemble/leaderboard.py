"""Does the cross-validation predict the leaderboard? Each submission's honest OOF score beside the
leaderboard scores you enter, and how well the one ranks the other.

Examples:
    python ensemble/leaderboard.py --lb lb.csv                       # the submissions in submissions/
    python ensemble/leaderboard.py submissions /kaggle/working/subs --lb lb.csv --out cv_lb.csv

``lb.csv`` has a row a submission you sent: ``submission,public`` (and ``private`` once the competition
ends; a cell may be empty), the submitted CSV's file name as ``ensemble/build.py`` wrote it
(``b3_folds-mean.csv``) and the score the site gave it. Every build keeps its choice's honest OOF score
beside its CSV (``<out>_blend.json``); this lines them up, best CV first, and gives Spearman's rank
correlation of the CV with each leaderboard column. Choose on the CV: a public leaderboard scores a
share of the test, and a choice made on it is fitted to that share. A low correlation over several
submissions says that the CV or that share does not stand for the test.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from common import UserError, write_csv  # noqa: E402
from common.atomic import check_out_file  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.metrics import DEFAULT_METRIC, get_metric  # noqa: E402
from ensemble.saved_blend import BLEND_JSON, submission_of  # noqa: E402

BOARDS = ("public", "private")  # lb.csv's score columns, beside ``submission``
MIN_RANKED = 3  # submissions with both scores before a rank correlation says anything


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble/leaderboard.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", default=["submissions"],
                   help="folders of ensemble/build.py's submissions (default: submissions)")
    p.add_argument("--lb", required=True, help="CSV of submission,public[,private]: the leaderboard's scores")
    p.add_argument("--out", help="also write the table as a CSV")
    return p


def read_lb(path) -> pd.DataFrame:
    """``--lb``: one row a submission, its scores as numbers (an empty cell: not scored yet)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--lb {path}: file not found. It is a CSV of submission,public[,private]: each "
                        "submitted CSV's file name and the leaderboard's score for it.")
    try:
        lb = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UserError(f"--lb {path}: cannot read it as a CSV ({type(e).__name__}: {e}).") from None
    boards = [b for b in BOARDS if b in lb.columns]
    if "submission" not in lb.columns or not boards:
        raise UserError(f"--lb {path}: needs the columns submission and public (private too, once known); found "
                        f"{list(lb.columns)}.")
    lb["submission"] = lb["submission"].str.strip().map(lambda s: Path(s).name)  # a path as submitted: its name
    dup = lb.index[lb["submission"].duplicated(keep=False)]
    if len(dup):
        raise UserError(f"--lb {path}: {lb.loc[dup[0], 'submission']!r} is listed twice (lines "
                        f"{', '.join(str(i + 2) for i in dup)}); keep one row a submission.")
    for b in boards:
        cells = lb[b].str.strip()
        scores = pd.to_numeric(cells.where(cells != "", None), errors="coerce")
        bad = lb.index[scores.isna() & (cells != "")]
        if len(bad):
            raise UserError(f"--lb {path} line {bad[0] + 2}: {b} score {lb.loc[bad[0], b]!r} is not a number.")
        lb[b] = scores
    return lb[["submission", *boards]]


def read_builds(folders) -> pd.DataFrame:
    """Every build in ``folders``: its submission's name, what it combined and its honest OOF score."""
    rows = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"{folder}: not a folder; give the folders ensemble/build.py wrote submissions to.")
        for meta_path in sorted(folder.glob("*" + BLEND_JSON)):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as e:  # cut short, or edited by hand
                raise UserError(f"{meta_path}: cannot read it ({type(e).__name__}: {e}); build that submission "
                                "again, or move the file away.") from None
            cv = meta.get("cv") or {}  # builds from before it was kept have none
            metric = get_metric(meta.get("metric") or DEFAULT_METRIC)
            # a build that chose among candidates on its OOF paintings reads high by what choosing added, and so
            # do its folds' best epochs, chosen on them too: the CV that predicts the board is its score less both
            # (ensemble.compare.selection_optimism)
            read_down = (meta.get("choice_optimism") or 0.0) + (meta.get("epoch_optimism") or 0.0)
            better = cv.get(metric.key, np.nan) - read_down
            rows.append({"submission": submission_of(meta_path).name, "folder": str(folder),
                         "method": meta.get("chosen") or meta.get("method"),
                         "runs": " ".join(Path(r).name for r in meta.get("runs", [])),
                         "oof": meta.get("oof"), "metric": metric.short, "loss": metric.board_sign < 0,
                         # as the leaderboard shows it (the log loss as a loss); "better": higher, whatever the metric
                         "cv": metric.board_sign * better, "better": better, "chose": read_down > 0})
    if not rows:
        raise UserError(f"no builds in {', '.join(map(str, folders))}: ensemble/build.py writes <out>{BLEND_JSON} "
                        "beside each submission.")
    builds = pd.DataFrame(rows)
    dup = builds[builds["submission"].duplicated(keep=False)]
    if len(dup):
        raise UserError(f"{dup['submission'].iloc[0]!r} is in {' and '.join(dup['folder'])}: lb.csv names a "
                        "submission by its file name, so give the folders one each.")
    return builds


def line_up(builds: pd.DataFrame, lb: pd.DataFrame, lb_path) -> pd.DataFrame:
    """The builds with the leaderboard's scores, best CV first; an lb.csv row that names no build is an error
    (a typo would otherwise drop it silently)."""
    unknown = lb.index[~lb["submission"].isin(builds["submission"])]
    if len(unknown):
        raise UserError(f"--lb {lb_path} line {unknown[0] + 2}: {lb.loc[unknown[0], 'submission']!r} is none of "
                        f"the {len(builds)} submissions built here ({', '.join(builds['submission'][:5])}"
                        f"{', ...' if len(builds) > 5 else ''}).")
    table = builds.merge(lb, on="submission", how="left")
    table = table.sort_values("better", ascending=False, na_position="last", kind="stable")
    return table.drop(columns="better").reset_index(drop=True)


def correlations(table: pd.DataFrame) -> dict:
    """Spearman's rank correlation of the CV with each leaderboard column, and, once the private board is known,
    of the public board with it (how well the public board alone would have ranked them), each over the
    submissions with both."""
    pairs = [("cv", b) for b in BOARDS if b in table]
    if all(b in table for b in BOARDS):
        pairs.append(("public", "private"))
    out = {}
    for a, b in pairs:
        both = table[[a, b]].dropna()
        ranked = len(both) >= MIN_RANKED and both[a].nunique() > 1 and both[b].nunique() > 1
        out[b if a == "cv" else f"{a} against {b}"] = {
            "n": len(both), "rho": float(spearmanr(both[a], both[b]).statistic) if ranked else None}
    return out


def format_report(table: pd.DataFrame, corr: dict) -> str:
    boards = [b for b in BOARDS if b in table]
    ws, wm = (max(len(h), *(len(str(v)) for v in table[c])) for c, h in (("submission", "submission"),
                                                                          ("method", "method")))
    head = f"{'submission':<{ws}} {'method':<{wm}} {'oof':<6} {'CV':>8} " + " ".join(f"{b:>8}" for b in boards)
    lines = [head, "-" * len(head)]
    for _, r in table.iterrows():
        cells = " ".join(f"{r[b]:>8.4f}" if pd.notna(r[b]) else f"{'-':>8}" for b in boards)
        cv = f"{r['cv']:>8.4f}" if pd.notna(r["cv"]) else f"{'-':>8}"
        lines.append(f"{r['submission']:<{ws}} {str(r['method']):<{wm}} {str(r['oof']):<6} {cv} {cells}")
    metrics = sorted(set(table["metric"]))
    lines.append(f"CV: each build's honest OOF {' / '.join(metrics)} (the OOF it chose on: crops or whole)"
                 + ("; a log loss as the leaderboard shows it, a loss (lower is better)" if table["loss"].any() else "")
                 + ("; the builds were scored by different metrics" if len(metrics) > 1 else ""))
    if table["chose"].any():
        lines.append("   less what choosing on those same paintings added (the build's notes: 'reads it ... high'): "
                     "among candidates (--method best, --offsets auto), and each fold's best epoch")
    if table["cv"].isna().any():
        lines.append("-: a build made before its CV was kept beside it; build it again to see its CV.")
    for b, c in corr.items():
        pair = f"CV against {b}" if b in BOARDS else b
        lines.append(f"{pair}: Spearman's rank correlation {c['rho']:+.2f} over {c['n']} submissions"
                     if c["rho"] is not None else
                     f"{pair}: {c['n']} submission(s) with both scores; {MIN_RANKED} with different scores are "
                     "needed to rank.")
    lines.append("Choose on the CV: the public leaderboard scores a share of the test, and a choice fitted to it "
                 "does not hold on the rest.")
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.out:
        check_out_file(args.out)
    lb = read_lb(args.lb)
    table = line_up(read_builds(args.folders), lb, args.lb)
    corr = correlations(table)
    print(format_report(table, corr))
    if args.out:
        write_csv(args.out, table)
        print(f"table: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
