"""What every command-line entry point shares: its log format, and how a UserError ends it.

>>> @entry_point
... def main(argv=None):
...     raise UserError("train.csv: no such file.")
>>> main()  # prints "error: train.csv: no such file." on stderr
2
"""
from __future__ import annotations

import functools
import logging
import sys

from common.errors import UserError


def log_to_stdout(level: int = logging.INFO) -> None:
    """Plain messages on stdout, where the user reads the run's progress."""
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)


def entry_point(main):
    """A CLI's ``main``: a UserError prints ``error: <message>`` on stderr and returns 2, without a
    traceback (the message names the file, row or option and says what to do)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return wrapper
