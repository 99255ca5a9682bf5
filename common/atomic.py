"""Atomic file writes: write a temp file beside the target, then ``os.replace``.

A killed process never leaves a half-written file under the final name, and several
processes writing the same run folder never read a torn file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from common.errors import UserError
from common.interrupt import finish_first

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # os.umask can only be read by setting it; keep other threads out meanwhile
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


TMP_SUFFIX = ".tmp"  # an atomic write's temp file: ".<name>.<random>.tmp" beside its target
LEFTOVER_AGE = 60  # seconds without a write after which a temp file has no live writer (each write moves its mtime)


def remove_leftovers(folder) -> int:
    """Remove the temp files of ``atomic_write`` that a process killed mid-write left in ``folder`` (SIGKILL, the
    OOM killer, a lost machine: no clean-up ran), untouched for ``LEFTOVER_AGE`` seconds; the bytes freed. Hidden,
    they would keep their space unseen: a checkpoint's is about 3x the weights. Only for a folder no other process
    writes now (a fold's, under its lock)."""
    now, freed = time.time(), 0
    for p in Path(folder).glob(f".*{TMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            if p.is_file() and now - st.st_mtime > LEFTOVER_AGE:
                p.unlink()
                freed += st.st_size
    return freed


@contextlib.contextmanager
def atomic_write(path, mode="w", **kwargs):
    """Yield a file handle whose content replaces ``path`` only when the block succeeds. A Ctrl-C or
    SIGTERM meanwhile is raised once the file is written: raised inside a writer such as torch.save,
    the writer's own clean-up turned the stop into a traceback."""
    path = Path(path)
    with finish_first():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"cannot write {path}: a file is in the way of its folder {path.parent}; "
                            "choose another output path.") from None
        except PermissionError:
            raise UserError(f"cannot write {path}: permission denied in {path.parent}.") from None
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            raise UserError(f"cannot write {path}: its file system is read-only (a Kaggle dataset under "
                            "/kaggle/input is); write under a writable folder such as /kaggle/working.") from None
        try:
            # mkstemp makes the file 0600; a shared runs/ folder needs the user's umask, like open() gives.
            # A file system without Unix modes refuses the change (FAT or exFAT on a USB disk: EPERM; some
            # FUSE and SMB mounts): its files take the mount's modes, so the write goes on.
            with contextlib.suppress(OSError):
                os.chmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, mode, **kwargs) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if _disk_full(e):  # Kaggle's /kaggle/working holds 20 GB: a long run of big checkpoints can fill it
                free = shutil.disk_usage(path.parent).free / 2**20
                raise UserError(f"cannot write {path}: no space left on its disk ({free:.0f} MB free). What was "
                                "written before is whole and kept: free some space (old run folders, runs/cache), "
                                "then run the same command again (a fold run with --resume).") from None
            raise


def check_writable_folder(folder, option: str) -> None:
    """Fail before any work when ``folder`` (made if missing) could not take files: the nearest folder
    that exists must be a writable folder. ``option``: what the user gave, for the message."""
    folder = Path(folder)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{option}: {parent} is a file, not a folder; choose another path.")
            if not os.access(parent, os.W_OK | os.X_OK):  # also false for root on a read-only file system
                raise UserError(f"{option}: cannot write in {parent} (permission denied or a read-only file "
                                "system).")
            return


def check_out_file(out, option: str = "--out") -> None:
    """Fail before any work when the file ``out`` could not be written: its folder must take files, and
    ``out`` must not be a folder (found only at the final rename, after the work, before)."""
    out = Path(out)
    check_writable_folder(out.parent, f"{option} {out}")
    if out.is_dir():
        raise UserError(f"{option} {out}: is a folder; give a .csv file path.")


def _disk_full(e: BaseException | None) -> bool:
    """ENOSPC or EDQUOT, raised directly or behind the writer's own error (torch.save's zip writer)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _only_rank_zero(path) -> None:
    # Under torchrun every rank runs the same code; run files are written by rank 0 alone. (The
    # image cache may be filled by any rank: it writes through atomic_write directly.)
    rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        raise RuntimeError(f"rank {rank} tried to write {path}: only rank 0 writes run files.")


def write_text(path, text: str) -> Path:
    _only_rank_zero(path)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path, df, **kwargs) -> Path:
    _only_rank_zero(path)
    kwargs.setdefault("index", False)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, **kwargs)
    return Path(path)


def save_torch(path, obj) -> Path:
    import torch

    _only_rank_zero(path)
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)
