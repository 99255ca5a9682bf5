import os

import numpy as np
import torch

from folds.augment import train_transform
from folds.loader import ImageDataset, class_weights, make_loader


def test_class_weights_are_inverse_frequency():
    y = np.array([0, 0, 0, 1, 2, 2])
    w = class_weights(y)
    np.testing.assert_allclose(w / w[3], [1 / 3, 1 / 3, 1 / 3, 1, 0.5, 0.5])
    # every class carries the same total weight
    total = np.bincount(y, weights=w)
    np.testing.assert_allclose(total, total[0])


class Constant(ImageDataset):
    """The same image for every item: differences come from augmentation alone."""

    def image(self, i):
        return np.tile(np.arange(48, dtype=np.uint8)[None, :, None] * 5, (48, 1, 3))


def test_balanced_sampler_draws_classes_evenly():
    y = np.array([0] * 90 + [1] * 9 + [2] * 1)
    ds = ImageDataset(["x"] * 100, y, transform=None)
    loader = make_loader(ds, 10, train=True, balanced=True)
    drawn = y[[i for i, _ in loader.sampler]]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert (share > 0.15).all(), share


def test_balance_power_draws_classes_by_the_root_of_their_count():
    """--balance-power 0.5: a class of 100 paintings is drawn 10x as often as a class of 1, not 100x (plain)
    nor 1x (balanced); power 1 keeps the balanced sampler's very weights (old runs resume the same)."""
    y = np.array([0] * 100 + [1] * 1)
    np.testing.assert_array_equal(class_weights(y, 1.0), class_weights(y))
    w = class_weights(y, 0.5)
    assert np.isclose(np.bincount(y, weights=w)[0] / np.bincount(y, weights=w)[1], 10)
    ds = ImageDataset(["x"] * 101, y, transform=None)
    drawn = []
    for epoch in range(20):
        loader = make_loader(ds, 10, train=True, balanced=True, power=0.5, epoch=epoch)
        drawn += list(y[[i for i, _ in loader.sampler]])
    ratio = np.bincount(drawn)[0] / np.bincount(drawn)[1]
    assert 6 < ratio < 16, ratio


def batches(ds, epoch, workers, seed=0):
    loader = make_loader(ds, 4, train=True, seed=seed, epoch=epoch, num_workers=workers)
    return torch.cat([x for x, _ in loader])


def test_augmentations_differ_across_epochs_workers_and_positions():
    # AlbumentationsX#266: with workers, each batch position could get the same augmentation every epoch.
    ds = Constant(["x"] * 16, np.zeros(16), train_transform(32, (0.5,) * 3, (0.25,) * 3, seed=0))
    e0, e1 = batches(ds, 0, 2), batches(ds, 1, 2)
    flat0 = e0.flatten(1)
    assert len({tuple(r.tolist()) for r in flat0}) > 12  # positions and workers differ
    per_position_same = [(e0[i] == e1[i]).all().item() for i in range(16)]
    assert sum(per_position_same) <= 2  # epochs differ at the same position
    # worker 0 holds batches 0, 2; worker 1 holds 1, 3: their first items differ
    assert not torch.equal(e0[0], e0[4])


def test_augmentations_do_not_depend_on_the_number_of_workers():
    ds = Constant(["x"] * 12, np.zeros(12), train_transform(32, (0.5,) * 3, (0.25,) * 3, seed=0))
    assert torch.equal(batches(ds, 2, 0), batches(ds, 2, 2))


def test_persistent_workers_serve_every_epoch_with_new_augmentations():
    ds = Constant(["x"] * 8, np.zeros(8), train_transform(32, (0.5,) * 3, (0.25,) * 3, seed=0))
    loader = make_loader(ds, 4, train=True, seed=1, num_workers=2)
    assert loader.persistent_workers
    epochs = []
    for epoch in (1, 2, 1):
        loader.sampler.set_epoch(epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(epochs[0], epochs[2]) and not torch.equal(epochs[0], epochs[1])


def test_augmentations_reproduce_with_the_same_seed():
    tf = lambda: train_transform(32, (0.5,) * 3, (0.25,) * 3, seed=0)  # noqa: E731
    a = batches(Constant(["x"] * 8, np.zeros(8), tf()), 3, 2)
    b = batches(Constant(["x"] * 8, np.zeros(8), tf()), 3, 2)
    assert torch.equal(a, b)
    c = batches(Constant(["x"] * 8, np.zeros(8), tf()), 3, 0)
    d = batches(Constant(["x"] * 8, np.zeros(8), tf()), 3, 0)
    assert torch.equal(c, d)


def test_image_cache_decodes_once_and_bounds_the_size(tmp_path, monkeypatch):
    from PIL import Image

    import folds.cache as cache_mod
    from folds.cache import ImageCache

    arr = (np.random.default_rng(0).random((300, 500, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    cache = ImageCache(tmp_path / "cache", max_side=128)
    first = cache.get(tmp_path / "big.jpg")
    assert max(first.shape[:2]) == 128 and first.shape[2] == 3
    monkeypatch.setattr(cache_mod, "read_rgb", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded twice")))
    assert np.array_equal(ImageCache(tmp_path / "cache", 128).get(tmp_path / "big.jpg"), first)
    small = ImageCache(tmp_path / "cache2", max_side=1000)
    monkeypatch.undo()
    assert small.get(tmp_path / "big.jpg").shape == (300, 500, 3)  # never enlarged


def test_uint8_batches_are_normalised_on_the_device():
    from folds.augment import eval_transform
    from folds.engine import InputPipe, Precision

    img = np.full((8, 8, 3), 255, np.uint8)
    fast = eval_transform(8, (0.5,) * 3, (0.25,) * 3)(image=img)["image"]
    slow = eval_transform(8, (0.5,) * 3, (0.25,) * 3, cpu_normalize=True)(image=img)["image"]
    assert fast.dtype == torch.uint8 and slow.dtype == torch.float32
    pipe = InputPipe(Precision.resolve("cpu", "off", "off"), (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(pipe(fast[None]), pipe(slow[None]), atol=1e-5)
    assert torch.allclose(pipe(fast[None]), torch.full((1, 3, 8, 8), 2.0))


def test_auto_precision_is_fp16_where_bf16_would_only_be_emulated(monkeypatch, caplog):
    """A Colab T4 (compute capability 7.5): torch.cuda.is_bf16_supported() says yes (emulated), but
    bf16 there is far slower than fp16 on its tensor cores; Ampere and later get bf16."""
    from folds.engine import Precision

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # resolve sets it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    for capability, auto in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, c=capability: c)
        prec = Precision.resolve("cuda", "auto")
        assert prec.amp_dtype == auto, capability
    with caplog.at_level("WARNING"):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
        assert Precision.resolve("cuda", "bf16").amp_dtype == torch.bfloat16  # asked for: kept, with a warning
    assert "Tesla T4" in caplog.text and "--amp fp16" in caplog.text
    assert Precision.resolve("cpu", "auto").amp_dtype is None


def test_deterministic_turns_autotuning_off_and_asks_for_deterministic_kernels(monkeypatch):
    """--deterministic on CUDA: no cuDNN autotuning (its timing picks kernels that differ run to run),
    deterministic cuDNN and torch kernels, and the cuBLAS workspace setting torch asks for."""
    from folds.engine import Precision

    for flag in ("benchmark", "deterministic"):  # resolve sets them: put them back after the test
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    try:
        Precision.resolve("cuda", deterministic=True)
        assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        Precision.resolve("cuda")  # the default: autotuned, fastest kernels
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        Precision.resolve("cpu")
    assert not torch.are_deterministic_algorithms_enabled()


class Counting(ImageDataset):
    """Images that differ per item, and a count of how many were decoded."""

    decoded = 0

    def image(self, i):
        Counting.decoded += 1
        return np.full((16, 16, 3), i * 10, np.uint8)


def test_validation_batches_are_decoded_once_and_served_the_same_every_epoch():
    from folds.augment import eval_transform
    from folds.loader import KeptBatches

    tf = eval_transform(8, (0.5,) * 3, (0.25,) * 3)
    Counting.decoded = 0
    kept = KeptBatches(make_loader(Counting(["x"] * 10, np.arange(10), tf), 4, train=False))
    first = [(x.clone(), y.clone()) for x, y in kept]
    assert Counting.decoded == 10 and len(kept) == 3 and kept.batch_size == 4
    second = list(kept)
    assert Counting.decoded == 10 and kept.loader is None  # no decoding, no workers after the first pass
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, second))
    # a set too large to keep streams every pass, as a plain loader does
    Counting.decoded = 0
    streamed = KeptBatches(make_loader(Counting(["x"] * 10, np.arange(10), tf), 4, train=False), max_bytes=100)
    list(streamed), list(streamed)
    assert Counting.decoded == 20 and streamed.kept is None


def test_the_kept_sets_fit_the_machine(monkeypatch):
    import os

    from folds.loader import keep_limit
    pages = {"SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages.get(name, (12 << 30) // 4096))  # a 12 GiB Colab
    assert keep_limit() == (12 << 30) // 8  # one set, each validation painting whole and its crops
    monkeypatch.setattr(os, "sysconf", lambda name: pages.get(name, (128 << 30) // 4096))
    assert keep_limit() == 4 << 30


def test_loader_hint_says_when_the_gpu_waits_for_images_and_what_may_help(monkeypatch):
    import folds.pace
    from folds.pace import LOADER_BOUND_SHARE, loader_hint

    monkeypatch.setattr(folds.pace, "_said", [])
    base = {"device": "cuda", "epoch": 2, "workers": 1, "cores": 2, "cache": False, "affine": "loader"}
    assert loader_hint(LOADER_BOUND_SHARE * 9, 10.0, **base) is None  # the GPU sets the pace
    assert loader_hint(8.0, 10.0, **{**base, "device": "cpu"}) is None  # the CPU's step shares the cores
    line = loader_hint(8.0, 10.0, **base)
    assert loader_hint(8.0, 10.0, **base) is None  # said once per process
    folds.pace._said.clear()
    assert line.startswith("the GPU waited for images for 8.0 of the 10.0 s of epoch 2's training pass (80%)"), line
    assert "--cache" in line and "--affine device" in line and "--num-workers" not in line, line  # no core to spare
    line = loader_hint(8.0, 10.0, **{**base, "workers": 3, "cores": 16, "cache": True})
    folds.pace._said.clear()
    assert "more --num-workers where cores are idle (3 now, on 16 usable cores" in line and "--cache" not in line
    line = loader_hint(8.0, 10.0, **{**base, "cache": True, "affine": "device"})
    folds.pace._said.clear()
    assert "What may help: more cores per GPU, or the images on a faster disk." in line, line


def test_a_fold_whose_loader_sets_the_pace_says_so_once_with_its_wait_in_the_history(demo_source, tmp_path,
                                                                                     monkeypatch, capsys):
    """On a Colab T4 (2 cores) Dacon's 1000 px paintings can keep the GPU idle for most of an epoch, and no line
    said so: the wait is now timed in the shipped loop, kept in history.csv, and said once per process."""
    import folds.pace
    import pandas as pd
    from conftest import tiny_args
    from folds.run import main

    slow = ImageDataset.__getitem__

    def slow_item(self, item):
        import time
        if isinstance(item, tuple):  # a training sample (index, seed): 30 ms, so a busy CPU's slower steps still
            time.sleep(0.03)  # leave the wait above 30% of the pass (10 ms on every item failed once beside CI)
        return slow(self, item)

    monkeypatch.setattr(ImageDataset, "__getitem__", slow_item)
    monkeypatch.setattr(folds.pace, "PACED_DEVICES", ("cpu",))  # the test's CPU stands in for the GPU
    monkeypatch.setattr(folds.pace, "_said", [])
    # The share's value is loader_hint's test; this one checks the wiring. At 30% it failed beside other torch jobs
    # on 2 cores: the step slowed 40x, the sleeps did not, and the wait fell to 27% of an epoch. 10% holds there.
    monkeypatch.setattr(folds.pace, "LOADER_BOUND_SHARE", 0.1)
    assert main(tiny_args(demo_source, tmp_path, **{"--epochs": 3, "--n-folds": 2, "--fold": "0,1"})) == 0
    hints = [line for line in "".join(capsys.readouterr()).splitlines() if "waited for images" in line]
    assert len(hints) == 1 and "t/fold_0: the CPU waited for images" in hints[0], hints  # not again for fold 1
    assert "of epoch 2's training pass" in hints[0] and "--cache" in hints[0], hints
    history = pd.read_csv(tmp_path / "runs" / "t" / "fold_0" / "history.csv")
    # the first epoch also decodes the validation paintings, which later epochs keep in memory
    assert (history["loader_wait"] > folds.pace.LOADER_BOUND_SHARE * history["seconds"]).iloc[1:].all(), history


def test_a_paintings_crops_in_a_row_are_decoded_once_and_come_out_as_before(demo_source, tmp_path, monkeypatch):
    """The crop OOF lists each painting's crops one after another (5 by default), and the validation crops
    theirs (2): each crop decoded its painting again, three times the work per crop of a 1000 px JPEG."""
    import pandas as pd

    import folds.loader
    from conftest import tiny_args
    from folds.augment import eval_transform
    from folds.predict import CROP_OOF_SEED, crop_boxes
    from folds.run import main as run_main

    decoded = []
    real = folds.loader.read_rgb

    def counted(path, *args, **kwargs):
        decoded.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(folds.loader, "read_rgb", counted)
    train = pd.read_csv(demo_source / "train.csv", dtype=str).head(6)
    paths = [str(demo_source / p) for p in train["img_path"]]
    rows, boxes = np.repeat(paths, 5), crop_boxes(train["id"], 5, CROP_OOF_SEED)

    def crops(reuse: bool):
        decoded.clear()
        data = ImageDataset(rows, None, eval_transform(32, (0.5,) * 3, (0.5,) * 3), crops=boxes, reuse_decoded=reuse)
        return torch.cat(list(make_loader(data, 7, train=False))), len(decoded)

    (plain, plain_decodes), (reused, reused_decodes) = crops(False), crops(True)
    assert plain_decodes == len(rows) and reused_decodes == len(paths) and torch.equal(plain, reused)
    # a fold decodes each validation painting twice: once for the validation (whole and its 2 crops, then kept),
    # once for its OOF (whole and its 5 crops)
    decoded.clear()
    assert run_main(tiny_args(demo_source, tmp_path, **{"--epochs": 2, "--n-folds": 2, "--fold": "0",
                                                        "--crop-oof": 5, "--val-crops": 2})) == 0
    split = pd.read_csv(tmp_path / "runs" / "t" / "folds.csv", dtype=str)
    val = pd.read_csv(demo_source / "train.csv", dtype=str).set_index("id").loc[split["id"][split["fold"] == "0"]]
    counts = pd.Series(decoded).value_counts()
    assert {counts[str(demo_source / p)] for p in val["img_path"]} == {2}
