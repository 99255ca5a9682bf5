"""The Optuna objective: map ``trial.suggest_*`` into the run config and call ``train_fold``.

No training loop lives here: the fold runner's ``train_fold`` trains, and this only reports
each epoch's validation score (the competition metric, ``--metric``) to the trial so the pruner
can stop bad trials early.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import numpy as np
import optuna

from common import write_json
from common.layout import BEST, LAST, MANIFEST, fold_dir
from common.metrics import get_metric
from folds.config import RunConfig
from folds.data import Dataset
from folds.deadline import Deadline
from folds.loader import num_workers
from folds.lock import FoldLock, pid_space
from folds.manifest import make_manifest
from folds.init_from import started_from
from folds.pseudo import fold_pseudo_images
from folds.split import fold_rows
from folds.stopping import resolve_monitor, score_column
from folds.train import train_fold
from tuning.space import suggest, trial_config
from tuning.study import SURPLUS, TRIAL_LOCK, SurplusTrial, trial_dir

log = logging.getLogger(__name__)


_surplus: set[int] = set()  # this process's surplus trials (tuning.study.SurplusTrial), whose failure is no news


class _StopWithoutTraceback(logging.Filter):
    """Optuna logs a trial that raised with its traceback. For a stop (Ctrl-C, SIGTERM) that is noise
    at the end of every stopped study: the objective has already said what happened to the trial. A surplus trial
    is no failure at all: Optuna's two lines about it are left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            record.exc_info = None
        words = record.getMessage().split(" ", 2)
        return not (words[0] == "Trial" and words[1].isdigit() and int(words[1]) in _surplus
                    and words[2].startswith("failed"))


logging.getLogger("optuna.study._optimize").addFilter(_StopWithoutTraceback())  # the logger that reports trials


class Objective:
    """Mean best validation score (``--metric``) over ``fold_ids``; each trial in its own folder with its own seed."""

    def __init__(self, cfg: RunConfig, ds: Dataset, folds, fold_ids, space: dict, trials_dir: Path,
                 keep_checkpoints: bool = False, deadline: Deadline | None = None, over=None):
        self.cfg, self.ds, self.folds, self.fold_ids = cfg, ds, folds, list(fold_ids)
        self.space, self.trials_dir, self.keep = space, Path(trials_dir), keep_checkpoints
        self.deadline = deadline  # --time-limit: a trial stops, and is queued again, before an epoch that would not fit
        self.over = over  # (study, trial number) -> whether the trials begun before it fill --n-trials

    def pseudo_images(self, cfg: RunConfig, k):
        """Fold ``k``'s pseudo-labelled crops under this trial's settings (None without --pseudo). With
        them the validation crops are scored as the test will be: the fold learned its own validation
        paintings' crops pseudo-labelled (``folds.pseudo``), so a trial's pseudo settings are judged
        by the transductive gain they give, honestly."""
        if not cfg.pseudo:
            return None
        return fold_pseudo_images(Path(cfg.pseudo), k, self.ds, cfg, max(1, num_workers(cfg)))[0]

    @staticmethod
    def end_surplus(trial: optuna.Trial, params: dict) -> None:
        """End ``trial`` untrained: another worker began the trial for the study's last place first. A retry's
        parameters are queued again, for the study's next run."""
        if "retry_of" in trial.user_attrs:
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.user_attrs["retry_of"]})
        trial.set_user_attr(SURPLUS, True)
        _surplus.add(trial.number)
        log.info("trial %d: not trained, as the trials other workers began before it fill --n-trials.",
                 trial.number)
        raise SurplusTrial(f"trial {trial.number} is over --n-trials")

    def __call__(self, trial: optuna.Trial) -> float:
        # first: a worker killed before it says who it is leaves a trial that is waited for, then failed, only once
        # study.LOCK_TAKEN_SECONDS have passed
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid_space", pid_space())  # on a database, a worker of the same one judges the pid
        trial.set_user_attr("pid", os.getpid())
        try:
            return self._train(trial)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the study's next run tries these settings again, as it does
            # for a trial whose worker was killed (study.fail_orphaned_trials). From the trial's first line: a stop
            # that landed before its training began lost them (found by benchmarks/study_kill_fuzz.py). What it had
            # not drawn yet is drawn then; a retry's own parameters wait in "fixed_params" until drawn.
            this = [t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number]
            params = {**(this[0].system_attrs.get("fixed_params", {}) if this else {}), **trial.params}
            trial.study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
            log.warning("trial %d: stopped; its parameters are queued for the study's next run.", trial.number)
            raise

    def _train(self, trial: optuna.Trial) -> float:
        params = suggest(trial, self.space)
        seed = self.cfg.seed + trial.number
        trial.set_user_attr("seed", seed)
        if self.over is not None and self.over(trial.study, trial.number):
            self.end_surplus(trial, params)
        # Tuning scores the validation fold only: no TTA, no crop OOF, no test predictions.
        cfg = trial_config(self.cfg, params, seed=seed)
        out = trial_dir(self.trials_dir, trial.number)
        trial.set_user_attr("dir", str(out))
        column = score_column(resolve_monitor(cfg), cfg.metric)  # the metric on what the folds are stopped on
        key = get_metric(cfg.metric).key
        best, diverged = [], None
        # held while this process trains the trial: a study resumed elsewhere (the next Colab or Kaggle session)
        # tells a trial of a worker that is gone by its stale heartbeat (study.fail_orphaned_trials)
        lock = FoldLock(out / TRIAL_LOCK)
        lock.acquire()
        try:
            # what trained it (packages, git commit, device, host): a study's sessions may run on other machines
            # and package versions (the next Kaggle image), and its trials' values are compared as one
            write_json(out / MANIFEST, make_manifest(study=trial.study.study_name, trial=trial.number, seed=seed,
                                                     params=params))
            for i, k in enumerate(self.fold_ids):
                def report(epoch, row, i=i):
                    # One step counter across folds (fold index x epochs + epoch): Optuna refuses a
                    # step reported twice, which per-fold numbering would do.
                    trial.report(row[column], step=i * cfg.epochs + epoch - 1)  # epochs count from 1
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at fold {k} epoch {epoch}: {column} {row[column]:.4f}")

                try:
                    r = train_fold(started_from(cfg, k), self.ds, *fold_rows(self.folds, k),
                                   fold_dir(out, k), fold_index=k, on_epoch=report, extra=self.pseudo_images(cfg, k),
                                   deadline=self.deadline)
                except FloatingPointError:
                    # a recipe that diverges scores 0 (chance, at best, for a fold run of it), so the sampler
                    # learns to avoid its region; as a failed trial it would be left out of the sampler's model
                    diverged = f"fold {k}"
                    trial.set_user_attr("diverged", diverged)
                    log.warning("trial %d diverged in fold %s (loss or outputs not finite): scored 0.",
                                trial.number, k)
                    best = [0.0] * len(self.fold_ids)
                    break
                best.append(r["best_score"])
                trial.set_user_attr(f"fold_{k}_{key}", r["best_score"])
            value = float(np.mean(best))
            write_json(out / "result.json", {"number": trial.number, "value": value, "params": params, "seed": seed,
                                             f"fold_{key}": dict(zip(map(str, self.fold_ids), best)),
                                             **({"diverged": diverged} if diverged else {})})
            return value
        finally:
            lock.release()
            if not self.keep:
                for k in self.fold_ids:
                    for ckpt in (BEST, LAST):
                        (fold_dir(out, k) / ckpt).unlink(missing_ok=True)
