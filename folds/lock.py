"""A per-fold lock so several processes (one per GPU or machine) can share a run folder.

The lock file holds host and pid. It is stale when its process is gone (same host) or when
its heartbeat (the file's mtime, touched every epoch) is older than ``STALE_SECONDS``.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

STALE_SECONDS = 2 * 3600


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class FoldLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}

    def holder(self) -> dict | None:
        """The live holder of the lock, or None when it is free or stale."""
        try:
            info = json.loads(self.path.read_text())
            age = time.time() - self.path.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return None
        if info == self.me:
            return None
        if info.get("host") == self.me["host"] and not _alive(int(info.get("pid", -1))):
            return None
        return None if age > STALE_SECONDS else info

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.holder() is not None:
            return False
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.me))
        os.replace(tmp, self.path)
        time.sleep(0.05)  # two racing takers: the last rename wins, the other sees it here
        try:
            return json.loads(self.path.read_text()) == self.me
        except (FileNotFoundError, ValueError):
            return False

    def heartbeat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()) == self.me:
                self.path.unlink()
        except (FileNotFoundError, ValueError):
            pass
