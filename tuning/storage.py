"""Where a study lives: an embedded journal file (no server), SQLite, or a PostgreSQL URL.

``make_storage`` normalises its input in one place (Optuna's ``get_storage`` habit).
RDB storages get a heartbeat and a RetryFailedTrialCallback: the trial of a killed worker
is marked FAIL and retried with the same parameters.
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryFailedTrialCallback
from optuna.storages.journal import JournalFileBackend

from common import UserError

log = logging.getLogger(__name__)


def mask(url: str | None) -> str:
    """The URL with its password hidden, for messages and files."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url or "")


def default_journal(study_dir: Path) -> Path:
    return Path(study_dir) / "journal.log"


def make_storage(url: str | None, study_dir: Path, *, heartbeat: int = 30, grace: int | None = None,
                 max_retry: int = 2):
    """None -> a journal file under ``study_dir``; otherwise an RDB URL with heartbeat and retry."""
    if url is None:
        path = default_journal(study_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if not re.match(r"^[a-z0-9+]+://", url):
        raise UserError(f"--storage {url!r}: expected a URL like postgresql://user:pw@host/db or "
                        "sqlite:///tuning/study.db (or leave it out for the embedded journal file).")
    if url.startswith("sqlite"):
        m = re.match(r"sqlite:///(.+)", url)
        if m:
            Path(m.group(1)).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # heartbeat and retry are marked experimental; we rely on them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                              heartbeat_interval=heartbeat, grace_period=grace or 2 * heartbeat,
                              heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=max_retry))
    except ImportError as e:
        raise UserError(f"--storage {mask(url)}: a database driver is missing ({e}); for PostgreSQL "
                        "`pip install 'psycopg[binary]'`.") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's OperationalError and friends
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--storage {mask(url)}: cannot connect ({first}). Check host, port, user, password "
                        "and that the database exists (createdb). Nothing in the study was changed.") from None


def check_parallel_safe(url: str | None, workers: int) -> None:
    """SQLite locks the whole file and corrupts or stalls under concurrent writers."""
    if workers > 1 and url and url.startswith("sqlite"):
        raise UserError(f"--storage {url} with --workers {workers}: SQLite is not safe for parallel workers. "
                        "Leave --storage out (the embedded journal file handles several local workers) or use "
                        "a PostgreSQL URL.")


def has_heartbeat(storage) -> bool:
    return isinstance(storage, optuna.storages._heartbeat.BaseHeartbeat)
