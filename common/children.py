"""Child processes (side-by-side fold processes, Optuna's local workers) that stop with their parent.

Each child starts in a session of its own, so a terminal's Ctrl-C reaches the parent alone; the
parent then sends every live child one SIGTERM, which the child unwinds like Ctrl-C (see
``common.interrupt``): it releases its fold lock and keeps every finished epoch. Before, a parent
stopped by ``kill``, a scheduler or a notebook's interrupt left its children training on,
holding their folds, and a second terminal Ctrl-C could land in a child's clean-up.
"""
from __future__ import annotations

import signal
import subprocess
import time

GRACE_SECONDS = 120  # a child unwinds and shuts its loader workers down well within this


def start(argv: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, start_new_session=True)


def wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """The children's exit codes; if this process is interrupted while it waits, it stops them first."""
    try:
        return [p.wait() for p in procs]
    except BaseException:
        stop(procs)
        raise


def stop(procs: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """One SIGTERM to each live child, then ``grace`` seconds for them all before SIGKILL."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
