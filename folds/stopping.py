"""Early stopping on a validation metric, with a state that a resumed fold restores.

``MONITORS`` is the one registry of ``--monitor`` names: each maps a history row to a key
where higher is better.
"""
from __future__ import annotations

MONITORS = {
    # ties on macro-F1 (common on small validation sets) go to the lower loss
    "f1": lambda row: [row["val_f1"], -row["val_loss"]],
    "loss": lambda row: [-row["val_loss"], row["val_f1"]],
    # the same on fixed half-size crops of the validation paintings: the test's distribution
    "crop-f1": lambda row: [row["val_crop_f1"], -row["val_crop_loss"]],
    "crop-loss": lambda row: [-row["val_crop_loss"], row["val_crop_f1"]],
}
F1_COLUMN = {"f1": "val_f1", "loss": "val_f1", "crop-f1": "val_crop_f1", "crop-loss": "val_crop_f1"}


def resolve_monitor(cfg) -> str:
    """``--monitor``, or its default: the crops' macro-F1 when the model is trained for crops."""
    if cfg.monitor:
        return cfg.monitor
    return "crop-f1" if cfg.crop == "test-scale" and cfg.val_crops else "f1"


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
