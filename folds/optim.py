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


def build_scheduler(cfg, optimizer):
    """StepLR semantics: lr x gamma every ``step_size`` epochs; call ``step(epoch + 1)`` after each epoch."""
    return timm.scheduler.StepLRScheduler(optimizer, decay_t=cfg.step_size, decay_rate=cfg.gamma)
