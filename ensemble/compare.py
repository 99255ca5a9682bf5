"""Is one run's gain over another real? Paired bootstrap intervals of their OOF score (the runs' metric).

Examples:
    python ensemble/compare.py runs/b3-seed0 runs/b3-ld9          # the crop OOF (whole test images: the whole OOF)
    python ensemble/compare.py runs/a runs/b runs/c --oof whole --draws 5000
    python ensemble/compare.py runs/a                              # how precise one run's OOF score is
    python ensemble/compare.py runs/a runs/b --finished-folds      # on the folds both have finished so far

Every run is scored on the same OOF rows. The paintings are drawn with replacement (a painting's
crops together: they are not independent), the same draws for every run, so each difference to the
first run comes with the interval that holds the given share of the draws, and the share of draws in
which the run scored higher. That is the noise of which paintings happen to be in the OOF. The noise of
training (seed, data order) comes on top: train the first run again with another --seed and compare
the two to see it. A recipe is chosen on these OOF scores, never on the test labels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import UserError  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.metrics import METRICS, get_metric, painting_draws  # noqa: E402
from ensemble.runs import (OOF_KINDS, OOF_NAMES, check_compatible, check_data_dir, finished_in_every_run,  # noqa: E402,E501
                           load_run, resolve_metric, resolve_oof, validated_by_every_run)
from folds.stopping import epoch_read_down  # noqa: E402



def compare_runs(run_paths, oof: str = "auto", draws: int = 2000, level: float = 0.9, seed: int = 0,
                 finished_folds: bool = False, data_dir=None, metric: str | None = None) -> dict:
    """Each run's OOF score by ``metric`` (None: the one the runs were trained for) with its interval, and its
    paired difference to the first run (one run: how precisely its OOF measures it). ``finished_folds``: on the
    OOF rows of the folds finished in every run, where some have folds still to train (is the new recipe worth
    its other folds?). ``data_dir``: the runs' data folder where it has moved (its test images decide ``oof``
    auto)."""
    if draws < 100:
        raise UserError(f"--draws {draws}: use at least 100 (the interval's ends are percentiles of the draws).")
    if seed < 0:
        raise UserError(f"--seed {seed}: give 0 or more.")
    if not 0 < level < 1:
        raise UserError(f"--level {level}: give the share of the draws an interval holds, in (0, 1), e.g. 0.9.")
    check_data_dir(data_dir)
    oof, oof_note = resolve_oof(oof, run_paths[0], data_dir=data_dir)
    # the same rows in the first run's order (other splits are fine: the rows are what is compared)
    runs, partial = finished_in_every_run([load_run(p, oof, finished_folds) for p in run_paths])
    runs, common = validated_by_every_run(runs)  # a holdout run (--preset seed) beside a K-fold one
    runs = check_compatible(runs, need_same_split=False)
    metric = resolve_metric(runs, metric)
    m = get_metric(metric)
    cidx = {c: i for i, c in enumerate(runs[0].classes)}
    y = runs[0].oof["label"].map(cidx).to_numpy()
    g, weights = painting_draws(runs[0].oof["id"].to_numpy(), draws, seed)
    probs = [r.oof_probs for r in runs]
    drawn = np.stack([m.drawn(y, p, g, weights) for p in probs], axis=1)  # (draws, runs)
    rows = []
    for j, (r, p) in enumerate(zip(runs, probs)):
        row = {"run": str(r.path), "score": m.score(y, p), "interval": interval(drawn[:, j], level)}
        # its folds' best epochs were chosen on these paintings: how high that reads it, where known in this metric
        read_down = epoch_read_down(r.fold_scores, oof, metric)
        if read_down is not None:
            row["epoch_optimism"] = read_down
        if j:
            diff = drawn[:, j] - drawn[:, 0]
            row.update(diff=row["score"] - rows[0]["score"], diff_interval=interval(diff, level),
                       better=float((diff > 0).mean()))
        rows.append(row)
    # a recipe is chosen as the best of these: by how much that best reads high, as the build says of its choice
    best = int(np.argmax([r["score"] for r in rows]))
    optimism = optimism_of([r["score"] for r in rows], drawn)  # on the draws the intervals came from
    return {"rows": rows, "n_rows": len(y), "n_paintings": weights.shape[1], "draws": draws, "level": level,
            "oof": oof, "partial": partial, "oof_note": oof_note, "common": common, "metric": metric,
            "best": rows[best]["run"], "best_optimism": optimism}


def interval(drawn: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` share of the bootstrap's draws."""
    tail = 100 * (1 - level) / 2
    return tuple(np.percentile(drawn, [tail, 100 - tail]))


def gain(y, groups, base, other, metric: str | None = None, draws: int = 2000, level: float = 0.9,
         seed: int = 0) -> dict:
    """``other``'s score minus ``base``'s on the same OOF rows (``groups``: each row's painting), with its paired
    interval over resamples of the paintings and the share of draws in which ``other`` scored higher: the
    comparison ``compare_runs`` makes of two runs, for two sets of probabilities (an ensemble's choice)."""
    m = get_metric(metric)
    g, weights = painting_draws(groups, draws, seed)
    diff = m.drawn(y, other, g, weights) - m.drawn(y, base, g, weights)
    return {"diff": m.score(y, other) - m.score(y, base), "interval": interval(diff, level),
            "better": float((diff > 0).mean()), "level": level}


def selection_optimism(y, groups, candidates: list, metric: str | None = None, draws: int = 1000,
                       seed: int = 0, blocks=None) -> float:
    """How much higher the best of ``candidates``' OOF scores (probability rows on the same OOF rows; ``groups``:
    each row's painting) reads than the candidate it picks scores on paintings it was not picked on: the best of
    several honest scores is itself chosen on these paintings. Efron's bootstrap of the choice: on each resample
    of the paintings the best candidate is picked again, and its resample score is set against its score on all
    of them (the resample's stand-in for new paintings). Each candidate's score is first centred on its own
    resampling mean, so that only the choice counts: one candidate, or several alike, read 0. ``blocks``: each
    row's fold, where a candidate's score is the mean of its folds' scores (a study's trial of several folds);
    each fold's paintings are resampled on their own."""
    if len(candidates) < 2:
        return 0.0
    m = get_metric(metric)
    y, groups = np.asarray(y), np.asarray(groups)
    blocks = np.zeros(len(y), dtype=int) if blocks is None else np.asarray(blocks)
    keys = np.unique(blocks)
    scores, drawn = np.zeros(len(candidates)), np.zeros((draws, len(candidates)))
    for i, key in enumerate(keys):
        rows = blocks == key
        g, weights = painting_draws(groups[rows], draws, seed + i)
        scores += np.array([m.score(y[rows], p[rows]) for p in candidates]) / len(keys)
        drawn += np.stack([m.drawn(y[rows], p[rows], g, weights) for p in candidates], axis=1) / len(keys)
    return optimism_of(scores, drawn)


def optimism_of(scores, drawn: np.ndarray) -> float:
    """``selection_optimism`` from the candidates' ``scores`` on all the paintings and their scores on each
    resample (``drawn``: draws x candidates), where a caller has drawn them already."""
    scores = np.asarray(scores)
    if len(scores) < 2:
        return 0.0
    centred = drawn - drawn.mean(axis=0) + scores  # the macro-F1 of a resample leans by itself; that is not choice
    picked = centred.argmax(axis=1)
    # Never below 0: against the best candidate b, each draw adds centred[p] - centred[b] >= scores[b] - scores[p]
    # >= 0 (the draws' deviations average 0 for every candidate). A float's last bits read "-0.0000" otherwise.
    return max(float(np.mean(centred[np.arange(len(drawn)), picked] - scores[picked])), 0.0)


def format_result(result: dict) -> str:
    pct = f"{100 * result['level']:.0f}%"
    m = get_metric(result["metric"])
    w = max(7, len(m.short))
    lines = [f"{OOF_NAMES[result['oof']]} {m.label} on {result['n_rows']:,} rows from {result['n_paintings']:,} "
             f"paintings; {pct} intervals from {result['draws']:,} resamples of the paintings",
             f"{'run':<40} {m.short:>{w}}  {pct + ' interval':<14}    {'vs first':>8}  {pct + ' interval':<16}"
             "    better in"]
    for r in result["rows"]:
        name = r["run"] if len(r["run"]) <= 40 else "…" + r["run"][-39:]
        line = f"{name:<40} {r['score']:{w}.4f}  [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"
        if "diff" in r:
            lo, hi = r["diff_interval"]
            line += f"    {r['diff']:+8.4f}  [{lo:+.3f}, {hi:+.3f}]    {100 * r['better']:.0f}% of draws"
        lines.append(line)
    if len(result["rows"]) > 1 and "best_optimism" in result:
        best = next(r for r in result["rows"] if r["run"] == result["best"])
        lines.append(f"note: the best of these {len(result['rows'])}, {result['best']}, reads about "
                     f"{result['best_optimism']:+.4f} high, being picked on these paintings (a bootstrap of the "
                     f"choice): expect about {best['score'] - result['best_optimism']:.4f} of it on new ones")
    chose = [(r["run"], r["epoch_optimism"]) for r in result["rows"] if r.get("epoch_optimism") is not None]
    if chose:
        lines.append("note: each fold's best epoch was chosen on these paintings, which reads a run high by about "
                     + ", ".join(f"{run} {v:+.4f}" for run, v in chose) + " (a bootstrap of each fold's choice: "
                     "more epochs, or noisier ones, read higher); two runs' difference shifts by the difference of "
                     "theirs")
    for note in (result.get("oof_note"), result.get("partial"), result.get("common")):
        if note:
            lines.append(f"note: {note}")
    lines.append("note: these intervals hold only the noise of which paintings are in the OOF; training noise (seed, "
                 "data order) comes on top: train the first run again with another --seed and compare the two.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (runs/<name>); the first is the baseline")
    p.add_argument("--oof", choices=OOF_KINDS, default="auto",
                   help="the crop OOF (test-like crops of the validation paintings) or the whole-painting OOF; auto: "
                   "the whole-painting OOF where the test images look whole, else the crop OOF")
    p.add_argument("--draws", type=int, default=2000, help="bootstrap resamples of the paintings")
    p.add_argument("--level", type=float, default=0.9, help="the share of the draws each interval holds")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampling (the result repeats with it)")
    p.add_argument("--finished-folds", action="store_true", help="compare runs with folds still to train on the "
                   "folds finished in every one (they must share a split)")
    p.add_argument("--metric", choices=tuple(METRICS), help="the score compared (default: the one the runs were "
                   "trained for, --metric of folds/run.py)")
    p.add_argument("--data-dir", help="the runs' data folder where it is not where they read it (run folders taken "
                   "to another machine): its test images decide --oof auto (default: the first run's)")
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    print(format_result(compare_runs(args.runs, args.oof, args.draws, args.level, args.seed, args.finished_folds,
                                     args.data_dir, args.metric)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
