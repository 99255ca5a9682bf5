"""Small helpers shared by every stage: atomic writes and user-facing errors."""
import os
import sys

if os.name == "nt":  # every command imports this first: one clear line, not a traceback from the signal module
    # the clean stops (SIGHUP, process groups) are POSIX; the suite is built and tested on Linux
    sys.exit("painter-cv runs on Linux or macOS (Colab, Kaggle and clusters are Linux). On Windows, run it in WSL2, "
             "where CUDA works as well: https://learn.microsoft.com/windows/wsl/install")

from common.atomic import atomic_write, write_csv, write_json, write_text, save_torch
from common.errors import UserError

__all__ = ["atomic_write", "write_csv", "write_json", "write_text", "save_torch", "UserError"]
