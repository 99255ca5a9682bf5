"""Write one folder to upload as a Kaggle dataset, from which an offline kernel predicts.

The folder holds, for each run: its config, classes and manifest, and each fold's best
weights as safetensors (no pickle, no optimizer state); the fitted blend of an
``ensemble/build.py`` run (or a soft vote); the code that predicts; and wheels of the packages
that are not in the Kaggle image. Then, offline:

    pip install --no-index --no-deps --find-links EXPORT/wheels ttach==0.0.3 albumentations==2.0.8 ...
    python EXPORT/code/ensemble/predict.py EXPORT --data-dir /kaggle/input/COMP --out submission.csv

Examples:
    python ensemble/export.py --blend submissions/ab_stack_blend.json --out export/ab
    python ensemble/export.py runs/a runs/b --method mean --out export/ab --no-wheels
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import platform
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import UserError, layout, write_json, write_text  # noqa: E402
from common.atomic import check_writable_folder  # noqa: E402
from common.cli import entry_point, log_to_stdout  # noqa: E402
from ensemble.blend import make_blend, votes  # noqa: E402
from ensemble.saved_blend import blend_folds, load_blend, save_blend  # noqa: E402

log = logging.getLogger("export")
ROOT = Path(__file__).resolve().parents[1]
CODE = ("common", "ensemble", "folds", "models")  # what prediction imports (the packages, whole)
# What prediction imports that the Kaggle image lacks, or has at another version: their wheels travel along, with
# the packages they require that the image lacks too (``wheel_names``).
NEEDED = ("ttach", "albumentations")
# What the Kaggle GPU image has and prediction may use at its version there (names as pip normalises them).
KAGGLE_IMAGE = frozenset({"numpy", "scipy", "pyyaml", "pydantic", "opencv-python-headless", "opencv-python",
                          "typing-extensions", "eval-type-backport", "torch", "torchvision", "timm", "pandas",
                          "scikit-learn", "safetensors", "pillow", "joblib", "huggingface-hub"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemble/export.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="*", help="run folders (default: the runs of --blend)")
    p.add_argument("--blend", help="<out>_blend.json from ensemble/build.py: its fitted blend and runs")
    p.add_argument("--method", choices=votes(), help="a soft or hard vote instead (default: mean)")
    p.add_argument("--with-full", action="store_true", help="include the full-data models (default: as the blend)")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--no-wheels", action="store_true", help="skip downloading wheels (the target has the packages)")
    return p


def export_run(run: Path, dst: Path, with_full: bool, meta: dict) -> list:
    """A run folder with best weights only, as safetensors."""
    from safetensors.torch import save_file

    from folds.checkpoint import read_checkpoint

    config = layout.read_json(run / layout.CONFIG)
    folds = blend_folds(meta, config) + ([layout.FULL] if with_full else [])
    missing = [k for k in folds if not layout.is_done(run, k)]
    if missing:
        raise UserError(f"{run}: folds {missing} are not finished; export finished runs only.")
    for name in (layout.CONFIG, layout.CLASSES, layout.MANIFEST):
        shutil.copy2(run / name, dst / name)
    for k in folds:
        src, out = layout.fold_dir(run, k), layout.fold_dir(dst, k)
        out.mkdir(parents=True)
        state = {key: t.contiguous() for key, t in read_checkpoint(src / layout.BEST).items()}
        save_file(state, str(out / layout.BEST_EXPORTED))
        shutil.copy2(src / layout.DONE, out / layout.DONE)
    return folds


def wheel_names() -> list[str]:
    """``NEEDED`` and, installed here, what they require (in this Python, without extras) that is not in
    ``KAGGLE_IMAGE``: albumentations' pinned albucore, and albucore's compiled simsimd and stringzilla, which it
    imports at once. Without those an offline ``pip install`` of the export stopped at a missing requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names, todo = [], list(NEEDED)
    while todo:
        name = canonicalize_name(todo.pop(0))
        if name in names or name in KAGGLE_IMAGE:
            continue
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        names.append(name)
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return names


def download_wheels(dst: Path) -> list[str]:
    """Wheels of the installed versions of ``wheel_names()``, for this machine's platform and Python; a failure is
    reported, not fatal."""
    pins = [f"{name}=={md.version(name)}" for name in wheel_names()]
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        log.warning("the wheels are for this machine (%s %s), and simsimd and stringzilla are compiled: export on a "
                    "Linux x86-64 machine with the kernel's Python for a Kaggle kernel", platform.system(),
                    platform.machine())
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dst), *pins],
                          capture_output=True, text=True)
    if proc.returncode:
        log.warning("could not download wheels (%s); add them to the dataset by hand: %s",
                    proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode, " ".join(pins))
        return []
    return pins


def install_command(wheels_dir: str, pins: list[str]) -> str:
    """The offline install: the exact versions (a package the image has at another version is replaced), and no
    resolving (the image's own numpy, OpenCV and pydantic serve, whichever OpenCV package it has)."""
    return f"pip install --no-index --no-deps --find-links {wheels_dir} {' '.join(pins)}"


def export(args) -> dict:
    out = Path(args.out)
    check_writable_folder(out, f"--out {out}")  # a file in the way (or above): a traceback before
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: exists and is not empty; choose a new folder.")
    if args.blend:
        blend, meta = load_blend(args.blend)
        runs = [Path(s) for s in args.sources] or [Path(r) for r in meta["runs"]]
    else:
        if not args.sources:
            raise UserError("no runs: pass run folders, or --blend from ensemble/build.py.")
        runs = [Path(s) for s in args.sources]
        method = args.method or "mean"
        blend, meta = make_blend(method, n_members=len(runs)), {"method": method, "offsets": False}
    with_full = args.with_full or meta.get("with_full", False)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"runs with the same folder name {names}; rename one (the export keys runs by name).")
    for run in runs:
        layout.check_run_folder(run)
        (out / "runs" / run.name).mkdir(parents=True)
        export_run(run, out / "runs" / run.name, with_full, meta)
    blend_json = save_blend(out / "ensemble.csv", blend, {**meta, "with_full": with_full, "runs": names})
    for package in CODE:
        shutil.copytree(ROOT / package, out / "code" / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = [] if args.no_wheels else download_wheels(out / "wheels")
    write_json(out / layout.EXPORT, {"runs": names, "blend": blend_json.name, "method": meta["method"],
                                     "with_full": with_full, "wheels": wheels})
    write_text(out / "README.md", "\n".join([
        f"# painter-cv export: {', '.join(names)} ({meta['method']})", "",
        "Offline prediction (a Kaggle inference kernel):", "", "```bash",
        *([install_command(f"{out.name}/wheels", wheels)] if wheels else []),
        f"python {out.name}/code/ensemble/predict.py {out.name} --data-dir /kaggle/input/COMP --out submission.csv",
        "```", "", "The blend file is a pickle (joblib): load only exports you made.", ""]))
    return {"out": out, "runs": names, "wheels": wheels}


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    log_to_stdout()
    result = export(args)
    print(f"exported {', '.join(result['runs'])} to {result['out']}"
          + (f" with wheels {', '.join(result['wheels'])}" if result["wheels"] else " (no wheels)"))
    print(f"next, offline: python {result['out']}/code/ensemble/predict.py {result['out']} --data-dir NEW "
          "--out submission.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
