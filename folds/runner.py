"""The fold runner: data -> split -> one model per fold -> OOF, test probabilities, submission.

>>> runner = FoldRunner(resolve_config({"data_dir": None}))   # doctest: +SKIP
>>> runner.run("all")                                         # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from common import UserError, write_csv, write_json
from ensemble.submission import write_submission
from folds.augment import eval_transform
from folds.config import RUN_CONTROL, RunConfig
from folds.data import Dataset, load_dataset
from folds.demo import make_demo_dataset
from folds.engine import scores
from folds.loader import ImageDataset, make_loader
from folds.lock import FoldLock
from folds.manifest import make_manifest
from folds.predict import crop_boxes, predict_probs
from folds.split import load_or_make_folds
from folds.train import image_cache, load_best, num_workers, train_fold

log = logging.getLogger(__name__)
CROP_SEED = 20240607  # crop boxes are fixed across runs so crop-OOF rows line up for stacking


def default_run_name(cfg: RunConfig, demo: bool) -> str:
    base = "demo" if demo else f"{cfg.model.replace('/', '_')}-seed{cfg.seed}"
    return base + ("-holdout" if cfg.holdout else "")


def prob_frame(probs: np.ndarray, classes, **cols) -> pd.DataFrame:
    """Metadata columns first, then one probability column per class."""
    df = pd.DataFrame(cols)
    return pd.concat([df, pd.DataFrame(probs, columns=list(classes))], axis=1)


class FoldRunner:
    """Trains and predicts the folds of one run folder ``<runs_dir>/<name>/``."""

    def __init__(self, cfg: RunConfig, *, resume: bool = False, force: bool = False):
        self.cfg, self.resume, self.force = cfg, resume, force
        self.demo = cfg.data_dir is None
        if self.demo:
            data_dir = make_demo_dataset(Path(cfg.runs_dir) / "demo-data")
            log.warning("DEMO DATA: no --data-dir given, so this run uses the built-in synthetic painters "
                        "dataset in %s (preset 'demo' unless --preset says otherwise).", data_dir)
            cfg.data_dir = str(data_dir)
        cfg.name = cfg.name or default_run_name(cfg, self.demo)
        self.run_dir = Path(cfg.runs_dir) / cfg.name
        self.ds: Dataset = load_dataset(cfg.data_dir, cfg.corrections)
        self._check_config()
        self.folds, self.split_key, self.split_hash = load_or_make_folds(
            self.run_dir / "folds.csv", self.ds.train["id"], self.ds.train["artist"], cfg.n_folds,
            cfg.split_seed, shared_dir=Path(cfg.runs_dir) / "splits")
        self._write_run_files()

    # -- run folder ---------------------------------------------------------------------
    def _check_config(self) -> None:
        saved = self.run_dir / "config.json"
        if not saved.is_file():
            return
        old = json.loads(saved.read_text())
        new = self.cfg.to_dict()
        diff = {k: (old.get(k), v) for k, v in new.items() if k not in RUN_CONTROL and old.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
            raise UserError(f"{self.run_dir} was made with other settings ({shown}). Its folds were trained with "
                            "the old ones: use a new --name for the new settings, or delete the folder.")
        classes = json.loads((self.run_dir / "classes.json").read_text())
        if classes != self.ds.classes:
            raise UserError(f"{self.run_dir}/classes.json differs from the classes in {self.cfg.data_dir}/train.csv.")

    def _write_run_files(self) -> None:
        write_json(self.run_dir / "config.json", self.cfg.to_dict())
        write_json(self.run_dir / "classes.json", self.ds.classes)
        manifest = self.run_dir / "manifest.json"
        if not manifest.is_file():
            write_json(manifest, make_manifest(data_hash=self.ds.data_hash(), split_key=self.split_key,
                                               split_hash=self.split_hash, demo=self.demo,
                                               n_train=len(self.ds.train), n_test=len(self.ds.test)))

    @property
    def planned_folds(self) -> list[int]:
        return [0] if self.cfg.holdout else list(range(self.cfg.n_folds))

    def fold_dir(self, k) -> Path:
        return self.run_dir / f"fold_{k}"

    def is_done(self, k) -> bool:
        return (self.fold_dir(k) / "done.json").is_file()

    # -- one fold ------------------------------------------------------------------------
    def run_fold(self, k: int) -> dict | None:
        """Train and predict fold ``k``; None when another process holds it."""
        d = self.fold_dir(k)
        if self.is_done(k) and not self.force:
            log.info("fold %s already finished (%s); skipping. --force retrains it.", k, d / "done.json")
            return json.loads((d / "done.json").read_text())
        lock = FoldLock(d / "lock")
        if not lock.acquire():
            log.info("fold %s is being trained by %s; skipping it here.", k, lock.holder())
            return None
        try:
            if (d / "last.pt").is_file() and not (self.resume or self.force):
                raise UserError(f"fold {k} was interrupted ({d / 'last.pt'} exists). Add --resume to continue it "
                                "from its last epoch, or --force to retrain it from scratch.")
            if self.force:
                for f in ("done.json", "last.pt", "best.pt", "history.csv"):
                    (d / f).unlink(missing_ok=True)
            return self._train_and_predict(k, d, lock)
        finally:
            lock.release()

    def _train_and_predict(self, k: int, d: Path, lock: FoldLock) -> dict:
        t0 = time.time()
        tr = np.flatnonzero(self.folds["fold"].to_numpy() != k)
        va = np.flatnonzero(self.folds["fold"].to_numpy() == k)
        log.info("fold %d: %d train / %d validation paintings", k, len(tr), len(va))
        result = train_fold(self.cfg, self.ds, tr, va, d, fold_seed=k, resume=self.resume,
                            on_epoch=lambda *_: lock.heartbeat())
        model, dcfg, prec, inputs = load_best(self.cfg, self.ds.num_classes, d)
        tf = eval_transform(dcfg["input_size"][-1], dcfg["mean"], dcfg["std"])
        bs, workers, tta = self.cfg.batch_size * 2, num_workers(self.cfg), self.cfg.tta
        train = self.ds.train.iloc[va]

        cache = image_cache(self.cfg, dcfg["input_size"][-1])

        def predict(paths, labels=None, crops=None, desc=""):
            data = ImageDataset(paths, labels, tf, crops=crops, cache=cache)
            return predict_probs(model, make_loader(data, bs, train=False, num_workers=workers), prec, inputs, tta,
                                 desc=desc)

        oof = predict(train["path"], train["label"], desc=f"fold {k} OOF")
        write_csv(d / "oof.csv", prob_frame(oof, self.ds.classes, id=train["id"].to_numpy(), fold=k,
                                            label=train["artist"].to_numpy()))
        result["oof"] = scores(oof, train["label"].to_numpy(), self.ds.num_classes)
        if self.cfg.crop_oof:
            n = self.cfg.crop_oof
            boxes = crop_boxes(train["id"], n, CROP_SEED)
            crop_probs = predict(np.repeat(train["path"].to_numpy(), n), np.repeat(train["label"].to_numpy(), n),
                                 crops=boxes, desc=f"fold {k} crop OOF")
            write_csv(d / "oof_crops.csv", prob_frame(
                crop_probs, self.ds.classes, id=np.repeat(train["id"].to_numpy(), n), crop=np.tile(np.arange(n), len(train)),
                fold=k, label=np.repeat(train["artist"].to_numpy(), n)))
            result["crop_oof"] = scores(crop_probs, np.repeat(train["label"].to_numpy(), n), self.ds.num_classes)
        test = predict(self.ds.test["path"], desc=f"fold {k} test")
        write_csv(d / "test_probs.csv", prob_frame(test, self.ds.classes, id=self.ds.test["id"].to_numpy()))
        result.update(fold=k, minutes=(time.time() - t0) / 60, tta=tta)
        write_json(d / "done.json", result)  # written last: a fold is finished only with all its files
        log.info("fold %d: OOF macro-F1 %.4f%s", k, result["oof"]["f1"],
                 f", crop-OOF macro-F1 {result['crop_oof']['f1']:.4f}" if "crop_oof" in result else "")
        return result

    def run_full(self, epochs: int | None = None) -> dict:
        """One model on all train data for a fixed number of epochs, for the test soft vote.

        Default epochs: the median best epoch of the run's finished folds. It has no OOF, so
        it can join a soft vote but not a stacker's fit.
        """
        if epochs is None:
            best = [json.loads((self.fold_dir(k) / "done.json").read_text())["best_epoch"] + 1
                    for k in self.planned_folds if self.is_done(k)]
            if not best:
                raise UserError("--fold full needs the run's folds first (for the epoch count), or --full-epochs N.")
            epochs = int(np.median(best))
        d = self.fold_dir("full")
        if (d / "done.json").is_file() and not self.force:
            log.info("full-data model already trained (%s); --force retrains it.", d)
            return json.loads((d / "done.json").read_text())
        if (d / "last.pt").is_file() and not (self.resume or self.force):
            raise UserError(f"the full-data model was interrupted ({d / 'last.pt'}); add --resume or --force.")
        t0 = time.time()
        everything = np.arange(len(self.ds.train))
        result = train_fold(self.cfg, self.ds, everything, np.array([], dtype=int), d, fold_seed=self.cfg.n_folds,
                            resume=self.resume, epochs=epochs)
        model, dcfg, prec, inputs = load_best(self.cfg, self.ds.num_classes, d)
        tf = eval_transform(dcfg["input_size"][-1], dcfg["mean"], dcfg["std"])
        loader = make_loader(ImageDataset(self.ds.test["path"], None, tf), self.cfg.batch_size * 2, train=False,
                             num_workers=num_workers(self.cfg))
        test = predict_probs(model, loader, prec, inputs, self.cfg.tta, desc="full model test")
        write_csv(d / "test_probs.csv", prob_frame(test, self.ds.classes, id=self.ds.test["id"].to_numpy()))
        result.update(fold="full", epochs=epochs, minutes=(time.time() - t0) / 60, test_probs=str(d / "test_probs.csv"))
        write_json(d / "done.json", result)
        return result

    # -- whole run -----------------------------------------------------------------------
    def run(self, folds: list[int]) -> dict:
        extra = sorted(set(folds) - set(self.planned_folds))
        if extra:
            raise UserError(f"--fold {','.join(map(str, extra))}: this is a holdout run (--holdout or --preset seed), "
                            "which trains fold 0 only.")
        results = {}
        for k in folds:
            r = self.run_fold(k)
            if r is not None:
                results[k] = r
        missing = [k for k in self.planned_folds if not self.is_done(k)]
        if missing:
            log.info("folds %s are not finished yet; the OOF and the submission are written when they are "
                     "(run them with --fold %s).", missing, ",".join(map(str, missing)))
            return {"folds": results, "complete": False}
        return {"folds": results, "complete": True, **self.assemble()}

    def assemble(self) -> dict:
        """Join the finished folds into OOF files, the fold-mean test probabilities and the submission."""
        done = {k: json.loads((self.fold_dir(k) / "done.json").read_text()) for k in self.planned_folds}
        out = {}
        for name in ("oof", "oof_crops"):
            parts = [self.fold_dir(k) / f"{name}.csv" for k in self.planned_folds]
            if all(p.is_file() for p in parts):
                df = pd.concat([pd.read_csv(p, dtype={"id": str, "label": str}, keep_default_na=False)
                                for p in parts], ignore_index=True)
                write_csv(self.run_dir / f"{name}.csv", df)
                y = df["label"].map({c: i for i, c in enumerate(self.ds.classes)}).to_numpy()
                out[name] = scores(df[self.ds.classes].to_numpy(), y, self.ds.num_classes)
        if len(self.planned_folds) == self.cfg.n_folds:
            n_ids = pd.read_csv(self.run_dir / "oof.csv", dtype={"id": str}, usecols=["id"])["id"]
            if n_ids.duplicated().any() or set(n_ids) != set(self.ds.train["id"]):
                raise UserError(f"{self.run_dir}/oof.csv does not cover every train id exactly once.")
        tests = [pd.read_csv(self.fold_dir(k) / "test_probs.csv", dtype={"id": str}) for k in self.planned_folds]
        probs = np.mean([t[self.ds.classes].to_numpy() for t in tests], axis=0)
        ids = tests[0]["id"].to_numpy()
        write_csv(self.run_dir / "test_probs.csv", prob_frame(probs, self.ds.classes, id=ids))
        labels = np.asarray(self.ds.classes)[probs.argmax(axis=1)]
        sub_path = Path(self.cfg.submissions_dir) / f"{self.cfg.name}_folds-mean.csv"
        write_submission(sub_path, ids, labels, self.ds.sample_submission, self.ds.classes)
        out["submission"] = str(sub_path)
        if self.ds.test_labels is not None:  # an answer key beside the data (demo, wikiart50): score it
            truth = self.ds.test_labels.set_index("id").loc[ids, "artist"].map(
                {c: i for i, c in enumerate(self.ds.classes)}).to_numpy()
            out["test"] = scores(probs, truth, self.ds.num_classes)
        out["fold_results"] = done
        manifest = json.loads((self.run_dir / "manifest.json").read_text())
        manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        fold_minutes={k: round(v["minutes"], 3) for k, v in done.items()},
                        scores={k: v for k, v in out.items() if k in ("oof", "oof_crops", "test")})
        write_json(self.run_dir / "manifest.json", manifest)
        write_json(self.run_dir / "scores.json", {k: v for k, v in out.items() if k != "fold_results"})
        return out


def summary_table(fold_results: dict) -> str:
    """One line per fold: best epoch, validation F1 and loss, crop-OOF F1, minutes."""
    head = f"{'fold':>5} {'best epoch':>10} {'val F1':>8} {'val loss':>9} {'crop F1':>8} {'minutes':>8}"
    lines = [head, "-" * len(head)]
    for k, r in sorted(fold_results.items(), key=lambda kv: str(kv[0])):
        crop = r.get("crop_oof", {}).get("f1", float("nan"))
        lines.append(f"{k!s:>5} {r['best_epoch'] + 1:>10} {r['best_f1']:>8.4f} {r['best_loss']:>9.4f} "
                     f"{crop:>8.4f} {r['minutes']:>8.2f}")
    return "\n".join(lines)
