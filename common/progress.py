"""Progress for every phase that can take a while: a bar on a terminal, compact lines in a log.

On a terminal this is tqdm. When output goes to a file (a Kaggle kernel, nohup, CI), a bar
would be silence or noise, so a line like ``fold 0 test: 40% (4,800/12,000)`` is logged at
each 10% step, at most one per ``MIN_SECONDS``: short phases stay quiet.
"""
from __future__ import annotations

import logging
import os
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger("progress")
MIN_SECONDS = 5.0
# Set for fold processes that share their parent's terminal (--procs-per-gpu, --gpus): bars from
# several processes would overwrite each other on one line, so each logs its lines instead.
LINES_ENV = "PAINTER_CV_PROGRESS_LINES"


def bars() -> bool:
    return sys.stderr.isatty() and not os.environ.get(LINES_ENV)


def progress(iterable, total: int, desc: str, unit: str = "batch", scale: int = 1, items: int | None = None):
    """Iterate ``iterable`` (``total`` items); ``scale`` turns items into the unit a person counts (images), and
    ``items`` is their true count, where the last item holds fewer (a short last batch)."""
    if bars():
        yield from tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    next_step = 0.1
    for i, item in enumerate(iterable, 1):
        yield item
        done = i / max(total, 1)
        now = time.monotonic()
        if done >= next_step and now - last >= MIN_SECONDS:
            count = total * scale if items is None else items
            log.info("%s: %d%% (%s/%s %s, %.0f s)", desc, int(done * 100), f"{min(i * scale, count):,}",
                     f"{count:,}", unit, now - start)
            last = now
        while next_step <= done:
            next_step += 0.1
