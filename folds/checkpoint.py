"""A fold's checkpoints: best weights, the last full state for --resume, and the history.

Reading is safe: tensors only (``weights_only=True``). A truncated ``last.pt`` (a full disk,
a copy cut short), a corrupt ``best.pt`` or a file that would run pickled code all name the
file and say how to go on, instead of a traceback. Every write is atomic.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import torch

from common import UserError, save_torch, write_csv
from common.layout import BEST, HISTORY, LAST, fold_name


class Checkpointer:
    def __init__(self, fold_dir: Path):
        self.dir = Path(fold_dir)

    def has_last(self) -> bool:
        return (self.dir / LAST).is_file()

    def save_best(self, model) -> None:
        save_torch(self.dir / BEST, model.state_dict())

    def save_last(self, model, optimizer, scheduler, scaler, stopper, history: list, seconds: float,
                  ema=None, val_epochs: list | None = None) -> None:
        """``val_epochs``: each scored epoch's monitored validation probabilities (tensors), which the read-down of
        the best epoch's choice needs from every epoch, the resumed ones too."""
        save_torch(self.dir / LAST, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                     "stopper": stopper.state_dict(), "history": history, "seconds": seconds,
                                     "ema": None if ema is None else ema.state_dict(),
                                     "val_epochs": list(val_epochs or [])})
        write_csv(self.dir / HISTORY, pd.DataFrame(history))

    def restore_last(self, model, optimizer, scheduler, scaler, stopper, device,
                     ema=None) -> tuple[list, float, list]:
        """Load ``last.pt`` into the given objects; returns (history, seconds, val_epochs). A ``last.pt`` from before
        the epochs' validation rows were kept has none."""
        path = self.dir / LAST
        ckpt = read_checkpoint(path, map_location=device)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            stopper.load_state_dict(ckpt["stopper"])
            if ema is not None:
                ema.load_state_dict(ckpt["ema"])
            return list(ckpt["history"]), float(ckpt["seconds"]), [t.cpu() for t in ckpt.get("val_epochs", [])]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{path}: not a checkpoint of this run's settings ({type(e).__name__}: "
                            f"{_first_line(e)}). {fold_hint(path)}") from None


def fold_hint(path: Path) -> str:
    """How to start the fold that owns ``path`` over."""
    fold = fold_name(Path(path).parent)
    return f"Retrain that fold from scratch with --fold {fold} --force."


def read_checkpoint(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``, with a UserError naming the file on any failure."""
    path = Path(path)
    hint = fold_hint(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found. {hint}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler: a blocked global (code) or an opcode it does not allow
        detail = next((line.strip() for line in str(e).splitlines()
                       if line.strip().startswith(("Unsupported", "Trying to load"))), _first_line(e))
        raise UserError(f"{path}: refused to load: not a tensors-only checkpoint; it is corrupt, or holds pickled "
                        f"objects whose loading could run code ({detail}). Only load checkpoints this tool wrote. "
                        f"{hint}") from None
    except Exception as e:  # noqa: BLE001 - zip errors, EOF, bad magic: all mean a damaged file
        raise UserError(f"{path}: the checkpoint is truncated or corrupt ({type(e).__name__}: {_first_line(e)}). "
                        f"{hint}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
