"""How Ctrl-C and SIGTERM stop a command: as an exception, so every ``finally`` runs (the fold
lock is released, side-by-side fold processes are stopped), but never in the middle of a file
being written, where the writer's own clean-up could turn the stop into a traceback.

SIGTERM is what ``kill``, ``timeout``, a scheduler's preemption and a parent run stopping its
fold processes send, and SIGHUP what a closed terminal or SSH session sends; each raises
``Stopped``, a KeyboardInterrupt, so it unwinds like Ctrl-C. (Side-by-side fold processes run in
sessions of their own, so the parent's unwinding is what stops them.)
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, unwound like Ctrl-C; ``str()`` is the signal's name."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


STOPS = (signal.SIGTERM, signal.SIGHUP)


class TimeUp(KeyboardInterrupt):
    """``--time-limit`` reached between two pieces of work: unwound like a stop, so every ``finally`` runs
    and nothing finished is lost; the command exits with ``EXIT_CODE``."""
    EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): not finished, run it again

    @classmethod
    def of_children(cls, codes: list[int], who: str) -> "TimeUp | None":
        """The stop of child processes that all ended well or at the time limit (None when none stopped
        there, or when another one failed: that is a failure, not a time limit)."""
        if cls.EXIT_CODE not in codes or not set(codes) <= {0, cls.EXIT_CODE}:
            return None
        return cls(f"{who} {[i for i, c in enumerate(codes) if c]} of {len(codes)} stopped at it")


_held = 0  # how many finish_first() blocks the main thread is in
_pending: BaseException | None = None


def _children_after_a_stop(signum, frame):
    """SIGCHLD once a stop is unwinding: the children's ends are the stop's own, not an error of theirs."""


LOST_STOP_RETRY_SECONDS = 0.05


def _on_unraisable(args) -> None:
    """Python drops an exception raised where it cannot propagate, and prints "Exception ignored in": a destructor
    (a DataLoader iterator joining its workers, tens of milliseconds after every prediction pass), an at-fork
    callback (logging's, as loader workers start). A stop raised there by a signal was lost: the run trained on,
    and, stops being ignored once raised, ignored every later SIGTERM too. It is sent again a moment later, to
    land outside; the handlers it had set aside come back first."""
    stop = args.exc_value
    if not isinstance(stop, KeyboardInterrupt) or isinstance(stop, TimeUp):
        (_previous_unraisable or sys.__unraisablehook__)(args)
        return
    signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
    for s in STOPS if signum in STOPS else ():
        signal.signal(s, _on_signal)
    threading.Timer(LOST_STOP_RETRY_SECONDS, os.kill, (os.getpid(), signum)).start()


_previous_unraisable = None  # sys.unraisablehook outside stops_as_exceptions


def _on_signal(signum, frame):
    global _pending
    stop = Stopped(signum) if signum in STOPS else KeyboardInterrupt()
    if signum in STOPS:  # once: a scheduler that signals every process must not cut the clean-up short
        for s in STOPS:
            signal.signal(s, signal.SIG_IGN)
    # A stop sent to every process of the job (Slurm's preemption, `pkill -f`, `kill -- -PGID`) also ends the
    # DataLoader's workers. torch watches them through SIGCHLD and raises "DataLoader worker ... is killed by
    # signal" from that handler, which would replace this stop with a traceback while it unwinds. Python runs
    # the lower-numbered SIGTERM's handler first, so the workers' SIGCHLD, handled later, finds a handler that
    # does nothing. (Not SIG_IGN, which would reap the children before they are waited for, nor SIG_DFL: a
    # signal already pending then prints Python's "ignored due to race condition".)
    # It stays: the workers' SIGCHLD may come after the unwinding, as the process exits.
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, _children_after_a_stop)
    if _held:
        _pending = _pending or stop
        return
    raise stop


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stops_as_exceptions():
    """Within the block, SIGTERM and SIGHUP raise ``Stopped`` and Ctrl-C ``KeyboardInterrupt`` (held back
    while a ``finish_first`` block runs); the previous handlers come back after it."""
    if not _on_main_thread():  # only the main thread may set handlers; a thread gets Python's defaults
        yield
        return
    global _previous_unraisable
    # a signal set to be ignored stays ignored: `nohup` ignores SIGHUP, a shell's `&` job SIGINT
    previous = {s: signal.signal(s, _on_signal) for s in (*STOPS, signal.SIGINT)
                if signal.getsignal(s) is not signal.SIG_IGN}
    outermost = sys.unraisablehook is not _on_unraisable
    if outermost:
        _previous_unraisable, sys.unraisablehook = sys.unraisablehook, _on_unraisable
    try:
        yield
    finally:
        if outermost:
            sys.unraisablehook, _previous_unraisable = _previous_unraisable, None
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def finish_first():
    """A stop that arrives inside the block is raised when the block has ended."""
    global _held, _pending
    if not _on_main_thread():  # signals are handled on the main thread alone
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:  # the stop wins over an error the block raised meanwhile
            stop, _pending = _pending, None
            raise stop
