"""The CPU cores a process may use."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what a Slurm job or a ``docker --cpuset-cpus``
    container was given), not ``os.cpu_count()``, the whole machine's."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
