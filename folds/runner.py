"""The fold runner: data -> split -> one model per fold -> OOF, crop OOF and test probabilities.

It writes run files only (``common.layout``); every submission, the single run's fold mean
included, is built from those files by ``ensemble/build.py``.

>>> runner = FoldRunner.open(resolve_config({"data_dir": None}))   # doctest: +SKIP
>>> runner.run(runner.planned_folds)                          # doctest: +SKIP
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import UserError, layout, write_csv, write_json
from common.atomic import remove_leftovers
from common.interrupt import TimeUp
from common.layout import FULL, prob_frame
from common.metrics import NEG_LOG_LOSS, get_metric
from ensemble.tta import n_views
from folds import distributed
from folds.config import RunConfig, recipe_warnings
from folds.deadline import Deadline, duration
from folds.engine import scores
from folds.loader import num_workers
from folds.lock import MISSED_BEATS, FoldLock
from folds.manifest import training_packages
from folds.predict import CROP_OOF_SEED, PaintingViews, Predictor
from folds.prepare import PreparedRun, prepare_run, with_data_dir
from folds.init_from import check_init_source, started_from
from folds.pseudo import check_source, fold_pseudo_images
from folds.run_folder import check_classes, check_settings, package_note, settings_kept, write_run_files
from folds.scale_check import whole_test_warning
from folds.split import fold_rows
from folds.stopping import best_of, chosen_on_crops, epoch_read_down
from folds.train import train_fold


LOCK_POLL_SECONDS = 2  # how often a held fold's lock is looked at while this process waits for it

log = logging.getLogger(__name__)


def default_run_name(cfg: RunConfig, demo: bool) -> str:
    base = "demo" if demo else f"{cfg.model.replace('/', '_')}-seed{cfg.seed}"
    return base + ("-holdout" if cfg.holdout else "")


class FoldRunner:
    """Trains and predicts the folds of one prepared run folder ``<runs_dir>/<name>/``.

    ``FoldRunner.open(cfg)`` does the setup (checks, data, split, run files); the runner
    itself only runs. The caller's config is never changed.
    """

    def __init__(self, prep: PreparedRun, *, resume: bool = False, force: bool = False, lock_owner: str | None = None,
                 deadline: Deadline | None = None):
        self.cfg, self.ds, self.folds, self.demo = prep.cfg, prep.ds, prep.folds, prep.demo
        self.split_hash = prep.split_hash
        self.run_dir = layout.run_dir(self.cfg.runs_dir, self.cfg.name)
        self.resume, self.force, self.lock_owner = resume, force, lock_owner
        self.deadline = deadline or Deadline()  # --time-limit: checked before each epoch and each fold's predictions
        self.found_finished: set = set()  # folds skipped as finished (maybe by another process while this one looked)

    @classmethod
    def open(cls, cfg: RunConfig, *, resume: bool = False, force: bool = False,
             announce: bool = True, deadline: Deadline | None = None, dry_run: bool = False) -> "FoldRunner":
        """Resolve the data folder and run name, check the run folder, prepare the data, write the run files.
        ``announce=False``: do not say again that the demo data is used (a side-by-side fold process).
        ``dry_run``: every check, but the run folder is left as it is (``--dry-run``)."""
        if not distributed.is_main():
            distributed.barrier()  # under torchrun rank 0 checks and writes (demo data, run folder) first
        cfg, demo = with_data_dir(cfg, announce)
        cfg = replace(cfg, name=cfg.name or default_run_name(cfg, demo))
        run_dir = layout.run_dir(cfg.runs_dir, cfg.name)
        stale_split = check_settings(run_dir, cfg, apply=not dry_run)
        prep = prepare_run(cfg, None if stale_split else run_dir / layout.FOLDS, demo=demo, write_split=False)
        check_classes(run_dir, prep)
        if announce and distributed.is_main():
            for warning in [*recipe_warnings(cfg), whole_test_warning(cfg.crop, prep.ds), package_note(run_dir)]:
                if warning:
                    log.warning(warning)
        if cfg.pseudo:  # before anything is written: the source must fit this run's split
            check_source(cfg.pseudo, prep.ds.classes, prep.split_hash, layout.planned_folds(cfg), cfg.pseudo_oof)
        if cfg.init_from:  # the same, for the folds still to train (a finished one needs its source no more)
            check_init_source(cfg, prep.ds.classes, prep.split_hash,
                              [k for k in layout.planned_folds(cfg) if force or not layout.is_done(run_dir, k)])
        if distributed.is_main() and not dry_run:
            write_run_files(run_dir, prep)
            distributed.barrier()
        return cls(prep, resume=resume, force=force, deadline=deadline)

    @property
    def planned_folds(self) -> list[int]:
        return layout.planned_folds(self.cfg)

    def fold_dir(self, k) -> Path:
        return layout.fold_dir(self.run_dir, k)

    @functools.cached_property
    def test_hash(self) -> str:
        """The test set's ``Dataset.test_hash``, kept in each fold's done.json beside its test probabilities."""
        return self.ds.test_hash()

    def is_done(self, k) -> bool:
        return layout.is_done(self.run_dir, k)

    def trains(self, k) -> bool:
        """Whether ``run_fold(k)`` trains the fold (unless another process holds it): not finished, or --force."""
        return self.force or not self.is_done(k)

    def to_train(self, folds) -> list:
        """Those of ``folds`` that ``run_fold`` trains: unfinished, or all under --force."""
        return [k for k in folds if self.trains(k)]

    def lock(self, k) -> FoldLock:
        """Fold ``k``'s lock, as this process (or its Ray task) would hold it."""
        return FoldLock(self.fold_dir(k) / layout.LOCK, owner=self.lock_owner)

    def holder(self, k) -> dict | None:
        """The live process that holds fold ``k``'s lock (another one: a run skips the fold), or None."""
        return self.lock(k).holder()

    def held_note(self, k, holder: dict, doing: str, by: str = "this process") -> str:
        """Who holds fold ``k`` (``holder``, its lock's; {} where it let go this instant), what ``by`` (this
        process, or the run a dry run stands for) is ``doing`` about it, and how the fold is taken over where that
        process is gone."""
        lock = FoldLock(self.fold_dir(k) / layout.LOCK)
        waits = self.comes_back_to(k, holder) and self.wait_fits(lock, holder)[1]
        who = f"{by}, once its other folds are done," if waits else "a rerun with --resume"
        return (f"fold {k} is being trained by {lock.describe(holder) if holder else 'another process'}; "
                f"{doing}. If that process is gone (its machine, or a Colab or Kaggle session, ended), {who} takes "
                f"the fold over {FoldLock.stale_after(holder) // 60} min after its last heartbeat (or delete "
                f"{lock.path} now).")

    def comes_back_to(self, k, holder: dict) -> bool:
        """Whether ``come_back`` waits for fold ``k``'s ``holder`` to go silent: a plain process (under torchrun
        the group decides together), a holder that beats every ``HEARTBEAT_SECONDS`` (an older checkout's lock
        beats once an epoch and is honoured for hours), and a fold this process may take over (an interrupted
        one needs --resume)."""
        interrupted = (self.fold_dir(k) / layout.LAST).is_file()
        return (distributed.world()[1] == 1 and bool(holder) and "beat" in holder
                and (self.resume or self.force or not interrupted))

    def wait_fits(self, lock: FoldLock, holder: dict) -> tuple[float, bool]:
        """The seconds until ``holder``'s silent ``lock`` may be taken over, and whether --time-limit leaves this
        process that long (no limit: it does)."""
        wait, left = FoldLock.stale_after(holder) - lock.silent_for(), self.deadline.minutes_left()
        return wait, left is None or 60 * left > wait

    def come_back(self, folds: list) -> dict:
        """``folds`` skipped as held, once this process has trained its others. A holder that has stopped beating
        (its machine or its Colab or Kaggle session ended, or its lock was copied with the run folder, which
        resets the lock's time) is waited out, and its fold taken over, as a rerun with --resume would
        ``FoldLock.stale_after`` its last heartbeat; a holder that beats meanwhile is alive and keeps its fold.
        The safety is the lock's own (only a lock silent that long is taken over); what is new is that this
        process waits, where before the user had to come back and run it again. Returns the folds trained.

        Where --time-limit leaves too little for that wait, the holder is only watched: one that beats keeps its
        fold, and one that misses ``MISSED_BEATS`` beats (or is still silent at the limit) is likely gone, so the
        command stops with ``TimeUp`` (75: not finished, run it again with --resume) once the others are done."""
        results, waiting, too_late = {}, {}, {}
        if distributed.world()[1] > 1:  # each rank would look on its own, and run_fold is the group's together
            return results
        for k in folds:
            lock = self.lock(k)
            holder = lock.holder()
            if holder is None:  # let go, or silent long enough, since this process looked
                waiting[k] = (lock, None, None)
                continue
            if not self.comes_back_to(k, holder):
                continue
            wait, fits = self.wait_fits(lock, holder)
            waiting[k] = (lock, lock.last_beat(), None if fits else holder)
            if not fits:
                log.info("fold %s: --time-limit leaves %.0f s, too few to wait the %.0f s after which its holder's "
                         "lock may be taken over; this process watches for up to %d s whether its holder (%s) "
                         "beats: if it does, the fold is left to it; if not, the run stops with 75, to be run again "
                         "with --resume.", k, 60 * self.deadline.minutes_left(), wait, MISSED_BEATS * holder["beat"],
                         lock.describe(holder))
            else:
                log.info("fold %s: this process waits up to %.0f s for its holder (%s) to beat, and then takes the "
                         "fold over (a process training it beats every %d s and keeps it; Ctrl-C stops the wait).",
                         k, max(wait, 0), lock.describe(holder), holder["beat"])
        while waiting:
            for k, (lock, seen, watched) in list(waiting.items()):
                if lock.holder() is None:  # gone silent (or let go, or finished): as a rerun would, take it
                    del waiting[k]
                    r = self.run_fold(k)
                    if r is not None:
                        results[k] = r
                elif seen is not None and lock.last_beat() != seen:
                    del waiting[k]
                    log.info("fold %s: its holder beat; it is training the fold, which is left to it.", k)
                elif watched is not None and (lock.missed_beats(watched)
                                              or 60 * self.deadline.minutes_left() <= LOCK_POLL_SECONDS):
                    del waiting[k]
                    too_late[k] = FoldLock.stale_after(watched) - lock.silent_for()
            if waiting:
                time.sleep(LOCK_POLL_SECONDS)
        if too_late:
            left, k = 60 * max(self.deadline.minutes_left(), 0), min(too_late, key=too_late.get)
            raise TimeUp(f"--time-limit: fold(s) {','.join(map(str, too_late))} were not taken over: their holder "
                         f"is silent, {duration(left)} were left, and the lock of fold {k} may be taken over only "
                         f"in {duration(too_late[k])}; a later run with --resume takes them")
        return results

    # -- one fold (or the full-data model) -----------------------------------------------
    def run_fold(self, k, epochs: int | None = None) -> dict | None:
        """Train and predict fold ``k`` (or ``FULL``); None when another process holds it."""
        d = self.fold_dir(k)
        # under torchrun, rank 0 decides for the group (skip, lock) and alone touches files
        if distributed.agree(not self.trains(k)):
            return self._finished(k, d)
        lock = self.lock(k) if distributed.is_main() else None
        # once more where the holder let go while this process looked (it may have just finished the fold: the
        # look under the lock skips it then)
        if not distributed.agree((lock.acquire() or (lock.holder() is None and lock.acquire())) if lock else None):
            log.info("%s", self.held_note(k, (lock.holder() if lock else None) or {}, "skipping it for now"))
            return None
        try:
            if lock is not None:  # under the lock no other process writes here: a killed one's half-writes go
                freed = remove_leftovers(d)
                if freed:
                    log.info("fold %s: removed %.1f MB of files that a killed process left half-written in %s.", k,
                             freed / 2**20, d)
            # Asked again under the lock: another process may have finished the fold (and released its lock)
            # since the look above (on a network folder, whose client may cache a file's absence, the look
            # may be older still). Trained again, it would cost a whole fold from scratch and replace its files.
            if distributed.agree(not self.trains(k)):
                return self._finished(k, d, lock)
            settings_kept(self.run_dir, self.cfg, k)
            self.check_not_interrupted(k)
            if self.force and distributed.is_main():
                self.clear_fold(k)
            distributed.barrier()
            return self._train_and_predict(k, d, lock, epochs)
        except torch.OutOfMemoryError:
            raise UserError(out_of_memory_message(self.cfg, k, (d / layout.LAST).is_file())) from None
        except FloatingPointError:  # the engine's checks: the training loss or the outputs became NaN or inf
            raise UserError(diverged_message(self.cfg, k)) from None
        finally:
            if lock is not None:
                lock.release()

    def check_not_interrupted(self, k) -> None:
        """An interrupted fold goes on only with --resume (or starts again with --force)."""
        last = self.fold_dir(k) / layout.LAST
        if last.is_file() and not (self.resume or self.force):
            raise UserError(f"fold {k} was interrupted ({last} exists). Add --resume to continue it from its last "
                            "epoch, or --force to retrain it from scratch.")

    def _still_mine(self, k, lock: FoldLock | None) -> None:
        """After each epoch: the fold and the run folder's settings are still this process's."""
        still_held(lock)
        settings_kept(self.run_dir, self.cfg, k)

    def _finished(self, k, d: Path, lock: FoldLock | None = None) -> dict:
        """A finished fold is skipped: its done.json, after its test probabilities are brought up to date.
        ``lock``: the fold's lock, when this process holds it already."""
        log.info("fold %s already finished (%s); skipping. --force retrains it.", k, d / layout.DONE)
        self.found_finished.add(k)
        self._predict_test_again_if_changed(k, d, lock)
        return layout.read_json(d / layout.DONE)

    def fold_rows(self, k) -> tuple[np.ndarray, np.ndarray, int]:
        """Fold ``k``'s training and validation rows of the train set, and its index (its seed's)."""
        if k == FULL:  # all paintings, no validation, a fixed number of epochs
            return np.arange(len(self.folds)), np.array([], dtype=int), self.cfg.n_folds
        return (*fold_rows(self.folds, k), k)

    def pseudo_images(self, k):
        """What fold ``k`` learns besides its paintings from ``--pseudo``'s run, and how many of them are test
        images; (None, 0) without ``--pseudo``."""
        if not self.cfg.pseudo:
            return None, 0
        source = check_source(self.cfg.pseudo, self.ds.classes, self.split_hash, [] if k == FULL else [k],
                              self.cfg.pseudo_oof and k != FULL)
        return fold_pseudo_images(source, k, self.ds, self.cfg, max(1, num_workers(self.cfg)))

    def predicted_images(self, n_val: int) -> int:
        """The images a fold predicts once trained (each with ``--tta``'s views): its ``n_val`` validation
        paintings whole and as the crop OOF's crops, and the test."""
        return n_val * (1 + self.cfg.crop_oof) + len(self.ds.test)

    def _pseudo_share(self, n_test: int) -> str:
        """How many of the test images a fold learns, in words: in hard mode, those that reach the threshold, with
        a hint where they are few (a weak source's round adds little, and costs a run)."""
        total = len(self.ds.test)
        if self.cfg.pseudo_mode != "hard":
            return f"{n_test} pseudo-labelled test images (soft)"
        few = (" (few: a lower --pseudo-threshold or --pseudo-mode soft adds more; choose by the crop OOF)"
               if n_test < 0.1 * total else "")
        return (f"{n_test} of the {total} test images, those the source gives --pseudo-threshold "
                f"{self.cfg.pseudo_threshold:g} or more{few}")

    def _train_and_predict(self, k, d: Path, lock: FoldLock | None, epochs: int | None) -> dict:
        t0 = time.time()
        tr, va, index = self.fold_rows(k)
        extra, n_test = self.pseudo_images(k)
        log.info("fold %s: %d train / %d validation paintings%s", k, len(tr), len(va),
                 f" + {self._pseudo_share(n_test)} + {len(extra.paths) - n_test} pseudo-labelled crops of its "
                 "validation paintings (their labels unread)" if extra else "")
        result = train_fold(started_from(self.cfg, k), self.ds, tr, va, d, fold_index=index, resume=self.resume,
                            on_epoch=lambda *_: self._still_mine(k, lock), epochs=epochs, extra=extra,
                            deadline=self.deadline)
        if extra:
            result.update(pseudo_images=n_test, pseudo_oof_crops=len(extra.paths) - n_test)
        predicted = self.predicted_images(len(va))
        self.deadline.before("prediction", f"fold {k}'s prediction (its epochs are done)",
                             self.deadline.prediction_estimate(predicted, n_views(self.cfg.tta)))
        started = time.time()
        predictor = Predictor(self.cfg, self.ds.num_classes, d)
        if len(va):
            result.update(self._predict_oof(k, d, predictor, self.ds.train.iloc[va]))
        test = predictor.predict(self.ds.test["path"], desc=f"fold {k} test")
        self.deadline.took("prediction", time.time() - started)
        result.update(fold=k, minutes=(time.time() - t0) / 60, tta=self.cfg.tta, test_hash=self.test_hash,
                      packages=training_packages())  # what trained it: a run's folds may span sessions
        if epochs is not None:
            result["epochs"] = epochs
        if distributed.is_main():
            write_csv(d / layout.TEST_PROBS, prob_frame(test, self.ds.classes, id=self.ds.test["id"].to_numpy()))
            write_json(d / layout.DONE, result)  # written last: a fold is finished only with all its files
            if not self.cfg.keep_last:  # the full training state is only needed to resume an unfinished fold
                (d / layout.LAST).unlink(missing_ok=True)
        distributed.barrier()
        if "oof" in result:
            m = get_metric(self.cfg.metric)
            log.info("fold %s: OOF %s %.4f%s", k, m.label, result["oof"][m.key],
                     f", crop-OOF {m.label} {result['crop_oof'][m.key]:.4f}" if "crop_oof" in result else "")
        return result

    def _predict_test_again_if_changed(self, k, d: Path, lock: FoldLock | None) -> None:
        """A finished fold's test probabilities for the test set as it is now. A corrected or new test set (or
        a lost test_probs.csv) would leave the fold's probabilities for other ids, and the run's submission
        could not be made, or for other images under the same ids, and it would be wrong; its best weights
        predict the test again, so the fold is not trained again. Under the fold's lock: the other processes
        on the run folder (side-by-side fold processes, another machine resuming it) find the same change,
        and one prediction serves them all."""
        why = distributed.agree(self.test_changed(k) if distributed.is_main() else None)
        if why is None:
            return
        mine = None
        if lock is None:
            mine = self._wait_for_lock(k) if distributed.is_main() else None
            why = distributed.agree(self.test_changed(k) if distributed.is_main() else None)  # done meanwhile?
        try:
            if why is not None:
                self._predict_test(k, d, why)
        finally:
            if mine is not None:
                mine.release()

    def _wait_for_lock(self, k) -> FoldLock:
        """Fold ``k``'s lock, once its holder lets it go (or is found gone: a stale lock is taken over)."""
        lock, said = self.lock(k), False
        while not lock.acquire():
            if not said:
                holder = lock.holder()
                log.info("fold %s is held by %s (predicting its test again, or retraining it); waiting for it.", k,
                         lock.describe(holder) if holder else "another process")
                said = True
            time.sleep(LOCK_POLL_SECONDS)
        return lock

    def _predict_test(self, k, d: Path, why: str) -> None:
        log.info("fold %s: %s; predicting the test again with its best weights.", k, why)
        now = self.ds.test["id"].to_numpy()
        self.deadline.before("prediction", f"fold {k}'s test prediction",
                             self.deadline.prediction_estimate(len(now), n_views(self.cfg.tta)))
        test = Predictor(self.cfg, self.ds.num_classes, d).predict(self.ds.test["path"], desc=f"fold {k} test")
        if distributed.is_main():
            write_csv(d / layout.TEST_PROBS, prob_frame(test, self.ds.classes, id=now))
            done = layout.read_json(d / layout.DONE)
            if done.get("test_hash") != self.test_hash:
                write_json(d / layout.DONE, {**done, "test_hash": self.test_hash})
        distributed.barrier()

    def test_changed(self, k) -> str | None:
        """How finished fold ``k``'s test probabilities differ from the test set as it is now; None if not."""
        d = self.fold_dir(k)
        if not (d / layout.TEST_PROBS).is_file():
            return f"{layout.TEST_PROBS} is missing"
        then = layout.read_frame(d / layout.TEST_PROBS, usecols=["id"])["id"].to_numpy()
        now = self.ds.test["id"].to_numpy()
        if not np.array_equal(then, now):
            return (f"test.csv changed since its test probabilities were written ({len(then):,} ids then, "
                    f"{len(now):,} now, {len(np.intersect1d(then, now)):,} in both)")
        saved = layout.read_json(d / layout.DONE).get("test_hash")  # None: a fold from before it was kept
        if saved not in (None, self.test_hash):
            return "the test images changed since its test probabilities were written (the same ids)"
        return None

    def _predict_oof(self, k, d: Path, predictor: Predictor, val: pd.DataFrame) -> dict:
        """The validation paintings whole (``oof.csv``) and as fixed half-size crops (``oof_crops.csv``)."""
        out = {}
        ids, labels, artists = val["id"].to_numpy(), val["label"].to_numpy(), val["artist"].to_numpy()
        n = self.cfg.crop_oof
        # each painting whole, then its crops: one pass decodes it once for all of them
        views = PaintingViews.of(list(val["path"]), ids, n, CROP_OOF_SEED)
        probs = predictor.predict(views.paths, crops=views.boxes, desc=f"fold {k} OOF, whole and {n} crops each")
        oof, crops = probs[views.whole], probs[~views.whole]
        if distributed.is_main():
            write_csv(d / layout.OOF, prob_frame(oof, self.ds.classes, id=ids, fold=k, label=artists))
        out["oof"] = scores(oof, labels)
        if n:
            if distributed.is_main():
                write_csv(d / layout.OOF_CROPS, prob_frame(crops, self.ds.classes, id=np.repeat(ids, n),
                                                           crop=np.tile(np.arange(n), len(val)), fold=k,
                                                           label=np.repeat(artists, n)))
            out["crop_oof"] = scores(crops, np.repeat(labels, n))
        return out

    def full_epochs(self, epochs: int | None = None) -> int:
        """``epochs``, or the median best epoch of the run's finished folds."""
        if epochs is not None:
            return epochs
        best = [layout.read_json(self.fold_dir(k) / layout.DONE)["best_epoch"]
                for k in self.planned_folds if self.is_done(k)]
        if not best:
            raise UserError("--fold full needs the run's folds first (for the epoch count), or --full-epochs N.")
        return int(np.median(best))

    def clear_fold(self, k) -> None:
        """Remove what fold ``k`` wrote (``--force``)."""
        for f in layout.FOLD_FILES:
            (self.fold_dir(k) / f).unlink(missing_ok=True)

    def run_full(self, epochs: int | None = None) -> dict:
        """One model on all train data for a fixed number of epochs, for the test soft vote.

        Default epochs: the median best epoch of the run's finished folds. It has no OOF, so
        it can join a soft vote but not a stacker's fit.
        """
        result = self.run_fold(FULL, self.full_epochs(epochs))
        if result is None:
            raise UserError(f"the full-data model of {self.run_dir} is being trained by another process.")
        return result

    # -- whole run -----------------------------------------------------------------------
    def run(self, folds: list[int], join: bool = True) -> dict:
        """Train ``folds``; then, when every planned fold is done, join the run (its OOF files and scores).
        ``join=False``: train only (a side-by-side fold process, whose parent joins once they all end)."""
        self.check_folds(folds)
        results, paces = {}, []
        for i, k in enumerate(folds):
            trains, started = self.trains(k), time.time()
            r = self.run_fold(k)
            if r is not None:
                results[k] = r
            if r is not None and trains and k not in self.found_finished:  # its pace: trained here
                paces.append((time.time() - started) / 60)
                self._say_what_is_left(k, paces, self.to_train(folds[i + 1:]))
        results.update(self.come_back(self.to_train(k for k in folds if k not in results)))
        if not distributed.is_main() or not join:
            return {"folds": results, "complete": False}  # rank 0, or the side-by-side parent, joins the run
        return self.join(results)

    def _say_what_is_left(self, k, paces: list[float], left: list) -> None:
        """After a fold, how long the folds left to this process take at the pace of those it trained: whether
        they fit a session (a Kaggle version's 12 hours; `--time-limit` stops a run that would not)."""
        if left and distributed.is_main():
            minutes_left = self.deadline.minutes_left()
            limit = "" if minutes_left is None else f"; {minutes_left:.0f} min of --time-limit are left"
            need = len(left) * sum(paces) / len(paces)
            log.info("fold %s took %.1f min; the %d fold(s) left here (%s) take about %s min at that pace (less "
                     "where early stopping ends one sooner)%s.", k, paces[-1], len(left), ",".join(map(str, left)),
                     f"{need:.1f}" if need < 10 else f"{need:.0f}", limit)  # short folds: not "about 0 min"

    def check_folds(self, folds: list[int]) -> None:
        extra = sorted(set(folds) - set(self.planned_folds))
        if extra:
            raise UserError(f"--fold {','.join(map(str, extra))}: this is a holdout run (--holdout or --preset seed), "
                            "which trains fold 0 only.")

    def finished(self, folds) -> dict:
        """The results (done.json) of those of ``folds`` that are finished."""
        return {k: layout.read_json(self.fold_dir(k) / layout.DONE) for k in folds if self.is_done(k)}

    def join(self, results: dict) -> dict:
        """``results``, and, when every planned fold is done, the joined run (its OOF files and scores)."""
        missing = [k for k in self.planned_folds if not self.is_done(k)]
        if missing:
            log.info("folds %s are not finished yet; the OOF and the submission are written when they are "
                     "(run them with --fold %s; `python ensemble/build.py %s --finished-folds` builds a submission "
                     "from the finished ones now).", missing, ",".join(map(str, missing)), self.run_dir)
            return {"folds": results, "complete": False}
        return {"folds": results, "complete": True, **self.assemble()}

    def assemble(self) -> dict:
        """Join the finished folds' OOF files into the run's, and score them."""
        done = self.finished(self.planned_folds)
        out = {}
        cidx = {c: i for i, c in enumerate(self.ds.classes)}
        for key, name in (("oof", layout.OOF), ("oof_crops", layout.OOF_CROPS)):
            parts = [self.fold_dir(k) / name for k in self.planned_folds]
            if all(p.is_file() for p in parts):
                df = pd.concat([layout.read_frame(p) for p in parts], ignore_index=True)
                write_csv(self.run_dir / name, df)
                out[key] = scores(df[self.ds.classes].to_numpy(), df["label"].map(cidx).to_numpy())
        if len(self.planned_folds) == self.cfg.n_folds:
            ids = layout.read_frame(self.run_dir / layout.OOF, usecols=["id"])["id"]
            if ids.duplicated().any() or set(ids) != set(self.ds.train["id"]):
                raise UserError(f"{self.run_dir}/{layout.OOF} does not cover every train id exactly once.")
        read_down = epoch_read_down(done)
        if read_down is not None:  # the folds' best epochs were chosen on the paintings their OOF scores
            out["epoch_optimism"] = read_down
        out["fold_results"] = done
        manifest = layout.read_json(self.run_dir / layout.MANIFEST)
        manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        fold_minutes={k: round(v["minutes"], 3) for k, v in done.items()},
                        scores={k: v for k, v in out.items() if k in ("oof", "oof_crops")})
        write_json(self.run_dir / layout.MANIFEST, manifest)
        write_json(self.run_dir / layout.SCORES, {k: v for k, v in out.items() if k != "fold_results"})
        return out


def out_of_memory_message(cfg: RunConfig, k, has_last: bool) -> str:
    """What to do when fold ``k`` ran out of GPU memory: the options that decide it, and what was kept."""
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else cfg.device
    size = f"{cfg.img_size} px" if cfg.img_size else "its pretrained input size"
    kept = (f"its epochs so far are in its {layout.LAST}, and --resume continues it" if has_last
            else "it had no finished epoch")
    # checkpointing changes the memory, not the result, so it is the one remedy this run folder accepts
    checkpointing = ("" if cfg.grad_checkpointing else
                     "else rerun with --grad-checkpointing (and --resume): the same run in less memory, slower; ")
    return (f"fold {k}: the GPU ran out of memory ({cfg.model} at {size}, --batch-size {cfg.batch_size}, on {where}). "
            f"Finished folds are kept; {kept}. If another process holds GPU memory (nvidia-smi), free it and rerun; "
            f"{checkpointing}else lower --batch-size (with --grad-accum-steps {2 * cfg.grad_accum_steps} and half the "
            "batch, each step still sees as many images) or --img-size, under a new --name once any fold of this run "
            "has trained an epoch: its folds must share one recipe.")


def diverged_message(cfg: RunConfig, k) -> str:
    """What to do when fold ``k``'s training loss or outputs stopped being finite: resumed, it would
    diverge again."""
    return (f"fold {k}: the model diverged: its training loss or outputs are not finite ({cfg.optimizer}, --lr "
            f"{cfg.lr}, --amp {cfg.amp}). Finished folds and epochs are kept, but a resume with these settings "
            "diverges again: train with a lower --lr, clipped gradients (--clip-grad 1.0) or --amp off, under a new "
            "--name (its folds must share one recipe).")


def still_held(lock: FoldLock | None) -> None:
    """After each epoch: stop if another process took the fold over (this one was paused too long);
    under torchrun rank 0 holds the lock and the group stops together."""
    lost = distributed.agree(lock.lost() if lock else None)
    if lost:
        raise UserError(lost)


def summary_table(fold_results: dict, metric: str | None = None) -> str:
    """One line per fold: best epoch, its validation score and loss on the paintings the monitor chose it on (the
    validation crops under the default crop recipe, else the whole paintings; no TTA; the loss is the score where
    the metric is the log loss, negated, and is not shown twice), then the fold's OOF and crop-OOF score (with
    TTA, what the run's scores are made of), how high choosing the best epoch on those paintings reads them
    (``epoch_optimism``, where kept), and minutes; the scores by the run's competition ``metric``."""
    m = get_metric(metric)
    view = "val-crop" if any(map(chosen_on_crops, fold_results.values())) else "val"  # a run's folds share it
    cols = [f"{view} {m.short}", f"OOF {m.short}", f"crop-OOF {m.short}"]
    w = [max(8, len(c)) for c in cols]
    lw = len(view) + 6  # the loss column's width
    loss = m.key != NEG_LOG_LOSS  # the validation loss, unless the metric is that loss (negated) already
    chose = any("epoch_optimism" in r for r in fold_results.values())
    head = (f"{'fold':>5} {'best epoch':>10} {cols[0]:>{w[0]}}" + (f" {view + ' loss':>{lw}}" if loss else "")
            + f" {cols[1]:>{w[1]}} {cols[2]:>{w[2]}}" + (f" {'epoch choice':>12}" if chose else "")
            + f" {'minutes':>8}")
    lines = [head, "-" * len(head)]
    for k, r in sorted(fold_results.items(), key=lambda kv: str(kv[0])):
        oof = r.get("oof", {}).get(m.key, float("nan"))
        crop = r.get("crop_oof", {}).get(m.key, float("nan"))
        optimism = f"{r['epoch_optimism']:+12.4f}" if "epoch_optimism" in r else f"{'-':>12}"
        lines.append(f"{k!s:>5} {r['best_epoch']:>10} {best_of(r, m.key):>{w[0]}.4f}"
                     + (f" {best_of(r, 'loss'):>{lw}.4f}" if loss else "")
                     + f" {oof:>{w[1]}.4f} {crop:>{w[2]}.4f}" + (f" {optimism}" if chose else "")
                     + f" {r['minutes']:>8.2f}")
    if chose:
        lines.append(f"epoch choice: how high choosing each fold's best epoch on its validation paintings reads "
                     f"their {'crop-OOF' if view == 'val-crop' else 'OOF'} (a bootstrap of the choice)")
    return "\n".join(lines)
