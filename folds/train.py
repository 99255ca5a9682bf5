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
import torch

from common import UserError
from folds.augment import eval_transform, train_transform
from folds.backbone import build_model
from folds.cache import image_cache
from folds.checkpoint import Checkpointer
from folds.config import RunConfig
from folds.data import Dataset
from folds.engine import InputPipe, Precision, scores, train_one_epoch
from folds.loader import ImageDataset, epoch_seed, make_loader, num_workers
from folds.optim import build_optimizer, build_scheduler
from folds.predict import predict_probs
from folds.stopping import EarlyStopping

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fold_seed(cfg: RunConfig, fold_index: int) -> int:
    """Each fold's seed: distinct per fold, fixed by the run's --seed."""
    return cfg.seed * 1000 + fold_index


def train_fold(cfg: RunConfig, ds: Dataset, train_idx, val_idx, out_dir: Path, *, fold_index: int = 0,
               resume: bool = False, on_epoch=None, epochs: int | None = None) -> dict:
    """Train on ``train_idx``, early-stop on ``val_idx``; keep best and last checkpoints.

    ``on_epoch(epoch, row)`` is called after each epoch (the tuner reports and prunes there).
    With an empty ``val_idx`` (the full-data model) it trains exactly ``epochs`` epochs.
    Returns the best epoch's scores and the timing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = fold_seed(cfg, fold_index)
    seed_everything(seed)
    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last)
    ckpt = Checkpointer(out_dir)
    resuming = resume and ckpt.has_last()
    model, dcfg = build_model(cfg, ds.num_classes, pretrained=not resuming)
    model = prec.prepare(model)
    size = dcfg["input_size"][-1]
    inputs = InputPipe(prec, dcfg["mean"], dcfg["std"])
    cache = image_cache(cfg, size)
    train_ds = ImageDataset(ds.train["path"].iloc[train_idx], ds.train["label"].iloc[train_idx],
                            train_transform(size, dcfg["mean"], dcfg["std"], cfg.crop, seed=seed), cache=cache)
    val_ds = ImageDataset(ds.train["path"].iloc[val_idx], ds.train["label"].iloc[val_idx],
                          eval_transform(size, dcfg["mean"], dcfg["std"]), cache=cache)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = prec.scaler()
    step_model = torch.compile(model) if cfg.compile else model
    n_epochs = epochs or cfg.epochs
    has_val = len(val_idx) > 0
    stopper = EarlyStopping(cfg.monitor, cfg.patience if has_val else None)
    history, seconds = [], 0.0
    if resuming:
        history, seconds = ckpt.restore_last(model, optimizer, scheduler, scaler, stopper, prec.device)
        log.info("resuming %s after epoch %d", out_dir, len(history) - 1)
    workers = num_workers(cfg)
    pin = prec.device.type == "cuda"
    val_loader = make_loader(val_ds, cfg.batch_size * 2, train=False, num_workers=workers,
                             pin_memory=pin) if has_val else None
    for epoch in range(len(history) + 1, n_epochs + 1):  # numbered from 1, as everywhere a person reads it
        if stopper.should_stop():
            break
        t0 = time.time()
        torch.manual_seed(epoch_seed(seed, epoch))  # dropout depends on (seed, epoch) alone: a resume replays it
        loader = make_loader(train_ds, cfg.batch_size, train=True, seed=seed, epoch=epoch,
                             balanced=cfg.balanced_sampler, num_workers=workers,
                             pin_memory=pin)
        lr = optimizer.param_groups[0]["lr"]
        train_loss = train_one_epoch(step_model, loader, optimizer, scaler, prec, inputs, cfg.label_smoothing,
                                     desc=f"{out_dir.name} epoch {epoch}/{n_epochs}")
        scheduler.step(epoch)  # epochs done so far
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": float("nan"), "val_f1": float("nan"),
               "val_acc": float("nan"), "lr": lr}
        if has_val:
            probs = predict_probs(step_model, val_loader, prec, inputs, tta="none", desc="validate")
            s = scores(probs, val_ds.labels, ds.num_classes)
            row.update(val_loss=s["loss"], val_f1=s["f1"], val_acc=s["acc"])
        row["seconds"] = time.time() - t0
        history.append(row)
        seconds += row["seconds"]
        if stopper.update(row):
            ckpt.save_best(model)
        ckpt.save_last(model, optimizer, scheduler, scaler, stopper, history, seconds)
        log.info("%s epoch %d/%d: train_loss %.4f val_loss %.4f val_f1 %.4f val_acc %.4f lr %.2e (%.1fs)",
                 out_dir.name, epoch, n_epochs, train_loss, row["val_loss"], row["val_f1"], row["val_acc"],
                 lr, row["seconds"])
        if on_epoch is not None:
            on_epoch(epoch, row)
    if stopper.best_epoch < 1:
        raise UserError(f"{out_dir}: no epoch was trained (epochs={n_epochs}).")
    best_row = history[stopper.best_epoch - 1]
    return {"best_epoch": stopper.best_epoch, "best_f1": best_row["val_f1"], "best_loss": best_row["val_loss"],
            "best_acc": best_row["val_acc"], "epochs_run": len(history), "seconds": seconds,
            "img_size": size, "data_config": dcfg, "device": prec.describe()}
