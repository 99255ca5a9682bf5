"""Train one fold: the single training function the fold runner, the tuner and the
full-data model all call.

>>> result = train_fold(cfg, ds, train_idx, val_idx, Path("runs/x/fold_0"))  # doctest: +SKIP
>>> result["best_score"]                                                      # doctest: +SKIP
"""
from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3

from common import UserError, layout
from common.machine import usable_cores
from common.metrics import METRICS, get_metric
from folds.augment import eval_transform, train_transform
from folds.backbone import build_model
from folds import distributed
from folds.cache import image_cache
from folds.checkpoint import Checkpointer
from folds.config import RunConfig
from folds.data import Dataset
from folds.deadline import Deadline
from folds.engine import InputPipe, Precision, optimizer_steps, scores, train_one_epoch
from folds.loader import ImageDataset, KeptBatches, WaitTimer, epoch_seed, make_loader, num_workers
from folds.optim import build_optimizer, build_scheduler, head_lr
from folds.pace import loader_hint
from folds.predict import VAL_CROP_SEED, PaintingViews, predict_probs
from folds.recipe import build_recipe
from folds.stopping import CROP, VIEWS, EarlyStopping, resolve_monitor, score_column, write_val_epochs
from models import enable_grad_checkpointing

log = logging.getLogger(__name__)


# history.csv's timing columns (seconds): the epoch, its training pass, and the pass's wait for images. They differ
# between two runs of one recipe; every other column repeats.
TIMINGS = ("seconds", "train_seconds", "loader_wait")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fold_seed(cfg: RunConfig, fold_index: int) -> int:
    """Each fold's seed: distinct per fold, fixed by the run's --seed."""
    return cfg.seed * 1000 + fold_index


class Validation:
    """The validation paintings, whole (``val_*``) and as fixed half-size crops (``val_crop_*``, the
    distribution the model is judged on), scored every epoch. Under torchrun each rank scores
    its block of rows (``distributed.my_rows``); the gathered scores are the same on every rank."""

    def __init__(self, val, cfg: RunConfig, monitor: str, transform, cache, workers: int, pin: bool,
                 epochs: list | None = None):
        # each painting whole, then its crops: one loader decodes a painting once for all its rows
        self.views = PaintingViews.of(list(val["path"]), val["id"], cfg.val_crops, VAL_CROP_SEED)
        self.labels = np.repeat(val["label"].to_numpy(), 1 + cfg.val_crops)
        self.ids = np.repeat(val["id"].to_numpy().astype(str), 1 + cfg.val_crops)  # each row's painting
        rows = distributed.my_rows(len(self.labels))
        data = ImageDataset(self.views.paths[rows], self.labels[rows], transform, cache=cache,
                            crops=self.views.boxes[rows], reuse_decoded=True)
        # the same batches every epoch: decoded once, then kept in memory (KeptBatches)
        self.loader = KeptBatches(make_loader(data, cfg.batch_size * 2, train=False, num_workers=workers,
                                              pin_memory=pin)) if len(data) else None
        self.images = len(self.labels)  # scored every epoch, one view each
        # the rows the monitor follows (the crops', or the whole paintings'), kept each epoch: the best epoch is
        # chosen on them, and the read-down of that choice (``epoch_optimism``) sets the epochs side by side
        self.monitored = ~self.views.whole if monitor.startswith(CROP) else self.views.whole
        # one (rows, classes) a scored epoch; in last.pt, so a resumed fold starts with its epochs so far
        self.epochs: list[torch.Tensor] = list(epochs or [])

    def decodes(self) -> bool:
        """Whether the next ``score`` decodes images (the first, or a set too large to keep)."""
        return self.loader is not None and self.loader.kept is None

    def score(self, model, prec, inputs) -> dict:
        probs = None
        if self.loader is not None:
            probs = distributed.gather_rows(predict_probs(model, self.loader, prec, inputs, tta="none",
                                                          desc="validate"), len(self.labels))
        if probs is not None:
            self.epochs.append(torch.from_numpy(probs[self.monitored].astype(np.float32)))  # exact: scores again
        row = {}
        for cols, rows in ((VIEWS[""], self.views.whole), (VIEWS[CROP], ~self.views.whole)):
            s = scores(probs[rows], self.labels[rows]) if rows.any() else {}
            row.update({cols + k: s.get(k, float("nan")) for k in ("loss", *(m.key for m in METRICS.values()))})
        return row

    def epoch_optimism(self, monitor: str, metric: str | None) -> float | None:
        """How high the best epoch's score reads, being chosen among the scored epochs on these same paintings
        (``ensemble.compare.selection_optimism``, the epochs its candidates), which the fold's OOF and crop-OOF
        then score again; None where no choice was made by the competition ``metric`` (one epoch, a loss monitor,
        no validation rows) or epochs of a resume from before they were kept are missing."""
        from ensemble.compare import selection_optimism

        if len(self.epochs) < 2 or monitor.removeprefix(CROP) != get_metric(metric).key:
            return None
        rows = self.monitored
        return selection_optimism(self.labels[rows], self.ids[rows], [p.numpy() for p in self.epochs],
                                  metric)

    def save(self, path: Path, best_epoch: int) -> None:
        """Every scored epoch's monitored rows (``probs``: epochs x rows x classes), with their labels,
        paintings and the best epoch: a study sets its trials' best epochs side by side on these same rows
        (``tuning.study.best_read_down``)."""
        rows = self.monitored
        write_val_epochs(path, torch.stack(self.epochs).numpy(), self.labels[rows], self.ids[rows], best_epoch)


def train_targets(labels, extra_targets, num_classes: int, smoothing: float):
    """Class indices, or, when pseudo-labels are soft, probability rows for every training item."""
    labels = np.asarray(labels)
    if extra_targets is None:
        return labels
    extra_targets = np.asarray(extra_targets)
    if extra_targets.ndim == 1:
        return np.concatenate([labels, extra_targets])
    onehot = np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes
    return np.vstack([onehot, extra_targets]).astype(np.float32)


def train_fold(cfg: RunConfig, ds: Dataset, train_idx, val_idx, out_dir: Path, *, fold_index: int = 0,
               resume: bool = False, on_epoch=None, epochs: int | None = None, extra=None,
               deadline: Deadline | None = None) -> dict:
    """Train on ``train_idx``, early-stop on ``val_idx``; keep best and last checkpoints.

    ``on_epoch(epoch, row)`` is called after each epoch (the tuner reports and prunes there).
    With an empty ``val_idx`` (the full-data model) it trains exactly ``epochs`` epochs.
    ``extra``: ``folds.pseudo.PseudoImages`` added to the training data (pseudo-labelled crops;
    targets are class indices or probability rows). ``deadline``: ``--time-limit``, checked before each
    epoch. Returns the best epoch's scores and timing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = deadline or Deadline()  # no limit
    seed = fold_seed(cfg, fold_index)
    seed_everything(seed)
    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last, cfg.deterministic)
    ckpt = Checkpointer(out_dir)
    resuming = resume and ckpt.has_last()
    model, dcfg = build_model(cfg, ds.num_classes, pretrained=not resuming)
    model = prec.prepare(enable_grad_checkpointing(model, cfg.model) if cfg.grad_checkpointing else model)
    size = dcfg["input_size"][-1]
    inputs = InputPipe(prec, dcfg["mean"], dcfg["std"])
    cache = image_cache(cfg, size)
    train_ds = training_images(cfg, ds, train_idx, extra, dcfg, seed, cache)
    workers = num_workers(cfg)
    pin = prec.device.type == "cuda"
    # one training loader for the fold: its workers persist across epochs (no start-up per epoch)
    loader = make_loader(train_ds, cfg.batch_size, train=True, seed=seed, balanced=cfg.balanced_sampler,
                         power=cfg.balance_power, num_workers=workers, pin_memory=pin)
    updates = optimizer_steps(len(loader), cfg.grad_accum_steps)  # an epoch's optimizer updates
    optimizer = build_optimizer(cfg, model)
    n_epochs = epochs or cfg.epochs
    scheduler = build_scheduler(cfg, optimizer, n_epochs, updates)
    scaler = prec.scaler()
    recipe = build_recipe(cfg, ds.num_classes, prec.device)
    ema = ModelEmaV3(model, decay=cfg.ema, use_warmup=True) if cfg.ema else None
    step_model = distributed.wrap(torch.compile(model) if cfg.compile else model, prec.device)
    judged = ema.module if ema is not None else model  # the weights that are validated and saved
    has_val = len(val_idx) > 0
    monitor, key = resolve_monitor(cfg), get_metric(cfg.metric).key  # the competition metric's columns
    stopper = EarlyStopping(monitor, cfg.patience if has_val else None)
    history, seconds, kept = [], 0.0, []
    if resuming:
        history, seconds, kept = ckpt.restore_last(model, optimizer, scheduler, scaler, stopper, prec.device, ema)
        log.info("resuming %s after epoch %d", out_dir, len(history))
    validation = Validation(ds.train.iloc[val_idx], cfg, monitor, eval_transform(size, dcfg["mean"], dcfg["std"]),
                            cache, workers, pin, epochs=kept)
    first_epoch = len(history) + 1
    for epoch in range(first_epoch, n_epochs + 1):  # numbered from 1, as everywhere a person reads it
        if stopper.should_stop():
            break
        deadline.before("epoch", f"{out_dir.parent.name}/{out_dir.name} epoch {epoch}")  # run (trial) and fold
        t0 = time.time()
        seed_everything(epoch_seed(seed, epoch))  # dropout, MixUp, erasing: (seed, epoch) alone, so a resume replays
        loader.sampler.set_epoch(epoch)  # the order and the augmentations too
        lr = head_lr(optimizer)
        timed = WaitTimer(loader)  # the time the step waited for images: the GPU idle, where the loader is slow
        train_loss = train_one_epoch(step_model, timed, optimizer, scaler, prec, inputs, recipe, ema,
                                     first_step=(epoch - 1) * updates, scheduler=scheduler,
                                     desc=f"{out_dir.name} epoch {epoch}/{n_epochs}",  # same batches every epoch
                                     accum_steps=cfg.grad_accum_steps, clip_grad=cfg.clip_grad,
                                     clip_mode=cfg.clip_mode, grad_checkpointing=cfg.grad_checkpointing)
        train_seconds = time.time() - t0
        lr_end = head_lr(optimizer)  # per update the lr moved within the epoch: this is where it ended
        scheduler.step(epoch)  # epochs done so far (--sched-step epoch; per update it moved within the epoch)
        decodes, t1 = validation.decodes(), time.time()
        val = validation.score(judged, prec, inputs)
        if validation.images:  # its pace estimates the first fold's predictions for --time-limit
            deadline.scored(time.time() - t1, validation.images, decodes)
        row = {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr, "lr_end": lr_end, "seconds": time.time() - t0,
               "train_seconds": train_seconds, "loader_wait": timed.wait}
        history.append(row)
        deadline.took("epoch", row["seconds"])
        seconds += row["seconds"]
        improved = stopper.update(row)  # the same on every rank: the scores were gathered
        if distributed.is_main():
            if improved:
                ckpt.save_best(judged)
            ckpt.save_last(model, optimizer, scheduler, scaler, stopper, history, seconds, ema, validation.epochs)
        distributed.barrier()  # a resume must find last.pt complete on every rank
        whole, crops = (VIEWS[view] + key for view in ("", CROP))  # the metric's columns
        # what was not scored is left out, not shown as nan: the crops under --val-crops 0, everything for the
        # full-data model (no validation paintings), whose nan read as a loss gone wrong
        scored = "".join(f" {col} {row[col]:.4f}" for col in (VIEWS[""] + "loss", whole, crops)
                         if np.isfinite(row[col]))
        lrs = f"{lr:.2e}" if lr == lr_end else f"{lr:.2e}-{lr_end:.2e}"  # from start to end
        log.info("%s epoch %d/%d: train_loss %.4f%s lr %s (%.1fs)", out_dir.name, epoch, n_epochs, train_loss,
                 scored, lrs, row["seconds"])
        if epoch == first_epoch + 1 and distributed.is_main():  # a steady epoch: the first starts the workers
            hint = loader_hint(timed.wait, train_seconds, device=prec.device.type, epoch=epoch, workers=workers,
                               cores=usable_cores(), cache=cfg.cache, affine=cfg.affine)
            if hint:
                log.warning("%s/%s: %s", out_dir.parent.name, out_dir.name, hint)
        if on_epoch is not None:
            on_epoch(epoch, row)
    if stopper.best_epoch < 1:
        raise UserError(f"{out_dir}: no epoch was trained (epochs={n_epochs}).")
    result = {**best_scores(history, stopper.best_epoch, monitor, cfg.metric), "epochs_run": len(history),
              "seconds": seconds, "img_size": size, "data_config": dcfg, "device": prec.describe()}
    # every epoch's rows (a resume kept them); under torchrun rank 0 writes them and reads the choice down
    if len(validation.epochs) == len(history) and validation.epochs and distributed.is_main():
        validation.save(out_dir / layout.VAL_EPOCHS, stopper.best_epoch)
        optimism = validation.epoch_optimism(monitor, cfg.metric)
        if optimism is not None:
            result["epoch_optimism"] = optimism
            log.info("%s: its best epoch (%d of %d) was chosen on these validation paintings, which reads their "
                     "scores about %+.4f high (a bootstrap of the choice)", out_dir.name, stopper.best_epoch,
                     len(history), optimism)
    return result


def training_images(cfg: RunConfig, ds: Dataset, train_idx, extra, dcfg: dict, seed: int, cache) -> ImageDataset:
    """The fold's training paintings, plus ``extra`` (``folds.pseudo.PseudoImages``: pseudo-labelled
    images), with the train transform; crops of a painting are cut at the painting's scale (``crop_scale``)."""
    paths = list(ds.train["path"].iloc[train_idx])
    targets = train_targets(ds.train["label"].iloc[train_idx], None if extra is None else extra.targets,
                            ds.num_classes, cfg.label_smoothing)
    transforms = [train_transform(dcfg["input_size"][-1], dcfg["mean"], dcfg["std"], cfg.crop, seed=seed,
                                  affine=cfg.affine, of_test_crop=of_crop) for of_crop in (False, True)]
    if extra is None:
        return ImageDataset(paths, targets, transforms[0], cache=cache)
    return ImageDataset(paths + list(extra.paths), targets, transforms, cache=cache,
                        crops=[None] * len(paths) + list(extra.boxes),
                        transform_of=[0] * len(paths) + [int(c) for c in extra.of_crop])


def best_scores(history: list, best_epoch: int, monitor: str, metric: str) -> dict:
    """The scores of the epoch whose weights were kept (best.pt): ``best_score`` is the competition ``metric``
    on the paintings the monitor follows (what a study tunes), then every score of that epoch."""
    row = history[best_epoch - 1]
    return {"best_epoch": best_epoch, "monitor": monitor, "metric": metric,
            "best_score": row[score_column(monitor, metric)],
            **{"best_" + col.removeprefix(VIEWS[""]): v for col, v in row.items() if col.startswith(VIEWS[""])}}
