"""``tuning/tune.py --dry-run``: every check a study makes, then a short probe of a trial's real training, timed,
and how long the trials asked for would take. Nothing is written: a study already there (the next session's) is
read, to check its space and setup as the study would and to count the trials it has towards ``--n-trials``.

A study is many runs: on a Kaggle version's 12 hours, whether 20 trials of 5 epochs on fold 0 fit is worth knowing
before the first one starts. The probe is ``folds.dry_run``'s (the fold's own ``train_fold`` on a sample of its
paintings, two epochs), with the recipe's settings and then with the heaviest trial the search space can draw:
each model it offers at its largest image size, batch and validation crops. A trial that draws a batch the GPU
cannot hold fails, trial after trial, in Optuna's log; here it is named before the study exists.

>>> print(describe_study(plan_study(cfg, ds, folds, [0], space, n_trials=20)))   # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from folds.data import Dataset
from folds.dry_run import free_memory, duration, epoch_seconds, probe, probe_what_fits
from folds.split import fold_rows
from tuning.space import trial_config

# the knobs that make a trial slower or hungrier for memory: the heaviest trial takes each one's largest value
HEAVY = ("img_size", "batch_size", "val_crops")


@dataclass
class _Folds:
    """What ``folds.dry_run.probe`` reads of a fold runner: the data and a fold's rows."""
    ds: Dataset
    folds: pd.DataFrame

    def fold_rows(self, k):
        return (*fold_rows(self.folds, k), k)


def heaviest_trials(space: dict) -> list[dict]:
    """The heaviest trials the space can draw, as parameters: each model it offers (or the recipe's) with the
    largest of each ``HEAVY`` knob it varies; none where it varies neither those nor the model."""
    top = {name: max(space[name]["choices"]) if space[name]["type"] == "categorical" else space[name]["high"]
           for name in HEAVY if name in space}
    models = [{"model": m} for m in space["model"]["choices"]] if "model" in space else [{}]
    return [{**m, **top} for m in models] if top or "model" in space else []


def _options(params: dict) -> str:
    return " ".join(f"--{name.replace('_', '-')} {value}" for name, value in params.items())


def plan_study(cfg, ds: Dataset, folds: pd.DataFrame, fold_ids: list, space: dict, *, n_trials: int,
               finished: int = 0, extra_images: dict | None = None, workers: int = 1,
               time_limit: float | None = None) -> dict:
    """What a trial trains (``fold_ids``, ``cfg.epochs`` each, ``extra_images[k]`` pseudo-labelled images besides
    fold ``k``'s paintings), probed on the first fold with the recipe's settings, where a lighter batch is found
    if it does not fit, and with each of ``heaviest_trials``, which must fit as drawn; each one's trial minutes.
    ``finished``: the trials the study has already, which count towards ``n_trials``."""
    runner, k0 = _Folds(ds, folds), fold_ids[0]
    plan = {"folds": list(fold_ids), "n_trials": n_trials, "finished": finished, "left": max(0, n_trials - finished),
            "workers": workers, "time_limit": time_limit,
            "epochs": cfg.epochs, "batch_size": cfg.batch_size, "pseudo_images": dict(extra_images or {}),
            "shapes": []}
    for params in [{}, *heaviest_trials(space)]:
        shape_cfg = trial_config(cfg, params)
        free_memory()
        try:
            p = probe_what_fits(runner, k0, shape_cfg, predict=False) if not params else \
                {**probe(runner, k0, shape_cfg, predict=False), "fits_with": None}
        except torch.OutOfMemoryError:  # a drawn trial has no lighter batch to fall back on
            plan["shapes"].append({"params": params, "probe": None, "trial_minutes": None})
            continue
        seconds = 0.0
        for k in fold_ids:
            tr, va = fold_rows(folds, k)
            epoch, first_extra = epoch_seconds(p, shape_cfg, len(tr) + plan["pseudo_images"].get(k, 0), len(va),
                                               cfg.epochs)
            seconds += first_extra + cfg.epochs * epoch
        plan["shapes"].append({"params": params, "probe": p, "trial_minutes": seconds / 60})
    return plan


def describe_study(plan: dict, study_dir) -> str:
    """What the study's dry run found, in lines a person reads."""
    folds = ",".join(map(str, plan["folds"]))
    lines = [f"dry run of the study in {study_dir}: nothing was written"
             + (f"; the study is there, its space and setup are this command's, {plan['finished']} of its trials "
                "are finished." if plan["finished"] else ".")]
    base = plan["shapes"][0]["probe"]
    lines.append(f"measured on {base['device']}: fold {base['fold']}'s training for {base['epochs']} epoch(s) on "
                 f"{base['train_sample']:,} of its paintings (validating {base['val_sample']:,}); a trial trains "
                 f"fold(s) {folds} for {plan['epochs']} epoch(s) each"
                 + (f", with {sum(plan['pseudo_images'].values()):,} pseudo-labelled images in all besides their "
                    "paintings" if plan["pseudo_images"] else "") + ":")
    if base["fits_with"]:
        lines.append(f"  --batch-size {plan['batch_size']} ran out of GPU memory; it fits with {base['fits_with']}: "
                     "add those options (the figures below are for them), or every trial fails.")
    out_of_memory = []
    for shape in plan["shapes"]:
        what = f"the heaviest trial the space can draw ({_options(shape['params'])})" if shape["params"] else \
            "the recipe's settings"
        p = shape["probe"]
        if p is None:
            out_of_memory.append(shape["params"])
            lines.append(f"  {what}: ran out of GPU memory; the trials that draw it would fail.")
            continue
        memory = (f", peak GPU memory {p['peak_memory'] / 2 ** 30:.1f} of {p['memory'] / 2 ** 30:.1f} GiB"
                  if p["peak_memory"] is not None else "")
        lines.append(f"  {what}: training {1 / max(p['train_per_image'], 1e-9):,.0f} images/s (the loader kept "
                     f"it waiting {p['loader_wait_share']:.0%} of the time){memory}; a trial about "
                     f"{duration(shape['trial_minutes'])}")
    if out_of_memory:
        lines.append("narrow the search space (--space) so that no trial draws those, or add --grad-checkpointing; "
                     "a trial that fails teaches the sampler nothing, so it goes on drawing there.")
    minutes = [s["trial_minutes"] for s in plan["shapes"] if s["trial_minutes"] is not None]
    n = plan["left"]  # --n-trials is the study's total: its finished trials count towards it
    if plan["n_trials"] and not n:
        lines.append(f"--n-trials {plan['n_trials']}: the study has {plan['finished']} finished trials already; the "
                     "command trains none and only summarises it. Raise --n-trials to go on.")
    if not minutes or not n:
        return "\n".join(lines)
    low, high = minutes[0], max(minutes)
    span = (lambda f: duration(f(low)) if high <= low * 1.05 else f"{duration(f(low))} to {duration(f(high))}")
    todo = f"the {n} trial(s) it leaves after the study's {plan['finished']} finished, " if plan["finished"] else ""
    lines.append(f"--n-trials {plan['n_trials']}: {todo}about {span(lambda m: m * n)} in this process, at most: "
                 "the pruner stops poor trials sooner.")
    workers = min(plan["workers"], n)  # the study starts no more workers than trials it leaves
    if workers > 1:
        lines.append(f"--workers {plan['workers']}: {workers} trials at once; on as many GPUs, about "
                     f"{span(lambda m: m * -(-n // workers))}. Workers that share a device share "
                     "its speed, which this estimate does not measure.")
    if plan["time_limit"] is not None:
        limit = plan["time_limit"]
        lines.append(f"--time-limit {limit:g}: " + (
            "it fits." if high * n <= limit else
            f"about {min(n, int(limit // low))} trial(s) fit in this process at the recipe's settings"
            + (f" ({int(limit // high)} at the heaviest)" if high > low * 1.05 else "")
            + "; the study stops cleanly before an epoch that would not end in time (exit 75), and the same "
              "command goes on."))
    return "\n".join(lines)
