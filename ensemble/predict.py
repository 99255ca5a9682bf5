"""Predict a new test set with trained runs: the inference-kernel workflow of code competitions.

The runs' best fold weights predict every image of a Dacon-layout folder (test.csv,
sample_submission.csv, the images; no train data), with each run's TTA; the fold mean goes
through the project's merger, and the runs are combined by a blend: a soft vote by name, or
the fitted blend that ``ensemble/build.py`` saved (reused, never refit). Nothing comes from a
hub, so it runs offline, from an export folder (``ensemble/export.py``) too.

Examples:
    python ensemble/predict.py runs/a runs/b --data-dir new_test --method mean --out submission.csv
    python ensemble/predict.py --blend submissions/ab_stack_blend.json --data-dir new_test --out submission.csv
    python export/code/ensemble/predict.py export --data-dir /kaggle/input/comp --out submission.csv

It runs fold models, so it uses the inference half of folds/ (folds.predict), never the
training loop.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import UserError, layout, write_csv  # noqa: E402
from common.atomic import check_out_file  # noqa: E402
from common.cli import check_at_least, entry_point, log_to_stdout  # noqa: E402
from common.layout import prob_frame  # noqa: E402
from ensemble.blend import full_proba, make_blend, members_to_X, votes  # noqa: E402
from ensemble.merge import merge  # noqa: E402
from ensemble.neighbours import smooth_test  # noqa: E402
from ensemble.runs import check_distinct  # noqa: E402
from ensemble.saved_blend import blend_folds, load_blend  # noqa: E402
from ensemble.submission import probabilities_path, write_submission  # noqa: E402
from folds.images import check_limit, loosest_limit, set_max_image_pixels  # noqa: E402

log = logging.getLogger("predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble/predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="*", help="run folders (runs/<name>), or one export folder")
    p.add_argument("--data-dir", required=True, help="Dacon-layout folder to predict: test.csv, "
                   "sample_submission.csv and the images")
    p.add_argument("--out", required=True, help="submission CSV to write (its probabilities go beside it)")
    p.add_argument("--method", choices=votes(), help="combine the runs by this vote (default: mean); learned "
                   "blends come from --blend")
    p.add_argument("--blend", help="a fitted blend, <out>_blend.json from ensemble/build.py (its runs are used "
                   "unless run folders are given)")
    p.add_argument("--with-full", action="store_true", default=None, help="add each run's full-data model to its "
                   "fold mean (default: as the blend was built)")
    p.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' (default: auto)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: the run's)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: twice the run's training batch)")
    p.add_argument("--max-image-pixels", type=int, metavar="N", help="PIL's decompression-bomb limit (default: the "
                   "runs' own --max-image-pixels; 0: off), for a test set with larger images than they met")
    return p


def resolve_sources(args) -> tuple[list[Path], object, dict]:
    """(run folders, fitted blend, blend description) from an export folder, --blend or --method."""
    sources = [Path(s) for s in args.sources]
    if len(sources) == 1 and (sources[0] / layout.EXPORT).is_file():
        export = layout.read_json(sources[0] / layout.EXPORT)
        blend, meta = load_blend(sources[0] / export["blend"])
        return [sources[0] / "runs" / name for name in export["runs"]], blend, meta
    if args.blend:
        if args.method:
            raise UserError("--blend and --method: give one (the fitted blend already has its method).")
        blend, meta = load_blend(args.blend)
        return (sources or [Path(r) for r in meta["runs"]]), blend, meta
    if not sources:
        raise UserError("no runs: pass run folders, an export folder, or --blend.")
    method = args.method or "mean"
    return sources, make_blend(method, n_members=len(sources)), {"method": method, "with_full": False}


def run_config(run: Path, args):
    """The run's RunConfig, set up for prediction on this machine."""
    from folds.config import saved_config
    layout.check_run_folder(run)
    cfg = saved_config(run)
    return replace(cfg, device=args.device, workers=args.num_workers if args.num_workers is not None
                   else cfg.workers, batch_size=(args.batch_size + 1) // 2 if args.batch_size else cfg.batch_size)


def run_folds(run: Path, cfg, with_full: bool, meta: dict) -> list:
    """The folds whose models predict for ``run`` (the blend's, and its full-data model when asked); all
    finished."""
    folds = blend_folds(meta, cfg) + ([layout.FULL] if with_full else [])
    missing = [k for k in folds if not layout.is_done(run, k)]
    if missing:
        raise UserError(f"{run}: folds {missing} are not finished; predict with finished runs only.")
    return folds


def predict_run(run: Path, cfg, paths, with_full: bool, meta: dict) -> tuple[list, np.ndarray]:
    """A run's classes and the mean test probabilities of the blend's folds (the full-data model joins when
    asked); ``cfg``: its ``run_config``."""
    import torch

    from folds.predict import Predictor

    classes = layout.read_json(run / layout.CLASSES)
    folds = run_folds(run, cfg, with_full, meta)
    # a --cache run's images are shrunk as its folds saw them, in memory: nothing is written beside the run;
    # one pass for all the folds: each image decoded once for every fold model, their mean
    def mean_of(these: list) -> np.ndarray:
        return Predictor(cfg, len(classes), [layout.fold_dir(run, k) for k in these], store_cache=False).predict(
            paths, desc=f"{run.name} fold{'s' if len(these) > 1 else ''} {','.join(map(str, these))}")

    try:
        return classes, mean_of(folds)
    except torch.OutOfMemoryError:
        pass  # below, once the traceback has let go of the models it holds
    # a large backbone's fold models together may not fit the GPU that held one at a time
    torch.cuda.empty_cache()
    log.warning("%s: its %d fold models do not fit the GPU's memory together; predicting a fold at a time.",
                run, len(folds))
    return classes, merge(np.stack([mean_of([k]) for k in folds]), "mean")


def shared_pass(run: Path, cfg, folds: list, classes: list) -> tuple | None:
    """What runs must share for their fold models to predict from one loader pass (seeds of one backbone and
    size): the eval transform (a fold's done.json keeps its data config), whether images are shrunk as a
    ``--cache`` run's were (in memory here), TTA, precision, the loader's batch and workers, and the classes.
    None where a fold's data config is not kept: it predicts alone."""
    data_config = layout.read_json(layout.fold_dir(run, folds[0]) / layout.DONE).get("data_config")
    if not data_config:
        return None
    return (json.dumps(data_config, sort_keys=True), cfg.cache, cfg.tta, cfg.amp, cfg.channels_last, cfg.deterministic,
            cfg.batch_size, cfg.workers, tuple(classes))


def predict_runs(runs: list, cfgs: list, paths, with_full: bool, meta: dict) -> list[tuple[list, np.ndarray]]:
    """Each run's (classes, fold-mean test probabilities). Runs that share a pass (``shared_pass``) predict
    from one: each image is decoded once for all their fold models (three seeds: once, not three times), and
    each run's mean is the one its own pass gives, to the bit. Where their models do not fit the GPU together,
    run by run."""
    import torch

    from folds.predict import Predictor

    folds = [run_folds(run, cfg, with_full, meta) for run, cfg in zip(runs, cfgs)]
    classes_of = [layout.read_json(run / layout.CLASSES) for run in runs]
    groups: dict = {}
    for i, (run, cfg, f) in enumerate(zip(runs, cfgs, folds)):
        key = shared_pass(run, cfg, f, classes_of[i])
        groups.setdefault(i if key is None else key, []).append(i)
    out = [None] * len(runs)
    for members in groups.values():
        if len(members) > 1:
            owner = np.concatenate([[j] * len(folds[j]) for j in members])
            dirs = [layout.fold_dir(runs[j], k) for j in members for k in folds[j]]
            classes = classes_of[members[0]]  # the same in the group: the key holds them
            try:
                each = Predictor(cfgs[members[0]], len(classes), dirs, store_cache=False,
                                 cfgs=[cfgs[j] for j in owner]).predict_each(
                    paths, desc=" + ".join(f"{runs[j].name} folds {','.join(map(str, folds[j]))}" for j in members))
                for j in members:
                    mine = each[owner == j]
                    out[j] = classes, mine[0] if len(mine) == 1 else merge(mine, "mean")
                continue
            except torch.OutOfMemoryError:
                pass  # below, once the traceback has let go of the models it holds
            torch.cuda.empty_cache()
            log.warning("runs %s: their %d fold models do not fit the GPU's memory together; predicting run by run.",
                        ", ".join(runs[j].name for j in members), len(dirs))
        for j in members:
            out[j] = predict_run(runs[j], cfgs[j], paths, with_full, meta)
    return out


def predict(args) -> dict:
    from folds.data import load_test_set

    check_at_least("--batch-size", args.batch_size, 1)  # 0 was read as "the run's"
    check_at_least("--num-workers", args.num_workers, 0, "0 (load in the main process)")  # torch's traceback
    check_distinct(args.sources)  # as typed, so the message shows both spellings
    check_out_file(args.out)  # a folder there failed at the last rename, after every prediction
    runs, blend, meta = resolve_sources(args)
    check_limit(args.max_image_pixels)
    cfgs = [run_config(run, args) for run in runs]
    set_max_image_pixels(args.max_image_pixels if args.max_image_pixels is not None
                         else loosest_limit(cfg.max_image_pixels for cfg in cfgs))
    with_full = meta.get("with_full", False) if args.with_full is None else args.with_full
    test, sample = load_test_set(args.data_dir)
    members, classes = [], None
    for run, (run_classes, probs) in zip(runs, predict_runs(runs, cfgs, test["path"], with_full, meta)):
        if classes is not None and run_classes != classes:
            raise UserError(f"{run} has other classes than {runs[0]}; runs must share train.csv.")
        classes = run_classes
        members.append(probs)
    if meta.get("classes") not in (None, classes):
        raise UserError(f"the blend was fit on other classes than the runs' {layout.CLASSES}.")
    X = members_to_X(members)
    fitted = blend if hasattr(blend, "classes_") else blend.fit(X)  # a vote learns nothing: fit only sizes it
    final = full_proba(fitted, X, len(classes))
    final, notes = smooth_test(test["path"], final, meta.get("neighbours"))  # as the build chose on its crop OOF
    out = Path(args.out)
    ids = test["id"].to_numpy()
    write_submission(out, ids, final, sample, classes)
    write_csv(probabilities_path(out), prob_frame(final, classes, id=ids))
    return {"out": out, "runs": [r.name for r in runs], "method": meta["method"], "images": len(test), "notes": notes}


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stdout()
    result = predict(args)
    for n in result["notes"]:
        print(f"note: {n}")
    print(f"predicted {result['images']:,} images with {', '.join(result['runs'])} ({result['method']}); "
          f"submission: {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
