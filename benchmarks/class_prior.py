"""How a run's crop OOF meets the class prior: what a sampler or the build's offsets change.

    python benchmarks/class_prior.py runs/bal runs/sqrt runs/plain

Per run: the crop-OOF macro-F1 and each fold's; the share of crops predicted as the smaller half
of the classes (by paintings in the run's train set) against the share that truly are; and the
mean F1 of the smaller and the larger half. A class-balanced sampler predicts the small classes
too often and a plain shuffle too rarely; per-class offsets (``ensemble/build.py --offsets``)
correct either after training. Everything here is the crop OOF: nothing reads the test labels.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn.metrics import f1_score  # noqa: E402

from common.metrics import macro_f1  # noqa: E402
from ensemble.runs import load_run  # noqa: E402


def prior_row(run_dir) -> dict:
    run = load_run(run_dir, "crops")
    k = len(run.classes)
    y = run.oof["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    pred = run.oof_probs.argmax(axis=1)
    paintings = np.bincount(y[~run.oof["id"].duplicated().to_numpy()], minlength=k)
    small = np.flatnonzero(paintings <= np.median(paintings))  # the smaller half of the classes, by paintings
    per_class = f1_score(y, pred, labels=np.arange(k), average=None, zero_division=0)
    folds = run.oof["fold"].to_numpy()
    return {"run": run.name, "crop_oof_f1": round(macro_f1(y, pred), 4),
            "per_fold": [round(macro_f1(y[folds == f], pred[folds == f]), 3) for f in sorted(set(folds))],
            "smaller_half_predicted": round(float(np.isin(pred, small).mean()), 3),
            "smaller_half_true": round(float(np.isin(y, small).mean()), 3),
            "smaller_half_f1": round(float(per_class[small].mean()), 3),
            "larger_half_f1": round(float(np.delete(per_class, small).mean()), 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run folders (runs/<name>) with a crop OOF")
    for run in p.parse_args(argv).runs:
        print(json.dumps(prior_row(run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
