import json
import re
import shlex
import shutil

import numpy as np
import pandas as pd
import pytest

from common import UserError
from conftest import tiny_args
from common.metrics import macro_f1
from ensemble.blend import StackBlend, WeightedBlend, honest_oof, make_blend, members_to_X
from ensemble.build import build_parser, main as build_main
from ensemble.runs import load_run
from ensemble.submission import validate_submission, write_submission
from folds.run import main as run_main


@pytest.fixture(scope="module")
def two_runs(demo_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    for seed in (0, 1):
        assert run_main(tiny_args(demo_source, out, **{"--seed": seed, "--name": f"s{seed}", "--epochs": 3})) == 0
    return out


def build(root, *runs, **opts):
    argv = [str(root / "runs" / r) for r in runs]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return build_main(argv)


@pytest.mark.parametrize("method", ["mean", "gmean", "vote", "weighted", "stack"])
def test_every_method_builds_a_valid_submission(two_runs, method, capsys):
    out_csv = two_runs / "subs" / f"{method}.csv"
    assert build(two_runs, "s0", "s1", method=method, out=out_csv, no_report=True) == 0
    printed = capsys.readouterr().out
    # the score column names the OOF it is: the run's summary line calls the whole-painting one "OOF macro-F1"
    assert re.search(r"^method +crop-OOF macro-F1 +accuracy neg. log loss  note$", printed, re.M), printed
    for m in ("mean", "gmean", "vote", "weighted", "stack"):  # one comparison table with every score
        assert any(line.startswith(m) for line in printed.splitlines()), printed
    assert printed.count("inner CV") >= 2  # weighted and stack are scored out of sample
    sub = pd.read_csv(out_csv, dtype=str)
    data_dir = json.loads((two_runs / "runs" / "s0" / "config.json").read_text())["data_dir"]
    sample = pd.read_csv(f"{data_dir}/sample_submission.csv", dtype=str)
    assert list(sub["id"]) == list(sample["id"])


def test_the_best_of_several_honest_scores_is_read_down_by_what_choosing_it_added():
    """Twelve candidates, each right on 60% of 300 paintings: the best of their OOF scores reads high, as the
    chosen one's score on new paintings shows. The bootstrap of the choice gives most of that back, and nothing
    where there is no choice (one candidate, or several alike)."""
    from common.metrics import get_metric
    from ensemble.compare import selection_optimism

    m, classes = get_metric("macro_f1"), 10

    def candidates(y, rng, n):
        wrong = (y + rng.integers(1, classes, (n, len(y)))) % classes
        return [np.eye(classes)[np.where(rng.random(len(y)) < 0.6, y, w)] for w in wrong]

    over, left = [], []
    for rep in range(8):
        rng = np.random.default_rng(rep)
        y = rng.integers(0, classes, 300)
        cands = candidates(y, rng, 12)
        best = max(m.score(y, p) for p in cands)
        new = rng.integers(0, classes, 50_000)  # the chosen one's score on new paintings: all alike in truth
        truth = m.score(new, candidates(new, rng, 1)[0])
        optimism = selection_optimism(y, np.arange(300), cands, draws=500)
        over.append(best - truth)
        left.append(best - optimism - truth)
    assert np.mean(over) > 0.03 and abs(np.mean(left)) < 0.5 * np.mean(over)
    assert selection_optimism(y, np.arange(300), cands[:1]) == 0.0
    assert selection_optimism(y, np.arange(300), cands[:1] * 4) == pytest.approx(0.0, abs=1e-12)
    # candidates alike: a float's last bits, never below 0 (the runs table showed "-0.0000" for a choice)
    from ensemble.compare import optimism_of
    alike = []
    for r in range(20):
        rng = np.random.default_rng(r)
        score, drawn = rng.normal(), rng.normal(size=(300, 1))
        alike.append(optimism_of([score] * 3, np.repeat(drawn, 3, axis=1)))
    assert min(alike) >= 0.0 and f"{min(alike):+.4f}" == "+0.0000"


def test_a_choice_scored_by_the_mean_of_its_folds_is_read_down_fold_by_fold():
    """A study's trial of several folds scores the mean of its folds' scores, so a small fold's noise weighs as much
    as a large one's. Its read-down scored the folds' rows together, as one large fold, and gave back under a third
    of what choosing the best trial added where the folds were 20 and 400 paintings; resampled fold by fold, the
    bootstrap gives back most of it."""
    from common.metrics import get_metric
    from ensemble.compare import selection_optimism

    m, classes, sizes = get_metric("macro_f1"), 5, (20, 400)

    def candidate(y, rng):
        return np.eye(classes)[np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, classes, len(y)))]

    over, folded, joined = [], [], []
    for rep in range(6):
        rng = np.random.default_rng(rep)
        ys = [rng.integers(0, classes, n) for n in sizes]
        cands = [[candidate(y, rng) for y in ys] for _ in range(12)]
        best = max(np.mean([m.score(y, c) for y, c in zip(ys, cand)]) for cand in cands)
        new = rng.integers(0, classes, 50_000)  # all alike in truth
        over.append(best - m.score(new, candidate(new, rng)))
        y, probs = np.concatenate(ys), [np.concatenate(cand) for cand in cands]
        folded.append(selection_optimism(y, np.arange(len(y)), probs, draws=300, blocks=np.repeat([0, 1], sizes)))
        joined.append(selection_optimism(y, np.arange(len(y)), probs, draws=300))
    assert np.mean(over) > 0.05
    assert np.mean(folded) > 0.6 * np.mean(over) > np.mean(joined) * 1.5, (over, folded, joined)


@pytest.mark.parametrize("offsets", ["auto", "on", "off"])
def test_method_best_builds_the_method_with_the_highest_honest_score(two_runs, offsets, capsys):
    from ensemble.blend import BLENDS
    from ensemble.build import build as build_fn

    out = two_runs / "subs" / f"best-{offsets}.csv"
    res = build_fn([two_runs / "runs" / r for r in ("s0", "s1")], method="best", out=out, offsets=offsets,
                   report=False, neighbours="off")
    candidates = [r for r in res["table"] if not r["method"].startswith("run ")
                  and (offsets == "auto" or r["method"].endswith("+offsets") == (offsets == "on"))]
    # every method, with the offsets (on) or without (off) or both (auto)
    assert len(candidates) == len(BLENDS) * (2 if offsets == "auto" else 1)
    top = max(r["f1"] for r in candidates)
    chosen = next(r for r in candidates if r["method"] == res["chosen"])
    assert chosen["f1"] == top and chosen is next(r for r in candidates if r["f1"] == top)  # a tie: the first
    meta = json.loads(res["blend"].read_text())
    assert meta["method"] in BLENDS and meta["offsets"] == res["chosen"].endswith("+offsets")
    assert {"packages", "git"} <= set(meta["manifest"])  # what built it, as a run's manifest.json says
    assert any(f"--method best: {res['chosen']} has the highest honest crop-OOF macro-F1" in n for n in res["notes"])
    # and how high the best of them reads, with the score to expect of it on new paintings
    said = next(n for n in res["notes"] if "honest scores on these paintings, which reads it high by about" in n)
    expect = float(re.search(r"expect about ([0-9.]+)", said)[1])
    assert meta["choice_optimism"] >= 0 and expect == pytest.approx(chosen["f1"] - meta["choice_optimism"], abs=1e-4)
    # each fold's best epoch was chosen on the same paintings: the runs' mean read-down, on top of the choice above
    runs = [json.loads((two_runs / "runs" / r / "scores.json").read_text())["epoch_optimism"] for r in ("s0", "s1")]
    assert meta["epoch_optimism"] == pytest.approx(np.mean(runs)) and meta["epoch_optimism"] > 0
    assert (res["choice_optimism"], res["epoch_optimism"]) == (meta["choice_optimism"], meta["epoch_optimism"])
    said = next(n for n in res["notes"] if n.startswith("each fold's best epoch was chosen on the paintings its "
                                                        "crop-OOF scores, which reads it about"))
    expect = float(re.search(r"expect about ([0-9.]+)", said)[1])
    assert expect == pytest.approx(chosen["f1"] - meta["choice_optimism"] - meta["epoch_optimism"], abs=1e-4)
    # with offsets chosen, their gain over the blend alone comes with its interval over the paintings
    gains = [n for n in res["notes"] if " against " in n and "over resamples of the paintings" in n]
    assert len(gains) == res["chosen"].endswith("+offsets"), res["notes"]
    # the CSV is the chosen method's, as a build naming it writes it
    named = res["chosen"].removesuffix("+offsets")
    again = two_runs / "subs" / f"named-{offsets}.csv"
    assert build(two_runs, "s0", "s1", method=named, offsets="on" if meta["offsets"] else "off", out=again,
                 no_report=True, neighbours="off") == 0
    assert again.read_text() == out.read_text()


def test_the_builds_choice_of_offsets_or_smoothing_comes_with_its_gain_and_interval_over_the_paintings():
    """A build that chose offsets or neighbour smoothing over the plain blend said by how much on the OOF, not
    whether that was more than which paintings happen to be in it (compare.py's question, for runs)."""
    from ensemble.build import gain_note
    from ensemble.compare import gain

    rng = np.random.default_rng(0)
    y = np.repeat(rng.integers(0, 5, 300), 5)  # 300 paintings x 5 crops
    groups = np.repeat(np.arange(300), 5)
    base = rng.dirichlet(np.ones(5), len(y))
    right = np.eye(5)[y] * 0.5 + base * 0.5  # surely better
    g = gain(y, groups, base, right, "macro_f1")
    assert g["diff"] > 0.3 and g["interval"][0] > 0.2 and g["better"] == 1.0
    said = gain_note(y, groups, base, right, "mean", "mean+offsets", "crop-OOF", "macro_f1")
    assert said.startswith(f"mean+offsets against mean: {g['diff']:+.4f} crop-OOF macro-F1 on the same rows, 90% "
                           "interval [+") and "within the noise" not in said, said
    nudged = base.copy()
    nudged[:5] = np.eye(5)[y[:5]]  # one painting's crops put right: no more than the paintings' noise
    assert "; within the noise of which paintings are in the OOF" in gain_note(y, groups, base, nudged, "mean",
                                                                             "mean+offsets", "crop-OOF", "macro_f1")


def test_report_has_real_plots(two_runs):
    out_csv = two_runs / "subs" / "rep.csv"
    assert build(two_runs, "s0", "s1", method="stack", offsets=True, out=out_csv) == 0
    md = (two_runs / "subs" / "rep_report.md").read_text()
    for png in ("per_class_f1.png", "confusion.png", "distribution.png"):
        data = (two_runs / "subs" / "rep_report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
        assert f"rep_report/{png}" in md
    assert re.search(r"\| stack\+offsets(\+neighbours)? \(chosen\) \|", md) and "| s1 | 4 |" in md
    done = json.loads((two_runs / "runs" / "s1" / "fold_4" / "done.json").read_text())  # chosen on the crops
    assert done["monitor"] == "crop-f1" and f"| s1 | 4 | {done['best_crop_f1']:.4f} | crops |" in md, md
    assert "| method | crop-OOF macro-F1 | crop-OOF accuracy | crop-OOF neg. log loss | note |" in md
    # the most confident mistakes, for finding mislabelled paintings: one row a painting, wrong, most sure first
    errors = pd.read_csv(two_runs / "subs" / "rep_report" / "oof_errors.csv", dtype={"id": str})
    data_dir = json.loads((two_runs / "runs" / "s0" / "config.json").read_text())["data_dir"]
    train = pd.read_csv(f"{data_dir}/train.csv", dtype=str).set_index("id")
    assert len(errors) and errors["id"].is_unique and (errors["true"] != errors["predicted"]).all()
    assert errors["p_predicted"].is_monotonic_decreasing and (errors["p_predicted"] >= errors["p_true"]).all()
    assert (train.loc[errors["id"], "artist"].to_numpy() == errors["true"].to_numpy()).all()
    assert (train.loc[errors["id"], "img_path"].to_numpy() == errors["img_path"].to_numpy()).all()
    assert "## The most confident mistakes on the OOF" in md and "rep_report/oof_errors.csv" in md


def test_confident_errors_judge_a_painting_by_its_crops_together():
    from ensemble.report import confident_errors
    # painting a: one crop wrong, but its crops together say A; painting b: both crops say A, truly B
    probs = [[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.9, 0.1]]
    errors = confident_errors(["a", "a", "b", "b"], [0, 0, 1, 1], probs, ["A", "B"], {"b": "./train/b.jpg"})
    assert errors.to_dict("records") == [{"id": "b", "img_path": "./train/b.jpg", "true": "B", "predicted": "A",
                                          "p_predicted": 0.8, "p_true": 0.2}]


def test_learning_blends_are_scored_out_of_sample():
    # Pure-noise members: fit in sample, a stacker looks good; scored honestly it is at chance.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    members = [rng.dirichlet(np.ones(4), 400) for _ in range(3)]
    groups = np.arange(400)
    X = members_to_X(members)
    in_sample = macro_f1(y, StackBlend("rf", n_members=3).fit(X, y).predict_proba(X))
    honest = macro_f1(y, honest_oof(StackBlend("rf", n_members=3), X, y, groups))
    assert in_sample > 0.9 and honest < 0.4, (in_sample, honest)


def test_inner_cv_keeps_crops_of_a_painting_together():
    # Each painting appears as 5 identical crops with a painting-specific random label: only a
    # leak across crops of one painting could score above chance.
    rng = np.random.default_rng(1)
    n = 200
    y = np.repeat(rng.integers(0, 3, n), 5)
    feats = np.repeat(rng.dirichlet(np.ones(3), n), 5, axis=0)
    groups = np.repeat(np.arange(n), 5)
    honest = macro_f1(y, honest_oof(StackBlend("rf"), feats, y, groups))
    assert honest < 0.45, honest


def test_small_classes_do_not_shrink_the_inner_cv_and_are_learnt_in_every_inner_fold(monkeypatch):
    # a class of 3 paintings made the inner CV 3-fold for every class, one of 2 (a long tail) 2-fold: the learning
    # blends fit on half the OOF rows. The grouped split puts a class's paintings in folds of their own, so a
    # class of two or more is learnt in every inner fold at 5; a class of one (--allow-small-classes) in none.
    import ensemble.blend as blend
    seen, real = [], blend.cross_val_predict

    def spy(*args, cv, **kw):
        seen.append(cv.n_splits)
        for train, _ in cv.split(args[1], args[2], kw["groups"]):
            learnt = set(args[2][train])
            assert all(c in learnt for c in (0, 1, 2)), learnt  # the classes of 2 or more paintings
        return real(*args, cv=cv, **kw)
    monkeypatch.setattr(blend, "cross_val_predict", spy)
    rng = np.random.default_rng(4)
    for y in ([0] * 60 + [1] * 40 + [2] * 2 + [3], [0] * 60 + [1] * 38 + [2] * 3):
        y = np.repeat(y, 2)  # two crops a painting, grouped by painting
        X = members_to_X([rng.dirichlet(np.ones(4), len(y))])
        out = honest_oof(StackBlend("logreg"), X, y, np.repeat(np.arange(len(y) // 2), 2))
        assert out.shape == (len(y), 4)
    assert seen == [5, 5]



@pytest.mark.parametrize("method,offsets", [("stack", False), ("weighted", False), ("mean", True)])
def test_a_learning_blend_is_scored_on_an_oof_of_fewer_rows_a_class_than_inner_folds(method, offsets):
    """A build of one finished fold's whole-painting OOF (2 paintings a class, one row each) ended in
    scikit-learn's 'n_splits=5 cannot be greater than the number of members in each class'."""
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(5), 2)
    X = members_to_X([rng.dirichlet(np.ones(5), len(y))])
    out = honest_oof(make_blend(method, offsets=offsets), X, y, np.arange(len(y)))
    assert out.shape == (10, 5) and np.isfinite(out).all()
    with pytest.raises(UserError, match="hold one of each class"):  # nothing to score a fit on: said, not a traceback
        honest_oof(make_blend(method, offsets=offsets), X[::2], y[::2], np.arange(5))
    # under the log loss the offsets are a temperature, fit on a split of its own rows (3 a class: 2 in each fit)
    y = np.repeat(np.arange(5), 3)
    X = members_to_X([rng.dirichlet(np.ones(5), len(y))])
    out = honest_oof(make_blend(method, offsets=True, metric="neg_log_loss"), X, y, np.arange(len(y)))
    assert out.shape == (15, 5) and np.isfinite(out).all()

def test_weighted_blend_finds_the_better_run():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    good = np.eye(3)[y] * 0.6 + 0.4 * rng.dirichlet(np.ones(3), 300)
    bad = rng.dirichlet(np.ones(3), 300)
    w = WeightedBlend(n_members=2).fit(members_to_X([bad, good]), y).weights_
    assert w[1] > w[0]


def test_offsets_improve_macro_f1_for_an_underpredicted_class():
    rng = np.random.default_rng(3)
    y = np.array([0] * 200 + [1] * 20)
    p = np.column_stack([np.full(220, 0.6), np.full(220, 0.4)])
    p[200:, 1] += 0.08  # the small class is a bit more likely on its own rows, never argmax
    p[200:, 0] -= 0.08
    p += rng.normal(0, 0.01, p.shape)
    p = np.clip(p, 0.01, 1)
    p /= p.sum(1, keepdims=True)
    plain = macro_f1(y, p)
    tuned = macro_f1(y, honest_oof(make_blend("mean", offsets=True), p, y, np.arange(220)))
    assert tuned > plain + 0.2


def test_the_offset_search_equals_scoring_every_trial_in_full(capsys):
    """The search scores each trial from each row's two best classes; scoring argmax(logp + trial) over
    all columns must choose the same offsets, ties (quantised probabilities) included."""
    from benchmarks.speed import main as speed_main, offsets_in_full
    from ensemble.blend import DecisionOffsets, MergeBlend

    rng = np.random.default_rng(0)
    for n, k, quantised in ((600, 6, False), (2000, 20, False), *[(60, 4, True)] * 10):
        y = rng.integers(0, k, n)
        if quantised:  # rows of equal probabilities: argmax breaks the ties by the first class
            p = rng.integers(1, 3, (n, k)).astype(float)
        else:
            logits = rng.normal(0, 1, (n, k)) + np.eye(k)[y] + 0.8 * (np.arange(k) == 0)  # class 0 over-predicted
            p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        fitted = DecisionOffsets(MergeBlend("mean", 1)).fit(p, y)
        assert np.array_equal(fitted.offsets_, offsets_in_full(p, y, fitted.grid)), (n, k)
        assert quantised or fitted.offsets_.any()  # the search moved something where it should
    # the speed bench times the two against each other (WikiArt-50's size by default) and checks the same
    assert speed_main(["offsets", "--n-images", "500", "--classes", "8"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["same_offsets"] and row["rows"] == 500 and row["honest_score_s"] > 0


def test_mismatched_split_is_refused(two_runs, demo_source, capsys):
    assert run_main(tiny_args(demo_source, two_runs, **{"--split-seed": 7, "--name": "other", "--epochs": 1})) == 0
    assert build(two_runs, "s0", "other", method="stack", out=two_runs / "subs" / "no.csv") == 2
    err = capsys.readouterr().err
    # scikit-learn 1.6 and 1.9 group-split one seed differently: the saved split is what a second machine needs
    assert "another split" in err and "copy the first one's <runs>/splits/ into its runs folder" in err, err
    assert not (two_runs / "subs" / "no.csv").exists()
    # a soft vote across splits is allowed, without the leaking methods
    assert build(two_runs, "s0", "other", method="mean", out=two_runs / "subs" / "ok.csv", no_report=True) == 0
    assert "different splits" in capsys.readouterr().out


def test_other_class_set_and_missing_test_probs_are_refused(two_runs, tmp_path):
    for bad in ("classes", "test"):
        dst = tmp_path / bad
        shutil.copytree(two_runs / "runs" / "s1", dst)
        if bad == "classes":
            # as if trained on a train.csv where one painter has another name
            classes = json.loads((dst / "classes.json").read_text())
            (dst / "classes.json").write_text(json.dumps(["Zz Renamed", *classes[1:]]))
            for f in dst.rglob("*.csv"):
                f.write_text(f.read_text().replace(classes[0], "Zz Renamed"))
            with pytest.raises(UserError, match="other classes"):
                from ensemble.runs import check_compatible
                check_compatible([load_run(two_runs / "runs" / "s0"), load_run(dst)], True)
        else:
            (dst / "fold_2" / "test_probs.csv").unlink()
            with pytest.raises(UserError, match=r"fold_2/test_probs\.csv: test probabilities are missing"):
                load_run(dst)


def test_full_data_model_joins_the_soft_vote(two_runs, demo_source, capsys):
    # without one, the build names the command that trains it with the run's own options; run as given
    assert build(two_runs, "s0", method="mean", with_full=True, out=two_runs / "subs" / "full.csv") == 2
    command = shlex.split(capsys.readouterr().err.split("`")[1])
    assert command[:2] == ["python", "folds/run.py"] and command[-2:] == ["--fold", "full"]
    assert run_main(command[2:]) == 0
    epochs = [line for line in capsys.readouterr().out.splitlines()  # (a slow epoch's progress lines left out)
              if line.startswith("fold_full epoch ") and ": train_loss " in line]
    # it validates nothing: its epoch lines leave the validation out (they said 'val_loss nan val_f1 nan')
    assert epochs and all(" lr " in line and "nan" not in line and "val_" not in line for line in epochs), epochs
    done = json.loads((two_runs / "runs" / "s0" / "fold_full" / "done.json").read_text())
    best = [json.loads((two_runs / "runs" / "s0" / f"fold_{k}" / "done.json").read_text())["best_epoch"]
            for k in range(5)]
    assert done["epochs"] == int(np.median(best))
    assert build(two_runs, "s0", method="mean", with_full=True, out=two_runs / "subs" / "full.csv", no_report=True) == 0
    assert "cannot join" in build_parser().format_help() and "full-data models joined" in capsys.readouterr().out
    assert build(two_runs, "s1", method="mean", with_full=True, out=two_runs / "subs" / "f2.csv") == 2


def test_a_path_that_is_not_a_run_folder_names_the_run_folders_it_meant(tmp_path, capsys):
    """'runs/b3-sed0' (a typo) or 'runs' itself: the build, compare, predict, export and --pseudo said only 'not a
    run folder'; they name the run folders beside it, or in it. Written once: common.layout.check_run_folder."""
    from common.layout import check_run_folder
    from ensemble.compare import main as compare_main

    for name in ("b3-seed0", "b3-seed1"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
    (tmp_path / "runs" / "cache").mkdir()  # not a run
    assert check_run_folder(tmp_path / "runs" / "b3-seed0") == tmp_path / "runs" / "b3-seed0"
    assert compare_main([str(tmp_path / "runs" / "b3-sed0")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        f"b3-sed0: not a run folder (no config.json); the run folders in {tmp_path / 'runs'} are b3-seed0, b3-seed1.")
    with pytest.raises(UserError, match=r"^--pseudo .*runs: not a run folder .* it holds the run folders b3-seed0, "
                                        r"b3-seed1: pass those\.$"):
        check_run_folder(tmp_path / "runs", "--pseudo")
    with pytest.raises(UserError, match=r"x: not a run folder \(no config.json\); pass folders like runs/<name>\.$"):
        check_run_folder(tmp_path / "nowhere" / "x")


def test_invalid_submission_writes_nothing(tmp_path):
    sample = pd.DataFrame({"id": ["a", "b", "c"], "artist": ["x"] * 3})
    with pytest.raises(UserError, match=r"no prediction for sample_submission id\(s\) \['c'\]"):
        write_submission(tmp_path / "s.csv", ["a", "b"], np.eye(2), sample, ["x", "y"])
    per_class = pd.DataFrame({"id": ["a", "b", "c"], "x": 0.5, "z": 0.5})
    with pytest.raises(UserError, match=r"column\(s\) \['z'\] are not among the run's classes"):
        write_submission(tmp_path / "s.csv", ["a", "b", "c"], np.eye(3)[:, :2], per_class, ["x", "y"])
    with pytest.raises(UserError, match=r"not in train: \['z'\]"):
        validate_submission(sample.assign(artist=["x", "y", "z"]), sample, ["x", "y"])
    with pytest.raises(UserError, match=r"1 row\(s\) with a probability outside \[0, 1\], first at row 2"):
        validate_submission(per_class.assign(x=[0.5, 1.0, np.nan]), per_class, ["x", "z"])
    assert not (tmp_path / "s.csv").exists()


def test_blenders_are_scikit_learn_estimators():
    from sklearn.base import clone
    from sklearn.utils.validation import check_is_fitted
    for method in ("mean", "weighted", "stack"):
        for offsets in (False, True):
            b = make_blend(method, offsets=offsets, n_members=2)
            fresh = clone(b)
            assert fresh.get_params().keys() == b.get_params().keys()
            rng = np.random.default_rng(5)
            X = members_to_X([rng.dirichlet(np.ones(3), 60) for _ in range(2)])
            fitted = fresh.fit(X, rng.integers(0, 3, 60))
            check_is_fitted(fitted)
            assert fitted.predict_proba(X).shape == (60, 3)


def test_one_macro_f1_even_when_a_class_is_absent():
    from folds.engine import scores
    from sklearn.metrics import f1_score
    y = np.array([0, 0, 1, 1])  # class 2 of 3 is absent from these validation rows
    p = np.eye(3)[[0, 1, 1, 1]]
    assert scores(p, y)["f1"] == macro_f1(y, p) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))


def test_fast_macro_f1_equals_sklearn():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(4)
    for k in (2, 5, 50):
        y = rng.integers(0, k, 300)
        p = rng.dirichlet(np.ones(k), 300)
        p[:, 0] *= 0.01  # a class never predicted
        assert macro_f1(y, p) == pytest.approx(f1_score(y, p.argmax(1), average="macro"))


def test_class_prior_reads_a_runs_crop_oof(two_runs, capsys):
    """The sampler comparison's figures come from the run's crop OOF alone, and its F1 is the run's."""
    from benchmarks.class_prior import main as prior_main
    run = two_runs / "runs" / "s0"
    assert prior_main([str(run)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["crop_oof_f1"] == round(json.loads((run / "scores.json").read_text())["oof_crops"]["f1"], 4)
    assert len(row["per_fold"]) == 5 and 0 < row["smaller_half_true"] < 1
    assert 0 <= row["smaller_half_predicted"] <= 1 and 0 <= row["smaller_half_f1"] <= 1


def test_the_blend_timing_refuses_a_method_it_does_not_know_before_its_minutes(capsys):
    """blend_scale.py --methods mean,stak built the whole synthetic OOF, timed mean, then ended in a traceback."""
    from benchmarks.blend_scale import main as scale_main
    assert scale_main(["--methods", "mean,stak"]) == 2
    assert "--methods 'mean,stak'" in capsys.readouterr().err
    assert scale_main(["--paintings", "9", "--classes", "2", "--crops", "1"]) == 2  # a traceback in the inner CV
    assert "--paintings must be 5 x --classes (10) or more" in capsys.readouterr().err
    assert scale_main(["--paintings", "60", "--classes", "3", "--crops", "2", "--methods", "mean"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["method"] for r in rows] == ["mean", "mean+offsets"] and all(r["rows"] == 120 for r in rows)


@pytest.mark.parametrize("name,message", [
    ("os.system", "is not a classifier class"),  # was called, with a TypeError traceback
    ("sklearn.nope.Foo", "not a known short name"),
    ("sklearn.svm.SVC", "has no predict_proba"),  # probability=False by default
    ("sklearn.preprocessing.FunctionTransformer", "has no predict_proba"),
])
def test_a_stacker_that_is_not_a_probabilistic_classifier_is_refused_by_name(name, message):
    from ensemble.blend import make_estimator

    with pytest.raises(UserError, match=message):
        make_estimator(name)
    assert hasattr(make_estimator("sklearn.ensemble.ExtraTreesClassifier"), "predict_proba")


@pytest.mark.parametrize("name", ["macro_f1", "accuracy", "quadratic_kappa", "neg_log_loss"])
def test_every_metric_drawn_equals_the_metric_on_the_rows_repeated_as_drawn(name):
    from common.metrics import METRICS, painting_draws
    m = METRICS[name]
    rng = np.random.default_rng(3)
    groups = np.repeat([f"p{i}" for i in range(40)], 3)  # 40 paintings of 3 crops
    y = np.repeat(rng.integers(0, 6, 40), 3)
    pred = np.where(rng.random(len(y)) < 0.6, y, rng.integers(0, 7, len(y)))  # class 6: predicted, never true
    probs = rng.dirichlet(np.ones(7), len(y)) + 2 * np.eye(7)[pred]  # rows whose argmax is pred
    probs /= probs.sum(axis=1, keepdims=True)
    g, weights = painting_draws(groups, draws=50, seed=1)
    assert weights.shape == (50, 40) and (weights.sum(axis=1) == 40).all()
    drawn = m.drawn(y, probs, g, weights)
    for d in range(50):
        rows = np.repeat(np.arange(len(y)), weights[d, g].astype(int))
        assert drawn[d] == pytest.approx(m.score(y[rows], probs[rows]), abs=1e-12)
    assert m.drawn(y, probs, g, np.ones((1, 40)))[0] == pytest.approx(m.score(y, probs), abs=1e-12)
    if m.of_classes:  # a metric of the predicted class takes the classes too
        assert m.drawn(y, pred, g, weights[:1])[0] == drawn[0] and m.score(y, pred) == m.score(y, probs)
    assert set(METRICS) == {"macro_f1", "accuracy", "quadratic_kappa", "neg_log_loss"}  # a new one: add it above


def test_the_weights_and_offsets_are_fit_for_the_competition_metric():
    """Two goals that disagree: 10 rows of a small class and 15 of the big one share one probability, so
    predicting the small class there wins macro-F1 (0.47 -> 0.74) and loses accuracy (0.90 -> 0.85)."""
    from common.metrics import accuracy
    from ensemble.blend import DecisionOffsets, MergeBlend

    y = np.array([0] * 90 + [1] * 10)
    cautious = np.tile([0.9, 0.1], (100, 1))
    cautious[75:] = [0.55, 0.45]  # the 10 small-class rows and 15 big-class rows look alike
    bold = cautious[:, ::-1].copy()
    bold[:75] = [0.9, 0.1]  # the same rows, argmax the small class
    X = members_to_X([cautious, bold])
    for cls, kw in ((WeightedBlend, {"n_members": 2}), (DecisionOffsets, {"base": MergeBlend("mean", 2)})):
        fit = {m: cls(**kw, metric=m).fit(X, y).predict(X) for m in ("macro_f1", "accuracy")}
        assert accuracy(y, fit["accuracy"]) == 0.9 > accuracy(y, fit["macro_f1"]), cls
        assert macro_f1(y, fit["macro_f1"]) > 0.7 > macro_f1(y, fit["accuracy"]), cls
    weights = {m: StackBlend("logreg", 2, m).fit(X, y).model_["clf"].class_weight for m in ("macro_f1", "accuracy")}
    assert weights == {"macro_f1": "balanced", "accuracy": None}  # the stacker's class weights follow the metric


def test_a_task_scored_by_accuracy_is_trained_chosen_and_reported_by_accuracy(two_runs, demo_source, tmp_path,
                                                                               capsys):
    """--metric accuracy: each fold keeps the epoch of the best validation-crop accuracy, and the run's tables,
    the build's choice and compare.py lead with accuracy; runs of two metrics are built only with --metric."""
    from ensemble.compare import compare_runs
    from tuning.study import score_name

    assert run_main(tiny_args(demo_source, tmp_path, **{"--metric": "accuracy", "--name": "acc",
                                                         "--epochs": 3})) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "acc"
    scores = json.loads((run / "scores.json").read_text())
    assert f"crop-OOF accuracy {scores['oof_crops']['acc']:.4f}" in out and "val-crop accuracy" in out
    report = (tmp_path / "subs" / "acc_folds-mean_report.md").read_text()
    assert "| method | crop-OOF accuracy | crop-OOF macro-F1 | crop-OOF neg. log loss | note |" in report
    assert "| val accuracy |" in report
    for k in (0, 1, 2, 3, 4):
        done = json.loads((run / f"fold_{k}" / "done.json").read_text())
        history = pd.read_csv(run / f"fold_{k}" / "history.csv")
        assert (done["monitor"], done["metric"]) == ("crop-acc", "accuracy")
        # the CSV's last digit is the parser's (pandas 2 reads 0.9230769230769231 as ...232): to the 12th digit
        best = pytest.approx(done["best_score"], abs=1e-12)
        assert history["val_crop_acc"].max() == best and history["val_crop_acc"][done["best_epoch"] - 1] == best
    result = compare_runs([run], draws=100)
    assert result["metric"] == "accuracy" and result["rows"][0]["score"] == pytest.approx(scores["oof_crops"]["acc"])
    s0 = two_runs / "runs" / "s0"  # trained for macro-F1, on the same split
    assert build_main([str(s0), str(run), "--out", str(tmp_path / "two.csv"), "--no-report"]) == 2
    assert "different metrics" in capsys.readouterr().err
    assert build_main([str(s0), str(run), "--out", str(tmp_path / "two.csv"), "--no-report", "--metric",
                       "accuracy", "--method", "best"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"crop-OOF accuracy +macro-F1", out) and "highest honest crop-OOF accuracy" in out
    from ensemble.table import main as table_main  # the runs table: each row by its own metric, and it says so
    shutil.copytree(s0, tmp_path / "runs" / "s0")
    assert table_main([str(tmp_path / "runs"), "--out", str(tmp_path / "t.csv")]) == 0
    assert "trained for different metrics (accuracy: acc; macro_f1: s0)" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "t.csv").set_index("run")
    assert table.loc["acc", "crop_oof"] == pytest.approx(scores["oof_crops"]["acc"]) and "metric=accuracy" in \
        table.loc["acc", "settings"]
    assert score_name({"metric": "accuracy", "monitor": None, "crop": "test-scale", "val_crops": 2}) == \
        "validation-crop accuracy, mean over folds"
    from folds.config import recipe_warnings, resolve_config  # the strong preset keeps its checkpoints by crop-f1
    said = recipe_warnings(resolve_config({"metric": "accuracy", "data_dir": "d"}, "strong"))
    assert "--no-balanced-sampler" in said[0] and "--monitor crop-acc" in said[1]
    assert not recipe_warnings(resolve_config({"metric": "accuracy", "data_dir": "d", "balanced_sampler": False}))
    # the same folder under the default metric is another experiment: refused, naming the setting
    assert run_main(tiny_args(demo_source, tmp_path, **{"--name": "acc", "--epochs": 3})) == 2
    assert "metric" in capsys.readouterr().err


def test_a_holdout_run_is_compared_and_blended_with_a_k_fold_run_on_the_rows_both_hold(two_runs, demo_source,
                                                                                        tmp_path, capsys):
    # the mission's first comparison, the seed recipe's holdout run against the suite's 5 folds: compare.py and
    # the build stopped at "its OOF rows differ (other --crop-oof?)"
    from ensemble.compare import compare_runs, main as compare_main
    assert run_main(tiny_args(demo_source, tmp_path, **{"--holdout": True, "--crop": "whole", "--crop-oof": 3,
                                                        "--epochs": 1, "--name": "h"})) == 0
    s0, h = two_runs / "runs" / "s0", tmp_path / "runs" / "h"
    fold0 = pd.read_csv(s0 / "folds.csv", dtype={"id": str}).query("fold == 0")["id"]
    result = compare_runs([s0, h], draws=200)
    # fold 0's paintings, as the 2 crops each that both runs cut (crop i is one box, whatever the count)
    assert (result["n_paintings"], result["n_rows"]) == (len(fold0), 2 * len(fold0))
    assert "h is a holdout run, which validates fold 0 only" in result["common"]
    assert "the runs cut 3 and 2 crops a painting" in result["common"]
    assert compare_main([str(s0), str(h), "--draws", "200"]) == 0
    assert f"on {2 * len(fold0)} rows from {len(fold0)} paintings" in capsys.readouterr().out
    out = tmp_path / "sh.csv"
    assert build_main([str(s0), str(h), "--method", "best", "--neighbours", "off", "--out", str(out),
                       "--no-report"]) == 0
    assert "every run holds; each run's test probabilities are still the mean of all its folds" in \
        capsys.readouterr().out
    assert build_main([str(s0), str(h), "--method", "mean", "--offsets", "off", "--neighbours", "off",
                       "--out", str(out), "--no-report"]) == 0
    # the suite's run votes with its 5 folds' mean, not with fold 0 alone
    fold_mean = np.mean([probs_of(s0 / f"fold_{k}" / "test_probs.csv") for k in range(5)], axis=0)
    want = (fold_mean + probs_of(h / "fold_0" / "test_probs.csv")) / 2
    assert np.allclose(probs_of(tmp_path / "sh_probs.csv"), want / want.sum(1, keepdims=True), atol=1e-6)


def probs_of(path):
    df = pd.read_csv(path, dtype={"id": str}, keep_default_na=False).sort_values("id")
    return df.drop(columns=[c for c in ("id", "fold", "label") if c in df]).to_numpy(dtype=float)


def test_compare_gives_paired_intervals_and_repeats(two_runs, capsys):
    from ensemble.compare import compare_runs, main as compare_main
    s0, s1 = two_runs / "runs" / "s0", two_runs / "runs" / "s1"
    result = compare_runs([s0, s1, s0], draws=300)
    first, other, same = result["rows"]
    assert first["score"] == pytest.approx(json.loads((s0 / "scores.json").read_text())["oof_crops"]["f1"])
    assert first["interval"][0] <= first["score"] <= first["interval"][1]
    assert other["diff_interval"][0] <= other["diff"] <= other["diff_interval"][1]
    assert same["diff"] == 0 and same["diff_interval"] == (0, 0) and same["better"] == 0  # paired: the same draws
    assert compare_runs([s0, s1], draws=300)["rows"][1] == other  # seeded: it repeats
    assert compare_runs([s0, s1], oof="whole", draws=300)["n_rows"] == len(pd.read_csv(s0 / "oof.csv"))
    assert compare_main([str(s0), str(s1), "--draws", "300"]) == 0
    out = capsys.readouterr().out
    assert "90% intervals from 300 resamples of the paintings" in out and "% of draws" in out
    # the better of the two is picked on these paintings: it reads high by what the choice adds
    best = max(compare_runs([s0, s1], draws=300)["rows"], key=lambda r: r["score"])
    said = re.search(r"the best of these 2, (\S+), reads about \+([0-9.]+) high.*expect about ([0-9.]+)", out)
    assert said and said[1] == best["run"] and float(said[3]) == pytest.approx(best["score"] - float(said[2]),
                                                                               abs=2e-4)
    assert compare_runs([s0, s0], draws=300)["best_optimism"] == pytest.approx(0, abs=1e-12)  # no choice to make
    # each run's folds chose their best epochs on these paintings: by how much that reads each run high
    reads = [json.loads((r / "scores.json").read_text())["epoch_optimism"] for r in (s0, s1)]
    assert [r["epoch_optimism"] for r in (first, other)] == pytest.approx(reads)
    assert (f"note: each fold's best epoch was chosen on these paintings, which reads a run high by about {s0} "
            f"{reads[0]:+.4f}, {s1} {reads[1]:+.4f}") in out, out
    assert "epoch_optimism" not in compare_runs([s0, s1], oof="whole", draws=300)["rows"][0]  # chosen on the crops
    assert compare_main([str(s0), "--draws", "10"]) == 2 and "--draws 10" in capsys.readouterr().err
    assert compare_main([str(s0), "--seed", "-1"]) == 2 and "--seed -1" in capsys.readouterr().err  # numpy's traceback


def test_the_whole_painting_oof_builds_from_several_runs(two_runs, capsys):
    """One OOF row per id: the rows were aligned through a one-level MultiIndex, which pandas could not
    select by, and the build ended in a KeyError traceback."""
    assert build(two_runs, "s0", "s1", method="stack", oof="whole", out=two_runs / "subs" / "whole.csv",
                 no_report=True) == 0
    printed = capsys.readouterr().out
    assert "stack" in printed and re.search(r"^method +whole-painting OOF macro-F1 +accuracy", printed, re.M)


def test_the_runs_table_ranks_by_crop_oof_and_finishes_what_is_unfinished(two_runs, demo_source, tmp_path, capsys):
    import os
    import shlex
    import shutil
    import socket
    import time

    from ensemble.table import main as table_main
    shutil.copytree(two_runs / "runs", tmp_path / "runs")
    assert run_main(tiny_args(demo_source, tmp_path, **{"--name": "u", "--epochs": 1, "--fold": "0",
                                                        "--lr": 0.003})) == 0
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "config.json").write_text("{not json")  # a hand-edited or half-copied run
    capsys.readouterr()
    out = tmp_path / "table.csv"
    assert table_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(out, dtype={"run": str, "split": str}, keep_default_na=False)
    assert list(table["run"][:2]) == sorted(["s0", "s1"], key=lambda r: -json.loads(
        (two_runs / "runs" / r / "scores.json").read_text())["oof_crops"]["f1"])  # the better crop-OOF first
    u = table.set_index("run").loc["u"]
    assert u["folds"] == "1/5" and u["status"] == "unfinished" and "lr=0.003" in u["settings"]
    # a preset's run is named by its preset, with what it changed, not by a dozen settings against the defaults
    assert u["settings"].startswith("preset=demo ") and "weights=" not in u["settings"]  # the demo preset's
    from ensemble.table import differences
    from folds.config import resolve_config
    strong = resolve_config({"data_dir": "d", "epochs": 20}, "strong")
    assert differences(strong) == "preset=strong epochs=20" and differences(resolve_config({"data_dir": "d"})) == ""
    assert float(u["crop_oof"]) == json.loads((tmp_path / "runs" / "u" / "fold_0" / "done.json").read_text())[
        "crop_oof"]["f1"]  # the finished fold's score, marked as partial in the text
    assert list(table["img"][:3]) == ["32", "32", "32"] and " 32.0 " not in text  # the sizes stay whole numbers
    # how high each run's crop-OOF reads, its folds' best epochs chosen on those paintings; none after one epoch
    s0 = table.set_index("run").loc["s0", "epoch_choice"]
    assert float(s0) == pytest.approx(json.loads((two_runs / "runs" / "s0" / "scores.json").read_text())[
        "epoch_optimism"]) and u["epoch_choice"] == ""
    assert f"{float(s0):+.4f}" in next(r for r in text.splitlines() if r.startswith("s0 "))
    head, *rows = text.splitlines()
    at = head.index("settings")  # each column under its name: a long settings cell pushed short ones far right
    u_row = next((r for r in rows if r.startswith("u ")), "")  # names read from the left too
    assert u_row[at:].split()[0] == u["settings"].split()[0] and u_row[at - 1] == " "
    assert table.set_index("run").loc["broken", "status"].startswith(
        f"damaged ({tmp_path / 'runs' / 'broken' / 'config.json'}: not valid JSON (")
    assert table["split"].iloc[0] == table["split"].iloc[1] == u["split"]  # one split: they can be stacked
    command = next(line.strip() for line in text.splitlines() if line.strip().startswith("python folds/run.py"))
    assert "--name u --fold 1,2,3,4 --resume" in command
    # a fold a live process holds is shown as training, with no command to start it twice
    lock = tmp_path / "runs" / "u" / "fold_1" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))
    assert table_main([str(tmp_path / "runs")]) == 0
    text = capsys.readouterr().out
    assert "training fold 1 (" in text and "--name u" not in text and "silent" not in text
    # one that has missed its beats (a Colab session that ended) says so, until its lock may be taken over
    lock.write_text(json.dumps({"host": "colab-vm-that-ended", "pid": 7, "beat": 30}))
    os.utime(lock, (time.time() - 420, time.time() - 420))
    assert table_main([str(tmp_path / "runs")]) == 0
    assert "training fold 1 (colab-vm-that-ended:7, silent 7 of 10 min)" in capsys.readouterr().out
    lock.unlink()
    assert run_main(shlex.split(command)[2:] + ["-q"]) == 0  # the printed command finishes the run
    assert table_main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    table = pd.read_csv(out, dtype={"run": str, "split": str}, keep_default_na=False).set_index("run")
    assert table.loc["u", "folds"] == "5/5" and table.loc["u", "status"] == "done"
    assert table_main([str(tmp_path / "nowhere")]) == 2 and "not a folder" in capsys.readouterr().err
