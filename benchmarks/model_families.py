"""Check the project's model checks against every timm family: does each model build as our classifier and take
the input size, or is it refused with a line that says why? (A model neither refused nor working would fail in
a run's first step, after its data checks and split.)

Each model is built and run once on PyTorch's meta device (no memory, no weights), by the same ``check_model``
a run calls, then run on the meta device in training mode. Worth running after a timm upgrade.

    python benchmarks/model_families.py --img-size 64 --per-module 2     # 190 models of 98 modules, 2 to 4 min
    python benchmarks/model_families.py --per-module 3                   # each model at its own size
"""
from __future__ import annotations

import argparse
import collections
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def check_one(name: str, img_size: int | None) -> tuple[str, str]:
    """("ok", "") where the model checks and trains a step's forward; ("refused", the line) where the check
    refuses it; ("FAILED", the error) where it does neither: a failure a run would meet late."""
    import torch

    from common import UserError
    from models import check_model, create_model, data_config

    try:
        check_model(name, "none", img_size=img_size)
    except UserError as e:
        return "refused", str(e)
    try:
        with torch.device("meta"):
            model = create_model(name, 5, weights="none", img_size=img_size)
            size = img_size or data_config(model)["input_size"][-1]
            out = model.train()(torch.zeros(2, 3, size, size))
        if tuple(out.shape) != (2, 5):
            return "FAILED", f"output of shape {tuple(out.shape)}, not (2, 5)"
    except NotImplementedError:  # an operation without a meta kernel: the meta device cannot tell
        return "ok", "(no meta kernel for its training forward)"
    except Exception as e:  # noqa: BLE001 (what the sweep is for)
        return "FAILED", f"{type(e).__name__}: {str(e)[:200]}"
    return "ok", ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, help="the run's --img-size (default: each model's own)")
    p.add_argument("--per-module", type=int, default=2, help="the first N models of each timm module (default: 2)")
    p.add_argument("--module", nargs="*", help="only these timm modules (default: all)")
    a = p.parse_args(argv)
    if a.per_module < 1 or (a.img_size is not None and a.img_size < 1):
        print("error: --per-module and --img-size must be at least 1.", file=sys.stderr)
        return 2
    import timm

    warnings.filterwarnings("ignore")
    modules = a.module or timm.list_modules()
    unknown = sorted(set(modules) - set(timm.list_modules()))
    if unknown:
        print(f"error: --module {unknown}: not timm modules; see timm.list_modules().", file=sys.stderr)
        return 2
    counts = collections.Counter()
    for module in modules:
        for name in timm.list_models(module=module)[:a.per_module]:
            verdict, why = check_one(name, a.img_size)
            counts[verdict] += 1
            if why:
                print(f"{verdict:8} {name}: {why}")
    print(f"timm {timm.__version__}, {len(modules)} modules, --img-size {a.img_size or 'own'}: "
          + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
