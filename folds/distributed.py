"""One fold on several GPUs (or CPU processes): data-parallel training under ``torchrun``.

``torchrun --nproc_per_node N folds/run.py --fold 0`` starts N ranks. Each trains on its share
of every epoch's draw (the class-balanced draw is made identically on every rank from
(seed, epoch), then split), gradients are averaged by DDP, predictions are sharded and
gathered, and every rank reaches the same early-stopping decision from the same gathered
scores. Only rank 0 writes files (``common.atomic`` refuses on the others). NCCL on CUDA,
gloo on CPU (so CI tests it on 2 cores).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    return world()[0] == 0


def init(device: str = "auto") -> None:
    """Join torchrun's process group, when there is one (WORLD_SIZE > 1)."""
    if world()[1] < 2 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")


def close() -> None:
    """Leave the process group before the interpreter exits. Left to exit, gloo's threads can be
    torn down while still joinable, and the rank dies with SIGABRT after its work is done."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def agree(value):
    """Rank 0's ``value`` on every rank: one decision (skip a fold, take a lock) for the whole group."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shard(indices) -> np.ndarray:
    """This rank's share of ``indices``: equal counts on every rank (a few items are left out),
    so every rank runs the same number of steps, as DDP needs."""
    rank, size = world()
    indices = np.asarray(indices)
    if size < 2:
        return indices
    return indices[: len(indices) // size * size][rank::size]


def my_rows(n: int) -> slice:
    """This rank's rows of ``n`` to predict: one contiguous block a rank, so a painting's crops, listed in a
    row, stay on one rank and are decoded once (``ImageDataset(reuse_decoded=True)``)."""
    rank, size = world()
    return slice(n * rank // size, n * (rank + 1) // size)


def gather_rows(rows: np.ndarray, n: int) -> np.ndarray:
    """Each rank predicted its ``my_rows(n)``; every rank gets all ``n``, in order."""
    if not active():
        return rows
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, rows)
    out = np.concatenate(parts)
    assert len(out) == n, (len(out), n)
    return out


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around the model for the training step (the bare model is what is saved and evaluated)."""
    if not active():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
