"""Torch datasets, the class-balanced sampler and seeded DataLoaders.

Training order and every sample's augmentation come from (seed, epoch) alone, through
``EpochSampler``: loader workers persist across epochs, and the result does not depend on
how many there are. (albumentations 2.0.8 copies one RNG state into every worker, so a batch
position would otherwise see the same augmentation forever: AlbumentationsX#266.)
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch
from sklearn.utils.class_weight import compute_sample_weight
from torch.utils.data import DataLoader, Dataset, Sampler

from common import UserError
from common.machine import usable_cores
from folds import distributed
from folds.images import read_rgb


class ImageDataset(Dataset):
    """Images from paths (or the on-disk cache), transformed by an albumentations pipeline."""

    def __init__(self, paths, labels=None, transform=None, cache=None, crops=None, transform_of=None,
                 reuse_decoded: bool = False):
        self.paths = list(paths)
        # class indices, or probability rows (soft pseudo-labels)
        self.labels = None if labels is None else np.asarray(labels)
        if self.labels is not None and self.labels.ndim == 1:
            self.labels = self.labels.astype(np.int64)
        # one pipeline, or a list of them with ``transform_of`` giving each item's index into it
        # (whole paintings and pseudo-labelled crops are cropped at different scales)
        self.transform = transform
        self.transform_of = None if transform_of is None else np.asarray(transform_of, dtype=np.int64)
        self.cache = cache  # optional ImageCache: decode once, keep a downsized copy
        self.crops = crops  # optional per-item (x0, y0, x1, y1) fractions (None: the whole image)
        # The validation and the OOF list each painting's views one after another (folds.predict.PaintingViews:
        # whole, then its crops): with ``reuse_decoded`` a painting is decoded once for its views, not once a
        # view (3x faster per crop of a 1000 px JPEG: benchmarks/RESULTS.md). One image kept per loader worker;
        # off for training, whose order is random.
        self.reuse_decoded = reuse_decoded
        self._last = (None, None)  # (path, decoded image)

    def __len__(self):
        return len(self.paths)

    def decoded(self, path) -> np.ndarray:
        if self.reuse_decoded and self._last[0] == path:
            return self._last[1]  # never changed in place: the pipelines make new arrays of it, a batch copies it
        img = self.cache.get(path) if self.cache is not None else read_rgb(path)
        if self.reuse_decoded:
            self._last = (path, img)
        return img

    def image(self, i) -> np.ndarray:
        img = self.decoded(self.paths[i])
        box = None if self.crops is None else self.crops[i]
        return img if box is None else crop_array(img, box)

    def transform_for(self, i):
        return self.transform if self.transform_of is None else self.transform[self.transform_of[i]]

    def __getitem__(self, item):
        i, sample_seed = item if isinstance(item, tuple) else (item, None)
        transform = self.transform_for(i)
        if sample_seed is not None:  # a training sample: its augmentation is its own (EpochSampler)
            transform.set_random_seed(sample_seed)
        try:
            x = transform(image=self.image(i))["image"]
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - name the image; a worker's traceback names nothing useful
            raise UserError(f"{self.paths[i]}: cannot load or transform the image ({type(e).__name__}: {e}).") from e
        if self.labels is None:
            return x
        y = self.labels[i]
        return x, (int(y) if y.ndim == 0 else torch.from_numpy(y.astype(np.float32)))


def crop_array(img: np.ndarray, box) -> np.ndarray:
    """The (x0, y0, x1, y1) fractions ``box`` of an HxWxC image; at least one pixel each way."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    return img[int(y0 * h):max(int(y0 * h) + 1, int(y1 * h)), int(x0 * w):max(int(x0 * w) + 1, int(x1 * w))]


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


class WaitTimer:
    """A loader as ``train_one_epoch`` sees it, summing the time the loop waits for each batch.

    With the GPU's work queued asynchronously, that wait is the time the device may sit idle
    for want of data: the loader's share of an epoch (``history.csv``'s ``loader_wait``, and
    ``benchmarks/speed.py epochs``, which also reads the first batch's wait and the first step's time).
    """

    def __init__(self, loader):
        self.loader, self.wait = loader, 0.0
        self.first_batch = self.first_step = None  # the wait for batch 1; the host time of step 1

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t = time.perf_counter()
            if self.first_batch is not None and self.first_step is None:
                # cuDNN autotuning runs on the host inside the first step: a long one is autotuning
                self.first_step = t - self.given
            try:
                batch = next(it)
            except StopIteration:
                return
            self.given = time.perf_counter()
            self.wait += self.given - t
            if self.first_batch is None:
                self.first_batch = self.given - t
            yield batch


class KeptBatches:
    """A loader whose one deterministic pass is kept in memory: later passes cost no decoding.

    The validation paintings (whole and as fixed crops) are scored every epoch with the same
    eval transform, so every pass gives the same uint8 batches. Decoding them again was 30% of
    the loader's work per epoch (WikiArt-50, lite2: benchmarks/RESULTS.md), which
    counts wherever the loader workers set the pace. The loader (and its workers) is dropped
    after the first pass. A set larger than ``max_bytes`` (``keep_limit()``; estimated from each
    batch's size times the batch count) keeps streaming instead.
    """

    def __init__(self, loader, max_bytes: int | None = None):
        self.loader, self.kept = loader, None
        self.max_bytes = keep_limit() if max_bytes is None else max_bytes
        self.batch_size, self.dataset = loader.batch_size, loader.dataset

    def __len__(self):
        return len(self.kept) if self.kept is not None else len(self.loader)

    def __iter__(self):
        if self.kept is not None:
            yield from self.kept
            return
        kept, n = [], len(self.loader)
        for batch in batches(self.loader):
            if kept is not None:
                kept.append(batch)
                if _nbytes(batch) * n > self.max_bytes:
                    kept = None  # too large to keep: this loader keeps streaming
            yield batch
        if kept is not None:
            self.kept, self.loader = kept, None


def keep_limit() -> int:
    """The most bytes a ``KeptBatches`` set keeps: 4 GiB, or an 8th of the machine's memory if less (a 12 GiB
    Colab keeps 1.5 GiB: B3's 1,182 WikiArt-50 validation paintings at 288 px, whole and 2 crops each, take
    841 MiB; several fold processes each keep their own)."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not POSIX: assume enough
        ram = 32 << 30
    return min(4 << 30, ram // 8)


def _nbytes(batch) -> int:
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    return sum(t.element_size() * t.nelement() for t in items if isinstance(t, torch.Tensor))


def class_weights(labels, power: float = 1.0) -> np.ndarray:
    """Per-sample weights proportional to (count of its class) ** -power: at 1 each class is drawn
    equally often; at 0.5 (square root) a class is drawn in proportion to the root of its count,
    between that and the plain shuffle (0)."""
    w = compute_sample_weight("balanced", np.asarray(labels))
    return w if power == 1 else w ** power  # 1: the very weights runs made before the power existed


def _seed_worker(worker_id: int) -> None:
    # Anything outside the transform that draws from numpy's global RNG gets a reproducible,
    # per-worker seed; the augmentations themselves are seeded per sample (EpochSampler).
    np.random.seed(torch.initial_seed() % 2**32)


def default_workers() -> int:
    """The usable cores less one (at most 8); under torchrun the node's ranks share them, so each rank takes
    its share (``LOCAL_WORLD_SIZE``) less one: 8 ranks on 16 cores would otherwise start 64 workers."""
    per_process = usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return min(8, max(0, per_process - 1))


def num_workers(cfg) -> int:
    """DataLoader workers: ``--num-workers``, else ``default_workers()``."""
    return default_workers() if cfg.workers is None else int(cfg.workers)


def epoch_seed(seed: int, epoch: int) -> int:
    """The one per-epoch seed: sampler order, augmentations and dropout depend on (seed, epoch) alone."""
    return seed * 100_003 + epoch


class EpochSampler(Sampler):
    """The training order of one epoch, as (index, sample seed) pairs, from (seed, epoch) alone.

    Each sample's augmentation is seeded by its own seed (``ImageDataset`` reseeds the
    albumentations pipeline with it), so the augmentations depend on (seed, epoch, position)
    only: not on the number of loader workers nor on which worker draws the item. That lets the
    workers persist across epochs (no start-up per epoch), keeps a resumed fold exact, and avoids
    AlbumentationsX#266 (a worker repeating one augmentation at a batch position every epoch).
    Under torchrun, every rank makes the same draw and takes its share.
    """

    def __init__(self, labels, *, seed: int = 0, balanced: bool = False, power: float = 1.0):
        self.labels, self.seed, self.balanced, self.power, self.epoch = np.asarray(labels), seed, balanced, power, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.labels)
        if self.balanced:
            labels = self.labels if self.labels.ndim == 1 else self.labels.argmax(axis=1)
            w = torch.as_tensor(class_weights(labels, self.power))
            order = torch.multinomial(w, n, replacement=True, generator=g)  # as WeightedRandomSampler draws
        else:
            order = torch.randperm(n, generator=g)
        return order.tolist()

    def __iter__(self):
        # a sample's seed is its position in the whole epoch's draw, so ranks never share one
        base = epoch_seed(self.seed, self.epoch) * 1_000_003
        seeded = np.array([(i, (base + pos) % 2**32) for pos, i in enumerate(self.order())], dtype=np.int64)
        return iter([(int(i), int(s)) for i, s in distributed.shard(seeded)])

    def __len__(self) -> int:
        n, size = len(self.labels), distributed.world()[1]
        return n // size if size > 1 else n


def make_loader(dataset: ImageDataset, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                balanced: bool = False, power: float = 1.0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations depend only on (seed, epoch).

    Its workers persist: a training loader serves every epoch; call ``loader.sampler.set_epoch(e)``
    before each (``make_loader`` sets ``epoch``).
    """
    sampler = None
    if train:
        sampler = EpochSampler(dataset.labels, seed=seed, balanced=balanced, power=power)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)),
                      num_workers=num_workers, worker_init_fn=_seed_worker if num_workers else None,
                      pin_memory=pin_memory, drop_last=train and len(sampler) > batch_size,
                      persistent_workers=num_workers > 0)
