"""The run folder, described once: both the fold runner (writer) and the ensemble (reader) use it.

    <runs_dir>/<name>/
        config.json  classes.json  manifest.json  folds.csv  scores.json
        oof.csv  oof_crops.csv                 the folds' OOF files, joined
        fold_<k>/ fold_full/                   one folder per fold, and the full-data model
            history.csv  val_epochs.npz  best.pt  last.pt  oof.csv  oof_crops.csv  test_probs.csv  done.json
    tuning/<study>/trials/trial_NNNN/fold_<k>/   a study's trial: history.csv, val_epochs.npz

A fold is finished exactly when its ``done.json`` exists (written last). Probability frames
have metadata columns first (``id`` always), then one column per class; ids are always read
as strings, so ids such as ``NA`` or ``null`` survive a round trip.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd

from common.errors import UserError

CONFIG, CLASSES, MANIFEST, FOLDS, SCORES = "config.json", "classes.json", "manifest.json", "folds.csv", "scores.json"
OOF, OOF_CROPS, TEST_PROBS = "oof.csv", "oof_crops.csv", "test_probs.csv"
HISTORY, BEST, LAST, DONE, LOCK = "history.csv", "best.pt", "last.pt", "done.json", "lock"
BEST_EXPORTED = "best.safetensors"  # the best weights in an export folder (no pickle at all)
EXPORT = "export.json"  # marks an export folder: its runs under runs/, the fitted blend beside it
BEST_PARAMS = "best.json"  # in a study's folder, tuning/<study>/: its best parameters over its training setup
# in a fold's (and a study trial's fold's) folder: every epoch's validation rows the monitor followed, and the best
# epoch; the read-downs of choosing that epoch (a fold's epoch_optimism) and the best trial (a study's) come from it
VAL_EPOCHS = "val_epochs.npz"
FULL = "full"  # the full-data model's fold name
# Everything a fold writes: --force removes these before it retrains.
FOLD_FILES = (DONE, LAST, BEST, HISTORY, VAL_EPOCHS, OOF, OOF_CROPS, TEST_PROBS)
OOF_FILES = {"whole": OOF, "crops": OOF_CROPS}
STRING_COLUMNS = ("id", "label", "artist", "split_key")
# The columns a probability table holds besides one per class (``prob_frame``'s keywords): no class may
# take one of these names, or its probabilities would overwrite them.
META_COLUMNS = frozenset({"id", "fold", "label", "crop", *STRING_COLUMNS})


def run_dir(runs_dir, name: str) -> Path:
    return Path(runs_dir) / name


def run_folders(folder) -> list[str]:
    """The names of the run folders in ``folder`` (each holds a config.json), sorted."""
    folder = Path(folder)
    return sorted(p.name for p in folder.iterdir() if (p / CONFIG).is_file()) if folder.is_dir() else []


def check_run_folder(path, option: str = "") -> Path:
    """``path``, where it is a run folder (it holds config.json); else a clear error (``option``: the option that
    named it), with the run folders it holds (runs/ itself was given) or those beside it (a typo)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path
    inside, beside = run_folders(path), run_folders(path.parent)
    hint = (f"it holds the run folders {', '.join(inside[:10])}: pass those" if inside else
            f"the run folders in {path.parent} are {', '.join(beside[:10])}" if beside else
            "pass folders like runs/<name>")
    raise UserError(f"{option + ' ' if option else ''}{path}: not a run folder (no {CONFIG}); {hint}.")


def fold_dir(run: Path, k) -> Path:
    return Path(run) / f"fold_{k}"


def fold_name(fold_folder: Path) -> str:
    """'2' for .../fold_2, 'full' for .../fold_full."""
    return Path(fold_folder).name.removeprefix("fold_")


def fold_command(run: Path, folds: str, *flags: str) -> str:
    """The fold runner's command that trains ``folds`` of ``run`` with the run's own saved options (its
    data folder and recipe, which a person may not remember), wherever the folder now is."""
    run = Path(run)
    return shlex.join(["python", "folds/run.py", "--config", str(run / CONFIG), "--runs-dir", str(run.parent),
                       "--name", run.name, "--fold", folds, *flags])


def predict_test_again(run: Path, folds: str = "all") -> str:
    """The command that brings ``folds`` of ``run`` up to the test set as it is now, said the same way in every
    message that finds their test probabilities missing or stale: their best weights predict it again."""
    return (f"`{fold_command(run, folds, '--resume')}` predicts the test again with the finished folds' best "
            "weights (nothing is trained again)")


def planned_folds(config) -> list[int]:
    """The folds a run trains: fold 0 only for a holdout run, else all K. ``config``: a RunConfig or its dict."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key)
    return [0] if get("holdout") else list(range(int(get("n_folds"))))


def is_done(run: Path, k) -> bool:
    return (fold_dir(run, k) / DONE).is_file()


def check_fold_source(run, option: str, classes, split_hash: str, folds, takes: str) -> Path:
    """A run whose fold k another run's fold k draws on (``--pseudo``, ``--init-from``): a run folder of the same
    classes and split, with ``folds`` finished. ``takes``: what fold k draws, for the split's message."""
    run = check_run_folder(run, option)
    if read_json(run / CLASSES) != list(classes):
        raise UserError(f"{option} {run}: trained on other classes than this run's train.csv.")
    theirs = read_json(run / MANIFEST).get("split_hash")
    if theirs != split_hash:
        raise UserError(f"{option} {run}: made on another split (split hash {theirs} != {split_hash}). Fold k may "
                        f"only {takes} of the same split, or its validation paintings leak in; use the same "
                        "--n-folds, --split-seed and --groups as that run.")
    missing = [k for k in folds if not is_done(run, k)]
    if missing:
        what, them = ("its full-data model is", "it") if missing == [FULL] else (f"folds {missing} are", "them")
        raise UserError(f"{option} {run}: {what} not finished; finish {them} first with "
                        f"`{fold_command(run, ','.join(map(str, missing)), '--resume')}`.")
    return run


def has_started(run: Path) -> bool:
    """Whether any fold of ``run`` has trained at least one epoch (or is finished)."""
    return any((d / f).exists() for d in Path(run).glob("fold_*") for f in (DONE, LAST, BEST, HISTORY))


def read_json(path):
    """One of a run folder's JSON files (config.json, classes.json, manifest.json, done.json ...). This tool
    writes each whole; a hand edit or a copy cut short is a one-line error that names the file, not a traceback."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing from its run folder (a copy that left it out?); copy the folder again "
                        "whole.") from None
    except ValueError as e:  # invalid JSON, or not UTF-8
        raise UserError(f"{path}: not valid JSON ({e}); this tool writes it whole, so a hand edit or a copy cut "
                        "short damaged it. Restore it from a copy of the run folder.") from None


def read_frame(path, **kwargs) -> pd.DataFrame:
    """Read a CSV the run folder wrote: ids, labels and keys as strings, nothing read as missing."""
    kwargs.setdefault("keep_default_na", False)
    head = pd.read_csv(path, nrows=0).columns
    dtype = {c: str for c in STRING_COLUMNS if c in head}
    return pd.read_csv(path, dtype=dtype, **kwargs)


def read_probs(path, classes) -> pd.DataFrame:
    """A probability table the run folder wrote (``prob_frame``), checked: a column for every class,
    and every row finite. One NaN row turns every soft vote or pseudo-label it joins into NaN, whose
    argmax is the first class."""
    df = read_frame(path)
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise UserError(f"{path}: no probability column for class(es) {missing[:5]} of classes.json; "
                        "the run folder is inconsistent (rerun the fold with --force).")
    values = df[list(classes)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} line {row + 2}: probabilities that are empty or not finite (id "
                        f"{df['id'].iloc[row]!r}; {int(bad.sum())} row(s) in all). The file is damaged, or its "
                        "model diverged: rerun that fold with --force.")
    return df


def prob_frame(probs: np.ndarray, classes, **cols) -> pd.DataFrame:
    """Metadata columns first, then one probability column per class."""
    if not set(cols) <= META_COLUMNS or META_COLUMNS.intersection(classes):  # load_dataset refuses such classes
        raise ValueError(f"metadata columns {sorted(cols)} must be among {sorted(META_COLUMNS)}, and no class")
    df = pd.DataFrame(cols)
    return pd.concat([df, pd.DataFrame(np.asarray(probs), columns=list(classes))], axis=1)
