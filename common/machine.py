"""What this process may run on: its CPU cores and its GPUs (not the whole machine's)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a Slurm job or a ``docker --cpuset-cpus``
    container was given), not ``os.cpu_count()``, the whole machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def side_by_side_workers(cores: int, procs: int) -> int:
    """Loader workers for each of ``procs`` fold processes on ``cores`` cores.

    A fold process's main thread mostly waits for the GPU and its loader, so it is counted as
    half a core; the rest go to the loader workers, which feed a small backbone. (Counting it as
    a whole core gave 6 processes on 16 cores one worker each and left 4 cores idle:
    benchmarks/RESULTS.md, GPU run of 2026-11-27.)
    """
    return max(0, (2 * cores - procs) // (2 * procs))


THREADS_ENV = "OMP_NUM_THREADS"  # torch's intra-op threads (and OpenBLAS's), read once as a process starts


def side_by_side_env(cores: int, procs: int) -> dict:
    """What each of ``procs`` processes side by side on ``cores`` cores adds to its environment: its share of the
    cores as torch's intra-op threads, unless the user set them. Each would start a pool as large as the machine
    (torch's default), and the pools' spinning threads would oversubscribe the cores: two demo fold processes on
    2 cores took about 15x as long an epoch (benchmarks/RESULTS.md, thirty-fifth session). torchrun and Ray set
    the same variable the same way. The loader workers set their own (1, torch's DataLoader does)."""
    if THREADS_ENV in os.environ:
        return {}
    return {THREADS_ENV: str(max(1, cores // procs))}


def visible_gpus() -> list[str]:
    """This process's GPUs, as a child process's ``CUDA_VISIBLE_DEVICES`` must name them: the parent's own
    list when it was given one (an index or a UUID each), else 0..n-1."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:n] if listed else [str(i) for i in range(n)]
