"""Score every TTA mode on a finished run by its crop-OOF: what each view set is worth.

    python benchmarks/tta_modes.py runs/bench-suite --modes none,hflip,flips,d4 --out tta.jsonl

Each fold's best weights predict the fold's validation paintings as the run's fixed crop-OOF
crops (the same boxes as ``oof_crops.csv``), once per TTA mode, and the crop-OOF macro-F1 is
printed per mode; the mode the run was trained with reproduces its own crop-OOF. With an
answer key (``test_labels.csv``, WikiArt-50) the mean single-fold and fold-mean test F1 are
printed beside it, for reporting only: the choice is made by crop-OOF.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from common import layout  # noqa: E402
from common.metrics import macro_f1, mean_single_f1  # noqa: E402
from ensemble.merge import merge  # noqa: E402
from ensemble.submission import answer_key  # noqa: E402
from ensemble.tta import TTA_MODES  # noqa: E402
from folds.config import saved_config  # noqa: E402
from folds.data import load_dataset  # noqa: E402
from folds.predict import Predictor, predict_crop_oof  # noqa: E402


def score_modes(run: Path, modes, device: str = "auto", workers: int | None = None, data_dir=None) -> list[dict]:
    cfg = saved_config(run)
    # no image cache: its folder is relative to where the run was started (as in ensemble/predict.py)
    cfg = replace(cfg, device=device, workers=cfg.workers if workers is None else workers,
                  data_dir=str(data_dir or cfg.data_dir), cache=False)
    n = cfg.crop_oof or 5
    ds = load_dataset(cfg.data_dir, check_images=False)
    fold_of = layout.read_frame(run / layout.FOLDS).set_index("id")["fold"].astype(str)
    truth = answer_key(cfg.data_dir, ds.test["id"].to_numpy(), ds.classes)
    rows = []
    for mode in modes:
        labels, probs, tests = [], [], []
        for k in layout.planned_folds(cfg):
            val = ds.train[ds.train["id"].map(fold_of) == str(k)]
            predictor = Predictor(replace(cfg, tta=mode), ds.num_classes, layout.fold_dir(run, k))
            probs.append(predict_crop_oof(predictor, val, n, desc=f"fold {k} {mode}"))
            labels.append(np.repeat(val["label"].to_numpy(), n))
            if truth is not None:
                tests.append(predictor.predict(ds.test["path"], desc=f"fold {k} test {mode}"))
        row = {"run": run.name, "tta": mode, "views": predictor.views,
               "crop_oof_f1": round(macro_f1(np.concatenate(labels), np.concatenate(probs)), 4),
               "trained_with": cfg.tta}
        if tests:
            row.update(single_fold_test_f1=round(mean_single_f1(truth, tests), 4),
                       fold_mean_test_f1=round(macro_f1(truth, merge(np.stack(tests), "mean")), 4))
        rows.append(row)
    best = max(rows, key=lambda r: r["crop_oof_f1"])
    for r in rows:
        r["chosen"] = r is best
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a finished run folder (runs/<name>)")
    p.add_argument("--modes", default=",".join(TTA_MODES), help=f"comma-separated, of {', '.join(TTA_MODES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int)
    p.add_argument("--data-dir", help="the run's data folder, if it moved")
    p.add_argument("--out", help="append the rows here as JSON lines")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in TTA_MODES]
    if unknown:
        p.error(f"--modes: unknown {unknown}; choose from {list(TTA_MODES)}")
    if not (Path(args.run) / layout.CONFIG).is_file():
        p.error(f"{args.run}: not a run folder (no {layout.CONFIG})")
    rows = score_modes(Path(args.run), modes, args.device, args.workers, args.data_dir)
    for r in rows:
        print(json.dumps(r))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
