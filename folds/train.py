"""Train one fold: the single training function the fold runner, the tuner and the
full-data model all call.

>>> result = train_fold(cfg, ds, train_idx, val_idx, Path("runs/x/fold_0"))  # doctest: +SKIP
>>> result["best_f1"]                                                         # doctest: +SKIP
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import UserError, save_torch, write_csv
from folds.augment import eval_transform, train_transform
from folds.config import RunConfig
from folds.data import Dataset
from folds.engine import InputPipe, Precision, scores, train_one_epoch
from folds.loader import ImageDataset, default_workers, make_loader
from folds.predict import predict_probs
from models import create_model, data_config

log = logging.getLogger(__name__)
BEST, LAST, HISTORY = "best.pt", "last.pt", "history.csv"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: RunConfig, num_classes: int, pretrained: bool = True):
    """The model and its data config (input size, mean, std)."""
    model = create_model(cfg.model, num_classes, weights=cfg.weights if pretrained else "none", dropout=cfg.dropout)
    return model, data_config(model, cfg.img_size)


def build_optimizer(cfg: RunConfig, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)


def _score_key(metric: str, row: dict) -> list:
    """Higher is better; ties on macro-F1 (common on small validation sets) go to the lower loss."""
    if metric == "f1":
        return [row["val_f1"], -row["val_loss"]]
    return [-row["val_loss"], row["val_f1"]]


def num_workers(cfg: RunConfig) -> int:
    return default_workers() if cfg.workers is None else int(cfg.workers)


def train_fold(cfg: RunConfig, ds: Dataset, train_idx, val_idx, out_dir: Path, *, fold_seed: int = 0,
               resume: bool = False, on_epoch=None, epochs: int | None = None, cache=None) -> dict:
    """Train on ``train_idx``, early-stop on ``val_idx``; keep best and last checkpoints.

    ``on_epoch(epoch, row)`` is called after each epoch (the tuner reports and prunes there).
    With an empty ``val_idx`` (the full-data model) it trains exactly ``epochs`` epochs.
    Returns the best epoch's scores, the history and the timing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed * 1000 + fold_seed
    seed_everything(seed)
    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last)
    resuming = resume and (out_dir / LAST).is_file()
    model, dcfg = build_model(cfg, ds.num_classes, pretrained=not resuming)
    model = prec.prepare(model)
    size = dcfg["input_size"][-1]
    inputs = InputPipe(prec, dcfg["mean"], dcfg["std"])
    if cache is None and cfg.cache:
        cache = image_cache(cfg, size)
    train_ds = ImageDataset(ds.train["path"].iloc[train_idx], ds.train["label"].iloc[train_idx],
                            train_transform(size, dcfg["mean"], dcfg["std"], cfg.crop, seed=seed), cache=cache)
    val_ds = ImageDataset(ds.train["path"].iloc[val_idx], ds.train["label"].iloc[val_idx],
                          eval_transform(size, dcfg["mean"], dcfg["std"]), cache=cache)
    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    scaler = prec.scaler()
    step_model = torch.compile(model) if cfg.compile else model
    n_epochs = epochs or cfg.epochs
    state = {"epoch": -1, "best": None, "best_epoch": -1, "bad_epochs": 0, "history": [], "seconds": 0.0}
    if resuming:
        ckpt = torch.load(out_dir / LAST, map_location=prec.device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = ckpt["state"]
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])
    workers = num_workers(cfg)
    has_val = len(val_idx) > 0
    val_loader = make_loader(val_ds, cfg.batch_size * 2, train=False, num_workers=workers,
                             pin_memory=prec.device.type == "cuda") if has_val else None
    for epoch in range(state["epoch"] + 1, n_epochs):
        if has_val and state["bad_epochs"] >= cfg.patience:
            break
        t0 = time.time()
        torch.manual_seed(seed * 100_003 + epoch)  # dropout depends on (seed, epoch) alone: a resume replays it
        loader = make_loader(train_ds, cfg.batch_size, train=True, seed=seed, epoch=epoch,
                             balanced=cfg.balanced_sampler, num_classes=ds.num_classes, num_workers=workers,
                             pin_memory=prec.device.type == "cuda")
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(step_model, loader, optimizer, scaler, prec, inputs, cfg.label_smoothing,
                                     desc=f"{out_dir.name} epoch {epoch + 1}/{n_epochs}")
        scheduler.step()
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": float("nan"), "val_f1": float("nan"),
               "val_acc": float("nan"), "lr": lr}
        if has_val:
            probs = predict_probs(step_model, val_loader, prec, inputs, tta="none", desc="validate")
            s = scores(probs, val_ds.labels, ds.num_classes)
            row.update(val_loss=s["loss"], val_f1=s["f1"], val_acc=s["acc"])
        row["seconds"] = time.time() - t0
        state["history"].append(row)
        state["epoch"] = epoch
        state["seconds"] += row["seconds"]
        key = _score_key(cfg.monitor, row) if has_val else None
        if not has_val or state["best"] is None or key > state["best"]:
            state.update(best=key, best_epoch=epoch, bad_epochs=0)
            save_torch(out_dir / BEST, model.state_dict())
        else:
            state["bad_epochs"] += 1
        save_torch(out_dir / LAST, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                    "state": state})
        write_csv(out_dir / HISTORY, pd.DataFrame(state["history"]))
        log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f val_f1 %.4f val_acc %.4f lr %.2e (%.1fs)",
                 out_dir.name, epoch + 1, n_epochs, train_loss, row["val_loss"], row["val_f1"], row["val_acc"],
                 lr, row["seconds"])
        if on_epoch is not None:
            on_epoch(epoch, row)
    if state["best_epoch"] < 0:
        raise UserError(f"{out_dir}: no epoch was trained (epochs={n_epochs}).")
    best_row = state["history"][[r["epoch"] for r in state["history"]].index(state["best_epoch"])]
    return {"best_epoch": state["best_epoch"], "best_f1": best_row["val_f1"], "best_loss": best_row["val_loss"],
            "best_acc": best_row["val_acc"], "epochs_run": state["epoch"] + 1, "seconds": state["seconds"],
            "img_size": size, "data_config": dcfg, "device": prec.describe()}


def image_cache(cfg: RunConfig, size: int):
    """The shared on-disk cache for this input size (at most twice the size), or None."""
    from folds.cache import ImageCache
    return ImageCache(Path(cfg.runs_dir) / "cache", 2 * size) if cfg.cache else None


def load_best(cfg: RunConfig, num_classes: int, out_dir: Path):
    """The fold's best weights in a fresh model (``weights_only=True``: no pickled code runs)."""
    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last)
    model, dcfg = build_model(cfg, num_classes, pretrained=False)
    model.load_state_dict(torch.load(Path(out_dir) / BEST, map_location="cpu", weights_only=True))
    return prec.prepare(model).eval(), dcfg, prec, InputPipe(prec, dcfg["mean"], dcfg["std"])
