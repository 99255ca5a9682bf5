"""Device placement, mixed precision, the per-epoch training pass and the scores of predictions."""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from timm.models import model_parameters
from timm.utils import dispatch_clip_grad
from common import UserError
from common.metrics import NEG_LOG_LOSS, all_scores
from common.progress import progress
from folds.loader import batches

log = logging.getLogger(__name__)


AMP_MODES = ("auto", "bf16", "fp16", "off")
CHANNELS_LAST_MODES = ("auto", "on", "off")


def check_device(device: str) -> None:
    """A ``--device`` this process can run on, or a UserError that names it (called before anything is
    written; a Ray driver on a CPU head node skips it, since its GPU nodes train)."""
    if device in ("auto", "cpu"):
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise UserError(f"--device {device}: this process sees no CUDA GPU (torch.cuda.is_available() is "
                            "False); use --device auto (CUDA when present, else the CPU) or --device cpu.")
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: this process sees {n} GPU(s): cuda:0 to cuda:{n - 1}.")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {device}: Apple's MPS is not available here; use --device auto or cpu.")


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` runs bf16 on tensor cores: CUDA compute capability 8 (Ampere) and later, and ROCm.

    Not ``torch.cuda.is_bf16_supported()``: it also says yes where bf16 is only emulated (a Colab T4,
    a V100), and bf16 autocast there runs far slower than fp16 with a grad scaler.
    """
    return dev.type == "cuda" and (torch.version.hip is not None or torch.cuda.get_device_capability(dev)[0] >= 8)


@dataclass
class Precision:
    """Where and how the model runs: device, autocast dtype, grad scaler, memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @classmethod
    def resolve(cls, device: str = "auto", amp: str = "auto", channels_last: str = "auto",
                deterministic: bool = False) -> "Precision":
        check_device(device)
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           ("cpu" if device == "auto" else device))
        cuda = dev.type == "cuda"
        if amp == "off" or (amp == "auto" and not cuda):
            dtype = None
        elif amp == "bf16" or (amp == "auto" and native_bf16(dev)):
            dtype = torch.bfloat16
            if amp == "bf16" and cuda and not native_bf16(dev):
                log.warning("--amp bf16: %s has no bf16 tensor cores (compute capability %d.%d), so bf16 is emulated "
                            "and slow there; --amp fp16 (or auto) uses its fp16 tensor cores.",
                            torch.cuda.get_device_name(dev), *torch.cuda.get_device_capability(dev))
        else:
            dtype = torch.float16
        cl = channels_last == "on" or (channels_last == "auto" and cuda)
        if cuda:  # fixed input sizes: let cuDNN time its kernels and keep the fastest, unless asked for repeatability
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
        if deterministic:  # cuBLAS reads this when it makes its handle, at the first matrix product
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: an op with no deterministic kernel (adaptive pooling's CUDA backward) is named, not fatal
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        return cls(dev, dtype, cl)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def scaler(self) -> torch.amp.GradScaler:
        # fp16 needs loss scaling; bf16 and fp32 do not.
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return f"{name}, {amp}{', channels_last' if self.channels_last else ''}"


class InputPipe:
    """Batch -> model input on the device: uint8 images are normalised there, in float32."""

    def __init__(self, prec: Precision, mean, std):
        self.prec = prec
        self.mean = torch.tensor(mean, device=prec.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=prec.device).view(1, -1, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.prec.device, non_blocking=True)
        if x.dtype == torch.uint8:
            x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.prec.channels_last else x


def optimizer_steps(n_batches: int, accum_steps: int = 1) -> int:
    """Optimizer steps in an epoch of ``n_batches``: one per ``accum_steps`` batches, the last group maybe short."""
    return -(-n_batches // accum_steps)


@contextlib.contextmanager
def buffers_kept(buffers: list[torch.Tensor]):
    """The buffers as they were on entry, put back on exit.

    Under gradient checkpointing the backward pass runs each checkpointed block's forward again, and
    BatchNorm in train mode would update its running statistics (and batch count) a second time
    with the same batch: the model would learn other statistics than without checkpointing.
    Keeping them across the backward pass makes checkpointing change the memory, never the result.
    """
    kept = [b.clone() for b in buffers]
    yield
    with torch.no_grad():
        for b, k in zip(buffers, kept):
            b.copy_(k)


def train_one_epoch(model, loader, optimizer, scaler, prec: Precision, inputs: InputPipe, recipe=None, ema=None,
                    first_step: int = 0, desc: str = "train", accum_steps: int = 1, clip_grad: float = 0.0,
                    clip_mode: str = "norm", grad_checkpointing: bool = False, scheduler=None) -> float:
    """One pass over the loader; returns the mean training loss.

    ``recipe`` (folds.recipe.Recipe) augments the batch on the device and gives the loss (plain
    cross-entropy without one); ``ema`` (timm ModelEmaV3) is updated after every optimizer step, with
    the global step number (``first_step``, the optimizer steps of the epochs before, + this epoch's):
    without it timm skips the EMA warm-up, and the EMA weights stay near the initial ones for
    thousands of steps. ``scheduler`` (timm's) gets ``step_update`` with that number after every optimizer step
    (it moves the lr only under ``--sched-step update``).
    ``accum_steps`` (``--grad-accum-steps``): the gradients of that many batches are summed before each
    optimizer step, each batch's loss divided by its group's size, so a group steps as one batch that many
    times larger would (BatchNorm still sees each batch alone).
    ``clip_grad`` (0: off) clips the summed gradients before each step, in timm's ``clip_mode``, after
    the grad scaler has unscaled them (fp16), so the limit holds for the true gradients.
    ``grad_checkpointing``: the model recomputes its blocks in the backward pass (``--grad-checkpointing``),
    so its buffers are kept across it (``buffers_kept``).
    """
    from folds.recipe import Recipe

    recipe = recipe or Recipe()
    model.train()
    # the running loss stays on the device: a .item() per step would make the host wait for the GPU
    total, n = torch.zeros((), device=prec.device), 0
    n_batches = len(loader)
    no_sync = getattr(model, "no_sync", None)  # DDP: average the gradients across ranks once per group
    buffers = list(model.buffers()) if grad_checkpointing else []
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(progress(batches(loader), n_batches, desc)):
        group_start = i - i % accum_steps
        group = min(accum_steps, n_batches - group_start)  # the epoch's last group may be short
        steps = i + 1 == group_start + group
        x, y = recipe.batch(inputs(x), y.to(prec.device, non_blocking=True))
        with no_sync() if no_sync is not None and not steps else contextlib.nullcontext():
            with prec.autocast():
                loss = recipe.loss(model(x), y)
            with buffers_kept(buffers) if buffers else contextlib.nullcontext():
                scaler.scale(loss / group if group > 1 else loss).backward()
        if steps:
            if clip_grad:
                scaler.unscale_(optimizer)
                dispatch_clip_grad(model_parameters(model, exclude_head=clip_mode == "agc"), clip_grad, clip_mode)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = first_step + i // accum_steps + 1  # optimizer updates so far, the epochs before included
            if ema is not None:
                ema.update(model, step=done)
            if scheduler is not None:
                scheduler.step_update(num_updates=done)
        total += loss.detach().float() * len(y)
        n += len(y)
    total = total.item()
    if not np.isfinite(total):
        raise FloatingPointError("training loss is not finite; try a lower --lr or --amp off.")
    return total / max(n, 1)


def scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    """Every registered metric (``common.metrics.METRICS``, by key) and the log loss of probability rows
    against integer labels."""
    labels = np.asarray(labels)
    if not np.isfinite(probs).all():  # weights gone to NaN on the epoch's last steps, after its loss was summed
        raise FloatingPointError("the model's outputs are not finite; try a lower --lr or --amp off.")
    out = all_scores(labels, probs)
    return {**out, "loss": -out[NEG_LOG_LOSS]}  # the registry's log loss, as a loss (lower is better)
