"""``--time-limit``: end a fold run cleanly before a platform's limit kills it.

A Kaggle notebook session ends at a fixed limit, and a version killed there keeps none of its
outputs; Colab disconnects. With ``--time-limit MINUTES`` the fold runner stops between pieces of
work (an epoch, a fold's predictions) when the longest such piece so far would not end in time. The
first fold's predictions have no such piece before them: their time is estimated from the pace at
which its epochs scored their validation images. The stop unwinds like Ctrl-C
(``common.interrupt.TimeUp``): finished epochs and folds are kept, the fold lock is released, and
the command exits with 75 (EX_TEMPFAIL: run it again with --resume).
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
        # seconds per validation image: decoded and scored (a fold's first epoch), and scored only (later
        # epochs score the batches kept in memory); the first fold's predictions are estimated from them
        self.decode_and_score: float | None = None
        self.score_only: float | None = None

    def hand_on(self, argv: list[str]) -> list[str]:
        """``argv`` for a child process (a side-by-side fold process, a study worker): the minutes left
        here, not a limit counted again from the child's own start."""
        if self.end is None:
            return list(argv)
        return [*strip_options(argv, {OPTION: 1}), OPTION, f"{max(self.minutes_left(), 1e-3):.4f}"]

    def minutes_left(self) -> float | None:
        return None if self.end is None else (self.end - monotonic()) / 60

    def before(self, what: str, where: str, estimate: float = 0.0) -> None:
        """Raise ``TimeUp`` when the longest ``what`` so far, or, before the first, its ``estimate`` in
        seconds, would not end before the limit (every rank takes rank 0's decision, so none is left
        waiting in a collective)."""
        if self.end is None:
            return
        left, took = self.end - monotonic(), self.longest.get(what)
        need = estimate if took is None else took
        if distributed.agree(left <= need):
            why = (f"the longest {what} so far took {duration(need)}" if took is not None else
                   f"its {what} would take about {duration(need)} at the pace its validation images were scored")
            raise TimeUp(f"{OPTION}: {where} was not started: {duration(max(left, 0))} were left, and {why}")

    def took(self, what: str, seconds: float) -> None:
        self.longest[what] = max(self.longest.get(what, 0.0), seconds)

    def scored(self, seconds: float, images: int, decoded: bool) -> None:
        """An epoch scored ``images`` validation images (one view each) in ``seconds``; ``decoded``: it
        decoded them too (a fold's first epoch in this process)."""
        per = seconds / max(images, 1)
        if decoded:
            self.decode_and_score = max(self.decode_and_score or 0.0, per)
        else:
            self.score_only = min(self.score_only or per, per)

    def prediction_estimate(self, images: int, views: int) -> float:
        """Seconds to predict ``images`` with ``views`` TTA views each: a decode and a view at the first
        epoch's pace, the other views at the later epochs' (or the first's: an upper bound). 0 when no
        epoch was scored in this process (a fold resumed after its training)."""
        if self.decode_and_score is None:
            return 0.0
        score = self.score_only if self.score_only is not None else self.decode_and_score
        return images * (self.decode_and_score + (views - 1) * score)


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
