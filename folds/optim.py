"""Optimizer and learning-rate schedule, from timm (no hand-written versions).

``OPTIMIZERS`` is the one registry of ``--optimizer`` names: ours -> timm's ``opt`` string.
timm's factory keeps weight decay off norms and biases.
"""
from __future__ import annotations

import timm.optim
import timm.scheduler

OPTIMIZERS = {"adam": "adam", "adamw": "adamw", "sgd": "sgd"}  # timm's 'sgd' is Nesterov momentum 0.9


def build_optimizer(cfg, model):
    return timm.optim.create_optimizer_v2(model, opt=OPTIMIZERS[cfg.optimizer], lr=cfg.lr,
                                          weight_decay=cfg.weight_decay, momentum=0.9)


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
