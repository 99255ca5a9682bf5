"""``--time-limit``: end a fold run cleanly before a platform's limit kills it.

A Kaggle notebook session ends at a fixed limit, and a version killed there keeps none of its
outputs; Colab disconnects. With ``--time-limit MINUTES`` the fold runner stops between pieces of
work (an epoch, a fold's predictions) when the longest such piece so far would not end in time. The
stop unwinds like Ctrl-C (``common.interrupt.TimeUp``): finished epochs and folds are kept, the fold
lock is released, and the command exits with 75 (EX_TEMPFAIL: run it again with --resume).
"""
from __future__ import annotations

from time import monotonic

from common import UserError
from common.interrupt import TimeUp
from folds import distributed
from folds.cli import strip_options

OPTION = "--time-limit"


class Deadline:
    """The end of a command's time; ``None`` minutes: no limit."""

    def __init__(self, minutes: float | None = None):
        if minutes is not None and not minutes > 0:
            raise UserError(f"{OPTION} {minutes}: give the minutes this command may take, above 0.")
        self.end = None if minutes is None else monotonic() + 60 * minutes
        self.longest: dict[str, float] = {}  # seconds of the longest piece of each kind of work so far

    def hand_on(self, argv: list[str]) -> list[str]:
        """``argv`` for a child process (a side-by-side fold process, a study worker): the minutes left
        here, not a limit counted again from the child's own start."""
        if self.end is None:
            return list(argv)
        return [*strip_options(argv, {OPTION: 1}), OPTION, f"{max(self.minutes_left(), 1e-3):.4f}"]

    def minutes_left(self) -> float | None:
        return None if self.end is None else (self.end - monotonic()) / 60

    def before(self, what: str, where: str) -> None:
        """Raise ``TimeUp`` when the longest ``what`` so far would not end before the limit (every rank
        takes rank 0's decision, so none is left waiting in a collective)."""
        if self.end is None:
            return
        left, need = self.end - monotonic(), self.longest.get(what, 0.0)
        if distributed.agree(left <= need):
            raise TimeUp(f"{OPTION}: {where} was not started: {_duration(max(left, 0))} were left, and the "
                         f"longest {what} so far took {_duration(need)}")

    def took(self, what: str, seconds: float) -> None:
        self.longest[what] = max(self.longest.get(what, 0.0), seconds)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
