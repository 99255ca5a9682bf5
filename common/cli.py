"""What every command-line entry point shares: its log format, and how a UserError, Ctrl-C,
SIGTERM or a reader that closed stdout (``| head``) ends it.

>>> @entry_point
... def main(argv=None):
...     raise UserError("train.csv: no such file.")
>>> main()  # prints "error: train.csv: no such file." on stderr
2
"""
from __future__ import annotations

import functools
import logging
import os
import select
import signal
import sys
import traceback

from common import children
from common.errors import UserError
from common.interrupt import Stopped, TimeUp, stops_as_exceptions


# What a stopped command keeps, and how to go on: the same for Ctrl-C, a signal and --time-limit.
KEPT = ("finished epochs, folds and trials are kept; run the same command again to continue (a fold run with "
        "--resume).")


QUIET_LIBRARIES = ("matplotlib",)


def check_at_least(option: str, value, least, meaning: str | None = None) -> None:
    """A number option's value is ``least`` or more (``None``: left out): else a one-line error that names the
    option and the value, before any work. ``meaning``: what the least value does, e.g. "0 (off)"."""
    if value is not None and value < least:
        raise UserError(f"{option} must be {f'{meaning} or more' if meaning else f'at least {least}'}, "
                        f"but got {value}.")


def log_to_stdout(level: int = logging.INFO) -> None:
    """Plain messages on stdout, where the user reads the run's progress."""
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout, force=True)
    # Libraries' own INFO lines are not the run's progress: matplotlib's "generated new fontManager" on a
    # fresh machine (a new Colab or Kaggle kernel) would stand among the results of the first build.
    for quiet in QUIET_LIBRARIES:
        logging.getLogger(quiet).setLevel(max(level, logging.WARNING))


def entry_point(main):
    """A CLI's ``main``: a UserError prints ``error: <message>`` on stderr and returns 2, without a
    traceback (the message names the file, row or option and says what to do). Ctrl-C returns 130,
    SIGTERM 143 and SIGHUP 129, and a run stopped by its ``--time-limit`` 75, each after the clean-up, with
    a line that says how to continue."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        quiet_resource_sharer()
        try:
            with stops_as_exceptions():
                children.stop_with_parent()
                return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except TimeUp as e:
            print(f"stopped at the time limit ({e}): {KEPT}", file=sys.stderr)
            return TimeUp.EXIT_CODE
        except KeyboardInterrupt as e:
            print(f"{f'stopped ({e})' if isinstance(e, Stopped) else 'interrupted'}: {KEPT}", file=sys.stderr)
            return 128 + (e.signum if isinstance(e, Stopped) else 2)  # the shell's code for that signal
        except BrokenPipeError:
            if not stdout_is_gone():
                raise  # another pipe (a worker's): a real error
            return 141  # the reader of the output left (`| head`): stop quietly, as shell tools do (128 + SIGPIPE)
        except RuntimeError as e:
            if children.launcher_gone():  # a collective broken by the other ranks' stop: this one's too
                print(f"stopped (torchrun ended; {str(e).splitlines()[0][:200]}): {KEPT}", file=sys.stderr)
                return 128 + signal.SIGTERM  # as the ranks that stopped at their own watch
            if not loader_worker_died(e):
                raise
            print(f"error: {worker_death_message(e)}", file=sys.stderr)
            return 1
    return wrapper


def quiet_resource_sharer() -> None:
    """Drop the report of a handshake that a dying process broke in multiprocessing's resource sharer (the
    thread that hands this process's shared tensors' file descriptors to the loader workers). A worker killed
    while it fetched one (the out-of-memory killer) left that thread's ``EOFError`` traceback on stderr beside
    the one clear error (``worker_death_message``) that says what happened and how to go on. Other reports
    pass, as does every other exception."""
    if getattr(sys.excepthook, "quiet_resource_sharer", False):
        return
    before = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, (EOFError, ConnectionError)) and any(
                frame.filename.endswith(os.path.join("multiprocessing", "resource_sharer.py"))
                for frame in traceback.extract_tb(tb)):
            return
        before(kind, value, tb)

    hook.quiet_resource_sharer = True
    sys.excepthook = hook


def loader_worker_died(e: BaseException) -> bool:
    """Whether ``e`` is torch's report that a DataLoader worker process died under the main one."""
    return isinstance(e, RuntimeError) and str(e).startswith("DataLoader worker (pid")


def worker_death_message(e: RuntimeError) -> str:
    """What a dead loader worker most often means, and how to go on: torch's own words say only which."""
    return (f"a data-loader worker process died ({str(e).split('. ')[0].strip().rstrip('.')}). Killed is most often "
            f"{children.OOM_KILLER}: each worker holds decoded images and batches. {KEPT.capitalize()} Give it fewer "
            "--num-workers (a run folder accepts that: it does not change the result), or --num-workers 0 to see a "
            "crash's own error.")


def stdout_is_gone() -> bool:
    """Whether stdout's reader has closed it (poll reports an error on the pipe); if so, stdout now points
    at /dev/null, so that Python's own flush at exit does not report the broken pipe again."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(event & (select.POLLERR | select.POLLHUP) for _, event in poll.poll(0))  # Linux: ERR; BSDs: HUP
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is no file
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return gone
