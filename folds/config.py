"""The run configuration: defaults < preset < --config file < --params file < CLI.

Options left at None keep the layer below (timm's habit), so a model's own input size and
a preset's values survive unless the user names them.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from common import UserError, layout
from common.metrics import DEFAULT_METRIC, METRICS
from ensemble.tta import TTA_MODES
from folds.augment import AFFINE_ON, CROPS
from folds.engine import AMP_MODES, CHANNELS_LAST_MODES
from folds.images import check_limit
from folds.optim import CLIP_MODES, OPTIMIZERS, SCHED_STEPS, SCHEDULERS
from folds.stopping import CROP, MONITORS
from models.factory import HEAD_INITS


@dataclass
class RunConfig:
    # data and outputs
    data_dir: str | None = None  # None: the built-in demo dataset
    corrections: str | None = None
    groups: str | None = None  # an id,group CSV: the images of one group share a fold
    name: str | None = None
    runs_dir: str = "runs"
    submissions_dir: str = "submissions"
    # split
    n_folds: int = 5
    split_seed: int = 42
    holdout: bool = False  # train fold 0 only: a single (K-1)/K : 1/K split
    allow_small_classes: bool = False  # split a class with fewer than K images as scikit-learn does (a warning)
    # model
    model: str = "efficientnet_b3"
    img_size: int | None = None  # None: the model's pretrained input size
    weights: str = "hub"
    init_from: str | None = None  # a finished run's folder: fold k starts from its fold k's best weights (same split)
    dropout: float = 0.2
    drop_path: float = 0.0  # timm's stochastic depth (drop_path_rate; 0: off)
    head_init: str = "zero"  # the new head's last layer: zero (every class starts equal), or timm's own init
    # training
    seed: int = 0
    epochs: int = 30
    lr: float = 1e-3
    step_size: int = 10
    gamma: float = 0.1
    optimizer: str = "adam"
    weight_decay: float = 0.0
    layer_decay: float = 0.0  # each layer group's lr scaled by this per group below the head (timm; 0: off)
    clip_grad: float = 0.0  # gradient clipping (timm's dispatch_clip_grad; 0: off)
    clip_mode: str = "norm"
    sched: str = "step"  # timm scheduler: StepLR(step_size, gamma) or cosine to 1% of lr
    warmup_epochs: int = 0
    sched_step: str = "update"  # the schedule moves the lr after every optimizer update, or once an epoch
    label_smoothing: float = 0.0
    mixup: float = 0.0  # MixUp alpha (timm.data.Mixup; 0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    mix_prob: float = 1.0  # the share of batches MixUp/CutMix touch (timm Mixup's prob)
    erasing: float = 0.0  # random-erasing probability per image, on the device (timm RandomErasing)
    ema: float = 0.0  # weight-EMA decay (timm ModelEmaV3; 0: off); validated and saved when on
    patience: int = 5
    metric: str = DEFAULT_METRIC  # the competition's: chooses checkpoints, tuned settings, the ensemble
    monitor: str | None = None  # None: the metric on validation crops (crop-f1) with test-scale crops, else whole
    val_crops: int = 2  # fixed half-size crops per validation painting, scored every epoch (0: off)
    batch_size: int = 32
    grad_accum_steps: int = 1  # batches whose gradients make one optimizer step (a larger batch in less memory)
    balanced_sampler: bool = True
    balance_power: float = 1.0  # the sampler draws a painting with weight (its class's count) ** -power: 1 balanced
    crop: str = "test-scale"
    affine: str = "loader"  # where the shift-scale-rotate runs: the loader workers, or the device per batch
    # pseudo-labels: fold k adds the test crops as labelled by fold k of a finished run
    pseudo: str | None = None  # that run's folder
    pseudo_mode: str = "hard"  # hard: confident argmax labels; soft: the probabilities themselves
    pseudo_threshold: float = 0.9  # hard mode: keep test crops whose top probability reaches this
    pseudo_siblings: bool = True  # each crop takes its overlap group's consensus first (nothing fitted on labels)
    pseudo_oof: bool = True  # fold k also learns its crop-OOF crops as fold k of that run labelled them (transductive
    # like the test, so the crop OOF sees the gain the test crops get; their true labels are never read)
    # prediction
    tta: str = "flips"
    crop_oof: int = 5  # fixed half-size crops per validation painting (0: off)
    # speed
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    grad_checkpointing: bool = False  # recompute activations in the backward pass: less memory, same result
    deterministic: bool = False  # CUDA: no cuDNN autotuning, deterministic kernels (repeatable to the digit, slower)
    workers: int | None = None
    cache: bool = False  # decode each image once into a downsized on-disk cache
    cache_dir: str | None = None  # where that cache and the decode check's record live (None: <runs_dir>/cache)
    max_image_pixels: int | None = None  # PIL's decompression-bomb limit (None: PIL's default; 0: off)
    keep_last: bool = False  # keep a finished fold's last.pt (the full training state; large)

    def to_dict(self) -> dict:
        return asdict(self)


def as_it_began(saved: dict) -> dict:
    """A whole saved setup (a run folder's config.json, a study's setup, a best.json's config) with each setting
    newer than it as it was then: it lacks the key, and where today's default is not that, reading the default
    there would go on with another recipe (and a setup compared key by key would differ)."""
    before = {"head_init": "timm", "metric": "macro_f1",  # what every run and study before the option was scored by
              "sched_step": "epoch" if _warms_up_or_anneals(saved) else "update",
              **({"pseudo_siblings": False, "pseudo_oof": False} if saved.get("pseudo") else {})}
    return {**before, **saved}


def _warms_up_or_anneals(saved: dict) -> bool:
    """Whether a setup's schedule moved within epochs under ``--sched-step update``: a step schedule without a
    warm-up is the same in both modes, so a setup of one (most runs and studies before the option) reads today's
    default and stays comparable with a setup of today. A setup without the keys (a study that tunes them) might."""
    return not (saved.get("sched") == "step" and saved.get("warmup_epochs") == 0)


# Settings that name a file or folder: made absolute where another working folder reads them (Ray)
PATH_SETTINGS = ("data_dir", "runs_dir", "submissions_dir", "corrections", "groups", "pseudo", "init_from",
                 "cache_dir")

# Settings that do NOT change what a fold learns: a rerun may change these; any other change
# is refused by an existing run folder. (Corrections change labels, so they are not here.)
RUN_CONTROL = {"data_dir", "runs_dir", "submissions_dir", "device", "workers", "name", "max_image_pixels",
               "keep_last", "deterministic", "grad_checkpointing", "cache_dir", "allow_small_classes"}
# (allow_small_classes only lets a split be made: a saved split is reused as it is, with it or without;
# deterministic kernels change the last digits, not the recipe; checkpointing recomputes the same
# activations, with the running statistics kept, so a fold that ran out of memory may resume with it)


def learning_settings(cfg: RunConfig, exclude=()) -> dict:
    """The settings that decide what a fold learns: the one "same experiment" key.

    A run folder compares all of them; a study leaves out the ones its trials vary.
    """
    return {k: v for k, v in cfg.to_dict().items() if k not in RUN_CONTROL and k not in set(exclude)}


PRESETS = {
    "default": {},
    # Small enough for `--fold all` on a 2-core CPU in a few minutes, with the same code path.
    # Its model learns from scratch, where the zero head (a fine-tuning rule) lost 0.016 crop-OOF and trained 12
    # epochs more: it keeps timm's init.
    "demo": {"model": "resnet10t", "img_size": 64, "weights": "none", "epochs": 12, "step_size": 8,
             "patience": 4, "batch_size": 32, "tta": "flips", "crop_oof": 3, "lr": 2e-3, "head_init": "timm"},
    # The original team's recipe: whole painting resized, default-scale RRC, one 80/20 split, no TTA.
    "seed": {"crop": "whole", "holdout": True, "tta": "none", "crop_oof": 5, "head_init": "timm"},
    # A modern fine-tuning recipe from timm's parts, checkpoints chosen on validation crops, each part kept by
    # crop-OOF on CPU subsets: MixUp/CutMix, erasing and EMA lost 0.04 at 8 epochs and tied at 20, so they are
    # left out (still options). A candidate until GPU runs choose it (benchmarks/RESULTS.md, fortieth session).
    "strong": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.02, "sched": "cosine", "warmup_epochs": 2,
               "label_smoothing": 0.1, "patience": 8, "monitor": "crop-f1"},
}

# What each preset is for, in a few words (``--help`` shows them; stated here, beside the presets).
PRESET_NOTES = {
    "default": "the suite's recipe: test-scale crops, a zero-started head, 5 folds, flip TTA, checkpoints on "
               "validation crops",
    "demo": "tiny model, runs on a CPU; the default when no layer names a data folder",
    "seed": "the original recipe: whole-image resize, timm's head init, one 80/20 split, no TTA",
    "strong": "AdamW, cosine with warm-up, label smoothing, checkpoints on validation crops: ahead of the "
              "default on CPU subsets, not yet chosen on a GPU",
}
assert PRESET_NOTES.keys() == PRESETS.keys(), "every preset needs its note"

MIN_IMG_SIZE = 16  # below this the backbones' strides leave no feature map to pool

# Options with a fixed set of values: each set comes from its own registry, stated once there.
CHOICES = {
    "optimizer": tuple(OPTIMIZERS),
    "crop": tuple(CROPS),
    "affine": AFFINE_ON,
    "tta": tuple(TTA_MODES),
    "sched": tuple(SCHEDULERS),
    "sched_step": SCHED_STEPS,
    "clip_mode": CLIP_MODES,
    "pseudo_mode": ("hard", "soft"),
    "amp": AMP_MODES,
    "channels_last": CHANNELS_LAST_MODES,
    "head_init": tuple(HEAD_INITS),
    "metric": tuple(METRICS),
}


def read_config_file(path, option: str) -> dict:
    """A JSON or YAML mapping of RunConfig fields (Optuna's best.json works as is)."""
    path = Path(path).expanduser()
    if path.is_dir():  # a run's folder for --config, a study's for --params: the file in it
        inside, kind = {"--config": (layout.CONFIG, "a run folder (runs/<name>)"),
                        "--params": (layout.BEST_PARAMS, "a study's folder (tuning/<study>)")}.get(option, (None, None))
        if inside is None or not (path / inside).is_file():
            raise UserError(f"{option} {path}: a folder" + (f" without {inside}; give {kind} or" if inside else
                                                            "; give") + " a JSON or YAML file.")
        path = path / inside
    if not path.is_file():
        raise UserError(f"{option} {path}: file not found.")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{option} {path}: cannot parse ({e}).") from None
    if isinstance(data, dict) and isinstance(data.get("params"), dict):
        # tuning/<study>/best.json: the study's training setup, with the best parameters over it; a setup is
        # whole, so a setting it lacks is newer than the study, which tuned what the setting's old behaviour did
        setup = data.get("config") or {}
        data = {**(as_it_began(setup) if setup else {}), **data["params"]}
    elif isinstance(data, dict) and path.name == layout.CONFIG and (path.parent / layout.MANIFEST).is_file():
        data = as_it_began(data)  # a run folder's own (whole) config, to continue it
    if not isinstance(data, dict):
        raise UserError(f"{option} {path}: expected a mapping of option names to values.")
    return data


def saved_config(run_dir) -> RunConfig:
    """The resolved config a run folder saved (``config.json``): keys this version lacks are ignored, and
    a setting newer than the folder reads as what the folder did (``as_it_began``)."""
    saved = as_it_began(layout.read_json(Path(run_dir) / layout.CONFIG))
    return RunConfig(**{f.name: saved[f.name] for f in fields(RunConfig) if f.name in saved})


def resolve_config(cli: dict, preset: str | None = None, config_file=None, params_file=None) -> RunConfig:
    """Merge the layers and check every value; unknown keys and bad choices are errors."""
    names = {f.name for f in fields(RunConfig)}
    files = {}
    for label, path in (("--config", config_file), ("--params", params_file)):
        if path:
            layer = read_config_file(path, label)
            unknown = sorted(set(layer) - names)
            if unknown:
                raise UserError(f"{label} {path}: unknown option(s) {unknown}; valid: {sorted(names)}.")
            files.update(layer)
    cli = {k: v for k, v in cli.items() if v is not None and k in names}
    if preset is None:  # the demo preset only when no layer names a data folder
        preset = "demo" if not {**files, **cli}.get("data_dir") else "default"
    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: unknown; choose one of {sorted(PRESETS)}.")
    merged = {**PRESETS[preset], **files, **cli}
    # a shell expands ~ on the command line; a config file's (or a quoted option's) path gets the same meaning
    merged.update({k: os.path.expanduser(merged[k]) for k in (*PATH_SETTINGS, "weights")  # pypi:... stays as it is
                   if isinstance(merged.get(k), str)})
    cfg = RunConfig(**merged)
    check_config(cfg)
    return cfg


def check_config(cfg: RunConfig) -> None:
    for key, allowed in CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise UserError(f"--{key.replace('_', '-')} must be one of {list(allowed)}, but got {getattr(cfg, key)!r}.")
    positive = {"epochs": 1, "batch_size": 1, "grad_accum_steps": 1, "step_size": 1, "n_folds": 2, "patience": 1}
    for key, low in positive.items():
        if int(getattr(cfg, key)) < low:
            raise UserError(f"--{key.replace('_', '-')} must be at least {low}, but got {getattr(cfg, key)}.")
    if not 0 < cfg.lr < 10:
        raise UserError(f"--lr must be in (0, 10), but got {cfg.lr}.")
    if not 0 < cfg.gamma <= 1:
        raise UserError(f"--gamma must be in (0, 1], but got {cfg.gamma}.")
    for key in ("dropout", "drop_path"):
        if not 0 <= getattr(cfg, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be in [0, 1), but got {getattr(cfg, key)}.")
    if not 0 <= cfg.label_smoothing < 1:
        raise UserError(f"--label-smoothing must be in [0, 1), but got {cfg.label_smoothing}.")
    if cfg.monitor is not None and cfg.monitor not in MONITORS:
        raise UserError(f"--monitor must be one of {list(MONITORS)}, but got {cfg.monitor!r}.")
    if cfg.monitor and cfg.monitor.startswith(CROP) and not cfg.val_crops:
        raise UserError(f"--monitor {cfg.monitor} (given, or a preset's) needs validation crops: set --val-crops 1 "
                        f"or more, or choose checkpoints on the whole paintings with --monitor "
                        f"{cfg.monitor.removeprefix(CROP)}.")
    for key in ("mixup", "cutmix", "warmup_epochs", "val_crops"):
        if getattr(cfg, key) < 0:
            raise UserError(f"--{key.replace('_', '-')} must be 0 (off) or more, but got {getattr(cfg, key)}.")
    for key in ("erasing", "pseudo_threshold", "mix_prob", "balance_power"):
        if not 0 <= getattr(cfg, key) <= 1:
            raise UserError(f"--{key.replace('_', '-')} must be in [0, 1], but got {getattr(cfg, key)}.")
    if not cfg.balanced_sampler and cfg.balance_power != 1:
        raise UserError(f"--balance-power {cfg.balance_power} with --no-balanced-sampler: the power shapes the "
                        "balanced sampler's draw. Leave --no-balanced-sampler out (--balance-power 0 draws "
                        "every painting alike, as the plain shuffle does), or the power.")
    if not (cfg.ema == 0 or 0.5 <= cfg.ema < 1):
        raise UserError(f"--ema must be 0 (off) or a decay in [0.5, 1), like 0.999, but got {cfg.ema}.")
    if (cfg.mixup or cfg.cutmix) and cfg.batch_size % 2:
        raise UserError(f"--mixup/--cutmix mix pairs within a batch: --batch-size must be even, got {cfg.batch_size}.")
    if cfg.pseudo and cfg.pseudo_mode == "soft" and (cfg.mixup or cfg.cutmix):
        raise UserError("--pseudo-mode soft with --mixup/--cutmix: timm's Mixup mixes class labels only; use "
                        "--pseudo-mode hard.")
    check_limit(cfg.max_image_pixels)
    if cfg.crop_oof < 0:
        raise UserError(f"--crop-oof must be 0 (off) or more, but got {cfg.crop_oof}.")
    if cfg.img_size is not None and cfg.img_size < MIN_IMG_SIZE:  # 0 read as "unset" and trained at the model's size
        raise UserError(f"--img-size must be at least {MIN_IMG_SIZE} pixels, or left out for the model's own input "
                        f"size, but got {cfg.img_size}.")
    if cfg.workers is not None and cfg.workers < 0:
        raise UserError(f"--num-workers must be 0 (load in the main process) or more, but got {cfg.workers}.")
    if cfg.weight_decay < 0:
        raise UserError(f"--weight-decay must be 0 (off) or more, but got {cfg.weight_decay}.")
    if not 0 <= cfg.layer_decay <= 1:
        raise UserError(f"--layer-decay must be 0 (off) or a factor in (0, 1], like 0.75, but got {cfg.layer_decay}.")
    if cfg.clip_grad < 0:
        raise UserError(f"--clip-grad must be 0 (off) or more, but got {cfg.clip_grad}.")
    for key in ("seed", "split_seed"):  # numpy's and torch's seeds
        if not 0 <= getattr(cfg, key) < 2**32:
            raise UserError(f"--{key.replace('_', '-')} must be in 0..2**32-1, but got {getattr(cfg, key)}.")


# What a knob needs of the rest of a run's settings to change anything: name -> (the need, in words; the test of
# a run's config). Given without its need it does nothing: a run says so; a study's space does not search it.
NEEDS = {
    "step_size": ("StepLR's: --sched step", lambda c: c.sched == "step"),
    "gamma": ("StepLR's: --sched step", lambda c: c.sched == "step"),
    "sched_step": ("a warm-up's or a cosine's: --warmup-epochs above 0 or --sched cosine",
                   lambda c: c.warmup_epochs > 0 or c.sched == "cosine"),
    "mix_prob": ("MixUp's and CutMix's: --mixup or --cutmix above 0", lambda c: c.mixup > 0 or c.cutmix > 0),
    "balance_power": ("the class-balanced sampler's", lambda c: c.balanced_sampler),
    "clip_mode": ("gradient clipping's: --clip-grad above 0", lambda c: c.clip_grad > 0),
    "pseudo_mode": ("pseudo-labelling's: --pseudo RUN", lambda c: bool(c.pseudo)),
    "pseudo_siblings": ("pseudo-labelling's: --pseudo RUN", lambda c: bool(c.pseudo)),
    "pseudo_threshold": ("hard pseudo-labels': --pseudo RUN with --pseudo-mode hard",
                         lambda c: bool(c.pseudo) and c.pseudo_mode == "hard"),
}


def _as_option(name: str, value) -> str:
    flag = name.replace("_", "-")
    return (f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag} {value}"


def recipe_warnings(cfg: RunConfig) -> list[str]:
    """Settings that are valid but unlikely to be what was meant (a short smoke run may mean them)."""
    out = []
    default = RunConfig()
    for name, (need, test) in NEEDS.items():  # set away from its default, where it does nothing
        if getattr(cfg, name) != getattr(default, name) and not test(cfg):
            out.append(f"{_as_option(name, getattr(cfg, name))} does nothing here: it is {need}.")
    if cfg.warmup_epochs >= cfg.epochs:
        out.append(f"--warmup-epochs {cfg.warmup_epochs} with --epochs {cfg.epochs}: every epoch is warm-up, so the "
                   f"learning rate never reaches --lr {cfg.lr:g}. Give more --epochs or fewer --warmup-epochs.")
    if cfg.balanced_sampler and cfg.balance_power > 0 and not METRICS[cfg.metric].classes_equal:
        out.append(f"--metric {cfg.metric} with the class-balanced sampler (the default): it draws every class as "
                   "often as the others, which a metric that weighs each class the same rewards and this one does "
                   "not (a rare class's gains are paid for by the common classes' rows). --no-balanced-sampler trains "
                   "on the data's own class shares; --balance-power 0.5 is between.")
    follows = (cfg.monitor or "").removeprefix(CROP)
    key = METRICS[cfg.metric].key
    if follows in {m.key for m in METRICS.values()} - {key}:  # a preset's or an old command's monitor
        out.append(f"--monitor {cfg.monitor} keeps each fold's checkpoint by another metric than --metric "
                   f"{cfg.metric}; for checkpoints by {cfg.metric} give --monitor "
                   f"{CROP + key if cfg.monitor.startswith(CROP) else key}.")
    return out


def parse_fold_spec(spec: str, n_folds: int) -> list[int]:
    """'all', '2' or '0,2' -> fold indices, each checked against K."""
    if spec in (None, "", "all"):
        return list(range(n_folds))
    try:
        out = sorted({int(s) for s in str(spec).split(",") if s.strip() != ""})
    except ValueError:
        raise UserError(f"--fold {spec!r}: use 'all', an index like 2, or a list like 0,2 (or 'full').") from None
    bad = [k for k in out if not 0 <= k < n_folds]
    if bad or not out:
        raise UserError(f"--fold {spec!r}: fold index must be in 0..{n_folds - 1} (--n-folds {n_folds}).")
    return out
