"""The fine-tuning recipe's per-batch parts, from timm: MixUp/CutMix, random erasing, the loss.

Random erasing runs on the device, on the normalised batch (no CPU cost per sample).
Targets are class indices, or probability rows (MixUp/CutMix, soft pseudo-labels): the
loss is soft-target cross-entropy for those.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.random_erasing import RandomErasing
from timm.loss import SoftTargetCrossEntropy


@dataclass
class Recipe:
    label_smoothing: float = 0.0
    mixup: Mixup | None = None
    erase: RandomErasing | None = None

    def batch(self, x: torch.Tensor, y: torch.Tensor):
        """Augment a normalised batch on the device; returns (x, targets)."""
        if self.erase is not None:
            x = self.erase(x)
        if self.mixup is not None and y.ndim == 1 and len(x) % 2 == 0:  # pairs within the batch
            x, y = self.mixup(x, y)
        return x, y

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 2:
            return SoftTargetCrossEntropy()(logits, y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)


def build_recipe(cfg, num_classes: int, device) -> Recipe:
    mixup = None
    if cfg.mixup or cfg.cutmix:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      label_smoothing=cfg.label_smoothing, num_classes=num_classes)
    erase = RandomErasing(cfg.erasing, mode="pixel", device=str(device)) if cfg.erasing else None
    return Recipe(cfg.label_smoothing, mixup, erase)
