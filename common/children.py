"""Child processes (side-by-side fold processes, Optuna's local workers) that stop with their parent.

Each child starts in a session of its own, so a terminal's Ctrl-C reaches the parent alone; the
parent then sends every live child one SIGTERM, which the child unwinds like Ctrl-C (see
``common.interrupt``): it releases its fold lock and keeps every finished epoch. Before, a parent
stopped by ``kill``, a scheduler or a notebook's interrupt left its children training on,
holding their folds, and a second terminal Ctrl-C could land in a child's clean-up.

A parent that cannot pass a stop on (SIGKILL: the OOM killer, ``timeout -k``, a notebook's
restart) still ends its children: each holds the read end of a pipe whose write end only the
parent holds, and the kernel closes it when the parent ends, however it ends. The child reads
end-of-file and stops itself the same way. (``PR_SET_PDEATHSIG`` would need a ``preexec_fn``,
which is unsafe in a process with threads.) Before, such children trained on, holding the GPU
memory a rerun needed. The ranks of torchrun, whose agent is not this code's, watch their parent's
pid instead (``stop_with_launcher``).
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

GRACE_SECONDS = 120  # a child unwinds and shuts its loader workers down well within this
LIFELINE_ENV = "PAINTER_CV_PARENT_FD"  # the child's read end of the pipe its parent holds open


def start(argv: list[str], env: dict) -> subprocess.Popen:
    read_end, write_end = os.pipe()  # both ends non-inheritable: later children do not get this one's
    try:
        proc = subprocess.Popen(argv, env={**env, LIFELINE_ENV: str(read_end)}, start_new_session=True,
                                pass_fds=(read_end,))
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    proc.lifeline = write_end  # closed once the child has ended; by the kernel if this process ends first
    return proc


def wait_all(procs: list[subprocess.Popen]) -> list[int]:
    """The children's exit codes; if this process is interrupted while it waits, it stops them first."""
    try:
        codes = [p.wait() for p in procs]
    except BaseException:
        stop(procs)
        raise
    _let_go(procs)
    return codes


# What a process killed outright most often met: said once, for a dead fold process and a dead loader worker.
OOM_KILLER = "the kernel's out-of-memory killer, when the machine's RAM is full (`dmesg` names it)"


def ending(code: int) -> str:
    """How a child with exit status ``code`` ended, in words (a negative status: the signal that killed it)."""
    if code == -signal.SIGKILL:
        return f"was killed by SIGKILL: most often {OOM_KILLER}: run fewer processes side by side, or give them " \
               "fewer --num-workers"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code} (its own error is above)"


def stop(procs: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """One SIGTERM to each live child, then ``grace`` seconds for them all before SIGKILL."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _let_go(procs)


def _let_go(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        fd, p.lifeline = getattr(p, "lifeline", None), None
        if fd is not None:
            os.close(fd)


def stop_with_parent() -> None:
    """In a child made by ``start``: SIGTERM this process (unwound as a stop) once the parent has ended. In a
    rank of torchrun: the same once torchrun's agent has ended (``stop_with_launcher``). Elsewhere nothing. The
    variable is taken out of the environment, so this process's own children never mistake another file
    descriptor for the pipe."""
    fd = os.environ.pop(LIFELINE_ENV, None)
    if fd is None or not fd.isdigit():
        stop_with_launcher()
        return
    fd = int(fd)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        os.set_inheritable(fd, False)
    except OSError:  # not open here: started some other way
        return
    threading.Thread(target=_stop_at_end_of_file, args=(fd,), name="parent-lifeline", daemon=True).start()


LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun's agent in each rank it starts
LAUNCHER_POLL_SECONDS = 1.0
STUCK_SECONDS = 60  # after its stop, a rank still here is blocked where no signal is seen (below)
# this process's parent as it was imported, the first thing a command does, well before torch is: under torchrun,
# the agent, unless it was killed within that first moment of the rank's life
PARENT_AT_START = os.getppid()


def stop_with_launcher() -> None:
    """In a rank of torchrun: SIGTERM this process once the agent that started it has ended. The agent starts each
    rank in a session of its own and passes every stop on itself, but killed outright (SIGKILL: ``kill -9``,
    ``timeout -k``, a notebook's restart) it passes none: its ranks trained on, holding their fold and the GPU
    memory a rerun needed, or, not yet joined, waited half an hour for the agent's store. The agent's
    children are not this code's to give ``start``'s pipe, so the rank watches its parent's pid: it changes
    when the parent ends (the orphan goes to init, or to a subreaper). Only a change counts: the agent may be
    any launcher (torchrun, accelerate, a container's first process)."""
    if LAUNCHER_ENV not in os.environ:
        return
    threading.Thread(target=_stop_when_orphaned, args=(PARENT_AT_START,), name="launcher-watch",
                     daemon=True).start()


def launcher_gone() -> bool:
    """Whether this is a rank of torchrun whose agent has ended (its parent changed since it started): then the
    other ranks stop too, and a collective they leave breaks here with a RuntimeError that is their stop, not an
    error of this rank's."""
    return LAUNCHER_ENV in os.environ and os.getppid() != PARENT_AT_START


def _joined() -> bool:
    """Whether this rank has joined torchrun's process group (torch imported, and its group made). Not
    ``folds.distributed.active``: this module sits below folds, and must not import torch for the look."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _stop_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(LAUNCHER_POLL_SECONDS)
    print("torchrun, which started this rank, has ended without stopping it; stopping here.", file=sys.stderr,
          flush=True)
    if not _joined():  # nothing of this rank's to keep yet, and torch's wait for the store retries through a signal
        os._exit(128 + signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)
    # A rank blocked in native code (joining the dead agent's store, or a collective whose other rank has
    # stopped) never returns to Python, where the stop is raised: it ends here, its lock left to go stale.
    time.sleep(STUCK_SECONDS)
    print(f"this rank did not stop within {STUCK_SECONDS} s (blocked in torch.distributed); ending it.",
          file=sys.stderr, flush=True)
    os._exit(128 + signal.SIGTERM)


def _stop_at_end_of_file(fd: int) -> None:
    try:
        while os.read(fd, 1):  # the parent never writes: this returns only at its end
            pass
    except OSError:
        return
    print("the command that started this process has ended without stopping it; stopping here.",
          file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
