"""How long the build's blends take at a competition's size, on a synthetic crop OOF (no data, no GPU).

Each method (with its offsets, or the temperature under --metric neg_log_loss) is scored as the build scores it,
``honest_oof`` (grouped inner CV), then fit on every row as the build fits it (``fit_blend``):

    python benchmarks/blend_scale.py --paintings 5912 --crops 5 --classes 50 --members 3
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.cli import check_at_least, entry_point  # noqa: E402
from common.errors import UserError  # noqa: E402
from common.metrics import DEFAULT_METRIC, METRICS, get_metric  # noqa: E402
from ensemble.blend import BLENDS, fit_blend, honest_oof, make_blend, members_to_X  # noqa: E402


def synthetic_oof(paintings: int, crops: int, classes: int, members: int, seed: int = 0):
    """Members' probabilities for ``crops`` crops of each painting: noise with the true class raised."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, classes, paintings), crops)
    groups = np.repeat(np.arange(paintings), crops)
    blocks = []
    for _ in range(members):
        z = rng.normal(0, 1, (len(y), classes))
        z[np.arange(len(y)), y] += 1.5
        e = np.exp(z - z.max(axis=1, keepdims=True))
        blocks.append(e / e.sum(axis=1, keepdims=True))
    return members_to_X(blocks), y, groups


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paintings", type=int, default=5912)
    p.add_argument("--crops", type=int, default=5)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--methods", default="mean,weighted,stack", help=f"comma-separated, of {list(BLENDS)}")
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=sorted(METRICS))
    return p


def methods(text: str) -> list[str]:
    """'mean,stack' -> ['mean', 'stack']; a name that is no blend is refused before any blend is timed."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in BLENDS]
    if not names or unknown:
        raise UserError(f"--methods {text!r}: give comma-separated names of {sorted(BLENDS)}, e.g. mean,stack.")
    return names


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    chosen = methods(args.methods)
    for option, least in (("--crops", 1), ("--classes", 2), ("--members", 1)):
        check_at_least(option, getattr(args, option[2:]), least)
    # fewer, and a learning blend's 5 inner folds find a class too small to stratify, or one fold of one class
    check_at_least("--paintings", args.paintings, 5 * args.classes, f"5 x --classes ({5 * args.classes})")
    X, y, groups = synthetic_oof(args.paintings, args.crops, args.classes, args.members)
    score = get_metric(args.metric).score
    for method in chosen:
        for offsets in (False, True):
            blend = make_blend(method, offsets=offsets, n_members=args.members, metric=args.metric)
            t = time.perf_counter()
            honest = honest_oof(blend, X, y, groups)
            t_honest = time.perf_counter() - t
            t = time.perf_counter()
            fit_blend(blend, X, y, groups)
            print(json.dumps({"method": method + ("+offsets" if offsets else ""), "rows": len(y),
                              "members": args.members, "honest_s": round(t_honest, 1),
                              "fit_s": round(time.perf_counter() - t, 1), args.metric: round(score(y, honest), 4)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
