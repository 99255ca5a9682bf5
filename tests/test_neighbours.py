"""Neighbour smoothing: look-alike crops are found from real image files, the smoothing is chosen
honestly on the crop OOF, it turns itself off where it cannot help, and the build applies it."""
import json

import numpy as np
import pandas as pd
from PIL import Image

from common.metrics import macro_f1
from ensemble import neighbours as nb
from folds.demo import PAINTERS, paint
from folds.predict import crop_boxes


def painted_crops(tmp_path, paintings_per_painter=4, crops=4, seed=0):
    """Demo-style paintings on disk and ``crops`` half-size crop boxes of each: (paths, boxes, painting, painter)."""
    rng = np.random.default_rng(seed)
    paths, painting, painter = [], [], []
    for p, (palette, angle, grain) in enumerate(PAINTERS.values()):
        for _ in range(paintings_per_painter):
            path = tmp_path / f"{len(set(painting)):03d}.jpg"
            Image.fromarray(paint(rng, palette, angle, grain, 160, 200)).save(path, quality=90)
            paths += [path] * crops
            painting += [len(set(painting))] * crops
            painter += [p] * crops
    boxes = crop_boxes(sorted(set(painting)), crops, seed=1)
    return paths, boxes, np.array(painting), np.array(painter)


def test_a_crops_nearest_look_alikes_are_mostly_its_siblings(tmp_path):
    paths, boxes, painting, _ = painted_crops(tmp_path)
    idx, sim = nb.nearest(nb.describe(paths, boxes, workers=2), 3)
    precision = (painting[idx] == painting[:, None]).mean()
    chance = 3 / (len(painting) - 1)
    assert precision > 0.6 > 5 * chance, precision
    assert (np.diff(sim, axis=1) <= 1e-6).all()  # most similar first


def noisy_crop_probs(painting, painter, k_classes, rng, noise=1.2):
    """Each crop's prediction is its painter plus crop noise; the siblings' mean is closer to the truth."""
    logits = rng.normal(0, noise, (len(painting), k_classes))
    logits[np.arange(len(painting)), painter] += 1.0
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def sibling_neighbours(painting, k):
    """Each row's neighbours: its siblings first (as a perfect descriptor would find them)."""
    rows = np.arange(len(painting))
    return np.stack([np.r_[rows[(painting == g) & (rows != i)], rows[painting != g]][:k]
                     for i, g in enumerate(painting)])


def test_smoothing_is_chosen_where_siblings_agree_and_left_off_where_neighbours_mislead():
    rng = np.random.default_rng(0)
    painting = np.repeat(np.arange(300), 5)
    painter = painting % 6
    probs = noisy_crop_probs(painting, painter, 6, rng)
    good, f1_good = nb.choose(probs, painter, sibling_neighbours(painting, 16))
    assert good.on and f1_good > macro_f1(painter, probs) + 0.05
    wrong = (np.arange(len(painting))[:, None] + 5 * np.arange(1, 17)[None, :] + 1) % len(painting)
    wrong = np.where(painter[wrong] == painter[:, None], (wrong + 5) % len(painting), wrong)  # other painters only
    bad, f1_bad = nb.choose(probs, painter, wrong)
    assert not bad.on and f1_bad == macro_f1(painter, probs)
    assert np.array_equal(bad.apply(probs, wrong), probs)


def painted_oof(tmp_path):
    """A small crop OOF of painted crops with overlap scores: (painting, painter, desc, kept, probs)."""
    paths, boxes, painting, painter = painted_crops(tmp_path, paintings_per_painter=6, crops=3)
    desc, kept = nb.look(paths, boxes, workers=2)
    return painting, painter, desc, kept, noisy_crop_probs(painting, painter, len(PAINTERS), np.random.default_rng(1))


def spy_on_choose(monkeypatch) -> list:
    """Every ``nb.choose`` call from here on, as (its rows, its looks, its grid options: the keywords but the
    metric's ``score``)."""
    calls, real_choose = [], nb.choose

    def spy(p, y, looks, **kw):
        calls.append((len(p), looks, {k: v for k, v in kw.items() if k != "score"}))
        return real_choose(p, y, looks, **kw)

    monkeypatch.setattr(nb, "choose", spy)
    return calls


def test_the_oof_score_is_honest_each_half_uses_the_choice_of_the_other(tmp_path, monkeypatch):
    painting, painter, desc, kept, probs = painted_oof(tmp_path)
    calls = spy_on_choose(monkeypatch)
    fit = nb.fit_on_oof(probs, painter, painting, desc, pool_rows=len(painting) // 4, kept=kept)
    pools = nb.oof_pools(painting, len(painting) // 4)
    assert all(len(set(painting[rows])) == len(np.unique(painting[rows])) for rows in pools)
    assert {g for rows in pools for g in painting[rows]} == set(painting)  # every painting in exactly one pool
    assert not set.intersection(*[set(painting[rows]) for rows in pools[:2]])
    seen = [n for n, _, _ in calls]
    assert seen[:2] == [sum(len(r) for r in pools[0::2]), sum(len(r) for r in pools[1::2])] and seen[2] == len(probs)
    for n, looks, _ in calls:  # renumbered into the half: no row of the other half is reachable, by colour or overlap
        assert looks.neighbours.max() < n and len(looks.pairs) and looks.pairs.max() < n
    assert fit["honest_oof"].shape == probs.shape


def test_an_oof_too_small_for_the_test_sets_density_leaves_it_off():
    rng = np.random.default_rng(0)
    painting = np.repeat(np.arange(300), 5)
    painter = painting % 6
    probs = noisy_crop_probs(painting, painter, 6, rng)
    desc = np.eye(300)[painting] + rng.normal(0, 0.05, (len(painting), 300))  # siblings alike, others not
    matched = nb.fit_on_oof(probs, painter, painting, desc, pool_rows=len(painting) // 2)
    assert matched["smoothing"].on and matched["reason"] is None
    sparse = nb.fit_on_oof(probs, painter, painting, desc, pool_rows=4 * len(painting))  # a test 4x the OOF
    assert not sparse["smoothing"].on and "density" in sparse["reason"]
    assert np.array_equal(sparse["honest_oof"], probs)


def test_a_sparse_oof_with_overlap_scores_chooses_among_the_overlap_groups_only(tmp_path, monkeypatch):
    painting, painter, desc, kept, probs = painted_oof(tmp_path)
    calls = spy_on_choose(monkeypatch)
    fit = nb.fit_on_oof(probs, painter, painting, desc, pool_rows=4 * len(painting), kept=kept)  # a test 4x the OOF
    overlap_only = {"grid_k": (), "grid_threshold": (nb.sib.CONSENSUS_THRESHOLD,)}
    assert [kw for _, _, kw in calls] == [overlap_only] * 3  # both halves, then all
    assert fit["smoothing"].on and fit["smoothing"].threshold == nb.sib.CONSENSUS_THRESHOLD
    assert "only the overlap groups" in fit["reason"] and "density" in fit["reason"]
    assert macro_f1(painter, fit["honest_oof"]) > macro_f1(painter, probs)
    calls.clear()
    nb.fit_on_oof(probs, painter, painting, desc, pool_rows=len(painting) // 2, kept=kept)  # dense enough: all
    assert [kw for _, _, kw in calls] == [{}] * 3


def test_a_test_set_of_single_crops_is_told_apart_from_the_oofs_sibling_crops(tmp_path):
    paths, boxes, painting, painter = painted_crops(tmp_path, crops=4)
    desc = nb.describe(paths, boxes, workers=2)
    fit = nb.fit_on_oof(np.eye(len(PAINTERS))[painter], painter, painting, desc, pool_rows=len(painting))
    sibling, stranger = fit["oof_sibling"], fit["oof_stranger"]
    assert sibling > stranger
    one_each = np.flatnonzero(np.r_[True, painting[1:] != painting[:-1]])  # the first crop of each painting
    _, single = nb.nearest(desc[one_each], 1)
    _, several = nb.nearest(desc[: len(desc) // 2], 1)  # half the paintings, all their crops
    assert nb.sibling_check(sibling, stranger, several[:, 0]) is None
    assert "several crops per painting" in nb.sibling_check(sibling, stranger, single[:, 0])


def test_the_build_applies_it_on_the_demo_by_default_and_off_leaves_the_soft_vote(demo_source, tmp_path, capsys):
    from ensemble.build import build
    from folds.run import main as run_main
    from conftest import tiny_args

    assert run_main(tiny_args(demo_source, tmp_path, **{"--name": "nb", "--epochs": 2})) == 0
    run = tmp_path / "runs" / "nb"
    off = build([run], out=tmp_path / "off.csv", report=False, neighbours="off")
    auto = build([run], out=tmp_path / "auto.csv", report=False)  # the default
    assert off["chosen"].removesuffix("+offsets") == "mean" and not any("neighbour" in n for n in off["notes"])
    assert any(n.startswith("neighbour smoothing chosen on the crop OOF") for n in auto["notes"])
    sub_off, sub_auto = (pd.read_csv(tmp_path / f"{n}.csv", dtype=str) for n in ("off", "auto"))
    assert list(sub_off["id"]) == list(sub_auto["id"])
    if auto["chosen"].endswith("+neighbours"):
        assert auto["table"][-1]["method"] == off["chosen"] + "+neighbours"
        saved = json.loads((tmp_path / "auto_blend.json").read_text())["neighbours"]  # predict.py reuses it
        assert nb.Smoothing.from_saved(saved).describe() == auto["neighbours"]
    else:
        assert sub_off.equals(sub_auto)
    # the consensus benchmark on this finished run
    from benchmarks.neighbours import main
    assert main([str(demo_source), "--run", str(run), "--workers", "2"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < row["crop_oof_f1"] <= 1 and 0 < row["fold_mean_test_f1_consensus"] <= 1
    assert [r["labels"] for r in row["pseudo_labels_oof"]] == ["alone", "sibling consensus"]


def test_a_saved_choice_smooths_a_new_test_set_of_sibling_crops_and_not_one_of_single_crops(tmp_path):
    paths, boxes, painting, painter = painted_crops(tmp_path, crops=4)
    desc = nb.describe(paths, boxes, workers=2)
    fit = nb.fit_on_oof(np.eye(len(PAINTERS))[painter], painter, painting, desc, pool_rows=len(painting))
    saved = {"k": 3, "w": 0.5, "oof_sibling": fit["oof_sibling"], "oof_stranger": fit["oof_stranger"]}
    crops = tmp_path / "crops"
    crops.mkdir()
    files = []
    for i, (path, box) in enumerate(zip(paths, boxes)):  # the crops as files, as a test set holds them
        im = Image.open(path)
        w, h = im.size
        files.append(crops / f"{i}.jpg")
        im.crop((int(box[0] * w), int(box[1] * h), int(box[2] * w), int(box[3] * h))).save(files[-1], quality=90)
    probs = noisy_crop_probs(painting, painter, len(PAINTERS), np.random.default_rng(2))
    smoothed, notes = nb.smooth_test(files, probs, saved, workers=2)
    assert not notes and macro_f1(painter, smoothed) > macro_f1(painter, probs)
    one_each = np.flatnonzero(np.r_[True, painting[1:] != painting[:-1]])
    kept, notes = nb.smooth_test([files[i] for i in one_each], probs[one_each], saved, workers=2)
    assert kept is probs[one_each] or np.array_equal(kept, probs[one_each])
    assert notes and "several crops per painting" in notes[0]
    assert nb.smooth_test(files, probs, None)[0] is probs  # a blend built with --neighbours off


def test_the_sibling_benchmark_runs_on_the_demo(demo_source, capsys):
    from benchmarks.neighbours import main
    assert main([str(demo_source), "--paintings", "12", "--crops", "3", "--workers", "2"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["pool_crops"] == 36 and row["sibling_at_4"] > 3 / 35  # better than chance
    assert row["test_crops"] > 0 and 0 <= row["test_same_artist_at_4"] <= 1
    assert row["overlap_pairs_per_s"] > 0 and row["overlap_peak_rss_mb"][1] >= row["overlap_peak_rss_mb"][0] > 0


def test_the_probe_chooses_on_its_crop_oof_and_reads_its_features_back(demo_source, tmp_path, capsys):
    from benchmarks.neighbours import main
    args = [str(demo_source), "--probe", "--descriptors", "--probe-model", "resnet10t:none", "--probe-size", "32",
            "--crops", "2", "--workers", "0", "--features", str(tmp_path / "f.npz")]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["oof_crops"] == 2 * len(pd.read_csv(demo_source / "train.csv"))
    assert 0 < first["crop_oof_f1"] <= 1 and 0 < first["fold_mean_test_f1"] <= 1
    assert first["chosen"] == "off" or first["crop_oof_f1_smoothed_honest"] > first["crop_oof_f1"]
    assert [d["descriptor"] for d in first["descriptors"]] == ["hsv+overlap", "hsv", "features", "hsv+features"]
    assert first["descriptors"][0]["chosen"] == first["chosen"]  # the shipped descriptor, as the build chose
    for rows in (first["pseudo_labels_oof"], first["pseudo_labels"]):
        assert [row["labels"] for row in rows] == ["alone", "sibling consensus"]
        assert all(0 <= row["kept@0.9"] <= 1 and (row["right@0.9"] is None or 0 <= row["right@0.9"] <= 1)
                   for row in rows)  # None: no crop was that confident
    assert main(args) == 0  # the kept features: the same figures
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {k: v for k, v in second.items() if k != "feature_s"} == {k: v for k, v in first.items() if k != "feature_s"}


def crop_files(tmp_path, paintings_per_painter=5, crops=4, seed=0, side=(0.45, 0.55)):
    """Demo paintings cut into ``crops`` random crops each of about half their width and height
    (``side``), each crop its own JPEG file as a test set holds them: (files, painting, painter)."""
    rng = np.random.default_rng(seed)
    files, painting, painter = [], [], []
    (tmp_path / "crops").mkdir()
    for p, (palette, angle, grain) in enumerate(PAINTERS.values()):
        for _ in range(paintings_per_painter):
            h, w = rng.integers(180, 320, size=2)
            img = Image.fromarray(paint(rng, palette, angle, grain, int(h), int(w)))
            for _ in range(crops):
                cw, ch = (rng.uniform(*side, size=2) * (w, h)).astype(int)
                x0, y0 = rng.integers(0, w - cw), rng.integers(0, h - ch)
                files.append(tmp_path / "crops" / f"{len(files):04d}.jpg")
                img.crop((x0, y0, x0 + cw, y0 + ch)).save(files[-1], quality=90)
                painting.append(len(set(painting)) if not painting or len(painting) % crops == 0 else painting[-1])
                painter.append(p)
    return files, np.array(painting), np.array(painter)


def test_crops_of_one_painting_are_linked_by_their_overlap_and_crops_of_others_are_not(tmp_path):
    from ensemble import siblings as sib
    files, painting, _ = crop_files(tmp_path)
    desc, kept = nb.look(files, workers=2)
    looks = nb.Looks.of(nb.nearest(desc, sib.CANDIDATES)[0], kept)
    same = painting[looks.pairs[:, 0]] == painting[looks.pairs[:, 1]]
    linked = looks.overlap > 0.7
    assert same[linked].mean() >= 0.95, same[linked].mean()  # a link is a sibling
    group = looks.group(0.7)
    found = sib.has_sibling(group)
    assert found.mean() >= 0.8, found.mean()  # most crops find a sibling, directly or through another
    assert all(len(set(painting[group == g])) == 1 for g in np.unique(group[found]))  # groups do not mix paintings


def test_blank_crops_and_crops_of_very_different_sizes_are_never_linked():
    from ensemble import siblings as sib
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter
    texture = np.clip(gaussian_filter(rng.normal(128, 300, (300, 300, 3)), (3, 3, 0)), 0, 255).astype(np.uint8)
    blank = np.full((110, 110, 3), 200, np.uint8)
    kept = [sib.keep_grey(x) for x in (blank, blank.copy(), texture[:150, :150], texture[50:200, 40:190],
                                       texture[:40, :40])]
    pairs = np.array([[0, 1], [2, 3], [2, 4]])
    score = sib.overlap_scores(kept, pairs)
    assert score[0] == -1  # identical, but nothing to match: no texture
    assert score[1] > 0.9  # the same texture, shifted
    assert score[2] == -1  # a crop less than half the other's side: not siblings of one painting


def test_overlap_smoothing_is_chosen_on_the_oof_and_applied_to_sibling_crops_only(tmp_path):
    files, painting, painter = crop_files(tmp_path, paintings_per_painter=6)
    probs = noisy_crop_probs(painting, painter, len(PAINTERS), np.random.default_rng(3))
    desc, kept = nb.look(files, workers=2)
    fit = nb.fit_on_oof(probs, painter, painting, desc, pool_rows=len(painting) // 2, kept=kept)
    assert fit["smoothing"].on and macro_f1(painter, fit["honest_oof"]) > macro_f1(painter, probs)
    overlap = nb.Smoothing(0, 0.8, 0.7)
    smoothed, notes = nb.smooth_test(files, probs, {**overlap.saved(), "oof_sibling": 1, "oof_stranger": 0},
                                     workers=2)
    assert macro_f1(painter, smoothed) > macro_f1(painter, probs) and "overlap siblings found for" in notes[0]
    one_each = np.flatnonzero(np.r_[True, painting[1:] != painting[:-1]])  # one crop per painting: none found
    kept_probs, notes = nb.smooth_test([files[i] for i in one_each], probs[one_each], overlap.saved(), workers=2)
    assert np.array_equal(kept_probs, probs[one_each]) and "found for 0%" in notes[0]


def test_overlap_scored_pool_by_pool_equals_all_at_once_and_pools_must_hold_their_neighbours(tmp_path):
    import pytest
    from ensemble import siblings as sib
    files, painting, _ = crop_files(tmp_path, paintings_per_painter=2)
    desc, kept = nb.look(files, workers=2)
    pools = nb.oof_pools(painting, len(painting) // 2)
    neighbours, _ = nb.pool_neighbours(desc, pools, sib.CANDIDATES)
    whole, pooled = nb.Looks.of(neighbours, kept), nb.Looks.of(neighbours, kept, pools)  # pooled: less memory
    assert np.array_equal(whole.pairs, pooled.pairs) and np.allclose(whole.overlap, pooled.overlap)
    with pytest.raises(ValueError, match="crosses the pools"):
        nb.Looks.of(nb.nearest(desc, sib.CANDIDATES)[0], kept, pools)


def test_the_consensus_gives_a_group_one_prediction_and_leaves_single_crops_alone(tmp_path):
    """Pseudo-labels take it: nothing fitted, each linked group gets its geometric mean."""
    from ensemble import siblings as sib
    files, painting, painter = crop_files(tmp_path, paintings_per_painter=6)
    probs = noisy_crop_probs(painting, painter, len(PAINTERS), np.random.default_rng(4))
    agreed, found = nb.consensus(files, probs, workers=2)
    assert found >= 0.8 and np.allclose(agreed.sum(1), 1)
    assert macro_f1(painter, agreed) > macro_f1(painter, probs)
    desc, kept = nb.look(files, workers=2)
    group = nb.Looks.of(nb.nearest(desc, sib.CANDIDATES)[0], kept).group(sib.CONSENSUS_THRESHOLD)
    for g in np.unique(group):  # one prediction per group: the normalised geometric mean of its crops
        rows = group == g
        expected = np.exp(np.log(probs[rows]).mean(0))
        np.testing.assert_allclose(agreed[rows], np.tile(expected / expected.sum(), (rows.sum(), 1)), rtol=1e-6)
    one_each = np.flatnonzero(np.r_[True, painting[1:] != painting[:-1]])
    alone, found = nb.consensus([files[i] for i in one_each], probs[one_each], workers=2)
    assert found == 0 and np.allclose(alone, probs[one_each])
