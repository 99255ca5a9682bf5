"""A run folder's own files, and its one recipe: the split, config.json, classes.json and the manifest are
written once, and a process with other learning settings is refused once a fold has started (or while another
process trains one), so one folder never mixes two recipes."""
from __future__ import annotations

import logging
from pathlib import Path

from common import UserError, layout, write_json
from folds import distributed
from folds.config import RunConfig, learning_settings, saved_config
from folds.lock import FoldLock
from folds.manifest import make_manifest, package_changes
from folds.prepare import PreparedRun, split_store
from folds.split import save_folds

log = logging.getLogger(__name__)


def changed_settings(run_dir: Path, cfg: RunConfig) -> str | None:
    """The learning settings of ``cfg`` that differ from the run folder's config.json ("lr: 0.001 -> 0.01"),
    or None (none differ, or the folder has no config yet)."""
    if not (run_dir / layout.CONFIG).is_file():
        return None
    # a setting newer than the folder counts as its default there (it did not exist, so it was off), or
    # as what the folder did where the default is on
    old = saved_config(run_dir).to_dict()
    diff = {k: (old.get(k), v) for k, v in learning_settings(cfg).items() if old.get(k) != v}
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()) or None


def folds_in_training(run_dir: Path) -> list[str]:
    """The folds of ``run_dir`` whose lock a live process holds (training, maybe before its first epoch ends)."""
    return [d.name for d in sorted(Path(run_dir).glob("fold_*")) if FoldLock(d / layout.LOCK).holder() is not None]


def check_settings(run_dir: Path, cfg: RunConfig, apply: bool = True) -> bool:
    """Refuse changed settings once a fold has trained or is training; a folder that never started takes new
    ones, and its saved split is stale then (True: removed, or with ``apply=False`` left as it is)."""
    shown = changed_settings(run_dir, cfg)
    if shown is None:
        return False
    if layout.has_started(run_dir):
        raise UserError(f"{run_dir} was made with other settings ({shown}). Its folds were trained with "
                        "the old ones: use a new --name for the new settings, or delete the folder; "
                        f"`{layout.fold_command(run_dir, 'all', '--resume')}` goes on with the folder's own.")
    training = folds_in_training(run_dir)
    if training:
        raise UserError(f"{run_dir} was made with other settings ({shown}), and another process is training "
                        f"{', '.join(training)} with the old ones: use a new --name for the new settings.")
    log.info("%s: no fold has started yet, so it takes the new settings (%s).", run_dir, shown)
    if apply:
        (run_dir / layout.FOLDS).unlink(missing_ok=True)  # the split may change with them
    return True


def settings_kept(run_dir: Path, cfg: RunConfig, k) -> None:
    """Before a fold trains and after each of its epochs: the run folder's settings are still this process's.
    Another process started at nearly the same time with other settings on the same --name may have rewritten
    config.json (and the split) while this one prepared; its folds and these would mix two recipes in one run."""
    shown = distributed.agree(changed_settings(run_dir, cfg) if distributed.is_main() else None)
    if shown:
        raise UserError(f"fold {k}: another process rewrote {run_dir / layout.CONFIG} with other settings while "
                        f"this one ran (the folder's -> this process's: {shown}): one run folder holds one recipe. "
                        "This process stops; give one of the two a new --name.")


def check_classes(run_dir: Path, prep: PreparedRun) -> None:
    saved = run_dir / layout.CLASSES
    if saved.is_file() and layout.has_started(run_dir) and layout.read_json(saved) != prep.ds.classes:
        raise UserError(f"{saved} differs from the classes in {prep.cfg.data_dir}/train.csv.")


def package_note(run_dir: Path) -> str | None:
    """Where a run already has folds, trained under its manifest's package versions, and this process runs others
    (the next Kaggle image, another machine), a line that says so: its folds are used as one run."""
    manifest = run_dir / layout.MANIFEST
    if not (manifest.is_file() and layout.has_started(run_dir)):
        return None
    diff = package_changes(layout.read_json(manifest).get("packages") or {})
    if not diff:
        return None
    return (f"{run_dir.name}: its first folds were trained with other package versions ({'; '.join(diff)}); folds "
            "trained now may differ from them (a model's layers or an augmentation can change between versions). "
            "Each finished fold's done.json says what trained it.")


def write_run_files(run_dir: Path, prep: PreparedRun) -> None:
    save_folds(run_dir / layout.FOLDS, prep.folds, prep.split_key, split_store(prep.cfg))
    write_json(run_dir / layout.CONFIG, prep.cfg.to_dict())
    write_json(run_dir / layout.CLASSES, prep.ds.classes)
    manifest = run_dir / layout.MANIFEST
    if not manifest.is_file() or not layout.has_started(run_dir):
        write_json(manifest, make_manifest(data_hash=prep.ds.data_hash(), split_key=prep.split_key,
                                           split_hash=prep.split_hash, demo=prep.demo,
                                           data_path=str(Path(prep.cfg.data_dir).resolve()),
                                           n_train=len(prep.ds.train), n_test=len(prep.ds.test)))
