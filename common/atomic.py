"""Atomic file writes: write a temp file beside the target, then ``os.replace``.

A killed process never leaves a half-written file under the final name, and several
processes writing the same run folder never read a torn file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_write(path, mode="w", **kwargs):
    """Yield a file handle whose content replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path, df, **kwargs) -> Path:
    kwargs.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, **kwargs)
    return Path(path)


def save_torch(path, obj) -> Path:
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)
