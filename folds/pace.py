"""Whether the loader sets a fold's pace, and what may help: said once per process.

A Colab or Kaggle T4 has 2 to 4 cores, and Dacon's paintings are about 1000 px JPEGs: decoding and
augmenting them on the CPU can leave the GPU idle for most of an epoch, which no line said until now.
The training loop times how long it waits for each batch (``folds.loader.WaitTimer``, the
``loader_wait`` column of ``history.csv``); with the GPU's work queued asynchronously, that wait is
time the GPU sat idle.
"""
from __future__ import annotations

# Above this share of a training pass spent waiting for images, the loader, not the GPU, sets the pace.
LOADER_BOUND_SHARE = 0.3
# Where the wait means an idle accelerator. On the CPU the step and the loader share the cores, so a
# wait says less, and the demo would warn about its tiny model.
PACED_DEVICES = ("cuda",)
# Said once per process: a fold process's later folds, and a study's later trials, wait alike.
_said = []


def loader_hint(wait: float, train_seconds: float, *, device: str, epoch: int, workers: int, cores: int,
                cache: bool, affine: str) -> str | None:
    """A line that says the loader set the pace of ``epoch``'s training pass, with what may help, or None.

    ``wait``: the seconds the pass waited for batches; ``train_seconds``: the pass's length. Called on a
    steady epoch (not a process's first, whose workers start and cuDNN autotunes then).
    """
    if _said or device not in PACED_DEVICES or train_seconds <= 0 or wait / train_seconds < LOADER_BOUND_SHARE:
        return None
    _said.append(epoch)
    helps = []
    if workers + 1 < cores:  # side by side, the processes share the cores: fewer of them leaves each more
        helps.append(f"more --num-workers where cores are idle ({workers} now, on {cores} usable cores; a --resume "
                     "may change it), or side by side fewer --procs-per-gpu")
    new_run = [opt for on, opt in ((not cache, "--cache (each image decoded once and kept at twice the input "
                                                "size, uncompressed)"),
                                   (affine == "loader", "--affine device (the shift-scale-rotate on the GPU, "
                                                        "one call per batch)")) if on]
    if new_run:  # they change the pixels the model learns from, so a run folder refuses them mid-run
        helps.append("a new run (--name) with " + " or ".join(new_run))
    if not helps:
        helps.append("more cores per GPU, or the images on a faster disk")
    idle = "GPU" if device == "cuda" else device.upper()
    return (f"the {idle} waited for images for {wait:.1f} of the {train_seconds:.1f} s of epoch {epoch}'s "
            f"training pass ({wait / train_seconds:.0%}): the loader sets the pace. What may help: "
            + "; ".join(helps) + ". history.csv's loader_wait has it per epoch.")
