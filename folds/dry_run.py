"""``folds/run.py --dry-run``: every check a run makes, then a short probe of its real work, timed, and how long
the folds asked for would take. Nothing is written to the run folder or the submissions.

A Kaggle version ends at 12 hours and a Colab session sooner: whether five folds of a backbone, input size and
batch fit (and whether the batch fits the GPU's memory) is known in a minute or two, not after the first fold.
The probe is the run's own code on the run's own data: ``train_fold`` on a sample of the first fold's paintings
for two epochs (the first starts the loader's workers and the GPU's kernels, the second is steady) and
``Predictor`` on test images, in a temporary folder. Where the batch does not fit the GPU, the lightest change
that does (``lighter``) is probed and estimated instead, and named.

>>> plan = dry_run(FoldRunner.open(cfg, dry_run=True), [0, 1, 2, 3, 4])   # doctest: +SKIP
>>> print(describe(plan))                                                 # doctest: +SKIP
"""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from common import UserError, layout
from ensemble.tta import n_views
from folds.deadline import Deadline
from folds.engine import Precision
from folds.lock import FoldLock
from folds.predict import Predictor
from folds.init_from import started_from
from folds.train import train_fold
from models import check_model

PROBE_STEPS = 10  # optimizer steps of each probe epoch: enough for a steady pace, few enough to take seconds
PROBE_EPOCHS = 2  # the first starts the loader's workers and the GPU's kernels; the second is steady
PREDICT_BATCHES = (1, 1, 3)  # prediction calls, in batches: the first warms up; the last two give the pace


class _Probed(Exception):
    """Ends the probe's training once its epochs are timed (``train_fold``'s callback is the way out)."""


def epochs_left(runner, k, full_epochs: int | None = None) -> int:
    """Epochs fold ``k`` would still train here: all of them, or, resumed, those after its last saved one
    (``full_epochs``: ``--full-epochs``, for the full-data model)."""
    epochs = runner.full_epochs(full_epochs) if k == layout.FULL else runner.cfg.epochs
    history = runner.fold_dir(k) / layout.HISTORY
    if runner.resume and not runner.force and (runner.fold_dir(k) / layout.LAST).is_file() and history.is_file():
        return max(epochs - len(layout.read_frame(history, usecols=['epoch'])), 0)
    return epochs


@contextmanager
def _quiet(name: str):
    """The probe's epoch lines would read as a real fold's: only its warnings (a slow loader) are shown."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


def lighter(cfg):
    """``(options, config)`` to try, in turn, where ``cfg``'s batch does not fit the GPU's memory, the most alike
    first: the same training in less memory (``--grad-checkpointing``: the weights and scores of the run without
    it), then half the batch with twice the accumulation (each optimizer step sees as many images; BatchNorm sees
    fewer at a time), down to 2 images (an even batch under MixUp or CutMix)."""
    checkpointing = cfg.grad_checkpointing
    if not checkpointing and supports_checkpointing(cfg.model):
        checkpointing = True
        yield "--grad-checkpointing", replace(cfg, grad_checkpointing=True)
    batch, accum = cfg.batch_size, cfg.grad_accum_steps
    while batch // 2 >= 2 and not ((cfg.mixup or cfg.cutmix) and (batch // 2) % 2):
        batch, accum = batch // 2, accum * 2
        options = f"--batch-size {batch} --grad-accum-steps {accum}" + (
            " --grad-checkpointing" if checkpointing and not cfg.grad_checkpointing else "")
        yield options, replace(cfg, batch_size=batch, grad_accum_steps=accum, grad_checkpointing=checkpointing)


def supports_checkpointing(model: str) -> bool:
    try:
        check_model(model, None, grad_checkpointing=True)
        return True
    except UserError:
        return False


def probe_what_fits(runner, k, cfg=None, predict: bool = True) -> dict:
    """``probe`` with ``cfg`` (default: the run's settings); where its batch does not fit the GPU, with the first
    of ``lighter``'s that does (its options in ``fits_with``), so that the estimate is for a run that can be made."""
    cfg, tried = cfg or runner.cfg, []
    try:
        return {**probe(runner, k, cfg, predict), "fits_with": None}
    except torch.OutOfMemoryError:
        pass
    for options, lighter_cfg in lighter(cfg):
        free_memory()
        try:
            return {**probe(runner, k, lighter_cfg, predict), "fits_with": options}
        except torch.OutOfMemoryError:
            tried.append(options)
    raise UserError(out_of_memory(cfg, tried))


def free_memory() -> None:
    """What a failed try held, given back before the next (its tensors are garbage once the error unwound)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def probe(runner, k, cfg, predict: bool = True) -> dict:
    """Fold ``k``'s own training on a sample of its paintings, then (``predict``) the test's prediction, timed
    (seconds), with ``cfg`` (the run's, or a lighter one); a batch that does not fit raises
    ``torch.OutOfMemoryError``. ``runner`` gives the data (``ds``) and the fold's rows (``fold_rows``)."""
    tr, va, index = runner.fold_rows(k)
    rng = np.random.default_rng(cfg.seed)
    tr_sample = np.sort(rng.choice(tr, min(len(tr), PROBE_STEPS * cfg.batch_size * cfg.grad_accum_steps),
                                   replace=False))
    va_sample = np.sort(rng.choice(va, min(len(va), cfg.batch_size), replace=False))
    epochs = min(PROBE_EPOCHS, cfg.epochs)
    deadline, ends = Deadline(), []  # no limit: it keeps the validation's pace, as under --time-limit

    def on_epoch(epoch, row):
        ends.append((time.perf_counter(), row))
        if len(ends) == epochs:
            raise _Probed

    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last, cfg.deterministic)  # as train_fold's
    cuda = prec.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(prec.device)
    with tempfile.TemporaryDirectory(prefix="dry-run-") as tmp, _quiet("folds.train"):
        fold_dir = layout.fold_dir(Path(tmp), k)
        started = time.perf_counter()
        try:
            train_fold(started_from(cfg, k), runner.ds, tr_sample, va_sample, fold_dir, fold_index=index,
                       on_epoch=on_epoch, deadline=deadline)
        except _Probed:
            pass
        predict = (_time_prediction(cfg, runner.ds, fold_dir) if predict
                   else {"predict_per_image": 0.0, "predict_start": 0.0})
        peak = torch.cuda.max_memory_allocated(prec.device) if cuda else None  # training's or prediction's
    first_wall = ends[0][0] - started
    steady_wall, steady = (ends[-1][0] - ends[-2][0], ends[-1][1]) if len(ends) > 1 else (first_wall, ends[0][1])
    val_seconds = steady["seconds"] - steady["train_seconds"]
    return {
        "fold": k, "train_sample": len(tr_sample), "val_sample": len(va_sample), "epochs": len(ends),
        "first_epoch": first_wall, "steady_epoch": steady_wall,
        "train_per_image": steady["train_seconds"] / len(tr_sample),
        "loader_wait_share": steady["loader_wait"] / max(steady["train_seconds"], 1e-9),
        # validation scores each painting whole and as --val-crops crops
        "val_per_painting": val_seconds / len(va_sample) if len(va_sample) else 0.0,
        # what an epoch spends besides training and validating (its checkpoints, mostly)
        "epoch_overhead": max(steady_wall - steady["seconds"], 0.0),
        "val_decode_per_view": (deadline.decode_and_score or 0.0) - (deadline.score_only or 0.0),
        **predict, "peak_memory": peak, "device": prec.describe(),
        "memory": torch.cuda.get_device_properties(prec.device).total_memory if cuda else None,
    }


def _time_prediction(cfg, ds, fold_dir: Path) -> dict:
    """Seconds per test image (with ``--tta``'s views) and per prediction call (its loader's start), from calls
    of ``PREDICT_BATCHES`` batches on the probe's weights; test images repeat where there are too few."""
    predictor = Predictor(cfg, ds.num_classes, fold_dir, store_cache=False)
    paths = list(ds.test["path"])
    sizes = [n * predictor.batch_size for n in PREDICT_BATCHES]
    pool = np.resize(np.asarray(paths, dtype=object), sum(sizes))  # repeated where the test set is small
    seconds, at = [], 0
    with _quiet("common.progress"):
        for n in sizes:
            t0 = time.perf_counter()
            predictor.predict(list(pool[at:at + n]), desc="dry run: predict")
            seconds.append(time.perf_counter() - t0)
            at += n
    per_image = max((seconds[2] - seconds[1]) / (sizes[2] - sizes[1]), 0.0)
    return {"predict_per_image": per_image, "predict_start": max(seconds[1] - sizes[1] * per_image, 0.0)}


def out_of_memory(cfg, tried: list) -> str:
    """Nothing tried fitted: the run's batch, and ``tried``, the lighter settings (``lighter``)."""
    size = f"{cfg.img_size} px" if cfg.img_size else "its pretrained input size"
    return (f"--dry-run: the GPU ran out of memory with {cfg.model} at {size} and --batch-size {cfg.batch_size}"
            + (f", and also with {'; '.join(tried)}" if tried else "") + " (nothing was written). Lower --img-size, "
            "choose a smaller --model, or free the GPU's memory (nvidia-smi shows who holds it).")


def epoch_seconds(p: dict, cfg, train_images: int, val_paintings: int, epochs: int) -> tuple[float, float]:
    """A fold's steady epoch and what its first adds, in seconds, from ``probe``'s figures ``p``."""
    epoch = train_images * p["train_per_image"] + val_paintings * p["val_per_painting"] + p["epoch_overhead"]
    # the loader's and the model's start, and the validation paintings' first decoding
    first_extra = max(p["first_epoch"] - p["steady_epoch"], 0.0) + (
        val_paintings * (1 + cfg.val_crops) * p["val_decode_per_view"]) if epochs else 0.0
    return epoch, first_extra


def dry_run(runner, folds: list, time_limit: float | None = None, processes: int = 1,
            full_epochs: int | None = None) -> dict:
    """What each of ``folds`` that would train has to do, checked first as the run checks it; then the probe, on
    the first of them (fold 0 for the full-data model, which validates nothing), and each one's minutes."""
    cfg = runner.cfg
    held = {k: holder for k in runner.to_train(folds) if (holder := runner.holder(k)) is not None}
    # the run comes back to a held fold once its others are done (FoldRunner.come_back): one whose holder has
    # missed its beats already is counted as the run would train it then, after the rest of its silence
    locks = {k: runner.lock(k) for k in held}
    silent = {k: FoldLock.stale_after(h) - locks[k].silent_for() for k, h in held.items()
              if runner.comes_back_to(k, h) and locks[k].missed_beats(h)}
    training = [k for k in runner.to_train(folds) if k not in held] + list(silent)
    plan = {"run_dir": str(runner.run_dir), "folds": list(folds), "training": training, "time_limit": time_limit,
            "batch_size": cfg.batch_size, "processes": processes, "fold_minutes": {}, "folds_detail": {},
            "held": {k: runner.held_note(k, holder, "the run would skip it for now", by="the run")
                     for k, holder in held.items()}, "silent": silent}
    work = {}
    for k in training:
        runner.check_not_interrupted(k)
        tr, va, _ = runner.fold_rows(k)
        extra, _ = runner.pseudo_images(k)
        pseudo = len(extra.paths) if extra is not None else 0
        work[k] = {"train_images": len(tr) + pseudo, "pseudo_images": pseudo,
                   "val_paintings": len(va), "epochs": epochs_left(runner, k, full_epochs),
                   "predicted_images": runner.predicted_images(len(va)), "views": n_views(cfg.tta)}
    if not training:
        return plan
    p = plan["probe"] = probe_what_fits(runner, next((k for k in training if k != layout.FULL), 0))
    for k, w in work.items():
        epoch, first_extra = epoch_seconds(p, cfg, w["train_images"], w["val_paintings"], w["epochs"])
        predict = 2 * p["predict_start"] + w["predicted_images"] * p["predict_per_image"]  # the OOF's, the test's
        plan["folds_detail"][k] = {**w, "epoch_seconds": epoch, "first_epoch_extra": first_extra,
                                   "predict_seconds": predict}
        plan["fold_minutes"][k] = (first_extra + w["epochs"] * epoch + predict) / 60
    before = sum(m for k, m in plan["fold_minutes"].items() if k not in silent)  # the folds it trains first
    plan["wait_minutes"] = max([(wait / 60 - before) for wait in silent.values()] + [0.0])
    plan["minutes"] = sum(plan["fold_minutes"].values()) + plan["wait_minutes"]
    return plan


def duration(minutes: float) -> str:
    return f"{minutes * 60:.0f} s" if minutes < 2 else f"{minutes:.0f} min" if minutes < 120 else \
        f"{minutes / 60:.1f} hours"


def describe(plan: dict) -> str:
    """What the dry run found, in lines a person reads."""
    lines = [f"dry run of {plan['run_dir']}: nothing was written there or to the submissions."]
    lines += plan.get("held", {}).values()  # a lock copied with its run folder looks alive until it misses its beats
    for k, wait in plan.get("silent", {}).items():
        waited = f", with {duration(plan['wait_minutes'])} of waiting after the other folds" \
            if plan.get("wait_minutes") else ""
        lines.append(f"fold {k}'s holder has missed its beats: the run would come back to it once its other folds "
                     "are done and take it over once its lock is silent long enough (in about "
                     f"{duration(max(wait, 0) / 60)}); it is counted below{waited}.")
    if not plan["training"]:
        others = [k for k in plan["folds"] if k not in plan.get("held", {})]
        finished = f"fold {others[0]} is" if len(others) == 1 else f"folds {','.join(map(str, others))} are"
        return "\n".join(lines + ([f"{finished} finished: nothing to train (--force retrains them)."]
                                  if others else []))
    p = plan["probe"]
    memory = (f"; peak GPU memory {p['peak_memory'] / 2 ** 30:.1f} of {p['memory'] / 2 ** 30:.1f} GiB"
              if p["peak_memory"] is not None else "")
    if p["fits_with"]:
        lines.append(f"--batch-size {plan['batch_size']} ran out of GPU memory; it fits with {p['fits_with']}, which "
                     "the figures below are for" + (" (the same run, slower: a resume may add it)"
                                                    if p["fits_with"] == "--grad-checkpointing" else
                                                    " (a new run's recipe: each step sees as many images)") + ".")
    lines += [f"measured on {p['device']}: fold {p['fold']}'s training for {p['epochs']} epoch(s) on "
              f"{p['train_sample']:,} of its paintings (validating {p['val_sample']:,}), then its test prediction:",
              f"  training {1 / max(p['train_per_image'], 1e-9):,.0f} images/s (the loader kept it waiting "
              f"{p['loader_wait_share']:.0%} of the time){memory}",
              f"  prediction {1 / max(p['predict_per_image'], 1e-9):,.0f} images/s, each with its TTA views"]
    for k, minutes in plan["fold_minutes"].items():
        d = plan["folds_detail"][k]
        pseudo = f" ({d['pseudo_images']:,} of them pseudo-labelled)" if d["pseudo_images"] else ""
        lines.append(f"fold {k}: {d['train_images']:,} training images{pseudo}, {d['val_paintings']:,} validation "
                     f"paintings; {d['epochs']} epoch(s) of {d['epoch_seconds']:.1f} s (the first "
                     f"{d['first_epoch_extra']:.1f} s longer), then {d['predicted_images']:,} images x {d['views']} "
                     f"views predicted in {d['predict_seconds']:.0f} s: about {duration(minutes)}")
    total = plan["minutes"]
    lines.append(f"in all: about {duration(total)} in this process, at most (early stopping ends a fold sooner)"
                 + (f"; with --procs-per-gpu/--gpus the {plan['processes']} fold processes share the machine, which "
                    "this estimate does not measure" if plan["processes"] > 1 else "") + ".")
    if plan["time_limit"] is not None:
        limit = plan["time_limit"]
        lines.append(f"--time-limit {limit:g}: " + (
            "it fits." if total <= limit else
            f"it does not fit: the run stops cleanly before the piece of work that would not end in time "
            f"(exit 75); rerunning with --resume goes on, about {int(np.ceil(total / limit))} sessions in all."))
    return "\n".join(lines)
