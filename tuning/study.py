"""Create or load a study, check its search space, summarise it, and save best.json and plots."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
import warnings
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from common import UserError, atomic_write, write_json
from common.interrupt import TimeUp
from folds.config import as_it_began
from tuning.space import fingerprint
from tuning.storage import mask

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials --n-trials counts: a failed one is tried again
COUNT_POLL_SECONDS = 2.0  # how often a worker at the study's count looks at the others' running trials


class SurplusTrial(Exception):
    """A trial begun where the trials begun before it already fill ``--n-trials`` (``StopAtCount.over``): it is
    ended untrained, as FAIL with the user attribute ``surplus``, and not tried again."""


SURPLUS = "surplus"  # the user attribute that marks a SurplusTrial's trial


class StopAtCount:
    """Optuna's ``MaxTrialsCallback`` for several workers (``--workers``, Ray, machines on one database). After
    each trial a worker counted only the finished trials, so near the end each started one more, and the study
    ended up to a trial a worker over ``n_trials``. Now a worker whose count the others' running trials would
    reach waits for them: they may finish (it stops), or fail (it goes on, and may retry them). The count and the
    next trial's start are two steps, so two workers can still each start one (seen in a CI run on 2 busy cores);
    the later of the two then ends its trial untrained as it begins (``over``). ``look``: what fails a gone
    worker's trial, made before each count; ``alive``: whether a running trial's worker has shown it is alive
    (``gone_worker_checks`` makes both for the storage)."""

    def __init__(self, n_trials: int, look=None, alive=None, poll: float = COUNT_POLL_SECONDS, deadline=None):
        self.n_trials, self.poll, self.deadline = n_trials, poll, deadline
        self.look, self.alive = look or (lambda study: None), alive or (lambda t: True)

    def _taken(self, trials) -> tuple[int, int]:
        """Of ``trials`` (finished and running), the finished ones and the running ones of a live worker."""
        finished = sum(t.state in FINISHED for t in trials)
        return finished, sum(self.alive(t) for t in trials if t.state == TrialState.RUNNING)

    def over(self, study, number: int) -> bool:
        """Whether the trials numbered before trial ``number`` (finished, running with a live worker, or queued)
        fill the count. Trial numbers are given in one order by the storage, so of two workers that each began a
        trial for the last place, only the later one finds it taken. A queued trial (a retry) numbered before a
        fresh one was queued after that worker looked for one to pop; a worker pops it next, and its own check
        counts only the trials before it, so the fresh one gives way (counting neither, both trained)."""
        trials = [t for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING,
                                                                      TrialState.WAITING)) if t.number < number]
        queued = sum(t.state == TrialState.WAITING for t in trials)
        return sum(self._taken(trials)) + queued >= self.n_trials

    def __call__(self, study, trial=None) -> None:
        said = False
        while True:
            self.look(study)
            finished, running = self._taken(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))
            if finished >= self.n_trials:
                study.stop()
                return
            if finished + running < self.n_trials:
                return  # room for another trial
            left = self.deadline.minutes_left() if self.deadline is not None else None
            if left is not None and left <= 0:  # the others' trials stop at the limit too, and are queued again
                raise TimeUp(f"--time-limit: this worker's next trial was not started: the limit came while it "
                             f"waited for the study's {running} running trial(s)")
            if not said:
                log.info("the study has %d finished trial(s) of --n-trials %d and %d running: this worker waits "
                         "for them before it starts another (one that fails is tried again).", finished,
                         self.n_trials, running)
                said = True
            time.sleep(self.poll)


# The one registry of --pruner names: name -> factory(max_steps).
PRUNERS = {
    "median": lambda max_steps: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    "hyperband": lambda max_steps: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, max_steps)),
    "none": lambda max_steps: optuna.pruners.NopPruner(),
}


def make_pruner(name: str, max_steps: int):
    if name not in PRUNERS:
        raise UserError(f"--pruner {name!r}: choose one of {sorted(PRUNERS)}.")
    return PRUNERS[name](max_steps)


def open_study(name: str, storage, space: dict, setup: dict, *, pruner, seed: int, left_out: dict | None = None):
    """Load ``name`` (or create it), and the space its trials draw from (``check_identity``); a study made with
    another space or setup is refused, untouched."""
    study = optuna.create_study(study_name=name, storage=storage, sampler=make_sampler(seed, 0), pruner=pruner,
                                direction="maximize", load_if_exists=True)
    if "search_space" not in study.user_attrs:
        # the setup first: "search_space" marks a whole identity, so a worker that opens the study a moment
        # later never reads it without its setup (it did, and refused a study made for its own setup)
        study.set_user_attr("setup", setup)
        study.set_user_attr("search_space", fingerprint(space))
    space = check_identity(study, space, setup, left_out)  # read back: a worker that made it at once wrote its own
    # A study resumed (the next Colab or Kaggle session, a rerun to top it up) draws on from where it is: a sampler
    # of the first session's seed would draw that session's first parameters again, trials already trained.
    study.sampler = make_sampler(seed, len(study.get_trials(deepcopy=False)))
    return study, space


def package_note(study, keep: bool = True) -> str | None:
    """The package versions that can change what a trial learns (``folds.manifest.TRAINING_PACKAGES``), kept in
    the study at its first session (``keep``; a dry run writes nothing): a line naming those this session's differ
    from (the next Kaggle image, another machine); None where they agree. A study's trials are compared as one,
    and a trial's ``manifest.json`` says what trained it."""
    from folds.manifest import package_changes, training_packages

    first = study.user_attrs.get("packages")
    if first is None:  # a new study, or one made before the versions were kept: from this session on
        if keep:
            study.set_user_attr("packages", training_packages())
        return None
    diff = package_changes(first)
    if not diff:
        return None
    return (f"study {study.study_name!r} began with other package versions ({'; '.join(diff)}): its new trials' "
            "values may not compare exactly with the old ones' (a model's layers or an augmentation can change "
            "between versions). Each trial's manifest.json says what trained it.")


def check_identity(study, space: dict, setup: dict, left_out: dict | None = None) -> dict:
    """Refuse a study made with another search space or training setup: its trials' values would not compare. The
    space its trials draw from: ``space``, or, for a study made before ``tuning.space.live_space`` left out the
    knobs that change no trial, ``space`` with them (its trials go on drawing them, as they did)."""
    name, attrs = study.study_name, study.user_attrs
    if left_out and attrs["search_space"] == fingerprint({**space, **left_out}):
        space = {**space, **left_out}
    if attrs["search_space"] != fingerprint(space):
        raise UserError(f"study {name!r} was created with another search space:\n  saved: {attrs['search_space']}\n"
                        f"  now:   {fingerprint(space)}\nUse a new --study name (or the same --space file). "
                        "Nothing in the study was changed.")
    saved = as_it_began(attrs.get("setup", {}))  # a setting newer than the study: what it tuned with
    diff = {k: (saved.get(k), v) for k, v in setup.items() if saved.get(k) != v}
    if diff:
        raise UserError(f"study {name!r} was created for another training setup ({diff}); its trial values would "
                        "not be comparable. Use a new --study name. Nothing in the study was changed.")
    return space


def find_study(name: str, storage):
    """The study ``name`` in ``storage`` (``tuning.storage.existing_storage``), loaded without a write; None where
    it is not there."""
    if storage is None:
        return None
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def make_sampler(seed: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """TPE seeded by ``seed`` in a new study, by (``seed``, ``trials_so_far``) in one resumed: each session of a
    study is reproducible, and none repeats another's draws."""
    if trials_so_far:
        seed = int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)


TRIAL_LOCK = "trial.lock"  # in a trial's folder while its worker trains it (a folds.lock.FoldLock: its heartbeat)


def trial_dir(trials_dir, number: int) -> Path:
    """Where trial ``number`` of a study keeps its folds (``trials_dir``: ``tuning/<study>/trials``)."""
    return Path(trials_dir) / f"trial_{number:04d}"


def queue_again(study, trial) -> None:
    """Queue a failed trial's parameters for the study's next trial (the journal's retry; a database's is the
    storage's own stale-trial callback)."""
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def fail_orphaned_trials(study, trials_dir, *, here_only: bool = False, retry=queue_again) -> int:
    """Mark RUNNING trials whose worker is gone as FAIL and queue their parameters again.

    A worker holds its trial's lock while it trains (``TRIAL_LOCK``, with the fold lock's host, pid and
    heartbeat), so a trial is orphaned by the fold lock's own rule: its process gone, on this host, or no
    heartbeat for ``folds.lock.STALE_SECONDS`` from another (a Colab session that ended; a Kaggle version whose
    study folder the next one copied back). A trial of a worker from before the lock is judged by its host and
    pid alone. The journal file has no heartbeat: this is its only look. On a database (``here_only``, with the
    storage's own ``retry``, as Optuna's heartbeat retries) only trials whose pid has ended in this machine and
    pid namespace are looked at (``not_gone_here``): the heartbeat fails a gone worker's trial only 2 heartbeats
    on, and the workers at the count waited that long.
    """
    from folds.lock import FoldLock, alive, same_pids

    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if here_only and not_gone_here(t):  # another machine's or container's, or alive: the heartbeat's to judge
            continue
        lock = FoldLock(trial_dir(trials_dir, t.number) / TRIAL_LOCK)
        if pid is None:  # its worker was killed between the trial's start and its first line, or is there now
            if lock.path.exists() or _just_begun(t):
                continue
        elif same_pids(t.user_attrs) and pid == os.getpid():
            continue
        elif lock.path.exists():
            if lock.holder() is not None:
                continue
        elif not same_pids(t.user_attrs) or alive(int(pid)):
            continue
        # two workers of one study may find it at once: the one that takes its lock (a stale lock is broken by one
        # process only) retries it, if it is still running once the lock is this worker's
        if not lock.acquire():
            continue
        try:
            if t.number not in {r.number for r in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}:
                continue
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # failed meanwhile (a database's
                continue  # heartbeat, which retries it)
            retry(study, t)
        finally:
            lock.release()
        log.warning("trial %d: its worker (host %s, pid %s) is gone; marked FAIL and queued again.", t.number,
                    where, pid)
        n += 1
    return n


def tidy_trials(study, trials_dir, keep_checkpoints: bool) -> int:
    """Free what the study's ended trials left on disk; the bytes freed. A worker that ends a trial cleanly removes
    its checkpoints (unless --keep-checkpoints); a killed one (SIGKILL, the OOM killer, a Colab or Kaggle session
    that ended) left them, a checkpoint's half-written temp file beside them, and its trial is never resumed (a
    retry is a new trial). A trial still RUNNING is its worker's, and is left alone; with --keep-checkpoints only
    the temp files go. The trial's lock goes too, unless a live process still holds it (a worker paused past the
    database's heartbeat, whose trial was failed meanwhile): on a database the heartbeat fails a killed worker's
    trial, and no worker takes its lock to do it, as ``fail_orphaned_trials`` does."""
    from common.atomic import remove_leftovers
    from common.layout import BEST, LAST
    from folds.lock import FoldLock

    freed = 0
    for t in study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.FAIL)):
        d = trial_dir(trials_dir, t.number)
        if not d.is_dir():
            continue
        lock = FoldLock(d / TRIAL_LOCK)
        if lock.path.exists() and lock.holder() is None:
            lock.path.unlink(missing_ok=True)
        for folder in (d, *(p for p in d.iterdir() if p.is_dir())):  # the trial's, then each fold's
            freed += remove_leftovers(folder)
            for name in () if keep_checkpoints else (BEST, LAST):
                with contextlib.suppress(FileNotFoundError):
                    size = (folder / name).stat().st_size
                    (folder / name).unlink()
                    freed += size
    return freed


def fail_stale_trials(study) -> None:
    """Optuna's look for trials whose heartbeat stopped (it makes it as each trial starts), made also while a worker
    waits at the count (``StopAtCount``), where no trial starts. Without its "experimental" warning at every look:
    Optuna's to act on, not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


LOCK_TAKEN_SECONDS = 15  # a trial's worker writes its pid as the objective's first line; well within this


def beating_since(trials_dir, since: float):
    """Whether a RUNNING trial's worker has shown it is alive: its trial's lock held, and beaten after ``since``
    (this worker's start). A lock copied with the study's folder (the next Kaggle version) keeps the time of the
    copy until it is stale, and a worker from before the lock left none: their trials are not waited for. A lock
    of this machine and pid namespace (``folds.lock.same_pids``) is alive while its holder's pid is, beaten since
    or not (a trial begun just before this worker started, not yet beaten again). A trial of this host without a
    lock yet is alive while its worker's pid is, or, before the worker has written its pid, for
    ``LOCK_TAKEN_SECONDS`` after it started."""
    from folds.lock import FoldLock, alive as pid_alive, same_pids

    host = socket.gethostname()

    def alive(t) -> bool:
        lock = FoldLock(trial_dir(trials_dir, t.number) / TRIAL_LOCK)
        beat = lock.last_beat()
        if beat is not None:
            holder = lock.holder()  # of this host: only while its pid is alive
            return holder is not None and (beat / 1e9 > since or same_pids(holder))
        if not same_pids({"host": host, **t.user_attrs}):  # no attributes yet: just begun, by a worker of this host
            return False
        if "pid" in t.user_attrs:
            return pid_alive(int(t.user_attrs["pid"]))
        return t.datetime_start is not None and _just_begun(t)
    return alive


def not_gone_here(t) -> bool:
    """On a database, whether a RUNNING trial's worker may be alive: not where its pid, of this machine and pid
    namespace (``folds.lock.pid_space``), has ended. One of another machine (a Ray node, a machine on the
    database) or container is left to the heartbeat."""
    from folds.lock import alive as pid_alive, same_pids

    if "pid" not in t.user_attrs or not same_pids(t.user_attrs):
        return True
    return pid_alive(int(t.user_attrs["pid"]))


def _just_begun(t) -> bool:
    """Whether trial ``t`` began less than ``LOCK_TAKEN_SECONDS`` ago (or has not begun): its worker may not have
    written who it is yet."""
    return t.datetime_start is None or abs((datetime.now() - t.datetime_start).total_seconds()) < LOCK_TAKEN_SECONDS


def gone_worker_checks(storage, trials_dir, since: float):
    """``(look, alive)`` for ``StopAtCount``: what fails a gone worker's trial and queues it again, made before
    each count, and whether a running trial's worker is alive. A database's heartbeat fails a silent trial 2
    heartbeats on (``fail_stale_trials``); a trial of this host whose worker's pid has ended is failed at once. The
    journal has no heartbeat, so the trials' locks tell (``beating_since``)."""
    from tuning.storage import has_heartbeat, retry_callback

    if has_heartbeat(storage):
        retry = retry_callback(storage) or queue_again

        def look(study):
            fail_stale_trials(study)
            fail_orphaned_trials(study, trials_dir, here_only=True, retry=retry)
        return look, not_gone_here
    return (lambda study: fail_orphaned_trials(study, trials_dir)), beating_since(trials_dir, since)


def counts(study) -> dict:
    """The study's trials by state; a surplus one (``SurplusTrial``: never trained) apart from the failed."""
    trials = study.get_trials(deepcopy=False)
    c = {s.name.lower(): sum(t.state == s for t in trials) for s in
         (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    c[SURPLUS] = sum(t.state == TrialState.FAIL and bool(t.user_attrs.get(SURPLUS)) for t in trials)
    c["fail"] -= c[SURPLUS]
    return c


def best_trial(study):
    """``study.best_trial``, with a clear error while no trial has completed."""
    try:
        return study.best_trial
    except ValueError:
        raise UserError(f"study {study.study_name!r} has no completed trial yet ({counts(study)}); nothing to "
                        "summarise. Run trials with --n-trials N.") from None


def score_name(setup: dict) -> str:
    """What a trial's value is, in words: each fold's best epoch by the monitor, its validation score by the
    competition metric (the crops' where the monitor is on the crops), the mean over the folds."""
    from types import SimpleNamespace

    from common.metrics import get_metric
    from folds.stopping import CROP, resolve_monitor
    label = get_metric(setup.get("metric")).label
    if not {"monitor", "crop", "val_crops"} <= setup.keys():  # one of them searched: it differs between trials
        return f"validation {label}, mean over folds"
    monitor = resolve_monitor(SimpleNamespace(**{k: setup.get(k) for k in ("monitor", "crop", "val_crops", "metric")}))
    return f"{'validation-crop' if monitor.startswith(CROP) else 'whole-painting'} {label}, mean over folds"


def summary(study, read: dict | None) -> str:
    """The best trial, the trials' counts, and how high the best reads (``read``: ``best_read_down``'s, None where
    it has none)."""
    b = best_trial(study)
    c = counts(study)
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in b.params.items())
    what = score_name(study.user_attrs.get("setup", {}))
    return (f"study {study.study_name}: best value ({what}) {b.value:.4f} at trial {b.number}: {params}\n"
            f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed"
            + (f", {c['running']} running" if c["running"] else "")
            + (f", {c[SURPLUS]} not trained (begun once other workers' trials filled --n-trials)" if c[SURPLUS] else "")
            + (f"\nthe best of {read['trials']} trials' scores on the same validation paintings reads about "
               f"{read['optimism']:+.4f} high (a bootstrap of the choice over the paintings; another seed's noise "
               f"comes on top): expect about {b.value - read['optimism']:.4f} of its parameters in a new run"
               if read else ""))


def best_read_down(study) -> dict | None:
    """What picking the best of the study's complete trials on their validation paintings adds to its value
    (``ensemble.compare.selection_optimism``), from each trial's best epochs' monitored rows (``layout.VAL_EPOCHS``,
    every fold it trained, one after another); None where fewer than 2 trials' rows are here (a worker elsewhere,
    a study from before they were kept) or the trials scored other rows (a space that varies ``val_crops``, or
    trials of other folds)."""
    from common.layout import VAL_EPOCHS, fold_dir
    from ensemble.compare import selection_optimism
    from folds.stopping import best_epoch_rows, read_val_epochs

    best, rows, probs = best_trial(study), None, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("diverged") or "dir" not in t.user_attrs:
            continue
        # the folds it trained: the objective keeps each one's score as fold_<k>_<metric key>
        keys = sorted({int(k.split("_")[1]) for k in t.user_attrs if re.fullmatch(r"fold_\d+_\w+", k)})
        paths = [fold_dir(t.user_attrs["dir"], k) / VAL_EPOCHS for k in keys]
        try:
            parts = [best_epoch_rows(read_val_epochs(p)) for p in paths]
        except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile):  # another worker's, or cut short
            continue
        if not parts:
            continue
        # the folds one after another; a trial's value is the mean of its folds' scores, so each is scored apart
        these = (np.concatenate([x["labels"] for x in parts]), np.concatenate([x["ids"] for x in parts]),
                 np.repeat(keys, [len(x["labels"]) for x in parts]))
        if rows is not None and not all(np.array_equal(a, b) for a, b in zip(these, rows)):
            return None
        rows = these
        probs.append((t.number, np.concatenate([x["probs"] for x in parts])))
    if len(probs) < 2 or best.number not in {n for n, _ in probs}:
        return None
    metric = study.user_attrs.get("setup", {}).get("metric")
    return {"trials": len(probs),
            "optimism": selection_optimism(rows[0], rows[1], [p for _, p in probs], metric, blocks=rows[2])}


def next_command(path: Path, study_name: str, trial: int) -> str:
    """The fold run of the best trial's parameters, in a run folder of its own: under the default name (the
    model and seed) it met a default run trained before the study ("made with other settings"), and a later
    best trial of the same study would meet this one."""
    return f"python folds/run.py --params {path} --fold all --name {study_name}-trial{trial}"


def write_best(study, path: Path, storage_url: str | None, config: dict, read: dict | None = None) -> Path:
    """best.json: the best parameters, and the study's training setup (``config``) that
    ``folds/run.py --params`` restores under them, so the printed command trains what was tuned; with ``read``
    (``best_read_down``'s), how high its value reads and what to expect of it in a new run."""
    b = best_trial(study)
    config = {k: v for k, v in config.items() if k not in b.params}
    read_down = {"read_down": {**read, "expect": b.value - read["optimism"]}} if read else {}
    return write_json(path, {"study": study.study_name, "storage": mask(storage_url) or "journal file",
                             "value": b.value, **read_down, "trial": b.number, "params": b.params, "config": config,
                             "counts": counts(study), "use": next_command(path, study.study_name, b.number)})


MIN_TRIALS_FOR_IMPORTANCE = 10  # fANOVA importances from fewer complete trials are mostly noise


def save_plots(study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances, a contour of two parameters (lr and gamma where the space
    has them, else its first two; named by them, none for a space of one) and the slices, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    import warnings

    saved = []
    params = list(best_trial(study).params)
    pair = ["lr", "gamma"] if {"lr", "gamma"} <= set(params) else params[:2]
    plots = {"history.png": lambda: vis.plot_optimization_history(study),
             "importances.png": lambda: vis.plot_param_importances(study),
             **({f"contour_{pair[0]}_{pair[1]}.png": lambda: vis.plot_contour(study, params=pair)}
                if len(pair) == 2 else {}),
             "slice.png": lambda: vis.plot_slice(study, params=params)}
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = first.figure
            n_complete = counts(study)["complete"]
            if name == "importances.png" and n_complete < MIN_TRIALS_FOR_IMPORTANCE:
                first.set_title(f"Parameter importances from only {n_complete} complete trials: not meaningful "
                                f"yet (need {MIN_TRIALS_FOR_IMPORTANCE})", color="tab:red", fontsize=9)
                log.warning("importances.png: only %d complete trials; importances are not meaningful below %d.",
                            n_complete, MIN_TRIALS_FOR_IMPORTANCE)
            with atomic_write(Path(out_dir) / name, "wb") as f:
                fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            saved.append(Path(out_dir) / name)
        except Exception as e:  # noqa: BLE001 - e.g. importances need 2+ complete trials
            log.warning("plot %s skipped: %s", name, e)
    return saved
