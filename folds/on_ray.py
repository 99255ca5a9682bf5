"""Folds as Ray tasks: one command fills a cluster, and a lost node costs at most one epoch.

The driver prepares every run folder (checks, data, split, run files), then submits each
planned fold of each run as a Ray task that asks for ``num_gpus`` and CPUs for its loader
workers. The run folders live on storage every node sees (NFS or similar), as for several
machines without Ray. Fault tolerance is Ray's: a task whose worker or node dies is retried
(``max_retries``), and the retry continues the fold from its ``last.pt`` (the ``--resume``
logic); it keeps the task's id, so it takes over the lock its dead attempt left. When every
fold is done, the driver joins the runs' OOF files and builds each submission, as without Ray.

Ray is optional (``pip install -r requirements-ray.txt``); without it everything else works.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

from common import UserError, layout
from folds.config import PATH_SETTINGS, RunConfig

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def connect(address: str, num_cpus: int | None = None):
    """``local`` starts a Ray instance on this machine; ``auto`` or ``HOST:PORT`` joins a cluster."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install -r requirements-ray.txt (ray[default]).") from None
    # Workers import this project: on a cluster it must sit at the same path on every node.
    env = {"env_vars": {"PYTHONPATH": str(ROOT), "NO_ALBUMENTATIONS_UPDATE": "1"}}
    if not ray.is_initialized():
        kwargs = {"num_cpus": num_cpus} if address == "local" else {"address": address}
        try:
            ray.init(runtime_env=env, include_dashboard=False, log_to_driver=True, configure_logging=False,
                     ignore_reinit_error=True, **kwargs)
        except ConnectionError as e:
            raise UserError(f"--ray {address}: cannot reach the cluster ({e}). Start one with `ray start --head` "
                            "(and `ray start --address HEAD:6379` on the other nodes), or use --ray local.") from None
    return ray


def _train_one_fold(cfg_dict: dict, fold, full_epochs):
    """The task: prepare the run read-only, then train and predict one fold, resuming from last.pt."""
    import ray

    from folds.prepare import prepare_run
    from folds.runner import FoldRunner

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    cfg = RunConfig(**cfg_dict)
    run_dir = layout.run_dir(cfg.runs_dir, cfg.name)
    prep = prepare_run(cfg, run_dir / layout.FOLDS, demo=False, write_split=False)
    owner = ray.get_runtime_context().get_task_id()  # the same for every retry of this task
    runner = FoldRunner(prep, resume=True, force=False, lock_owner=owner)
    result = runner.run_fold(fold, full_epochs)
    if result is None:
        raise RuntimeError(f"fold {fold} of {run_dir} is held by a process outside this Ray job; "
                           "do not mix Ray with plain runs on one run folder.")
    return {"run": str(run_dir), "fold": fold, "pid": os.getpid(), **result}


def task_resources(ray, cfg: RunConfig, gpus: float | None, cpus: int | None) -> tuple[float, int]:
    """GPUs and CPUs per fold task: one GPU on a GPU cluster (none on CPU); loader workers + 1 CPUs."""
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if cpus is None:
        cpus = (cfg.workers + 1) if cfg.workers is not None else 2
    return gpus, cpus


def run_folds(runners: list, folds_of, *, address: str, gpus: float | None = None, cpus: int | None = None,
              max_retries: int = 3, full_epochs=None) -> dict:
    """Train ``folds_of(runner)`` of every runner as Ray tasks; returns {run_dir: {fold: result}}."""
    ray = connect(address)
    remote = ray.remote(_train_one_fold)
    pending = {}
    for runner in runners:
        g, c = task_resources(ray, runner.cfg, gpus, cpus)
        # each task's loader gets the CPUs it asked for, less one for the training loop; paths are
        # made absolute, since a worker's working folder is not the driver's
        cfg = replace(runner.cfg, workers=max(0, c - 1) if runner.cfg.workers is None else runner.cfg.workers,
                      **{k: str(Path(v).resolve()) for k, v in asdict(runner.cfg).items()
                         if k in PATH_SETTINGS and v})
        for k in folds_of(runner):
            if runner.is_done(k):
                why = runner.test_changed(k)  # a changed test set: the task predicts it again, without training
                if why is None:
                    continue
                log.info("fold %s of %s: %s; its task predicts the test again.", k, runner.run_dir, why)
            epochs = runner.full_epochs(full_epochs) if k == layout.FULL else None
            ref = remote.options(num_gpus=g, num_cpus=c, max_retries=max_retries, retry_exceptions=False,
                                 name=f"{runner.cfg.name}/fold_{k}").remote(asdict(cfg), k, epochs)
            pending[ref] = (runner, k)
    log.info("submitted %d fold task(s) to Ray (%s)", len(pending), address)
    results = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        runner, k = pending.pop(done[0])
        try:
            out = ray.get(done[0])
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, UserError) else None
            if cause is not None:
                raise cause from None
            raise
        except ray.exceptions.WorkerCrashedError:
            raise UserError(f"fold {k} of {runner.run_dir}: its worker died {max_retries + 1} times; see the Ray "
                            f"logs, then rerun (it resumes from {layout.LAST}).") from None
        log.info("fold %s of %s finished on Ray (pid %s)", k, runner.run_dir, out["pid"])
        results.setdefault(str(runner.run_dir), {})[k] = out
    return results


def configs_for(base: RunConfig, specs: list[str]) -> list[RunConfig]:
    """One config per ``--ray-runs`` entry: a YAML/JSON file over the command line's config, or an
    existing run folder (its saved config)."""
    from folds.config import check_config, read_config_file, saved_config

    if not specs:
        return [base]
    out = []
    for spec in specs:
        p = Path(spec)
        if (p / layout.CONFIG).is_file():
            cfg = saved_config(p)
        else:
            layer = read_config_file(p, "--ray-runs")
            unknown = sorted(set(layer) - set(asdict(base)))
            if unknown:
                raise UserError(f"--ray-runs {p}: unknown option(s) {unknown}.")
            cfg = replace(base, **layer)
        check_config(cfg)
        out.append(cfg)
    return out
