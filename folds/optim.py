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


# The one registry of --sched names: name -> factory(cfg, optimizer, epochs). Both warm up linearly
# from 1% of --lr over --warmup-epochs; call ``step(epochs_done)`` after each epoch.
SCHEDULERS = {
    # the seed recipe and the Optuna default space: lr x gamma every step_size epochs
    "step": lambda cfg, opt, epochs: timm.scheduler.StepLRScheduler(
        opt, decay_t=cfg.step_size, decay_rate=cfg.gamma, warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.lr / 100),
    # cosine from lr to 1% of it over the epoch budget
    "cosine": lambda cfg, opt, epochs: timm.scheduler.CosineLRScheduler(
        opt, t_initial=max(1, epochs), lr_min=cfg.lr / 100, warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.lr / 100),
}


def build_scheduler(cfg, optimizer, epochs: int):
    return SCHEDULERS[cfg.sched](cfg, optimizer, epochs)
