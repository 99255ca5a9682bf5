"""Optuna studies over the fold runner's training settings: space, storage, objective, study."""
import sys

import optuna

# the oldest Optuna these modules import from (JournalFileBackend; 3.x named it otherwise and failed in an
# ImportError traceback, as a notebook image's Optuna 3.6 did)
OLDEST_OPTUNA = (4, 0)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


if _version(optuna.__version__) < OLDEST_OPTUNA:
    print(f"error: Optuna {optuna.__version__} is older than this suite's studies take (4.0 or newer). Install the "
          "version requirements.txt names: pip install -r requirements.txt. (Training and ensembling do not need "
          "Optuna.)", file=sys.stderr)
    raise SystemExit(2)
