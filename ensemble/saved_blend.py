"""A fitted blend saved beside its submission, so that new test images reuse it, never refit it.

``<out>_blend.json`` says what it is (method, runs, classes, OOF kind); ``<out>_blend.joblib``
holds the fitted scikit-learn estimator. joblib files are pickles: load only blends you made
(an export folder you built yourself, for example).
"""
from __future__ import annotations

import json
from pathlib import Path

import joblib

from common import UserError, atomic_write, layout, write_json


BLEND_JSON = "_blend.json"  # <out stem> + this: a submission's fitted blend, described


def blend_paths(out_csv) -> tuple[Path, Path]:
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.stem + BLEND_JSON), out_csv.with_name(out_csv.stem + "_blend.joblib")


def submission_of(meta_path) -> Path:
    """The submission CSV a ``*_blend.json`` was written beside (``blend_paths``' inverse)."""
    meta_path = Path(meta_path)
    return meta_path.with_name(meta_path.name.removesuffix(BLEND_JSON) + ".csv")


def save_blend(out_csv, blend, meta: dict) -> Path:
    meta_path, model_path = blend_paths(out_csv)
    with atomic_write(model_path, "wb") as f:
        joblib.dump(blend, f)
    return write_json(meta_path, {**meta, "estimator": model_path.name})


def load_blend(meta_path) -> tuple[object, dict]:
    """The fitted blend and its description, from a ``*_blend.json`` written by ``ensemble/build.py``."""
    meta_path = Path(meta_path)
    if not meta_path.is_file():
        raise UserError(f"--blend {meta_path}: not found; ensemble/build.py writes <out>_blend.json beside the CSV.")
    try:
        meta = json.loads(meta_path.read_text())
        blend = joblib.load(meta_path.with_name(meta["estimator"]))
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise UserError(f"--blend {meta_path}: cannot read the fitted blend ({type(e).__name__}: {e}).") from None
    return blend, meta


def blend_folds(meta: dict, config) -> list:
    """The folds whose models a blend combines: all of a run's, or the ones a ``--finished-folds`` build used."""
    return list(meta.get("folds") or layout.planned_folds(config))
