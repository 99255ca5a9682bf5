"""Read run folders written by the fold runner: OOF, crop OOF and per-fold test probabilities.

The folder's layout comes from ``common.layout``; this never imports training code.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, layout
from common.metrics import DEFAULT_METRIC, get_metric
from ensemble.merge import merge

OOF_KINDS = ("auto", "crops", "whole")  # --oof of the build and compare.py
OOF_NAMES = {"crops": "crop-OOF", "whole": "whole-painting OOF"}  # what a score on each is called


@dataclass
class RunOutputs:
    """One run's predictions, rows aligned to its OOF file."""

    path: Path
    config: dict
    classes: list
    split_hash: str
    oof: pd.DataFrame  # id, [crop], fold, label, <classes>
    test_ids: np.ndarray
    fold_test: dict  # fold -> (n_test, K) probabilities
    full_test: np.ndarray | None = None  # the --fold full model, if trained
    fold_scores: dict = field(default_factory=dict)
    planned: list = field(default_factory=list)  # the run's folds; fold_test holds them all, or its finished ones
    data_path: str | None = None  # the data folder's absolute path when the run was made (its manifest)

    @property
    def folds(self) -> list:
        return list(self.fold_test)

    def restricted(self, folds) -> "RunOutputs":
        """The run as if only ``folds`` were trained: their OOF rows and test probabilities."""
        return replace(self, oof=self.oof[self.oof["fold"].isin(folds)].reset_index(drop=True),
                       fold_test={k: self.fold_test[k] for k in folds},
                       fold_scores={k: v for k, v in self.fold_scores.items() if k in folds})

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def data_dir(self) -> Path:
        return run_data_dir(self.path, self.config, self.data_path)

    @property
    def oof_probs(self) -> np.ndarray:
        return self.oof[self.classes].to_numpy(dtype=np.float64)

    def test_probs(self, with_full: bool = False) -> np.ndarray:
        """The fold mean of the test probabilities; the full-data model joins as one more member."""
        members = list(self.fold_test.values()) + ([self.full_test] if with_full and self.full_test is not None else [])
        return merge(np.stack(members), "mean")


def run_data_dir(path: Path, config: dict, data_path: str | None) -> Path:
    """The data folder of the run at ``path`` (its ``config``; ``data_path``: the absolute one its manifest keeps).
    A relative --data-dir is relative to the folder the run was started in: with a relative --runs-dir too,
    that is this run folder less its --runs-dir and name, so a build started in another folder still finds
    the data (its sample submission, and the images the neighbour smoothing reads). A run folder moved since
    finds it where the run read it."""
    typed = Path(config["data_dir"])
    if typed.is_absolute():
        return typed
    # both before the working folder's own: another project's data/ there would be the wrong data
    found = []
    runs_dir = Path(config["runs_dir"]) if config.get("runs_dir") is not None else None
    if runs_dir is not None and not runs_dir.is_absolute() and ".." not in runs_dir.parts:
        parents = Path(path).resolve().parents  # <started in>/<runs_dir>/<name>, unless the folder was moved
        if len(parents) > len(runs_dir.parts):
            found.append(parents[len(runs_dir.parts)] / typed)
    if data_path:
        found.append(Path(data_path))
    return next((p for p in found if p.is_dir()), typed)


def check_data_dir(data_dir) -> None:
    """``--data-dir``, where given, is a folder (a typo would otherwise read as data that is not here)."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir}: not a folder.")


def resolve_oof(oof: str, first_run, option: str = "--oof", data_dir=None) -> tuple[str, str | None]:
    """``--oof``, with auto resolved from the first run: its whole-painting OOF where the test images look whole
    or it has no crop OOF, else its crop OOF; and a note, naming ``option``, when auto chose the whole-painting
    OOF for the test images' sake, or could not look at them (the data folder is not on this machine).
    ``data_dir``: the run's data folder where it has moved (else the run's own)."""
    if oof != "auto":
        return oof, None
    from folds.data import TEST_CSV
    from folds.scale_check import data_area_share, looks_whole

    first_run = Path(first_run)
    try:
        config = layout.read_json(first_run / layout.CONFIG)
        manifest = layout.read_json(first_run / layout.MANIFEST)
    except (OSError, UserError):  # (read_json names a damaged or missing file)
        return "crops", None  # load_run names what is wrong with the folder
    if not config.get("crop_oof", 1):
        return "whole", None  # a run made with --crop-oof 0 has no other
    folder = Path(data_dir or run_data_dir(first_run, config, manifest.get("data_path")))
    if not (folder / TEST_CSV).is_file():  # run folders taken to another machine, the data elsewhere
        return "crops", (f"{option} auto: the runs' data folder {folder} is not here, so the crop OOF is used; "
                         f"{'--data-dir names where it is, or ' if option == '--oof' else ''}{option} whole "
                         "chooses the whole-painting OOF (for a task whose test images are whole)")
    share = data_area_share(folder)
    if not looks_whole(share):
        return "crops", None
    return "whole", (f"{option} auto: the test images look whole (their median area is {share:.0%} of a train "
                     "image's, where Dacon's crops have 25%), so the whole-painting OOF is used")


def check_distinct(run_paths) -> None:
    """Each run folder once: a folder given twice (a shell glob beside its own name, or ``runs/a`` and
    ``./runs/a/``) would count twice in every vote and blend."""
    seen = {}
    for path in run_paths:
        key = Path(path).resolve()
        if key in seen:
            raise UserError(f"{path}: this run folder is given twice (also as {seen[key]}); an ensemble counts "
                            "each run once, so give it once.")
        seen[key] = path


def load_run(path, oof: str = "crops", finished_folds: bool = False) -> RunOutputs:
    """Load a finished run; ``oof`` picks the crop OOF ('crops') or the whole-image OOF ('whole').
    ``finished_folds``: a run with folds still to train gives its finished folds (their OOF rows, the mean of
    their models on the test), for a submission before the rest are done."""
    path = Path(path)
    layout.check_run_folder(path)
    config = layout.read_json(path / layout.CONFIG)
    classes = layout.read_json(path / layout.CLASSES)
    manifest = layout.read_json(path / layout.MANIFEST)
    planned = layout.planned_folds(config)
    unfinished = [k for k in planned if not layout.is_done(path, k)]
    finish = f"`{layout.fold_command(path, ','.join(map(str, unfinished)), '--resume')}`"
    if unfinished and not finished_folds:
        raise UserError(f"{path}: folds {unfinished} are not finished; finish them with {finish} (with "
                        "--finished-folds, ensemble/build.py and compare.py use the finished ones now).")
    folds = [k for k in planned if k not in unfinished]
    if not folds:
        raise UserError(f"{path}: no fold is finished yet; train one with {finish}.")
    fname = layout.OOF_FILES[oof]
    # a finished run's OOF is its folds' files joined; a run with folds to go has only its folds' own
    parts = [path / fname] if not unfinished else [layout.fold_dir(path, k) / fname for k in folds]
    lacking = [p for p in parts if not p.is_file()]
    if lacking:
        raise UserError(f"{lacking[0]} is missing" + (" (the run was made with --crop-oof 0); use --oof whole."
                                                       if oof == "crops" else "."))
    df = pd.concat([layout.read_probs(p, classes) for p in parts], ignore_index=True)
    fold_test, ids = {}, None
    for k in folds:
        f = layout.fold_dir(path, k) / layout.TEST_PROBS
        if not f.is_file():
            raise UserError(f"{f}: test probabilities are missing; {layout.predict_test_again(path, str(k))}.")
        t = layout.read_probs(f, classes)
        if ids is None:
            ids = t["id"].to_numpy()
        elif not np.array_equal(ids, t["id"].to_numpy()):
            raise UserError(f"{f}: test ids differ from fold {folds[0]}'s: test.csv changed between them. "
                            f"{layout.predict_test_again(path)}.")
        fold_test[k] = t[classes].to_numpy(dtype=np.float64)
    full = layout.fold_dir(path, layout.FULL) / layout.TEST_PROBS
    full_test = None
    if full.is_file():
        t = layout.read_probs(full, classes)
        full_test = t.set_index("id").loc[ids, classes].to_numpy(dtype=np.float64)
    scores = {k: layout.read_json(layout.fold_dir(path, k) / layout.DONE) for k in folds}
    return RunOutputs(path, config, classes, manifest["split_hash"], df, ids, fold_test, full_test, scores, planned,
                      manifest.get("data_path"))


def finished_in_every_run(runs: list[RunOutputs]) -> tuple[list[RunOutputs], str | None]:
    """Runs with folds still to train, cut to the folds finished in all of them (their OOF rows must be the
    same paintings), and a note that says what the build is made of; finished runs come back as they are."""
    if all(r.folds == r.planned for r in runs):
        return runs, None
    if len({r.split_hash for r in runs}) > 1:
        raise UserError("--finished-folds: the runs use different splits, so their finished folds hold different "
                        "paintings; finish them, or build from each alone.")
    common = [k for k in runs[0].folds if all(k in r.folds for r in runs)]
    if not common:
        raise UserError("--finished-folds: no fold is finished in every run ("
                        + "; ".join(f"{r.name}: {r.folds}" for r in runs) + "); finish one in each.")
    runs = [r.restricted(common) for r in runs]
    paintings = runs[0].oof["id"].nunique()
    return runs, (f"made of the finished folds {common} of {len(runs[0].planned)} (--finished-folds): the OOF "
                  f"holds their {paintings:,} validation paintings, and a run's test probabilities are the mean of "
                  f"those {len(common)} fold model(s)")


def validated_by_every_run(runs: list[RunOutputs]) -> tuple[list[RunOutputs], str | None]:
    """Runs whose OOF holds other rows are compared on the rows they share, and a note says so: a holdout run
    (``--holdout``, ``--preset seed``) validates fold 0 only, and a run with a smaller ``--crop-oof`` cuts
    fewer crops (crop ``i`` of a painting is the same box in every run, whatever its count). Each OOF row is
    still a model's prediction of a painting it never saw, so the rows stay honest; a run's test probabilities
    stay its own fold mean, all its folds'."""
    keys = [c for c in ("id", "crop") if c in runs[0].oof]
    rows = [pd.MultiIndex.from_frame(r.oof[keys].astype(str)) for r in runs]
    if all(len(r) == len(rows[0]) and r.sort_values().equals(rows[0].sort_values()) for r in rows[1:]):
        return runs, None
    common = rows[0]
    for r in rows[1:]:
        common = common.intersection(r)
    counts = "; ".join(f"{run.name}: {len(r):,} rows, {run.oof['id'].nunique():,} paintings"
                       for run, r in zip(runs, rows))
    if not len(common):
        raise UserError(f"no OOF row is in every run's OOF ({counts}), so they cannot be compared or blended on it. "
                        "Use runs on one split (the default --n-folds and --split-seed share it).")
    runs = [replace(run, oof=run.oof[r.isin(common)].reset_index(drop=True)) for run, r in zip(runs, rows)]
    why = [f"{run.name} is a holdout run, which validates fold 0 only" for run in runs if run.config.get("holdout")]
    crops = {run.config.get("crop_oof") for run in runs} - {None, 0} if "crop" in keys else set()
    if len(crops) > 1:
        why.append(f"the runs cut {' and '.join(map(str, sorted(crops, reverse=True)))} crops a painting (--crop-oof): "
                   f"the first {min(crops)} are the same boxes in each")
    return runs, (f"the runs' OOF rows differ ({counts}{'; ' if why else ''}{'; '.join(why)}): the OOF scores and "
                  f"any fit use the {len(common):,} rows of {runs[0].oof['id'].nunique():,} paintings every run holds; "
                  "each run's test probabilities are still the mean of all its folds")


def check_test_set_unchanged(runs: list[RunOutputs], data_dir, given: bool = False) -> None:
    """Refuse test probabilities that a fold made for other ids or images than the data folder's test set holds
    now (a corrected release; or, ``given``, a ``--data-dir`` that is not the runs' data): the submission would
    be silently wrong, or fail at its last step. Nothing to compare with when the data is not at hand (run
    folders copied without it), or for folds from before the hash."""
    from folds.data import TEST_CSV, images_hash, read_test_set

    try:
        test = read_test_set(data_dir)[0]
        now = images_hash(test)
    except (UserError, OSError):
        return
    ids = set(test["id"].astype(str))
    for r in runs:
        predicted = set(map(str, r.test_ids))
        if predicted != ids:
            raise UserError(f"{Path(data_dir) / TEST_CSV} holds other ids than {r.path}'s folds predicted "
                            f"({len(predicted & ids):,} of their {len(predicted):,} are in it, of its {len(ids):,}): "
                            + ("is --data-dir the folder the runs were trained on?" if given
                               else f"{TEST_CSV} changed since; {layout.predict_test_again(r.path)}."))
        full = layout.fold_dir(r.path, layout.FULL) / layout.DONE
        dones = {**r.fold_scores, **({layout.FULL: layout.read_json(full)} if full.is_file() else {})}
        for k, done in dones.items():
            if done.get("test_hash") not in (None, now):
                raise UserError(f"{layout.fold_dir(r.path, k)}: its test probabilities are for other images than "
                                f"{data_dir}'s test set holds now under the same ids; "
                                f"{layout.predict_test_again(r.path)}.")


def check_compatible(runs: list[RunOutputs], need_same_split: bool) -> list[RunOutputs]:
    """Same classes, same test ids, same OOF rows; and one split when OOF is used to fit.

    Returns the runs with OOF rows and test rows in the first run's order (the inputs are untouched).
    """
    first = runs[0]
    for r in runs[1:]:
        if r.classes != first.classes:
            extra = sorted(set(r.classes) ^ set(first.classes))[:5]
            raise UserError(f"{r.path} has other classes than {first.path} (differing: {extra}); runs must be "
                            "trained on the same train.csv.")
        if not np.array_equal(np.sort(r.test_ids), np.sort(first.test_ids)):
            raise UserError(f"{r.path}: test ids differ from {first.path}'s.")
        if need_same_split and r.split_hash != first.split_hash:
            raise UserError(f"{r.path} was trained on another split than {first.path} (split hash {r.split_hash} "
                            f"!= {first.split_hash}). Fitting weights or a stacker across different folds leaks "
                            "validation rows into training. Rerun with the same --n-folds, --split-seed and --groups "
                            "(the default shares them; with --groups, two scikit-learn versions split one seed "
                            "differently, so on a second machine copy the first one's <runs>/splits/ into its runs "
                            "folder before it trains), or use --method mean/gmean/vote.")
    keys = [c for c in ("id", "crop") if c in first.oof]  # the whole-painting OOF has one row per id
    order = first.oof.set_index(keys).index  # a MultiIndex of one level would not select rows by id
    aligned = [first]
    for r in runs[1:]:
        rows = r.oof.set_index(keys).index
        if len(rows) != len(order) or not rows.sort_values().equals(order.sort_values()):
            raise UserError(f"{r.path}: its OOF rows differ from {first.path}'s (other --crop-oof?).")
        pos = pd.Series(np.arange(len(r.test_ids)), index=r.test_ids).loc[first.test_ids].to_numpy()
        aligned.append(replace(
            r, oof=r.oof.set_index(rows).loc[order].reset_index(drop=True), test_ids=first.test_ids,
            fold_test={k: v[pos] for k, v in r.fold_test.items()},
            full_test=None if r.full_test is None else r.full_test[pos]))
    return aligned


def resolve_metric(runs: list[RunOutputs], metric: str | None = None, option: str = "--metric") -> str:
    """``metric`` (checked), or the one the runs were trained for (``--metric``; a run from before it was
    scored by macro-F1). Runs trained for different metrics are refused unless one is named: the choice
    would otherwise follow whichever run came first."""
    if metric is not None:
        get_metric(metric, option)
        return metric
    own = {r.name: r.config.get("metric", DEFAULT_METRIC) for r in runs}
    for r in runs:  # a hand-edited config.json: named as the file it came from
        get_metric(own[r.name], f"{r.path / layout.CONFIG}: metric")
    if len(set(own.values())) > 1:
        raise UserError(f"the runs were trained for different metrics ({own}); name the one that chooses and "
                        f"scores with {option} NAME.")
    return next(iter(own.values()))
