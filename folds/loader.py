"""Torch datasets, the class-balanced sampler and seeded DataLoaders.

Each epoch gets a fresh DataLoader whose generator is seeded from (seed, epoch), and
each worker reseeds its albumentations pipeline from torch's per-worker seed. Without
that, albumentations 2.0.8 copies one RNG state into every worker and every epoch, so
a batch position sees the same augmentation forever (AlbumentationsX#266).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from sklearn.utils.class_weight import compute_sample_weight
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, get_worker_info

from common import UserError
from folds import distributed
from folds.data import read_rgb


class ImageDataset(Dataset):
    """Images from paths (or the on-disk cache), transformed by an albumentations pipeline."""

    def __init__(self, paths, labels=None, transform=None, cache=None, crops=None):
        self.paths = list(paths)
        # class indices, or probability rows (soft pseudo-labels)
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.ndim == 1:
            self.labels = self.labels.astype(np.int64)
        self.transform = transform
        self.cache = cache  # optional ImageCache: decode once, keep a downsized copy
        self.crops = crops  # optional per-item (x0, y0, x1, y1) fractions, for crop-OOF

    def __len__(self):
        return len(self.paths)

    def image(self, i) -> np.ndarray:
        img = self.cache.get(self.paths[i]) if self.cache is not None else read_rgb(self.paths[i])
        if self.crops is not None:
            x0, y0, x1, y1 = self.crops[i]
            h, w = img.shape[:2]
            img = img[int(y0 * h):max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w):max(int(x0 * w) + 1, int(x1 * w))]
        return img

    def __getitem__(self, i):
        try:
            x = self.transform(image=self.image(i))["image"]
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - name the image; a worker's traceback names nothing useful
            raise UserError(f"{self.paths[i]}: cannot load or transform the image ({type(e).__name__}: {e}).") from e
        if self.labels is None:
            return x
        y = self.labels[i]
        return x, (int(y) if y.ndim == 0 else torch.from_numpy(y.astype(np.float32)))


def batches(loader):
    """Iterate a DataLoader; a UserError raised in a worker reaches the caller as the same one-line error.

    torch re-raises a worker's exception as ``UserError("Caught UserError in DataLoader worker
    process 0. Original Traceback ...")``; this keeps only the original message.
    """
    try:
        yield from loader
    except UserError as e:
        text = str(e)
        if "DataLoader worker" not in text:
            raise
        raise UserError(text.rpartition("UserError: ")[2].strip()) from None


def class_weights(labels) -> np.ndarray:
    """Per-sample weights proportional to 1 / (count of its class): each class is drawn equally often."""
    return compute_sample_weight("balanced", np.asarray(labels))


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker base_seed + worker_id, and base_seed comes from the loader's
    # seeded generator: so this is distinct per worker and per epoch, and reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    info = get_worker_info()
    tf = getattr(info.dataset, "transform", None)
    if hasattr(tf, "set_random_seed"):
        tf.set_random_seed(seed)


def default_workers() -> int:
    return min(8, max(0, (os.cpu_count() or 1) - 1))


def num_workers(cfg) -> int:
    """DataLoader workers: ``--num-workers``, else the cores less one (at most 8)."""
    return default_workers() if cfg.workers is None else int(cfg.workers)


def epoch_seed(seed: int, epoch: int) -> int:
    """The one per-epoch seed: sampler order, augmentations and dropout depend on (seed, epoch) alone."""
    return seed * 100_003 + epoch


def make_loader(dataset: ImageDataset, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                balanced: bool = False, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations depend only on (seed, epoch)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if train and num_workers == 0 and hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(epoch_seed(seed, epoch))
    sampler, shuffle = None, train
    if train and balanced:
        labels = dataset.labels if dataset.labels.ndim == 1 else dataset.labels.argmax(axis=1)
        w = class_weights(labels)
        sampler = WeightedRandomSampler(torch.as_tensor(w), num_samples=len(w), replacement=True, generator=g)
        shuffle = False
    if train and distributed.world()[1] > 1:
        # every rank makes the same draw from (seed, epoch), then takes its share
        order = list(sampler) if sampler is not None else torch.randperm(len(dataset), generator=g).tolist()
        sampler, shuffle = distributed.shard(order).tolist(), False
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=g,
                      num_workers=num_workers, worker_init_fn=_seed_worker if num_workers else None,
                      pin_memory=pin_memory,
                      drop_last=train and (len(sampler) if sampler is not None else len(dataset)) > batch_size,
                      persistent_workers=False)
