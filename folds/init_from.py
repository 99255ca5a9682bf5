"""Start each fold from an earlier run's same fold (``--init-from RUN``), kept honest.

A second stage (a larger ``--img-size``, a pseudo-label round, more epochs at a lower lr) starts from
the first stage's models rather than from ImageNet. One file for every fold would not do: fold 0's
best weights learnt the validation paintings of folds 1 to 4, so a fold started from them is scored
on paintings its weights have seen, and the OOF reads high. So fold k starts from fold k of RUN,
which never saw fold k's validation paintings; that needs the same split, which is checked, as for
``--pseudo``. The full-data model, which has no validation paintings, starts from RUN's.

A ``--weights`` file that is a fold's model of a run on these paintings is refused for the same
reason, with ``--init-from`` named.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from common import UserError, layout
from folds.config import RunConfig
from models import check_model, parse_weights


def fold_weights(run: Path, k) -> Path:
    """The best weights of fold ``k`` of ``run``: its best.pt, or an export folder's best.safetensors."""
    d = layout.fold_dir(run, k)
    return d / layout.BEST_EXPORTED if (d / layout.BEST_EXPORTED).is_file() else d / layout.BEST


def check_init_source(cfg: RunConfig, classes, split_hash: str, folds) -> Path:
    """``cfg.init_from``, checked before anything is written: a run folder of the same classes and split, whose
    ``folds`` are finished with their best weights kept, and whose weights fit ``cfg.model`` at this size."""
    run = layout.check_fold_source(cfg.init_from, "--init-from", classes, split_hash, folds,
                                   "start from fold k's model")
    gone = [str(fold_weights(run, k)) for k in folds if not fold_weights(run, k).is_file()]
    if gone:
        raise UserError(f"--init-from {run}: the best weights of a finished fold are gone ({gone[:3]}).")
    for k in folds[:1]:  # the folds of one run share their architecture: one file read tells
        weights = str(fold_weights(run, k))
        try:
            check_model(cfg.model, weights, cfg.drop_path, False, cfg.img_size)
        except UserError as e:  # said of the option given, with the model that run trained
            theirs = layout.read_json(run / layout.CONFIG).get("model")
            raise UserError(str(e).replace(f"--weights {weights}", f"--init-from {run} (fold {k}'s weights)", 1)
                            + f" That run trained --model {theirs}.") from None
    return run


def started_from(cfg: RunConfig, k) -> RunConfig:
    """``cfg`` as fold ``k`` builds its model: from fold ``k`` of ``--init-from``'s run (checked with
    ``check_init_source`` before the run or study began), or as ``cfg`` says where there is none."""
    if not cfg.init_from:
        return cfg
    run, weights = Path(cfg.init_from), fold_weights(Path(cfg.init_from), k)
    if not (layout.is_done(run, k) and weights.is_file()):
        what = "full-data model" if k == layout.FULL else f"fold {k}"
        raise UserError(f"--init-from {run}: its {what} is not finished (no {weights}); finish it first with "
                        f"`{layout.fold_command(run, str(k), '--resume')}`.")
    return replace(cfg, weights=str(weights))


def check_weights_unseen(weights: str | None, train) -> None:
    """Refuse a ``--weights`` file that is a fold's (or the full-data) model of a run on these paintings (``train``:
    the train set's ``id`` and ``artist``): it learnt the validation paintings of this run's other folds (of every
    fold, the full-data model), which their OOF would then score high. ``--init-from`` starts each fold from its
    own. Paintings are matched by id and class together, and most of them must match: a run on another task whose
    ids happen to be the same numbers is no such run."""
    source, arg = parse_weights(weights or "none")
    if source != "file":
        return
    run = Path(arg).parent.parent
    if not ((run / layout.FOLDS).is_file() and (run / layout.CLASSES).is_file()
            and Path(arg).parent.name.startswith("fold_")):
        return
    split, name = layout.read_frame(run / layout.FOLDS), layout.fold_name(Path(arg).parent)
    learnt = split if name == layout.FULL else split[split["fold"].astype(str) != name]
    pairs = set(zip(learnt["id"], learnt["label"]))
    seen = pairs & set(zip(train["id"].astype(str), train["artist"].astype(str)))
    if len(seen) > len(pairs) / 2:
        what = "full-data model" if name == layout.FULL else f"fold {name} model"
        raise UserError(f"--weights {arg}: the {what} of run {run}, which learnt "
                        f"from {len(seen)} of this train set's paintings: this run's folds would be scored on "
                        f"paintings their starting weights learnt, and the OOF would read high. Use --init-from "
                        f"{run}: fold k then starts from that run's fold k, which never saw fold k's validation "
                        "paintings.")
