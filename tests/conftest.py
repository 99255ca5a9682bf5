import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WIKIART = ROOT.parent / "shared" / "data" / "wikiart50"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_source(tmp_path_factory):
    from folds.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "data")


@pytest.fixture
def demo_dir(demo_source, tmp_path):
    """A private copy of the demo data that a test may damage."""
    dst = tmp_path / "data"
    shutil.copytree(demo_source, dst)
    return dst


def learned_history(path):
    """A fold's history.csv without its timing columns, which differ between two runs of one recipe."""
    import pandas as pd

    from folds.train import TIMINGS
    return pd.read_csv(path).drop(columns=list(TIMINGS))


def tiny_args(data_dir, runs, **over):
    """CLI flags for a seconds-long run on the demo data."""
    opts = {"--data-dir": data_dir, "--runs-dir": runs / "runs", "--submissions-dir": runs / "subs",
            "--preset": "demo", "--img-size": 32, "--epochs": 4, "--num-workers": 0, "--crop-oof": 2,
            "--tta": "hflip", "--name": "t"}
    opts.update(over)
    out = ["-q"]
    for k, v in opts.items():
        if v is True:
            out.append(k)
        elif v is not None:
            out += [k, str(v)]
    return out
