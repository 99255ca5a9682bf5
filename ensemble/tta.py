"""Test-time augmentation with ttach's transforms, run as one batched forward pass.

ttach's ``ClassificationTTAWrapper`` calls the model once per transform; here all views of a
batch go through the model together, which keeps the GPU busy. Views are merged on
probabilities (softmax first), never on logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import ttach as tta

TTA_MODES = {
    "none": lambda: tta.Compose([]),
    "hflip": lambda: tta.Compose([tta.HorizontalFlip()]),
    "flips": lambda: tta.Compose([tta.HorizontalFlip(), tta.VerticalFlip()]),  # 4 views
    "d4": tta.aliases.d4_transform,  # flips x 90-degree rotations: 8 views
}


def tta_transforms(mode: str) -> tta.Compose:
    if mode not in TTA_MODES:
        raise ValueError(f"tta mode must be one of {sorted(TTA_MODES)}, but got {mode!r}")
    return TTA_MODES[mode]()


def n_views(mode: str) -> int:
    """Views per image, the identity included: each is one more forward pass of the image."""
    return max(1, len(list(tta_transforms(mode))))


class BatchedTTA(nn.Module):
    """Wrap a classifier: input (B, C, H, W) -> per-view probabilities (V, B, K).

    >>> views = BatchedTTA(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), "flips")
    >>> views(torch.zeros(2, 3, 2, 2)).shape
    torch.Size([4, 2, 3])
    """

    def __init__(self, model: nn.Module, mode: str = "flips"):
        super().__init__()
        self.model = model
        self.mode = mode
        self.transforms = list(tta_transforms(mode)) or [None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = [x if t is None else t.augment_image(x) for t in self.transforms]
        logits = self.model(torch.cat(views, dim=0))
        return logits.float().softmax(dim=-1).view(len(views), x.shape[0], -1)
