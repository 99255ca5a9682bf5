"""Optimizer and learning-rate schedule, from timm (no hand-written versions).

``OPTIMIZERS`` is the one registry of ``--optimizer`` names: ours -> timm's ``opt`` string.
timm's factory keeps weight decay off norms and biases.
"""
from __future__ import annotations

import timm.optim
import timm.scheduler

OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "sgd"}  # timm's 'sgd' is Nesterov momentum 0.9


# timm's gradient-clipping modes (timm.utils.dispatch_clip_grad): the total norm, each value, or adaptive
# clipping (AGC: each weight's gradient against the weight's own norm; timm leaves the head out of it)
CLIP_MODES = ("norm", "value", "agc")


def build_optimizer(cfg, model):
    """timm's optimizer; with ``--layer-decay D`` each layer group's lr is scaled by D per group below the
    head (timm's ``layer_decay``: the stem learns slowest), which timm's schedulers keep through training."""
    return timm.optim.create_optimizer_v2(model, opt=OPTIMIZERS[cfg.optimizer], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, momentum=0.9,
                                          layer_decay=cfg.layer_decay or None)


def head_lr(optimizer) -> float:
    """The learning rate of the schedule, as the head gets it (with layer decay the other groups get less)."""
    return max(g["lr"] for g in optimizer.param_groups)


# The one registry of --sched names: name -> its own arguments of timm's ``create_scheduler_v2``. Both warm up
# linearly from 1% of --lr over --warmup-epochs.
SCHEDULERS = {
    # the seed recipe and the Optuna default space: lr x gamma every step_size epochs
    "step": lambda cfg: {"decay_epochs": cfg.step_size, "decay_rate": cfg.gamma},
    # cosine from lr to 1% of it over the epoch budget
    "cosine": lambda cfg: {"min_lr": cfg.lr / 100},
}

# When the schedule moves the lr (--sched-step): after every optimizer update, or once an epoch (timm's epoch
# mode, in which a warm-up epoch trains whole at its first lr: 1% of --lr for the first of them). A step
# schedule decays at the same epochs in both; they differ within the warm-up and the cosine's epochs.
SCHED_STEPS = ("update", "epoch")


def build_scheduler(cfg, optimizer, epochs: int, updates_per_epoch: int):
    """timm's scheduler for ``cfg.sched``. Call ``step_update(updates_done)`` after each optimizer update and
    ``step(epochs_done)`` after each epoch: the one that does not match ``cfg.sched_step`` does nothing."""
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=max(1, epochs), warmup_epochs=cfg.warmup_epochs,
        warmup_lr=cfg.lr / 100, step_on_epochs=cfg.sched_step == "epoch", updates_per_epoch=updates_per_epoch,
        **SCHEDULERS[cfg.sched](cfg))
    return scheduler
