"""Combine predictions: TTA views, fold models and runs. Reads files; never imports training code."""
from ensemble.merge import MERGERS, merge
from ensemble.tta import TTA_MODES, BatchedTTA, tta_transforms

__all__ = ["MERGERS", "merge", "TTA_MODES", "BatchedTTA", "tta_transforms"]
