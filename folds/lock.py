"""A per-fold lock so several processes (one per GPU or machine) can share a run folder.

The lock file is created with ``O_CREAT | O_EXCL``, which the filesystem (NFS v3 and later
included) grants to exactly one creator. It holds host and pid. Its holder touches it (its
mtime: the heartbeat) every ``HEARTBEAT_SECONDS`` from a thread of its own, however long an
epoch or a prediction takes. It is stale when its process is gone (same host) or when its
heartbeat is older than ``STALE_SECONDS`` (another host: a machine lost, a Colab or Kaggle
session that ended); a stale lock is removed under a breaker lock (only one breaker removes
it), then the create is tried again.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
from pathlib import Path

HEARTBEAT_SECONDS = 30
# Five missed heartbeats, with room for clocks that differ between machines on a shared folder: a
# session that ended is taken over by the next --resume after this long. A holder paused for longer
# (Ctrl-Z) finds at its next epoch that its fold was taken (``lost``), and stops.
STALE_SECONDS = 10 * 60
# A lock without "beat" was made by an older checkout, which touched it once per epoch only: an epoch
# may take longer than STALE_SECONDS, so such a holder keeps the old limit (a team updating one machine).
EPOCH_BEAT_STALE_SECONDS = 2 * 3600
EMPTY_STALE_SECONDS = 60  # a creator that died between create and write left an empty lock
# A holder silent for this many heartbeats has most likely ended (a Colab session): said, and counted by a dry
# run, until its lock may be taken over. Fewer could be a network folder's late attributes.
MISSED_BEATS = 3


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this host lives (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@functools.cache
def pid_space() -> str:
    """Where this process's pids are what another process of the same value sees: the machine's boot and its pid
    namespace (Linux). Containers on one machine share its host name under Docker's ``--network host``, but not
    its pids: a pid from another one is "gone" here. Without /proc (macOS), the host name."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return f"host {socket.gethostname()}"


def same_pids(info: dict) -> bool:
    """Whether the pid in ``info`` (a lock's holder, a trial's worker) can be looked up from here: its
    ``pid_space`` is this process's; one written without it (an older checkout) by its host name."""
    if "pid_space" in info:
        return info["pid_space"] == pid_space()
    return info.get("host") == socket.gethostname()


class FoldLock:
    """``owner`` names a job that may outlive its process: a Ray task keeps its id across retries,
    so a retried attempt takes over the lock its killed attempt left (Ray runs one attempt at a time)."""

    def __init__(self, path: Path, owner: str | None = None):
        self.path = Path(path)
        self.me = {"host": socket.gethostname(), "pid_space": pid_space(), "pid": os.getpid(),
                   **({"owner": owner} if owner else {}), "beat": HEARTBEAT_SECONDS}
        self._stop_beating: threading.Event | None = None

    def _read(self) -> dict | None:
        """The lock file's holder; None when there is no lock file, {} while its creator is writing it."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def holder(self) -> dict | None:
        """The live holder of the lock, or None when it is free or stale."""
        info = self._read()
        if info is None:
            return None
        if not info:  # being written this instant by its creator: held, unless it was left empty long ago
            return None if self._age(self.path) > EMPTY_STALE_SECONDS else {"host": "?", "pid": -1}
        if info == self.me or (self.me.get("owner") and info.get("owner") == self.me["owner"]):
            return None
        return info if self._is_live(info, self.path) else None

    @staticmethod
    def _age(path: Path) -> float:
        try:
            return time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return float("inf")

    @staticmethod
    def stale_after(info: dict) -> int:
        """Seconds without a heartbeat after which the lock ``info`` (another host's) is taken over."""
        return EPOCH_BEAT_STALE_SECONDS if info and "beat" not in info else STALE_SECONDS  # {}: not known

    def _is_live(self, info: dict, path: Path) -> bool:
        if same_pids(info) and not alive(int(info.get("pid", -1))):  # a container sharing the host name: by beats
            return False
        return self._age(path) <= self.stale_after(info)

    def last_beat(self) -> int | None:
        """The lock file's mtime (ns), which its holder's every heartbeat changes; None without a lock file."""
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def silent_for(self) -> float:
        """Seconds since the lock's last heartbeat (inf without a lock file)."""
        return self._age(self.path)

    def missed_beats(self, info: dict) -> bool:
        """Whether the holder ``info`` has been silent for ``MISSED_BEATS`` heartbeats (an older checkout's lock,
        beaten once an epoch, never has)."""
        beat = info.get("beat")
        return bool(beat) and self.silent_for() > MISSED_BEATS * beat

    def describe(self, info: dict) -> str:
        """Who holds the lock and when it last beat, for the line that says a fold is skipped."""
        age = self.silent_for()
        beat = "" if age == float("inf") else f", last heartbeat {age:.0f} s ago"
        return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}{beat}"

    def acquire(self) -> bool:
        """Take the lock (a stale one is taken over) and keep it beating until ``release``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        won = self._create()
        if not won:
            try:
                seen = os.stat(self.path)
            except FileNotFoundError:
                won = self._create()
            else:
                won = self.holder() is None and self._break_stale(seen) and self._create()
        if won:
            self._start_beating()
        return won

    def _start_beating(self) -> None:
        self._stop_beating = stop = threading.Event()

        def beat():
            while not stop.wait(HEARTBEAT_SECONDS) and self.heartbeat():
                pass

        threading.Thread(target=beat, name=f"heartbeat {self.path}", daemon=True).start()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.me))
        return True

    def _break_stale(self, seen: os.stat_result) -> bool:
        """Remove the stale lock file ``seen``, under a breaker lock so only one process removes it.

        Without the breaker, a slow process could remove the fresh lock that a faster one has
        just created in place of the stale one. Under it, the file is removed only if it is
        still the very file that was judged stale (same inode and mtime).
        """
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            if self._age(breaker) > EMPTY_STALE_SECONDS:  # a breaker that died mid-break
                breaker.unlink(missing_ok=True)
            return False
        os.close(fd)
        try:
            now = os.stat(self.path)
            if (now.st_ino, now.st_mtime_ns) == (seen.st_ino, seen.st_mtime_ns):
                self.path.unlink()
            return True
        except FileNotFoundError:
            return True
        finally:
            breaker.unlink(missing_ok=True)

    def lost(self) -> str | None:
        """Why the lock is no longer this process's, or None while it is: it was paused (Ctrl-Z, a frozen VM)
        for longer than ``STALE_SECONDS`` and another process took the fold over."""
        info = self._read()
        if info == self.me:
            return None
        why = "its lock file was removed" if info is None else (
            f"it was taken over by {self.describe(info)}, as this process had not beaten for more than "
            f"{STALE_SECONDS // 60} min (a pause: Ctrl-Z, a frozen machine)")
        return (f"{self.path}: this process no longer holds the fold: {why}. It stops here, so that two processes "
                "never train one fold.")

    def heartbeat(self) -> bool:
        """Touch the lock while it is this process's; False once another process holds it (this one was
        paused past STALE_SECONDS and taken over): its beats would keep that holder's lock looking live
        after that holder is gone. The thread stops then; the next epoch's ``lost`` stops the fold."""
        info = self._read()
        if info and info != self.me:  # (None: removed; {}: being written)
            return False
        try:
            os.utime(self.path)
        except OSError:  # removed, or a network folder that hiccuped: the next beat tries again
            pass
        return True

    def release(self) -> None:
        if self._stop_beating is not None:
            self._stop_beating.set()
        if self._read() == self.me:
            self.path.unlink(missing_ok=True)
