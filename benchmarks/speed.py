"""Speed as ratios measured in one process: the suite's paths against naive baselines.

    python benchmarks/speed.py loader                    # cached vs uncached on ~1000 px JPEGs, per core
    python benchmarks/speed.py train --model efficientnet_b3 --img-size 288      # on a GPU
    python benchmarks/speed.py kept --model efficientnet_b3 --img-size 288 --batch-size 8   # any device
    python benchmarks/speed.py infer --model efficientnet_b3 --img-size 288 --data-dir ../shared/data/wikiart50
    python benchmarks/speed.py neighbours --n-images 40   # the build's sibling search on ~1000 px JPEGs
    python benchmarks/speed.py offsets                    # the build's per-class offset search, WikiArt-50 size

- loader: images/s of the training pipeline (decode, test-scale crop, flips, affine, normalise)
  with workers=0, decoding each JPEG every time vs reading the pre-resized cache; the pipeline
  without its affine (what the loader does with --affine device); the eval transform (a
  validation image); crops/s of the crop OOF (5 boxes a painting, in a row), each painting decoded
  once for its crops (the shipped path) vs once a crop. --data-dir: the real train images instead
  of generated JPEGs.
- train: images/s of training steps, the suite's path (cached uint8 images, AMP bf16/fp16 and
  channels_last on CUDA, optional torch.compile) vs a naive seed-style loop (PIL decode per
  sample, fp32, no channels_last).
- epochs: whole epochs of the shipped path (the fold's persistent loader + train_one_epoch) on
  real or generated images, against the compute ceiling (the same step on batches already on the
  device) in the same process; the first epoch against a steady one, with its first batch's wait
  (worker start-up) and its first step's host time (cuDNN autotuning; --cudnn-benchmark off for
  the other side); the share of a steady epoch the loop waits for its loader; --profile FILE:
  torch.profiler's table of one more epoch. --grad-checkpointing: the suite's option on both sides;
  on CUDA every row gives the training's peak GPU memory.
- kept: MiB one training forward pass keeps for the backward pass, without and with
  --grad-checkpointing (torch's saved-tensor hooks: the same on any device, in fp32).
- infer: images/s of 5-fold x 4-view flip TTA over the test images, as a run predicts them: a
  loader pass per fold model through the shipped ``predict_probs`` (all 4 views of a batch in one
  forward), vs a ttach wrapper pass per fold (a forward per view), and vs the ceiling (the same
  models, views, batch and precision on batches already on the device): ``vs_ceiling_time`` is the
  run's time over the ceiling's (target: at most 1.3). And ``one_pass_img_s``, as
  ``ensemble/predict.py`` predicts a new test set: one loader pass, each batch through every fold
  model (``predict_probs_each``), so each image is decoded once, not once a fold.
- neighbours: crops/s of the neighbour smoothing's look at each crop (``ensemble.neighbours.look``:
  colour histogram and the grey patch kept for overlap matching), 5 crop-OOF boxes per generated
  JPEG, decoding at reduced scale (the shipped path, PIL draft) vs a full decode, with the
  histograms' cosine between the two; then candidate pairs/s of the overlap scoring
  (``ensemble.siblings``), on the device the build would use. --workers: the decode threads.
- offsets: seconds of the build's per-class offset search (``ensemble.blend.DecisionOffsets``: each
  trial from each row's two best classes) against scoring every trial's argmax over all columns
  (``offsets_in_full``), on synthetic crop-OOF probabilities of WikiArt-50's size (29,560 crops x
  50 classes; --n-images rows, --classes), checked to choose the same offsets; then
  the honest (inner-CV) score the build computes with them.
Each prints a JSON line (also appended to --out) with both figures and their ratio.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from folds.augment import AFFINE, AFFINE_ON, eval_transform, train_transform  # noqa: E402
from folds.cache import ImageCache  # noqa: E402
from folds.engine import InputPipe, Precision, train_one_epoch  # noqa: E402
from folds.loader import ImageDataset, WaitTimer, make_loader  # noqa: E402
from folds.predict import CROP_OOF_SEED, crop_boxes  # noqa: E402
from folds.recipe import DeviceAffine, Recipe  # noqa: E402
from models import create_model, data_config, enable_grad_checkpointing  # noqa: E402


def large_jpegs(folder: Path, n: int, side: int = 1000, seed: int = 0) -> list[Path]:
    """Painting-like JPEGs of about ``side`` px (smooth colour fields plus noise)."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = side, int(side * rng.uniform(0.7, 1.3))
        small = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        out.append(p)
    return out


def rate(fn, n_items: int, repeat: int = 1, warmup: bool = True) -> float:
    if warmup:
        fn()  # cuDNN autotune, allocator and worker start-up stay out of the figure
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n_items * repeat / (time.perf_counter() - t)


class OnDevice(list):
    """Batches already on the device, served as a loader would (predict_probs reads batch_size)."""

    batch_size = None  # no padding: every batch is full


def emit(row: dict, out: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def bench_loader(args) -> dict:
    tmp = Path(tempfile.mkdtemp())
    if args.data_dir:  # the real train images (WikiArt-50's are 224 px) instead of generated large JPEGs
        from folds.data import load_dataset
        paths = list(load_dataset(args.data_dir, check_images=False).train["path"])[: args.n_images]
    else:
        paths = large_jpegs(tmp / "jpg", args.n_images, args.side)
    tf = train_transform(args.img_size, (0.5,) * 3, (0.5,) * 3, seed=0)
    tf_no_affine = train_transform(args.img_size, (0.5,) * 3, (0.5,) * 3, seed=0, affine="device")
    labels = np.zeros(len(paths))

    def run(cache, transform=tf):
        loader = make_loader(ImageDataset(paths, labels, transform, cache=cache), 16, train=True, num_workers=0)
        for _ in loader:
            pass
    cache = ImageCache(tmp / "cache", 2 * args.img_size)
    t = time.perf_counter()
    cache.fill(paths)
    fill_s = time.perf_counter() - t
    torch.set_num_threads(1)  # per core
    plain = rate(lambda: run(None), len(paths))
    cached = rate(lambda: run(cache), len(paths), repeat=3)
    # --affine device: the loader's share of the work when the shift-scale-rotate runs on the device
    no_affine = rate(lambda: run(cache, tf_no_affine), len(paths), repeat=3)
    plain_no_affine = rate(lambda: run(None, tf_no_affine), len(paths))
    # a validation image every epoch: decode and resize (what KeptBatches saves after the first epoch)
    evaluate = eval_transform(args.img_size, (0.5,) * 3, (0.5,) * 3)
    evaluation = rate(lambda: run(None, evaluate), len(paths))
    # the crop OOF's 5 boxes of each painting in a row: the painting decoded once for its 5 (reuse_decoded, the
    # shipped path) vs once a crop
    rows, boxes = list(np.repeat(paths, 5)), crop_boxes(range(len(paths)), 5, CROP_OOF_SEED)

    def crops(reuse: bool):
        for _ in make_loader(ImageDataset(rows, None, evaluate, crops=boxes, reuse_decoded=reuse), 16, train=False):
            pass
    each, once = rate(lambda: crops(False), len(rows)), rate(lambda: crops(True), len(rows))
    return {"bench": "loader", "data": args.data_dir or f"generated {args.side} px JPEGs", "img_size": args.img_size,
            "images": len(paths), "uncached_img_s": round(plain, 1), "cached_img_s": round(cached, 1),
            "ratio": round(cached / plain, 2), "cached_affine_on_device_img_s": round(no_affine, 1),
            "affine_on_device_ratio": round(no_affine / cached, 2),
            "uncached_affine_on_device_img_s": round(plain_no_affine, 1), "eval_uncached_img_s": round(evaluation, 1),
            "crop_oof_decode_each_crop_s": round(each, 1), "crop_oof_crops_s": round(once, 1),
            "crop_oof_ratio": round(once / each, 2), "cache_fill_s": round(fill_s, 2), "workers": 0, "threads": 1}


def bench_train(args) -> dict:
    tmp = Path(tempfile.mkdtemp())
    paths = large_jpegs(tmp / "jpg", args.n_images, args.side)
    labels = np.arange(len(paths)) % 10
    fast = Precision.resolve(args.device, "auto", "auto")
    naive = Precision.resolve(args.device, "off", "off")
    model = create_model(args.model, 10, weights="none", img_size=args.img_size)
    size = args.img_size or data_config(model)["input_size"][-1]
    tf = train_transform(size, (0.5,) * 3, (0.5,) * 3, seed=0)  # uint8 out, normalised on the device
    tf_cpu = train_transform(size, (0.5,) * 3, (0.5,) * 3, seed=0, cpu_normalize=True)  # the seed recipe's float path
    cache = ImageCache(tmp / "cache", 2 * size)
    cache.fill(paths, workers=args.workers)

    def steps(prec, dataset, compile_=False):
        """One epoch of the shipped training pass (folds.engine.train_one_epoch), not a copy of it."""
        inputs = InputPipe(prec, (0.5,) * 3, (0.5,) * 3)
        torch.manual_seed(0)
        m = prec.prepare(create_model(args.model, 10, weights="none", img_size=args.img_size)).train()
        fm = torch.compile(m) if compile_ else m
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        scaler = prec.scaler()
        loader = make_loader(dataset, args.batch_size, train=True, num_workers=args.workers,
                             pin_memory=prec.device.type == "cuda")

        def one_pass():
            train_one_epoch(fm, loader, opt, scaler, prec, inputs, desc="bench")
            if prec.device.type == "cuda":
                torch.cuda.synchronize()
        return one_pass

    n = (len(paths) // args.batch_size) * args.batch_size
    naive_rate = rate(steps(naive, ImageDataset(paths, labels, tf_cpu)), n, args.repeat)
    fast_rate = rate(steps(fast, ImageDataset(paths, labels, tf, cache=cache)), n, args.repeat)
    row = {"bench": "train", "model": args.model, "img_size": size, "device": fast.describe(),
           "naive_img_s": round(naive_rate, 1), "suite_img_s": round(fast_rate, 1),
           "ratio": round(fast_rate / naive_rate, 2), "batch_size": args.batch_size, "workers": args.workers}
    if fast.device.type == "cuda":  # the same cached data in fp32: the precision effect alone
        fp32 = rate(steps(naive, ImageDataset(paths, labels, tf, cache=cache)), n, args.repeat)
        row.update(fp32_cached_img_s=round(fp32, 1), amp_cl_vs_fp32=round(fast_rate / fp32, 2))
        if args.compile:
            comp = rate(steps(fast, ImageDataset(paths, labels, tf, cache=cache), True), n, args.repeat)
            row.update(compiled_img_s=round(comp, 1), compile_vs_fp32=round(comp / fp32, 2))
    return row


def bench_epochs(args) -> dict:
    """Whole epochs of the shipped training path against the compute ceiling, in one process.

    The suite's path: the fold's one training loader (persistent workers, the balanced sampler,
    the train augmentations, optional cache) feeding ``train_one_epoch``, over ``--epochs`` steady
    epochs after a first one, on the real train images (``--data-dir``) or generated JPEGs. The
    ceiling: the same ``train_one_epoch`` on uint8 batches already on the device (no loader), with
    the same model, size, batch and precision.
    """
    from folds.data import load_dataset
    from folds.optim import build_optimizer
    from folds.config import RunConfig

    if args.data_dir:
        ds = load_dataset(args.data_dir, check_images=False)
        paths, labels = list(ds.train["path"])[: args.n_images or None], ds.train["label"].to_numpy()
        labels = labels[: len(paths)]
    else:
        paths = large_jpegs(Path(tempfile.mkdtemp()) / "jpg", args.n_images, args.side)
        labels = np.arange(len(paths)) % 10
    prec = Precision.resolve(args.device, args.amp, "auto")
    torch.backends.cudnn.benchmark = prec.device.type == "cuda" and args.cudnn_benchmark == "on"
    n_classes = int(labels.max()) + 1
    model = create_model(args.model, n_classes, weights="none", img_size=args.img_size)
    model = prec.prepare(enable_grad_checkpointing(model, args.model) if args.grad_checkpointing else model)
    dcfg = data_config(model, args.img_size)
    size = dcfg["input_size"][-1]
    model = torch.compile(model) if args.compile else model
    step_options = {"grad_checkpointing": args.grad_checkpointing}  # the shipped step's, on both sides
    inputs = InputPipe(prec, dcfg["mean"], dcfg["std"])
    opt = build_optimizer(RunConfig(optimizer="adamw", lr=1e-4, weight_decay=0.01), model)
    scaler = prec.scaler()
    cache = ImageCache(Path(tempfile.mkdtemp()) / "cache", 2 * size) if args.cache else None
    if cache is not None:
        cache.fill(paths, workers=max(1, args.workers))
    data = ImageDataset(paths, labels, train_transform(size, dcfg["mean"], dcfg["std"], seed=0, affine=args.affine),
                        cache=cache)
    recipe = Recipe(affine=DeviceAffine(**AFFINE)) if args.affine == "device" else None  # the ceiling's too
    loader = make_loader(data, args.batch_size, train=True, balanced=True, num_workers=args.workers,
                         pin_memory=prec.device.type == "cuda")
    sync = torch.cuda.synchronize if prec.device.type == "cuda" else (lambda: None)
    if prec.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(prec.device)
    times, waits = [], []
    for epoch in range(1, args.epochs + 2):
        loader.sampler.set_epoch(epoch)
        timed = WaitTimer(loader)
        t = time.perf_counter()
        train_one_epoch(model, timed, opt, scaler, prec, inputs, recipe, desc=f"epoch {epoch}", **step_options)
        sync()
        times.append(time.perf_counter() - t)
        waits.append(timed.wait)
        if epoch == 1:
            first_batch, first_step = timed.first_batch, timed.first_step or 0.0
        # a line per epoch, so a run cut short by its time limit still says what it measured
        print(f"epoch {epoch}: {times[-1]:.2f} s, loader wait {timed.wait:.2f} s, first batch "
              f"{timed.first_batch:.2f} s, first step {timed.first_step or 0:.2f} s", flush=True)
    if args.profile:  # where a steady epoch's time goes, by operator (torch.profiler)
        from torch.profiler import ProfilerActivity, profile
        cuda = prec.device.type == "cuda"
        loader.sampler.set_epoch(args.epochs + 2)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            train_one_epoch(model, loader, opt, scaler, prec, inputs, recipe, desc="profiled epoch", **step_options)
            sync()
        Path(args.profile).write_text(prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30))
    per_epoch = len(loader) * args.batch_size
    steady = float(np.median(times[1:]))
    g = torch.Generator(device=prec.device).manual_seed(0)
    synthetic = [(torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, device=prec.device,
                                generator=g), torch.randint(0, n_classes, (args.batch_size,), device=prec.device,
                                                            generator=g)) for _ in range(min(len(loader), 16))]
    train_one_epoch(model, synthetic, opt, scaler, prec, inputs, recipe, desc="ceiling warm-up", **step_options)
    sync()
    t = time.perf_counter()
    reps = max(1, len(loader) // len(synthetic))
    for _ in range(reps):
        train_one_epoch(model, synthetic, opt, scaler, prec, inputs, recipe, desc="ceiling", **step_options)
    sync()
    ceiling = reps * len(synthetic) * args.batch_size / (time.perf_counter() - t)
    suite = per_epoch / steady
    return {"bench": "epochs", "model": args.model, "img_size": size, "device": prec.describe(),
            "images_per_epoch": per_epoch, "workers": args.workers, "cache": bool(args.cache),
            "suite_img_s": round(suite, 1), "ceiling_img_s": round(ceiling, 1),
            "of_ceiling": round(suite / ceiling, 3), "first_epoch_s": round(times[0], 2),
            "steady_epoch_s": round(steady, 2), "first_vs_steady": round(times[0] / steady, 2),
            # (to 0.1 ms: a tiny first batch on the CPU took under 5 ms, which two decimals recorded as 0)
            "first_epoch_loader_wait_s": round(waits[0], 4), "first_batch_s": round(first_batch, 4),
            "first_step_s": round(first_step, 4), "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "steady_loader_wait_share": round(float(np.median(waits[1:])) / steady, 3),
            "epochs": args.epochs, "compile": args.compile, "affine": args.affine,
            "grad_checkpointing": args.grad_checkpointing,  # and what it saves: the training's peak GPU memory
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(prec.device) / 2**20)
            if prec.device.type == "cuda" else None}


def kept_bytes(model, x: torch.Tensor) -> int:
    """Bytes the training forward pass of ``model`` on ``x`` keeps for the backward pass (torch's
    saved-tensor hooks; a checkpointed block keeps only its inputs)."""
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()(x)
    return sum(sizes)


def bench_kept(args) -> dict:
    """What one training forward pass keeps for the backward pass, without and with --grad-checkpointing.

    Counted by torch's saved-tensor hooks (checkpointed blocks keep only their inputs), so the figure is
    the same on any device and needs no GPU; `epochs --grad-checkpointing` gives the peak GPU memory and
    the time it costs there.
    """
    prec = Precision.resolve(args.device, "off", "off")
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=prec.device)
    kept = {}
    for checkpointing in (False, True):
        model = prec.prepare(create_model(args.model, 50, weights="none", img_size=args.img_size))
        if checkpointing:
            enable_grad_checkpointing(model, args.model)
        kept[checkpointing] = kept_bytes(model, x) / 2**20
    return {"bench": "kept", "model": args.model, "img_size": args.img_size, "batch_size": args.batch_size,
            "dtype": "fp32", "kept_mib": round(kept[False]), "kept_mib_checkpointing": round(kept[True]),
            "ratio": round(kept[True] / kept[False], 3)}


def bench_infer(args) -> dict:
    import ttach as tta

    from ensemble.tta import tta_transforms
    from folds.predict import predict_probs, predict_probs_each
    from folds.data import load_dataset
    prec = Precision.resolve(args.device, "auto", "auto")
    models = [prec.prepare(create_model(args.model, 50, weights="none", img_size=args.img_size)).eval()
              for _ in range(args.folds)]
    cfg = data_config(models[0], args.img_size)
    size = cfg["input_size"][-1]
    tf = eval_transform(size, cfg["mean"], cfg["std"])
    inputs = InputPipe(prec, cfg["mean"], cfg["std"])
    if args.data_dir:
        paths = list(load_dataset(args.data_dir, check_images=False).test["path"])[: args.n_images or None]
    else:
        paths = large_jpegs(Path(tempfile.mkdtemp()), args.n_images or 64, args.side or 112)  # a test crop's size
    data = ImageDataset(paths, None, tf)

    def batched(data=data):
        """What a run does: each fold model predicts with the shipped predict_probs (batched flips TTA)."""
        for m in models:
            predict_probs(m, make_loader(data, args.batch_size, train=False, num_workers=args.workers,
                                         pin_memory=prec.device.type == "cuda"), prec, inputs, "flips", desc="bench")

    def one_pass(data=data):
        """What ensemble/predict.py does with a run's folds: one loader pass, each batch through every model."""
        predict_probs_each(models, make_loader(data, args.batch_size, train=False, num_workers=args.workers,
                                               pin_memory=prec.device.type == "cuda"), prec, inputs, "flips",
                           desc="bench")

    @torch.no_grad()
    def per_fold_ttach(data=data):
        for m in models:
            w = tta.ClassificationTTAWrapper(torch.nn.Sequential(m, torch.nn.Softmax(1)), tta_transforms("flips"))
            for x in make_loader(data, args.batch_size, train=False, num_workers=args.workers,
                                 pin_memory=prec.device.type == "cuda"):
                x = inputs(x)
                with prec.autocast():
                    w(x).cpu()
        if prec.device.type == "cuda":
            torch.cuda.synchronize()

    def ceiling():
        """The same models, views, batch and precision on uint8 batches already on the device: no loader."""
        g = torch.Generator(device=prec.device).manual_seed(0)
        synthetic = OnDevice(torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8,
                                           device=prec.device, generator=g) for _ in range(4))
        reps = max(1, -(-len(paths) // (len(synthetic) * args.batch_size)))  # at least as many images as the run
        predict_probs(models[0], OnDevice(synthetic[:1]), prec, inputs, "flips", desc="ceiling warm-up")
        t = time.perf_counter()
        for m in models:
            for _ in range(reps):
                predict_probs(m, synthetic, prec, inputs, "flips", desc="ceiling")
        if prec.device.type == "cuda":
            torch.cuda.synchronize()
        return reps * len(synthetic) * args.batch_size / (time.perf_counter() - t)

    few = ImageDataset(paths[: 2 * args.batch_size], None, tf)
    batched(few)  # warm-up: cuDNN autotune
    fast = rate(batched, len(paths), warmup=False)  # the full run a user waits for
    together = rate(one_pass, len(paths), warmup=False)
    top = ceiling()
    n_base = min(len(paths), args.baseline_images or len(paths))
    slow = rate(lambda: per_fold_ttach(ImageDataset(paths[:n_base], None, tf)), n_base, warmup=False)
    return {"bench": "infer", "model": args.model, "img_size": size, "device": prec.describe(), "folds": args.folds,
            "views": 4, "images": len(paths), "batched_img_s": round(fast, 1), "ttach_per_fold_img_s": round(slow, 1),
            "ratio": round(fast / slow, 2), "batched_total_s": round(len(paths) / fast, 1),
            "one_pass_img_s": round(together, 1), "one_pass_vs_batched": round(together / fast, 2),
            "ceiling_img_s": round(top, 1), "ceiling_total_s": round(len(paths) / top, 1),
            "vs_ceiling_time": round(top / fast, 2), "baseline_images": n_base}


def bench_neighbours(args) -> dict:
    from unittest import mock

    from ensemble import neighbours as nb
    from folds.images import read_rgb
    from folds.predict import crop_boxes

    paths = large_jpegs(Path(tempfile.mkdtemp()) / "jpg", args.n_images, args.side)
    crops = 5
    files, boxes = np.repeat(np.array(paths, dtype=object), crops), crop_boxes(range(len(paths)), crops, 0)
    workers = max(1, args.workers)

    def look():
        nb._look.cache_clear()  # time the decode, not the cache
        return nb.look(files, boxes, workers)

    draft = rate(look, len(files), warmup=False)
    with mock.patch.object(nb, "read_rgb", lambda path, max_side=None: read_rgb(path)):  # the full decode
        full = rate(look, len(files), warmup=False)
        full_desc = look()[0]
    desc, kept = look()
    cosine = (desc * full_desc).sum(1) / np.linalg.norm(desc, axis=1) / np.linalg.norm(full_desc, axis=1)
    neighbours, _ = nb.nearest(desc, nb.sib.CANDIDATES)
    pairs = nb.sib.candidate_pairs(neighbours)
    t = time.perf_counter()
    nb.sib.overlap_scores(kept, pairs)
    pairs_s = len(pairs) / (time.perf_counter() - t)
    return {"bench": "neighbours", "data": f"generated {args.side} px JPEGs, {crops} crops each", "crops": len(files),
            "draft_crops_s": round(draft, 1), "full_decode_crops_s": round(full, 1), "ratio": round(draft / full, 2),
            "histogram_cosine_min": round(float(cosine.min()), 3),
            "histogram_cosine_median": round(float(np.median(cosine)), 3), "decode_threads": workers,
            "overlap_pairs": len(pairs), "overlap_pairs_s": round(pairs_s, 1),
            "overlap_device": "cuda" if torch.cuda.is_available() else "cpu", "torch_threads": torch.get_num_threads()}


def offsets_in_full(probs, y, grid, rounds: int = 2) -> np.ndarray:
    """The offset search scored the plain way, argmax(log p + trial) over every column for every trial:
    the reference the build's search must equal (and the baseline it is timed against)."""
    from common.metrics import macro_f1
    from ensemble.blend import _log_probs

    logp, b = _log_probs(probs), np.zeros(probs.shape[1])
    best = macro_f1(y, logp)
    for _ in range(rounds):
        for c in range(len(b)):
            for g in grid:
                trial = b.copy()
                trial[c] = g
                s = macro_f1(y, logp + trial)
                if s > best + 1e-12:
                    best, b = s, trial
    return b


def bench_offsets(args) -> dict:
    from ensemble.blend import DecisionOffsets, MergeBlend, honest_oof, make_blend

    rng = np.random.default_rng(0)
    n, k = args.n_images, args.classes
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t = time.perf_counter()
    fitted = DecisionOffsets(MergeBlend("mean", 1)).fit(probs, y)
    fast = time.perf_counter() - t
    t = time.perf_counter()
    reference = offsets_in_full(probs, y, fitted.grid, fitted.rounds)
    full = time.perf_counter() - t
    t = time.perf_counter()
    honest_oof(make_blend("mean", offsets=True), probs, y, np.arange(n) // 5)  # 5 crops a painting
    honest = time.perf_counter() - t
    return {"bench": "offsets", "rows": n, "classes": k, "search_s": round(fast, 2), "in_full_s": round(full, 2),
            "ratio": round(full / fast, 2), "same_offsets": bool(np.array_equal(fitted.offsets_, reference)),
            "honest_score_s": round(honest, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("loader", "train", "epochs", "kept", "infer", "neighbours", "offsets"))
    p.add_argument("--model", default="efficientnet_b3")
    p.add_argument("--img-size", type=int, default=288)
    p.add_argument("--side", type=int, help="side of the generated JPEGs (default: 1000; infer: 112, a test crop)")
    p.add_argument("--n-images", type=int, help="images (offsets: crop-OOF rows); default: 64 (offsets: 29,560)")
    p.add_argument("--classes", type=int, default=50, help="offsets: classes (default: 50)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--baseline-images", type=int, help="infer: time the slow baseline on this many images")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="epochs: the suite's --grad-checkpointing (its cost in time, and its peak GPU memory)")
    p.add_argument("--epochs", type=int, default=3, help="epochs: steady epochs timed after the first (default: 3)")
    p.add_argument("--amp", default="auto", help="epochs: auto, bf16, fp16 or off (default: auto)")
    p.add_argument("--cache", action="store_true", help="epochs: read the pre-resized cache")
    p.add_argument("--affine", choices=AFFINE_ON, default="loader", help="epochs: where the shift-scale-rotate runs "
                   "(the suite's --affine)")
    p.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on",
                   help="epochs: cuDNN autotuning (the suite's CUDA setting is on); off shows what it costs the first "
                   "epoch and gives the steady one")
    p.add_argument("--profile", help="epochs: write torch.profiler's operator table of one more epoch here")
    p.add_argument("--data-dir", help="loader, epochs, infer: use this dataset's images")
    p.add_argument("--out", help="append the JSON line here")
    args = p.parse_args(argv)
    args.n_images = args.n_images if args.n_images is not None else 29_560 if args.what == "offsets" else 64
    args.side = args.side or (None if args.what == "infer" else 1000)  # infer: 112 unless given
    row = {"loader": bench_loader, "train": bench_train, "epochs": bench_epochs, "kept": bench_kept,
           "infer": bench_infer, "neighbours": bench_neighbours, "offsets": bench_offsets}[args.what](args)
    row["date"] = time.strftime("%Y-%m-%d %H:%M")
    emit(row, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
