"""The fine-tuning recipe's per-batch parts, from timm: MixUp/CutMix, random erasing, the loss;
and the shift-scale-rotate when ``--affine device`` moves it off the loader.

Random erasing and that affine run on the device, on the normalised batch (no CPU cost per sample).
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

from folds.augment import AFFINE


class DeviceAffine:
    """The train transform's shift-scale-rotate (``folds.augment.AFFINE``), per image of a batch on the device.

    One ``affine_grid`` + ``grid_sample`` does the batch, where the loader's albumentations Affine
    costs each worker 0.49 ms per training image at 260 px on average (benchmarks/RESULTS.md), 38%
    of the image's loader time. Parameters come from torch's global RNG
    on the CPU, which training reseeds from (seed, epoch) every epoch, so a resume replays them.
    Borders reflect, as the loader's BORDER_REFLECT_101 does (within half a pixel). Square inputs.
    """

    def __init__(self, translate: tuple, scale: tuple, rotate: tuple, p: float):  # ranges: folds.augment.AFFINE
        self.translate, self.scale, self.rotate, self.p = translate, scale, rotate, p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def uniform(lo_hi, *shape):
            lo, hi = lo_hi
            return lo + (hi - lo) * torch.rand(*shape)

        n = len(x)
        chosen = torch.rand(n) < self.p
        angle = torch.deg2rad(uniform(self.rotate, n))
        scale = uniform(self.scale, n)
        shift = uniform(self.translate, n, 2) * 2  # a share of the side; the grid spans [-1, 1]
        idx = chosen.nonzero().flatten()
        if len(idx) == 0:
            return x
        # the grid maps output to input points: the inverse of "scale and rotate, then shift"
        cos, sin = torch.cos(angle[idx]), torch.sin(angle[idx])
        inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2) / scale[idx, None, None]
        theta = torch.cat([inv, -(inv @ shift[idx, :, None])], -1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, [len(idx), *x.shape[1:]], align_corners=False)
        idx = idx.to(x.device)
        x[idx] = F.grid_sample(x[idx], grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return x


@dataclass
class Recipe:
    label_smoothing: float = 0.0
    mixup: Mixup | None = None
    erase: RandomErasing | None = None
    affine: DeviceAffine | None = None

    def batch(self, x: torch.Tensor, y: torch.Tensor):
        """Augment a normalised batch on the device; returns (x, targets)."""
        if self.affine is not None:
            x = self.affine(x)
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
    affine = DeviceAffine(**AFFINE) if cfg.affine == "device" else None
    return Recipe(cfg.label_smoothing, mixup, erase, affine)
