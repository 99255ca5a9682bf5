"""Build a submission from one or more finished runs, and compare every way of combining them.

Examples:
    python ensemble/build.py runs/a runs/b --method stack --out submissions/ab_stack.csv
    python ensemble/build.py runs/a runs/b --method weighted --offsets --out submissions/ab_w.csv
    python ensemble/build.py runs/b3-seed0 --method mean --with-full --out submissions/b3_full.csv
    python ensemble/build.py runs/a runs/b runs/c --method best     # the method with the best honest score

Every method's OOF score is printed in one table, by the runs' competition metric (`--metric` of
folds/run.py: macro-F1 unless they named another); `weighted`, `stack` and the per-class offsets
are scored in an inner cross-validation on the OOF rows (grouped by painting), never on the rows
they were fit on, and the offsets are kept where that honest score beats the method alone
(`--offsets auto`, the default). By default the crop OOF (validation paintings as test-like crops)
is used.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.base import clone  # noqa: E402

from common import UserError, layout, write_csv  # noqa: E402
from common.atomic import check_out_file  # noqa: E402
from common.cli import check_at_least, entry_point, log_to_stdout  # noqa: E402
from common.layout import prob_frame  # noqa: E402
from common.metrics import (DEFAULT_METRIC, METRICS, all_scores, check_metric_fits_classes,  # noqa: E402
                            check_metric_fits_sample, get_metric, shown_beside)
from ensemble.blend import (BLENDS, TemperatureCalibration, fit_blend, full_proba, honest_oof, make_blend,  # noqa: E402
                            members_to_X)
from ensemble.compare import gain, selection_optimism  # noqa: E402
from ensemble.neighbours import for_runs  # noqa: E402
from ensemble.report import confident_errors, write_report  # noqa: E402
from ensemble.runs import (OOF_KINDS, OOF_NAMES, check_compatible, check_data_dir, check_distinct,  # noqa: E402
                           check_test_set_unchanged, finished_in_every_run, load_run, resolve_metric,
                           resolve_oof, validated_by_every_run)
from ensemble.saved_blend import save_blend  # noqa: E402
from ensemble.submission import answer_key, probabilities_path, write_submission  # noqa: E402
from folds.data import ANSWER_KEY, SAMPLE_CSV, TRAIN_COLUMNS, TRAIN_CSV, read_csv, read_sample  # noqa: E402
from folds.images import loosest_limit, set_max_image_pixels  # noqa: E402
from folds.manifest import make_manifest  # noqa: E402
from folds.stopping import best_of, chosen_on_crops, epoch_read_down  # noqa: E402

log = logging.getLogger(__name__)
OFFSETS = ("auto", "on", "off")
BEST = "best"  # --method best: the method (and offsets) whose honest OOF score is highest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble/build.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (runs/<name>) with finished folds")
    p.add_argument("--method", default="mean", choices=[*BLENDS, BEST], help="how the final CSV combines the "
                   f"runs (default: mean, the soft vote); {BEST}: the method, with or without the offsets, whose "
                   "honest OOF score in the table is highest")
    p.add_argument("--out", help="submission CSV (default: submissions/<runs>_<method>.csv)")
    p.add_argument("--oof", default="auto", choices=OOF_KINDS, help="fit and score on the crop OOF (test-like "
                   "crops of the validation paintings) or the whole-painting OOF; auto (default): the whole-painting "
                   "OOF where the test images look whole (a task tested on whole images), else the crop OOF")
    p.add_argument("--stacker", default="logreg", help="meta-learner for --method stack: logreg (default), rf, "
                   "hgb, mlp, or a class path like sklearn.linear_model.LogisticRegression")
    p.add_argument("--metric", choices=tuple(METRICS), help="the metric that fits, chooses and leads the table "
                   "(default: the one the runs were trained for, --metric of folds/run.py)")
    p.add_argument("--offsets", nargs="?", const="on", default="auto", choices=OFFSETS, help="per-class logit "
                   "offsets fit for the metric on top of the method (under neg_log_loss a temperature in their place: "
                   "a calibration), scored in the inner cross-validation: auto (default) keeps them where that honest "
                   "score beats the method alone; --offsets alone: on")
    p.add_argument("--with-full", action="store_true", help="add each run's full-data model (--fold full) to "
                   "its test soft vote (it has no OOF, so it cannot join a stack's fit)")
    p.add_argument("--sample", help="sample_submission.csv (default: the one in the data folder)")
    p.add_argument("--data-dir", help="the runs' data folder where it is not where they read it (run folders "
                   "taken to another machine: a kernel with the data in /kaggle/input/COMP): its sample submission, "
                   "test labels, train.csv and images (default: the first run's, found as it was given or moved)")
    p.add_argument("--neighbours", default="auto", choices=("auto", "off"), help="auto (default): mix each test "
                   "crop's probabilities with those of its sibling crops (several crops of one painting), found by "
                   "colour or by their overlapping pixels; the way and the weight are chosen on the crop OOF, off "
                   "when that does not help (ensemble/neighbours.py, ensemble/siblings.py)")
    p.add_argument("--finished-folds", action="store_true", help="build from the folds finished so far, where a "
                   "run has folds still to train (a deadline): the folds finished in every run, their OOF rows and "
                   "the mean of their models on the test")
    p.add_argument("--inner-folds", type=int, default=5, help="inner CV folds for honest scores (default: 5)")
    p.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    return p


def compare(runs, y, groups, *, methods=tuple(BLENDS), stacker="logreg", offsets_for=(), inner_folds=5,
            with_full=False, truth=None, metric=DEFAULT_METRIC) -> tuple[list[dict], dict]:
    """One row per run alone and per method: every metric's honest OOF score, by key (and ``test_<key>`` given
    ``truth``); the weights and offsets are fit for ``metric``.

    Returns the rows and each method's honest OOF probabilities.
    """
    X = members_to_X([r.oof_probs for r in runs])
    test_X = members_to_X([r.test_probs(with_full) for r in runs])
    k = len(runs[0].classes)
    rows, oofs = [], {}

    def row(name, oof_p, test_p, note):
        r = {"method": name, **all_scores(y, oof_p), "note": note}
        if truth is not None:
            r.update(all_scores(truth, test_p, "test_"))
        rows.append(r)

    for r in runs:
        row(f"run {r.name}", r.oof_probs, r.test_probs(with_full), "single run")
    for m in methods:
        for off in (False, True) if m in offsets_for else (False,):
            blend = make_blend(m, stacker, off, n_members=len(runs), metric=metric)
            name = m + ("+offsets" if off else "")
            oofs[name] = honest_oof(blend, X, y, groups, inner_folds)
            test_p = full_proba(fit_blend(clone(blend), X, y, groups), test_X, k) if truth is not None else None
            row(name, oofs[name], test_p, "inner CV" if blend.learns else "")
    return rows, oofs


def best_method(rows: list[dict], oofs: dict, metric: str | None = None) -> dict:
    """The method row with the highest honest OOF score by ``metric``. On a tie the earlier row: the table lists
    the simpler methods first, and a method before its '+offsets'. Rows of runs alone are not candidates."""
    key = get_metric(metric).key
    return max((r for r in rows if r["method"] in oofs), key=lambda r: r[key])


def keep_offsets(table: list[dict], method: str, notes: list, oof: str = "crops", metric: str | None = None) -> bool:
    """``--offsets auto``: keep them where their honest (inner-CV) score beats the method alone, and say so."""
    m = get_metric(metric)
    score = {r["method"]: r[m.key] for r in table}
    keep = score[method + "+offsets"] > score[method]
    what = "per-class offsets" if m.of_classes else "the temperature calibration (in the offsets' place)"
    notes.append(f"{what} {'kept' if keep else 'left off'}: honest {OOF_NAMES[oof]} {m.label} "
                 f"{score[method + '+offsets']:.4f} with them, {score[method]:.4f} without (--offsets auto)")
    return keep


def blend_test(blend, runs, y, with_full: bool = False) -> np.ndarray:
    """The blend fit on all the runs' OOF rows (a crop's painting is its OOF row's id), then applied to their test
    probabilities."""
    fit_blend(blend, members_to_X([r.oof_probs for r in runs]), y, runs[0].oof["id"].to_numpy())
    return full_proba(blend, members_to_X([r.test_probs(with_full) for r in runs]), len(runs[0].classes))


def neighbour_smoothing(neighbours: str, oof: str, data_dir, first, probs, y, test,
                        metric: str | None = None) -> tuple[dict | None, list[str]]:
    """``for_runs`` on a method's honest crop-OOF ``probs`` and its ``test`` probabilities, with its
    notes; None when it cannot start: --neighbours off, a whole-painting OOF, or the run's images
    are not at hand (run folders copied without their data: the build goes on, unsmoothed)."""
    if neighbours != "auto":
        return None, []
    if oof != "crops":
        return None, ["neighbour smoothing is chosen on the crop OOF; with --oof whole it is off."]
    try:
        smooth = for_runs(data_dir, first.oof, probs, y, first.test_ids, test, score=get_metric(metric).score)
    except UserError as e:
        return None, [f"neighbour smoothing is off: it needs the run's images ({e})"]
    return smooth, smooth["notes"]


def build(run_paths, *, method: str = "mean", out=None, oof: str = "auto", stacker: str = "logreg",
          offsets: bool | str = "auto", with_full: bool = False, sample=None, inner_folds: int = 5,
          report: bool = True, neighbours: str = "auto", finished_folds: bool = False, data_dir=None,
          metric: str | None = None) -> dict:
    """Combine finished runs into a validated submission, its probabilities and a report.

    >>> build(["runs/demo"], method="mean", out="submissions/demo_folds-mean.csv")   # doctest: +SKIP
    """
    check_at_least("--inner-folds", inner_folds, 2)  # fewer was taken as 2, silently
    check_distinct(run_paths)
    check_data_dir(data_dir)
    oof, oof_note = resolve_oof(oof, run_paths[0], data_dir=data_dir)
    runs, partial = finished_in_every_run([load_run(r, oof, finished_folds) for r in run_paths])
    runs, common = validated_by_every_run(runs)
    metric = resolve_metric(runs, metric)  # the competition's: it fits, chooses and leads the table
    m = get_metric(metric)
    mode = {True: "on", False: "off"}.get(offsets, offsets)  # a bool still works, as before auto existed
    if mode not in OFFSETS:
        raise UserError(f"--offsets {mode!r}: choose one of {list(OFFSETS)}.")
    choosing = method == BEST
    named = method + ("+offsets" if mode == "on" else "")
    out = Path(out) if out else Path("submissions") / f"{'+'.join(r.name for r in runs)}_{named}.csv"
    check_out_file(out)  # before any work
    same_split = len({r.split_hash for r in runs}) == 1
    learns = mode == "on" if choosing else make_blend(method, stacker, mode == "on", metric=metric).learns
    runs = check_compatible(runs, need_same_split=learns)
    # the smoothing decodes the images the runs decoded: under the limit (--max-image-pixels) that admitted them
    set_max_image_pixels(loosest_limit(r.config.get("max_image_pixels") for r in runs))
    first = runs[0]
    given = data_dir is not None
    data_dir = Path(data_dir) if given else first.data_dir
    check_test_set_unchanged(runs, data_dir, given)  # before any work: test probabilities of other images are no use
    sample_path = Path(sample) if sample else data_dir / SAMPLE_CSV
    if not sample_path.is_file():
        raise UserError(f"{sample_path}: not found; pass --sample PATH to sample_submission.csv.")
    sample_df, names = read_sample(sample_path)
    check_metric_fits_sample(metric, names.probabilities, sample_path)
    check_metric_fits_classes(metric, first.classes, first.path / layout.CLASSES)  # its note: the run's log said it
    classes = first.classes
    cidx = {c: i for i, c in enumerate(classes)}
    y = first.oof["label"].map(cidx).to_numpy()
    groups = first.oof["id"].to_numpy()
    notes = [n for n in (oof_note, partial, common) if n]
    if not same_split:
        notes.append("runs use different splits: weighted and stack are left out (they would leak).")
    methods = [m for m in BLENDS if same_split or not make_blend(m, stacker).learns]
    # offsets learn from the OOF rows: with runs of different splits, auto leaves them off as it does weighted
    tried = mode == "on" or (mode == "auto" and same_split)
    offsets_for = [] if not tried else methods if choosing else [method]  # the methods scored with offsets too
    table, oofs = compare(runs, y, groups, methods=methods, stacker=stacker, offsets_for=offsets_for,
                          inner_folds=inner_folds, metric=metric)
    if choosing:
        # auto: with or without the offsets, as they score; on: only with them
        candidates = {k: v for k, v in oofs.items() if mode != "on" or k.endswith("+offsets")}
        best = best_method(table, candidates, metric)
        method, offsets = best["method"].removesuffix("+offsets"), best["method"].endswith("+offsets")
        notes.append(f"--method {BEST}: {best['method']} has the highest honest {OOF_NAMES[oof]} {m.label} "
                     f"({best[m.key]:.4f}) of the {len(candidates)} candidates in the table")
    else:
        offsets = mode == "on" or (tried and keep_offsets(table, method, notes, oof, metric))
        candidates = {k: oofs[k] for k in (method, method + "+offsets")} if tried and mode == "auto" else {}
    chosen = method + ("+offsets" if offsets else "")
    optimism = selection_optimism(y, groups, list(candidates.values()), metric)
    score = next(r[m.key] for r in table if r["method"] == chosen)  # its honest score, as the table has it
    if len(candidates) > 1:
        notes.append(optimism_note(optimism, len(candidates), chosen, score, OOF_NAMES[oof], metric))
    epochs = runs_epoch_read_down(runs, oof, metric)
    if epochs is not None:
        notes.append(f"each fold's best epoch was chosen on the paintings its {OOF_NAMES[oof]} scores, which reads "
                     f"it about {epochs:+.4f} high (the runs' mean, a bootstrap of each fold's choice): expect about "
                     f"{score - optimism - epochs:.4f} {OOF_NAMES[oof]} {m.label} of {chosen} on new paintings"
                     + (" with the choice above read down too" if optimism else ""))
    blend = make_blend(method, stacker, offsets, n_members=len(runs), metric=metric)
    final_oof = oofs[chosen]
    if with_full:
        missing = [r for r in runs if r.full_test is None]
        if missing:
            raise UserError(f"--with-full: runs {[r.name for r in missing]} have no full-data model; train it with "
                            + " and ".join(f"`{layout.fold_command(r.path, layout.FULL)}`" for r in missing) + ".")
        notes.append("full-data models joined each run's test soft vote; they have no OOF, so the OOF scores "
                     "(and any stacker fit) use the fold models only.")
    test = blend_test(blend, runs, y, with_full)
    if isinstance(blend, TemperatureCalibration):  # fit on all the OOF rows: how far off the blend's sureness was
        notes.append(f"the calibration's temperature: {blend.temperature_:.3f} (above 1: the blend was surer than it "
                     "was right, and is softened; below 1: less sure, and is sharpened)")
    truth = answer_key(data_dir, first.test_ids, classes)
    plain_test = None if truth is None else all_scores(truth, test, "test_")
    smoothing, smoothing_oof = None, {}
    smooth, smooth_notes = neighbour_smoothing(neighbours, oof, data_dir, first, final_oof, y, test, metric)
    notes.extend(smooth_notes)
    if smooth is not None:
        smoothing = smooth["smoothing"]
        # what the crop OOF chose and its honest score, also when the test set turned it off
        smoothing_oof = {"neighbours_on_oof": smooth["chosen_on_oof"].describe(),
                         **all_scores(y, smooth["honest_oof"], "neighbours_crop_oof_")}
        if smoothing.on:
            chosen += "+neighbours"
            final_oof, test = smooth["honest_oof"], smooth["test"]
            table.append({"method": chosen, **all_scores(y, final_oof),
                          "note": f"{smoothing.describe()}; honest: chosen on the other half of the OOF"})
            if truth is not None:
                notes.append(f"test {m.label} without the neighbour smoothing: {plain_test['test_' + m.key]:.4f} "
                             "(for reporting only)")
    if chosen != method:  # offsets or smoothing over the blend alone: is the gain more than which paintings are in?
        notes.append(gain_note(y, groups, oofs[method], final_oof, method, chosen, OOF_NAMES[oof], metric))
    labels = np.asarray(classes)[test.argmax(1)]
    write_submission(out, first.test_ids, test, sample_df, classes)
    write_csv(probabilities_path(out), prob_frame(test, classes, id=first.test_ids))
    # the fitted blend, so ensemble/predict.py and ensemble/export.py reuse it on new images
    result = {"out": out, "table": table, "chosen": chosen, "blend": save_blend(out, blend, {
        "method": method, "offsets": offsets, "stacker": stacker, "oof": oof, "metric": metric, "with_full": with_full,
        "runs": [str(r.path.resolve()) for r in runs], "classes": classes, "folds": first.folds if partial else None,
        "neighbours": smooth["saved"] if smoothing is not None and smoothing.on else None,
        # what was chosen and its honest OOF scores: ensemble/leaderboard.py sets them beside the leaderboard's
        "chosen": chosen, "cv": all_scores(y, final_oof), "oof_rows": int(len(y)),
        "choice_optimism": optimism,  # what choosing among the candidates on these paintings adds to its cv
        "epoch_optimism": epochs,  # what choosing each fold's best epoch on them adds (None: not known)
        "manifest": make_manifest()})}  # what built it (packages, git commit), as a run's manifest.json says
    if truth is not None:  # an answer key (demo, wikiart50): report the real test score, never choose by it
        result.update(all_scores(truth, test, "test_"))
        result.update({f"{k}_without_neighbours": v for k, v in plain_test.items()})
        notes.append(f"test {m.label} against {data_dir / ANSWER_KEY}: {result['test_' + m.key]:.4f} "
                     "(for reporting only)")
    if report:
        nan = float("nan")
        run_rows = [{"run": r.name, "fold": k, "val": best_of(d, m.key),
                     "on": "crops" if chosen_on_crops(d) else "whole", "oof": d.get("oof", {}).get(m.key, nan),
                     "crop": d.get("crop_oof", {}).get(m.key, nan)}
                    for r in runs for k, d in r.fold_scores.items()]
        train_csv = data_dir / TRAIN_CSV
        train = read_csv(train_csv, TRAIN_COLUMNS, names=names) if train_csv.is_file() else None
        train_labels = first.oof.drop_duplicates("id")["label"] if train is None else train["artist"]
        paths = None if train is None else dict(zip(train["id"], train["img_path"]))
        result["report"] = write_report(out, table=table, chosen=chosen, run_rows=run_rows, y=y,
                                        pred=final_oof.argmax(1), classes=classes, train_labels=train_labels,
                                        sub_labels=labels, notes=notes,
                                        oof_kind=OOF_NAMES[oof], metric=metric,
                                        errors=confident_errors(groups, y, final_oof, classes, paths))
    result["notes"], result["oof"], result["metric"] = notes, oof, metric
    result["choice_optimism"], result["epoch_optimism"] = optimism, epochs  # as _blend.json keeps them
    result["neighbours"] = None if smoothing is None else smoothing.describe()
    result.update(smoothing_oof)
    return result


def runs_epoch_read_down(runs, oof: str, metric: str | None) -> float | None:
    """How high the runs' ``oof`` reads by ``metric``, each fold's best epoch being chosen on the paintings it
    scores: the mean of the runs' ``folds.stopping.epoch_read_down``; None unless every run has one."""
    kept = [epoch_read_down(r.fold_scores, oof, metric) for r in runs]
    return None if not kept or None in kept else float(np.mean(kept))


def optimism_note(optimism: float, n: int, chosen: str, score: float, oof_name: str, metric: str | None) -> str:
    """What choosing among ``n`` candidates on the OOF paintings adds to the chosen one's ``score`` there
    (``ensemble.compare.selection_optimism``), and the score to expect of it on new paintings."""
    m = get_metric(metric)
    return (f"{chosen} was chosen among {n} honest scores on these paintings, which reads it high by about "
            f"{optimism:+.4f} (a bootstrap of the choice over the paintings): expect about "
            f"{score - optimism:.4f} {oof_name} {m.label} of it on new ones (more off where the "
            "paintings are few and the candidates many and near)")


def gain_note(y, groups, base, final, method: str, chosen: str, oof_name: str, metric: str | None) -> str:
    """The chosen method's honest OOF gain over its blend alone, with ``ensemble.compare.gain``'s paired interval
    over the paintings: a gain that interval holds 0 in may be only which paintings the OOF has."""
    m, g = get_metric(metric), gain(y, groups, base, final, metric)
    lo, hi = g["interval"]
    return (f"{chosen} against {method}: {g['diff']:+.4f} {oof_name} {m.label} on the same rows, {g['level']:.0%} "
            f"interval [{lo:+.3f}, {hi:+.3f}] over resamples of the paintings (higher in {g['better']:.0%} of them)"
            + ("; within the noise of which paintings are in the OOF" if lo <= 0 else ""))


def format_table(table: list[dict], chosen: str, oof: str = "crops", metric: str | None = None) -> str:
    """The methods' table: the score it was chosen by first (``metric``, named with the OOF it was chosen on: a
    run's own summary line calls the whole-painting one "OOF" and the other "crop-OOF"), then the other metrics."""
    lead = get_metric(metric)
    cols = [(f"{OOF_NAMES[oof]} {lead.label}", lead.key)]
    cols += [(m.label, m.key) for m in shown_beside(lead)]
    w = max(len(r["method"]) for r in table) + 10
    lines = [f"{'method':<{w}} " + " ".join(f"{c:>9}" for c, _ in cols) + "  note"]
    lines.append("-" * (len(lines[0]) + 14))
    for r in table:
        name = r["method"] + (" (chosen)" if r["method"] == chosen else "")
        lines.append(f"{name:<{w}} " + " ".join(f"{r[k]:>{max(9, len(c))}.4f}" for c, k in cols)
                     + f"  {r.get('note', '')}")
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stdout()
    result = build(args.runs, method=args.method, out=args.out, oof=args.oof, stacker=args.stacker,
                   offsets=args.offsets, with_full=args.with_full, sample=args.sample,
                   inner_folds=args.inner_folds, report=not args.no_report, neighbours=args.neighbours,
                   finished_folds=args.finished_folds, data_dir=args.data_dir, metric=args.metric)
    print(format_table(result["table"], result["chosen"], result["oof"], result["metric"]))
    for n in result["notes"]:
        print(f"note: {n}")
    print(f"submission: {result['out']}\nfitted blend (for ensemble/predict.py and ensemble/export.py): "
          f"{result['blend']}")
    if "report" in result:
        print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
