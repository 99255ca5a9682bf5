"""The search space: a mapping of RunConfig fields to distributions, widened by a file.

Default: lr log-uniform 1e-5..1e-2, StepLR step_size 2..15, gamma 0.05..0.9. A ``--space``
file (YAML or JSON) adds, replaces or (``null``) removes entries, for example::

    dropout: {type: float, low: 0.1, high: 0.5}
    optimizer: {type: categorical, choices: [adam, adamw]}
    gamma: null

A knob that no trial of the space would use (``folds.config.NEEDS``) is not searched: ``live_space``.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import fields, replace

from common import UserError
from folds.config import NEEDS, RunConfig, check_config, read_config_file
from models import check_model

# What a trial may vary: training knobs only. The split (n_folds, split_seed, holdout), the data,
# the epoch budget (the pruner's step numbering) and the seed (set per trial) stay fixed.
TUNABLE = {"lr", "step_size", "gamma", "optimizer", "weight_decay", "label_smoothing", "dropout", "batch_size",
           "balanced_sampler", "balance_power", "crop", "img_size", "model", "patience", "monitor", "sched",
           "warmup_epochs", "mixup", "cutmix", "mix_prob", "erasing", "ema", "val_crops", "pseudo_mode",
           "pseudo_threshold", "pseudo_siblings", "layer_decay", "clip_grad", "clip_mode", "grad_accum_steps",
           "drop_path", "head_init", "sched_step"}

# the knobs that change which model is built (checked on the meta device, without weights in memory)
MODEL_KNOBS = {"model", "drop_path", "img_size"}

DEFAULT_SPACE = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "step_size": {"type": "int", "low": 2, "high": 15},
    "gamma": {"type": "float", "low": 0.05, "high": 0.9},
}
TYPES = ("float", "int", "categorical")


def load_space(path=None) -> dict:
    """The default space, updated from ``path``; every entry is checked."""
    space = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if path:
        extra = read_config_file(path, "--space")
        space.update(extra)
        for name in [n for n, spec in extra.items() if spec is None]:  # 'step_size: null' leaves a default out
            del space[name]
        if not space:
            raise UserError(f"--space {path}: it leaves nothing to tune (every entry is null).")
    names = {f.name for f in fields(RunConfig)}
    for name, spec in space.items():
        where = f"--space {path}: '{name}'" if path else f"search space '{name}'"
        if name not in names:
            raise UserError(f"{where} is not a training option; tunable: {sorted(TUNABLE)}.")
        if name not in TUNABLE:
            raise UserError(f"{where} cannot be tuned: it fixes the split, the data, the epoch budget or the "
                            f"per-trial seed, which every trial must share. Tunable: {sorted(TUNABLE)}.")
        if not isinstance(spec, dict) or spec.get("type") not in TYPES:
            raise UserError(f"{where} needs type one of {list(TYPES)}, but got {spec!r}.")
        if spec["type"] == "categorical":
            if not spec.get("choices"):
                raise UserError(f"{where}: categorical needs a non-empty 'choices' list.")
        elif not ("low" in spec and "high" in spec and spec["low"] < spec["high"]):
            raise UserError(f"{where}: needs low < high, but got {spec!r}.")
    return space


def live_space(space: dict, cfg: RunConfig, path=None) -> tuple[dict, dict]:
    """``(space, left_out)``: a knob of ``NEEDS`` that no corner of the space (``corner_trials``) gives what it needs
    changes no trial. The default space's own entry is left out (StepLR's ``step_size`` and ``gamma`` under
    ``--sched cosine``), to be said in a line; one the ``--space`` file gives is refused, naming the need."""
    left_out, names = {}, [name for name in NEEDS if name in space]
    trials = [trial_config(cfg, combo) for combo in corner_trials(space)] if names else []  # built once
    for name in names:
        need, test = NEEDS[name]
        if any(map(test, trials)):
            continue
        if space[name] != DEFAULT_SPACE.get(name):
            raise UserError(f"--space {path}: '{name}' changes nothing in any trial the space can draw: it is {need}, "
                            "which neither the training options nor the space give. The study would spend its "
                            f"trials on it. Add what it needs, or leave '{name}' out.")
        left_out[name] = space[name]
    return {k: v for k, v in space.items() if k not in left_out}, left_out


def corner_trials(space: dict):
    """The trials at the space's corners (each range's ends and each choice, together; each alone where they
    are too many to try together), as parameters."""
    corners = {name: s["choices"] if s["type"] == "categorical" else [s["low"], s["high"]]
               for name, s in space.items()}
    if math.prod(len(v) for v in corners.values()) > 4096:  # too many to try together: each alone
        return [{name: v} for name, values in corners.items() for v in values]
    return [dict(zip(corners, values)) for values in itertools.product(*corners.values())]


def trial_config(cfg: RunConfig, params: dict, **extra) -> RunConfig:
    """The run a trial trains: ``cfg`` with the trial's parameters, checked like any run's."""
    trial_cfg = replace(cfg, **params, **extra)
    check_config(trial_cfg)
    return trial_cfg


def check_corners(space: dict, cfg: RunConfig, path=None) -> None:
    """Every corner of the space (each range's ends, each choice, together) is a valid run of ``cfg``:
    checked before the study exists, since a trial that drew an invalid value would only fail, study
    after study, with its message lost in Optuna's log."""
    models_checked = set()
    for combo in corner_trials(space):
        try:
            trial_cfg = trial_config(cfg, combo)
            # what only some timm models have (drop path, a model's weights) is a question for the model
            model = (trial_cfg.model, trial_cfg.weights, trial_cfg.drop_path, trial_cfg.grad_checkpointing,
                     trial_cfg.img_size)
            if MODEL_KNOBS & combo.keys() and model not in models_checked:
                check_model(*model)
                models_checked.add(model)
        except UserError as e:
            where = f"--space {path}" if path else "the search space"
            raise UserError(f"{where}: a trial with {combo} would not run: {e}") from None


def suggest(trial, space: dict) -> dict:
    """Ask the trial for a value of every parameter of the space."""
    out = {}
    for name, s in space.items():
        if s["type"] == "float":
            out[name] = trial.suggest_float(name, float(s["low"]), float(s["high"]), log=bool(s.get("log")))
        elif s["type"] == "int":
            out[name] = trial.suggest_int(name, int(s["low"]), int(s["high"]), log=bool(s.get("log")))
        else:
            out[name] = trial.suggest_categorical(name, list(s["choices"]))
    return out


def fingerprint(space: dict) -> str:
    return json.dumps(space, sort_keys=True)
