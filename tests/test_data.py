import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from common import UserError
from folds.data import load_dataset, load_test_set
from folds.images import read_rgb


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    fn(df).to_csv(path, index=False)


def test_demo_loads(demo_dir):
    ds = load_dataset(demo_dir)
    assert ds.num_classes == 6 and len(ds.train) > 100 and len(ds.test) > 50
    assert ds.train["path"].map(lambda p: p.is_file()).all()


BAD = [
    ("train.csv", lambda df: df.drop(columns=["artist"]), r"train\.csv: missing column\(s\) \['artist'\]"),
    ("train.csv", lambda df: pd.concat([df, df.iloc[[3]]]), r"train\.csv: duplicate id\(s\) \['3'\] at lines 5, "),
    ("test.csv", lambda df: df.assign(img_path=df["img_path"].where(df.index != 2, "./test/nope.jpg")),
     r"test\.csv: image not found: './test/nope\.jpg' at line 4"),
    ("train.csv", lambda df: df.assign(img_path=df["img_path"].where(df.index != 0, "/etc/passwd")),
     r"train\.csv: img_path must be relative .* absolute path '/etc/passwd' at line 2"),
    ("train.csv", lambda df: df.assign(img_path=df["img_path"].where(df.index != 1, "./train/../../secret.jpg")),
     r"train\.csv: img_path './train/\.\./\.\./secret\.jpg' at line 3 leaves the data folder"),
    ("train.csv", lambda df: df.iloc[:0], r"train\.csv: has a header but no rows"),
    ("test_labels.csv", lambda df: df.assign(artist=df["artist"].where(df.index != 0, "Banksy")),
     r"test_labels\.csv: artist 'Banksy' at line 2 is not among the 6 train classes: the test class set"),
    ("sample_submission.csv", lambda df: df.iloc[1:], r"sample_submission\.csv: ids do not match"),
    ("train.csv", lambda df: df.assign(artist=df["artist"].where(df.index != 5, "")), r"empty 'artist' at line 7"),
]


@pytest.mark.parametrize("fname,edit,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input_names_file_and_row(demo_dir, fname, edit, message):
    edit_csv(demo_dir / fname, edit)
    with pytest.raises(UserError, match=message):
        load_dataset(demo_dir)


def test_empty_file(demo_dir):
    (demo_dir / "test.csv").write_text("")
    with pytest.raises(UserError, match=r"test\.csv: the file is empty"):
        load_dataset(demo_dir)


def test_unreadable_image(demo_dir):
    (demo_dir / "train" / "0003.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=r"train\.csv line 5: './train/0003\.jpg': cannot decode image"):
        load_dataset(demo_dir)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpegs_are_all_reported_before_training(demo_dir):
    # The header of a truncated JPEG reads fine: only a full decode finds it.
    test_img = pd.read_csv(demo_dir / "test.csv", dtype=str)["img_path"].iloc[4]
    for rel in ("train/0003.jpg", "train/0007.jpg", test_img):
        truncate(demo_dir / rel)
        with Image.open(demo_dir / rel) as im:
            assert im.size  # what the old header-only check accepted
    with pytest.raises(UserError) as err:
        load_dataset(demo_dir)
    msg = str(err.value)
    assert msg.startswith("3 image(s) cannot be decoded"), msg
    assert "train.csv line 5: './train/0003.jpg'" in msg and "train.csv line 9: './train/0007.jpg'" in msg
    assert f"test.csv line 6: {test_img!r}" in msg and "truncated" in msg


def test_decoded_images_are_remembered_by_size_and_mtime(demo_dir, tmp_path, monkeypatch):
    import folds.images as data

    calls = []
    real = data.read_rgb
    monkeypatch.setattr(data, "read_rgb", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))
    ds = load_dataset(demo_dir, verified_cache=tmp_path / "cache")
    assert len(calls) == len(ds.train) + len(ds.test)
    calls.clear()
    load_dataset(demo_dir, verified_cache=tmp_path / "cache")
    assert calls == []  # the second run does not pay again
    truncate(demo_dir / "train" / "0003.jpg")  # a changed file (size, mtime) is decoded again
    with pytest.raises(UserError, match="0003.jpg"):
        load_dataset(demo_dir, verified_cache=tmp_path / "cache")
    assert len(calls) == 1


def test_decompression_bomb_names_the_option(demo_dir):
    from folds.images import set_max_image_pixels
    old = Image.MAX_IMAGE_PIXELS
    try:
        set_max_image_pixels(200)  # the demo images are far larger than 2 x 200 pixels
        with pytest.raises(UserError, match=r"exceeds limit.*--max-image-pixels"):
            load_dataset(demo_dir)
        set_max_image_pixels(0)
        assert Image.MAX_IMAGE_PIXELS is None
        load_dataset(demo_dir)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_single_class_is_refused(demo_dir):
    edit_csv(demo_dir / "train.csv", lambda df: df.assign(artist="Azure Stroke"))
    with pytest.raises(UserError, match=r"train\.csv: every row has the artist 'Azure Stroke'; .* at least 2"):
        load_dataset(demo_dir)


def test_dot_dot_that_stays_inside_is_accepted(demo_dir):
    edit_csv(demo_dir / "train.csv", lambda df: df.assign(img_path=df["img_path"].str.replace(
        "./train/", "./train/../train/", regex=False)))
    ds = load_dataset(demo_dir)
    assert ds.train["path"].map(lambda p: p.is_file()).all()


def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load_dataset(tmp_path / "nowhere")


def test_corrections_override_and_log(demo_dir, caplog):
    ds = load_dataset(demo_dir)
    a, b = ds.train.iloc[0], ds.train.iloc[-1]
    pd.DataFrame({"id": [a["id"], b["id"]], "artist": [b["artist"], a["artist"]]}).to_csv(demo_dir / "fix.csv",
                                                                                          index=False)
    with caplog.at_level(logging.INFO, logger="folds.data"):
        fixed = load_dataset(demo_dir, corrections=demo_dir / "fix.csv")
    assert fixed.train.set_index("id").loc[a["id"], "artist"] == b["artist"]
    assert fixed.train.set_index("id").loc[b["id"], "artist"] == a["artist"]
    assert sum("correction: id" in r.message for r in caplog.records) == 2


def test_corrections_unknown_id(demo_dir):
    pd.DataFrame({"id": ["99999"], "artist": ["Azure Stroke"]}).to_csv(demo_dir / "fix.csv", index=False)
    with pytest.raises(UserError, match=r"fix\.csv: id '99999' at line 2 is not in train\.csv"):
        load_dataset(demo_dir, corrections=demo_dir / "fix.csv")


def test_a_missing_option_file_is_named_with_its_option(demo_dir):
    """Not as a missing part of the Dacon layout, which the data folder's own files are."""
    with pytest.raises(UserError, match=r"^--corrections \S*nope\.csv: file not found\. It is a CSV of id,artist "):
        load_dataset(demo_dir, corrections=demo_dir / "nope.csv")
    (demo_dir / "test.csv").unlink()
    with pytest.raises(UserError, match=r": test\.csv not found\. Expected Dacon layout: train\.csv, test\.csv"):
        load_dataset(demo_dir)
    with pytest.raises(UserError, match=r": test\.csv not found\. Expected Dacon layout: test\.csv, "
                                        r"sample_submission\.csv and the test images \(no train data needed\)"):
        load_test_set(demo_dir)  # what ensemble/predict.py reads


def test_a_data_folder_one_level_off_names_where_the_csvs_are_before_the_models_check(demo_dir, tmp_path):
    """A Kaggle input (/kaggle/input/<dataset>/<folder>) or an archive unpacked into a folder of its own: the user
    gave the folder above. Every missing file is named at once, with the folder that holds them; and this comes
    first, before the model's check, which offline spends its hub wait and then asks for weights."""
    import shutil

    from folds.config import resolve_config
    from folds.prepare import prepare_run

    top = tmp_path / "input"
    shutil.copytree(demo_dir, top / "painters" / "open")
    with pytest.raises(UserError, match=r"^--data-dir \S*input: train\.csv, test\.csv, sample_submission\.csv not "
                                        r"found\. .* They are in \S*input/painters/open: point --data-dir there\.$"):
        load_dataset(top)
    (tmp_path / "dacon").mkdir()
    (tmp_path / "dacon" / "open.zip").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"Unpack open\.zip here first"):
        load_test_set(tmp_path / "dacon")
    cfg = resolve_config({"data_dir": str(top), "model": "no_such_model", "runs_dir": str(tmp_path / "runs")})
    with pytest.raises(UserError, match=r"^--data-dir .*point --data-dir there"):  # not the unknown model
        prepare_run(cfg, None)
    cfg = resolve_config({"data_dir": str(top / "painters" / "open"), "model": "no_such_model",
                          "runs_dir": str(tmp_path / "runs")})
    with pytest.raises(UserError, match="no_such_model"):  # the data is there: the model is what is wrong
        prepare_run(cfg, None)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    arr = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    im = im.convert("I;16") if mode == "I;16" else im.convert(mode)
    path = tmp_path / ("x.jpg" if mode in ("L", "CMYK") else "x.png")
    im.save(path) if mode != "I;16" else im.save(path, format="PNG")
    out = read_rgb(path)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_transparent_pixels_become_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.save(tmp_path / "t.png")
    assert (read_rgb(tmp_path / "t.png") == 255).all()


@pytest.mark.parametrize("placeholder", ["", "0"])
def test_the_sample_submissions_class_column_is_a_placeholder(demo_dir, tmp_path, placeholder):
    # a sample submission often leaves its class column empty (or 0): only its ids and their order matter
    from ensemble.submission import write_submission

    edit_csv(demo_dir / "sample_submission.csv", lambda df: df.assign(artist=placeholder))
    ds = load_dataset(demo_dir)
    order = list(ds.sample_submission["id"])
    guess = [ds.classes[i % ds.num_classes] for i in range(len(ds.test))]
    probs = np.eye(ds.num_classes)[[ds.classes.index(c) for c in guess]]
    write_submission(tmp_path / "sub.csv", ds.test["id"], probs, ds.sample_submission, ds.classes)
    sub = pd.read_csv(tmp_path / "sub.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["id", "artist"] and list(sub["id"]) == order
    assert sub.set_index("id")["artist"].to_dict() == dict(zip(ds.test["id"], guess))


@pytest.mark.parametrize("load", [load_dataset, load_test_set])
def test_the_csvs_are_checked_before_the_slow_decode_of_every_image(demo_dir, monkeypatch, load):
    # a sample submission that does not list test.csv's ids is found at once, not after every image is decoded
    import folds.data

    edit_csv(demo_dir / "sample_submission.csv", lambda df: df.iloc[1:])
    monkeypatch.setattr(folds.data, "check_readable", lambda *a, **k: pytest.fail("decoded before the CSV checks"))
    with pytest.raises(UserError, match=r"sample_submission\.csv: ids do not match"):
        load(demo_dir)


def test_two_processes_checking_at_once_keep_both_records(demo_dir, tmp_path, monkeypatch):
    # each read the record before the other wrote: rewriting it whole dropped the first writer's images
    import folds.images
    from folds.images import check_readable

    store = tmp_path / "cache" / "verified.txt"
    ds = load_dataset(demo_dir, check_images=False)
    train, test = (ds.train, demo_dir / "train.csv"), (ds.test, demo_dir / "test.csv")
    check_readable([train], tmp_path / "cache")  # the first process
    seen_before = ""  # what the second process read, before the first wrote
    real = type(store).read_text
    monkeypatch.setattr(type(store), "read_text", lambda self, *a, **k: seen_before if self == store
                        else real(self, *a, **k))
    check_readable([test], tmp_path / "cache")  # the second
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(folds.images, "_decode_error", lambda p: calls.append(p))
    load_test_set(demo_dir, tmp_path / "cache")
    load_dataset(demo_dir, verified_cache=tmp_path / "cache")
    assert calls == []  # neither process's images are decoded again
