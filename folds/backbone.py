"""A fold's model: built from the config, and its best weights loaded back for prediction."""
from __future__ import annotations

from pathlib import Path

from common import UserError
from common.layout import BEST, BEST_EXPORTED
from folds.checkpoint import fold_hint, read_checkpoint
from folds.config import RunConfig
from folds.engine import InputPipe, Precision
from models import create_model, data_config


def build_model(cfg: RunConfig, num_classes: int, pretrained: bool = True):
    """The model and its data config (input size, mean, std)."""
    model = create_model(cfg.model, num_classes, weights=cfg.weights if pretrained else "none", dropout=cfg.dropout,
                         drop_path=cfg.drop_path, head_init=cfg.head_init, img_size=cfg.img_size)
    return model, data_config(model, cfg.img_size)


def load_best(cfg: RunConfig, num_classes: int, out_dir: Path):
    """The fold's best weights in a fresh model (``weights_only=True``: no pickled code runs)."""
    prec = Precision.resolve(cfg.device, cfg.amp, cfg.channels_last, cfg.deterministic)
    model, dcfg = build_model(cfg, num_classes, pretrained=False)
    path = Path(out_dir) / BEST
    if not path.is_file() and (Path(out_dir) / BEST_EXPORTED).is_file():  # an export folder
        from safetensors.torch import load_file
        path = Path(out_dir) / BEST_EXPORTED
        state = load_file(str(path))
    else:
        state = read_checkpoint(path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: the weights do not fit this run's model ({type(e).__name__}). "
                        f"{fold_hint(path)}") from None
    return prec.prepare(model).eval(), dcfg, prec, InputPipe(prec, dcfg["mean"], dcfg["std"])
