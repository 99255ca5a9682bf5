"""Where a study lives: an embedded journal file (no server), SQLite, or a PostgreSQL URL.

``make_storage`` normalises its input in one place (Optuna's ``get_storage`` habit).
RDB storages get a heartbeat and a RetryFailedTrialCallback: the trial of a killed worker
is marked FAIL and retried with the same parameters.
"""
from __future__ import annotations

import copy
import logging
import re
import warnings
from inspect import signature
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from common import UserError

# Optuna 4.9 renamed the heartbeat's retry: its class, RDBStorage's keyword and the getter. 4.0 to 4.8 (a notebook
# image's) call it the failed trial's callback; 4.9 keeps those as deprecated aliases.
try:
    from optuna.storages import RetryHeartbeatStaleTrialCallback
except ImportError:
    from optuna.storages import RetryFailedTrialCallback as RetryHeartbeatStaleTrialCallback
RETRY_KEYWORD = next(k for k in ("heartbeat_stale_trial_callback", "failed_trial_callback")
                     if k in signature(RDBStorage.__init__).parameters)


def retry_callback(storage):
    """The storage's retry of a trial whose heartbeat went stale, or None."""
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None) or storage.get_failed_trial_callback
    return getter()


log = logging.getLogger(__name__)


HEARTBEAT_JOIN_SECONDS = 5.0  # a heartbeat thread told to stop ends at once, or after its storage call


def stop_heartbeat_threads() -> int:
    """Tell Optuna's trial heartbeat threads still running in this process to stop, and wait for them; how many
    there were. A stop (Ctrl-C, SIGTERM, a study worker's parent gone) that lands as Optuna starts or joins a
    trial's heartbeat thread skips the line that tells the thread to stop. The thread is no daemon, so Python
    waited for it at exit for good: the worker never ended, and beat for its trial, which was then never failed
    and retried (found by benchmarks/study_kill_fuzz.py on PostgreSQL). Optuna offers no handle on the thread: it
    is found by its target, and its stop event is the target's last argument."""
    import threading

    try:  # (a later Optuna may move them: then none is found, as before this look)
        from optuna.storages._heartbeat import HeartbeatThread
        target = HeartbeatThread._record_heartbeat
    except (ImportError, AttributeError):
        return 0
    found = [t for t in threading.enumerate() if getattr(t, "_target", None) is target and t.is_alive()
             and isinstance((getattr(t, "_args", None) or [None])[-1], threading.Event)]
    for t in found:
        t._args[-1].set()
        t.join(HEARTBEAT_JOIN_SECONDS)
    return len(found)


def _secret_span(url: str) -> tuple[int, int] | None:
    """Where the credential of ``url`` is, also when the URL is malformed; None when it has none.

    The user-info ends at the *last* '@' (an unescaped '@' inside a password is common), and
    starts after '//' or the scheme's ':' even when '//' is missing or half-typed.
    """
    end = url.rfind("@")
    if end >= 0:
        start = 0
        for sep in ("://", "//", ":/", ":"):
            i = url.find(sep, 0, end)
            if i >= 0:
                start = i + len(sep)
                break
        colon = url.find(":", start, end)
        if colon >= 0:
            return (colon + 1, end) if colon + 1 < end else None
        # 'scheme:token@host' (no '//'): the token may be a password; a plain 'scheme://user@host' is not
        return (start, end) if sep == ":" and start < end else None
    # no '@': 'scheme://user:password' with the host forgotten parses as host:port
    m = re.search(r"//[^/?#:]*:([^/?#]+)", url)
    if m and not m.group(1).isdigit():
        return m.span(1)
    return None


def mask(url: str | None) -> str:
    """The URL with its password hidden, for messages and files; malformed URLs too.

    >>> mask("postgresql://u:secret@pw@host/db")
    'postgresql://u:***@host/db'
    """
    url = url or ""
    span = _secret_span(url)
    return url if span is None else url[:span[0]] + "***" + url[span[1]:]


def redact(text: str, url: str | None) -> str:
    """``text`` (a driver's error message, say) with the credential of ``url`` replaced by ***."""
    span = _secret_span(url or "")
    if span is None:
        return text
    text = text.replace(url, mask(url))
    secret = url[span[0]:span[1]]
    for part in {secret, *secret.split("@")}:  # drivers may split an unescaped '@' password
        if len(part) >= 2:  # a 1-character fragment would blank the message, and betrays little
            text = text.replace(part, "***")
    return text


def default_journal(study_dir: Path) -> Path:
    return Path(study_dir) / "journal.log"


MAX_RETRY = 2  # a trial lost with its worker is retried this many times
WORKER_ATTRS = ("host", "pid_space", "pid")  # who ran a trial (tuning.objective writes them): not its retry's


class RetryAsNewTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a trial whose worker is gone, without that worker's host and pid. Optuna copies the
    failed trial's user attributes into its retry, so a retry just popped named the dead worker until its own
    worker's first line wrote its own, and a worker of that machine failed it for the dead pid meanwhile
    (``tuning.study.not_gone_here``)."""

    def __call__(self, study, trial) -> None:
        trial = copy.deepcopy(trial)  # (Optuna's caller hands over its own copy; this one is ours to change)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in WORKER_ATTRS}
        super().__call__(study, trial)


def make_storage(url: str | None, study_dir: Path, *, heartbeat: int = 30):
    """None -> a journal file under ``study_dir``; otherwise an RDB URL with heartbeat and retry."""
    if url is None:
        path = default_journal(study_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    check_url(url)
    if url.startswith("sqlite"):
        m = re.match(r"sqlite:///(.+)", url)
        if m:
            Path(m.group(1)).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeat and retry are marked experimental; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                              heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                              **{RETRY_KEYWORD: RetryAsNewTrial(max_retry=MAX_RETRY)})
    except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError and friends
        raise _cannot_connect(url, e) from None


def check_url(url: str) -> None:
    if not re.match(r"^[a-z0-9+]+://", url):
        raise UserError(f"--storage {mask(url)!r}: expected a URL like postgresql://user:pw@host/db or "
                        "sqlite:///tuning/study.db (or leave it out for the embedded journal file).")


def _cannot_connect(url: str, e: Exception) -> UserError:
    if isinstance(e, ImportError):
        return UserError(f"--storage {mask(url)}: a database driver is missing ({e}); for PostgreSQL "
                         "`pip install 'psycopg[binary]'`.")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    first = redact(first, url)  # drivers quote the URL they were given
    return UserError(f"--storage {mask(url)}: cannot connect ({first}). Check host, port, user, password "
                     "and that the database exists (createdb). Nothing in the study was changed.")


def existing_storage(url: str | None, study_dir: Path) -> tuple[object | None, str | None]:
    """``--dry-run``: the storage ``make_storage`` would open, where a study may already be in it (else None), and
    what was checked, in words (None for a file: the journal or SQLite, which its folder's check covers).

    Nothing is written: a journal file that is not there is not made; a database server is connected to (a wrong
    host or password is the study's own clear error) and a database without Optuna's tables gets none (Optuna
    writes its version rows only where they are missing)."""
    if url is None:
        path = default_journal(study_dir)
        return (JournalStorage(JournalFileBackend(str(path))) if path.is_file() else None), None
    check_url(url)
    m = re.match(r"sqlite:///(.+)", url)
    sqlite = url.startswith("sqlite")
    if sqlite and not (m and Path(m.group(1)).is_file()):
        return None, None
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())  # connects: an unreachable server fails here
        finally:
            engine.dispose()
        storage = RDBStorage(url, skip_table_creation=True, skip_compatibility_check=True) \
            if {"studies", "version_info", "alembic_version"} <= tables else None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError and friends, a missing driver
        raise _cannot_connect(url, e) from None
    return storage, None if sqlite else f"--storage {mask(url)}: reached, and left as it was"


def check_parallel_safe(url: str | None, workers: int) -> None:
    """SQLite locks the whole file and corrupts or stalls under concurrent writers."""
    if workers > 1 and url and url.startswith("sqlite"):
        raise UserError(f"--storage {mask(url)} with --workers {workers}: SQLite is not safe for parallel workers. "
                        "Leave --storage out (the embedded journal file handles several local workers) or use "
                        "a PostgreSQL URL.")


def has_heartbeat(storage) -> bool:
    """RDB storages fail and retry a dead worker's trial themselves; the journal file cannot."""
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None
