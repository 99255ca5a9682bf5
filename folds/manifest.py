"""What a run was made with: package versions, git commit, data and split hashes, device."""
from __future__ import annotations

import importlib.metadata as md
import platform
import socket
import subprocess
import time
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "scikit-learn", "pandas", "numpy", "optuna",
            "ttach", "pillow")


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


# the packages whose version can change what a fold learns (a model's layers or weights, an augmentation, decoding)
TRAINING_PACKAGES = ("torch", "torchvision", "timm", "albumentations", "pillow")


def training_packages() -> dict:
    return {k: v for k, v in package_versions().items() if k in TRAINING_PACKAGES}


def package_changes(then: dict) -> list[str]:
    """How this process's ``TRAINING_PACKAGES`` differ from ``then`` (a manifest's "packages"), in words: a run
    or a study resumed on the next Kaggle image, or on another machine, whose folds or trials are used as one."""
    return [f"{k} {then.get(k)} then, {v} now" for k, v in training_packages().items() if then.get(k) != v]


def git_commit(repo: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}


def device_info() -> dict:
    if torch.cuda.is_available():
        return {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda}
    return {"type": "cpu", "threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine()}


def make_manifest(**extra) -> dict:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
            "packages": package_versions(), "git": git_commit(Path(__file__).resolve().parents[1]),
            "device": device_info(), **extra}
