"""Early stopping on a validation metric, with a state that a resumed fold restores.

``MONITORS`` is the one registry of ``--monitor`` names: each maps a history row to a key
where higher is better. Every competition metric (``common.metrics.METRICS``) is a monitor by its
key, on the whole paintings (``f1``) and on their fixed half-size crops (``crop-f1``), and so is
the log loss (``loss``, ``crop-loss``).
"""
from __future__ import annotations

import numpy as np

from common.atomic import atomic_write
from common.metrics import DEFAULT_METRIC, METRICS, get_metric

CROP = "crop-"  # a monitor on the validation paintings' fixed half-size crops: the test's distribution
VIEWS = {"": "val_", CROP: "val_crop_"}  # a monitor's prefix -> its history columns' prefix (history.csv's layout)


def _by_score(col: str, loss: str):
    return lambda row: [row[col], -row[loss]]  # ties (common on small validation sets) go to the lower loss


def _by_loss(loss: str, col: str):
    return lambda row: [-row[loss], row[col]]


MONITORS = {}
for _view, _cols in VIEWS.items():
    for _m in METRICS.values():
        MONITORS[_view + _m.key] = _by_score(f"{_cols}{_m.key}", f"{_cols}loss")
    MONITORS[_view + "loss"] = _by_loss(f"{_cols}loss", f"{_cols}{METRICS[DEFAULT_METRIC].key}")


def score_column(monitor: str, metric: str | None) -> str:
    """The history column of the competition ``metric`` on the paintings ``monitor`` follows (whole or
    crops): a fold's ``best_score``, what a study tunes."""
    view = CROP if monitor.startswith(CROP) else ""
    return f"{VIEWS[view]}{get_metric(metric).key}"


def chosen_on_crops(done: dict) -> bool:
    """Whether a finished fold's best epoch was chosen on the validation crops (its ``done.json``'s monitor)."""
    return str(done.get("monitor") or "").startswith(CROP)


def best_of(done: dict, key: str) -> float:
    """A finished fold's best-epoch ``key`` (a metric's key, or ``loss``) in its ``done.json``, on the paintings its
    monitor chose that epoch on: the validation crops' or the whole paintings' (both are saved)."""
    view = VIEWS[CROP if chosen_on_crops(done) else ""].removeprefix("val_")
    return done.get(f"best_{view}{key}", float("nan"))


def epoch_read_down(dones: dict, oof: str | None = None, metric: str | None = None) -> float | None:
    """How high a run's OOF on the paintings its monitor followed (its crop-OOF under the default recipe) reads,
    each fold's best epoch being chosen on the validation paintings that OOF then scores: the mean of the folds'
    ``epoch_optimism`` (``done.json``; a bootstrap of the choice, ``folds.train.Validation.epoch_optimism``). None
    unless every fold has one (a loss monitor, a single epoch, folds from before it was kept), and, where asked,
    unless it reads down the ``oof`` ("crops" or "whole") by the ``metric`` that a reader scores."""
    kept = [d.get("epoch_optimism") for d in dones.values()]
    if not kept or any(v is None for v in kept):
        return None
    if oof is not None and read_down_view(dones) != oof:
        return None
    if metric is not None and any(get_metric(d.get("metric")).key != get_metric(metric).key for d in dones.values()):
        return None  # in the units of the metric the folds chose by
    return float(sum(kept) / len(kept))


def read_down_view(dones: dict) -> str:
    """The OOF that ``epoch_read_down`` reads down: "crops" where the folds chose their epochs on the validation
    crops, else "whole" (``ensemble.runs.OOF_KINDS``)."""
    return "crops" if any(map(chosen_on_crops, dones.values())) else "whole"


def write_val_epochs(path, probs: np.ndarray, labels, ids, best_epoch: int) -> None:
    """A fold's ``layout.VAL_EPOCHS``: every scored epoch's monitored validation rows (``probs``: epochs x rows x
    classes), their labels and paintings, and the best epoch (from 1). The read-downs of the epoch choice and of a
    study's best trial come from it."""
    with atomic_write(path, "wb") as f:
        np.savez(f, probs=probs, labels=labels, ids=ids, best_epoch=best_epoch)


def read_val_epochs(path) -> dict:
    """``write_val_epochs``'s arrays, the file closed."""
    with np.load(path) as z:
        return dict(z)


def best_epoch_rows(kept: dict) -> dict:
    """The rows of ``read_val_epochs`` at the best epoch: probs, labels, ids."""
    return {"probs": kept["probs"][int(kept["best_epoch"]) - 1], "labels": kept["labels"], "ids": kept["ids"]}


def resolve_monitor(cfg) -> str:
    """``--monitor``, or its default: the competition metric (``--metric``), on the validation crops when the
    model is trained for crops."""
    if cfg.monitor:
        return cfg.monitor
    key = get_metric(cfg.metric).key
    return CROP + key if cfg.crop == "test-scale" and cfg.val_crops else key


class EarlyStopping:
    """Tracks the best epoch; ``patience=None`` (no validation rows) makes every epoch the best."""

    def __init__(self, monitor: str, patience: int | None):
        self.key, self.patience = MONITORS[monitor], patience
        self.best, self.best_epoch, self.bad_epochs = None, 0, 0  # epochs count from 1; 0: none yet

    def update(self, row: dict) -> bool:
        """Record an epoch's row; True when it is the new best."""
        key = None if self.patience is None else self.key(row)
        if key is None or self.best is None or key > self.best:
            self.best, self.best_epoch, self.bad_epochs = key, row["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
