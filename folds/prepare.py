"""The setup every training entry point shares: data folder, weights check, data and split.

The fold runner and the tuner both call ``prepare_run``; it returns a new config and never
changes the caller's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from common.atomic import check_writable_folder
from common.metrics import check_metric_fits_classes, check_metric_fits_sample
from folds.augment import check_installed
from folds.cache import cache_root
from folds.config import RunConfig
from folds.data import SAMPLE_CSV, TRAIN_CSV, Dataset, check_data_folder, load_dataset, read_groups
from folds.images import set_max_image_pixels
from folds.init_from import check_weights_unseen
from folds.demo import make_demo_dataset
from folds.split import load_or_make_folds
from models import check_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedRun:
    cfg: RunConfig  # data_dir filled in (the demo folder when none was given)
    ds: Dataset
    folds: pd.DataFrame  # id, label, fold
    split_key: str
    split_hash: str
    demo: bool


def split_store(cfg: RunConfig) -> Path:
    """Where splits are shared between runs on the same data, K and split seed."""
    return Path(cfg.runs_dir) / "splits"


def with_data_dir(cfg: RunConfig, announce: bool = True) -> tuple[RunConfig, bool]:
    """A config whose ``data_dir`` is set: the built-in demo dataset when none was given (said
    plainly unless ``announce`` is off: a side-by-side fold process, whose parent has said it)."""
    # the runs folder takes the run folders and the demo data: a file in its way was a traceback
    check_writable_folder(cfg.runs_dir, f"--runs-dir {cfg.runs_dir}")
    if cfg.data_dir is not None:
        return cfg, False
    data_dir = make_demo_dataset(Path(cfg.runs_dir) / "demo-data")
    say = log.warning if announce else log.debug
    say("DEMO DATA: no --data-dir given, so this run uses the built-in synthetic painters dataset in %s "
        "(preset 'demo' unless --preset says otherwise).", data_dir)
    return replace(cfg, data_dir=str(data_dir)), True


def prepare_run(cfg: RunConfig, folds_csv: Path | None, *, demo: bool | None = None,
                write_split: bool = True) -> PreparedRun:
    """Check the model and weights, load and validate the data, then load or make the split.

    Nothing is written before every check has passed: the split goes to ``folds_csv`` last, or
    not at all with ``write_split=False`` (the caller saves it after its own checks).
    """
    if demo is None:
        cfg, demo = with_data_dir(cfg)
    check_data_folder(cfg.data_dir)  # a second, not the model check's hub wait, to find a mistyped folder
    # under --init-from the folds start from that run's weights (checked with its split, in check_init_source)
    check_model(cfg.model, None if cfg.init_from else cfg.weights, cfg.drop_path, cfg.grad_checkpointing,
                cfg.img_size)
    check_installed(cfg.crop, cfg.affine)
    if cfg.cache_dir:
        check_writable_folder(cfg.cache_dir, f"--cache-dir {cfg.cache_dir}")
    set_max_image_pixels(cfg.max_image_pixels)
    ds = load_dataset(cfg.data_dir, cfg.corrections, verified_cache=cache_root(cfg))
    # after the data's own checks, whose messages say more (a sample's stray column is no class); the images it
    # verified are kept (verified_cache), so the run again with --metric does not decode them again
    check_metric_fits_sample(cfg.metric, ds.columns.probabilities, Path(cfg.data_dir) / SAMPLE_CSV)
    if not cfg.init_from:
        check_weights_unseen(cfg.weights, ds.train)  # a fold's model of these paintings: --init-from
    scale = check_metric_fits_classes(cfg.metric, ds.classes, Path(cfg.data_dir) / TRAIN_CSV)
    if scale:
        log.warning("%s", scale)
    groups = read_groups(cfg.groups, ds.train["id"]) if cfg.groups else None
    folds, key, split_hash = load_or_make_folds(folds_csv, ds.train["id"], ds.train["artist"], cfg.n_folds,
                                                cfg.split_seed, shared_dir=split_store(cfg), write=write_split,
                                                groups=groups, allow_small=cfg.allow_small_classes)
    return PreparedRun(cfg, ds, folds, key, split_hash, demo)
