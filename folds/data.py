"""Read and validate Dacon-format CSVs (their images are decoded and checked in ``folds.images``).

Every problem a user can fix raises :class:`UserError` naming the file and row.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import pandas as pd

from common import UserError, layout
from folds.images import check_readable

log = logging.getLogger(__name__)

# The id and class columns as the code reads them: Dacon's painters' own names. A data folder may name them
# otherwise (many tasks say label): its sample_submission.csv's header gives its names (``Columns``).
ID, CLASS = "id", "artist"
TRAIN_COLUMNS = (ID, "img_path", CLASS)
TEST_COLUMNS = (ID, "img_path")
SUBMISSION_COLUMNS = (ID, CLASS)
MAX_LISTED = 5
# a data folder's files (Dacon layout)
TRAIN_CSV, TEST_CSV, SAMPLE_CSV, ANSWER_KEY = "train.csv", "test.csv", "sample_submission.csv", "test_labels.csv"


@dataclass(frozen=True)
class Columns:
    """A data folder's own names for the id and the class column, as its sample_submission.csv's header
    spells them (``id,artist`` for the painters; ``id,label`` or ``image_id,label`` elsewhere). train.csv,
    test.csv, test_labels.csv and a --corrections file use the same names; the submission is written with
    them. Inside, every frame is read with ``ID`` and ``CLASS``."""

    id: str = ID
    cls: str | None = CLASS  # None until found (``with_class_of``) where the sample has a column per class
    # a sample of one probability column per class (Kaggle's Dog Breed Identification): those columns, in its order
    probabilities: tuple = ()

    def spelled(self, columns) -> tuple:
        """``columns`` (the code's names) as this folder spells them."""
        return tuple({ID: self.id, CLASS: self.cls}.get(c, c) for c in columns)

    def with_class_of(self, path, columns=TRAIN_COLUMNS) -> Columns:
        """These names with the class column's found in the header of ``path``, a CSV of ``columns`` (the code's
        names), where the sample (a column per class) does not name it: its one column besides the others."""
        if self.cls is not None or CLASS not in columns:
            return self
        others = [c for c in columns if c not in (ID, CLASS)]  # img_path: spelled alike everywhere
        head = list(_read_frame(path, (self.id, *others, "<class>"), DATA_FILES, rows=0).columns)
        rest = [c for c in head if c not in (self.id, *others)]
        if self.id not in head or len(rest) != 1:
            raise UserError(f"{path}: the sample submission has a column per class, so the class column is found "
                            f"here: the header must be {','.join((self.id, *others))} and one class column; found "
                            f"{head}.")
        return Columns(self.id, rest[0], self.probabilities)


@dataclass
class Dataset:
    """The validated competition data: train rows, test rows and the label encoding."""

    data_dir: Path
    train: pd.DataFrame  # id, img_path, artist, path (absolute), label (int)
    test: pd.DataFrame  # id, img_path, path
    sample_submission: pd.DataFrame  # as written: the submission's template (its header and order)
    classes: list
    test_labels: pd.DataFrame | None = None
    columns: Columns = Columns()  # the folder's own names of the id and class columns

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def test_area_share(self) -> float | None:
        """The test images' median area over the train images' (``folds.scale_check``), read once: Dacon's
        crops have 0.25; whole test images about 1 (the warning, and how pseudo-labelled test images are cut)."""
        from folds.scale_check import share_of_train_area
        return share_of_train_area(self.train["path"], self.test["path"])

    def test_hash(self) -> str:
        """``images_hash`` of the test set: each fold keeps the one it predicted (its done.json)."""
        return images_hash(self.test)

    def data_hash(self) -> str:
        """Hash of train ids and labels: identical data gives identical splits."""
        h = hashlib.sha256()
        for i, a in zip(self.train["id"].astype(str), self.train["artist"].astype(str)):
            h.update(f"{i}\t{a}\n".encode())
        return h.hexdigest()[:16]


def images_hash(frame: pd.DataFrame) -> str:
    """Hash of a frame's ids, image paths and file sizes: a test set replaced under the same ids (a corrected
    release) changes it, a copy to another disk does not."""
    h = hashlib.sha256()
    for i, rel, p in zip(frame["id"].astype(str), frame["img_path"], frame["path"]):
        h.update(f"{i}\t{rel}\t{os.path.getsize(p)}\n".encode())
    return h.hexdigest()[:16]


def _rows(idx) -> str:
    """Data rows as the user sees them in an editor (header is line 1)."""
    idx = list(idx)
    shown = ", ".join(str(int(i) + 2) for i in idx[:MAX_LISTED])
    more = f" and {len(idx) - MAX_LISTED} more" if len(idx) > MAX_LISTED else ""
    return f"line {shown}{more}" if len(idx) == 1 else f"lines {shown}{more}"


DATA_FILES = f"{TRAIN_CSV}, {TEST_CSV}, {SAMPLE_CSV} and the image folders"
TEST_FILES = f"{TEST_CSV}, {SAMPLE_CSV} and the test images (no train data needed)"


def read_csv(path: Path, columns, expected: str = DATA_FILES, names: Columns = Columns()) -> pd.DataFrame:
    """Read a CSV as strings and check its columns, emptiness and duplicate ids (``expected``: the
    data folder's files a missing one belongs to). ``columns`` are the code's names; the file spells the
    id and class columns as ``names`` says, and the frame comes back with the code's names."""
    names = names.with_class_of(path, columns)  # a sample of a column per class leaves the class column to the file
    spelled = names.spelled(columns)
    df = _read_frame(path, spelled, expected)
    missing = [c for c in spelled if c not in df.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
                        f"The header must be {','.join(spelled)}.")
    return _checked(df[list(spelled)].set_axis(list(columns), axis=1), path, spelled)


def _read_frame(path, spelled, expected: str, rows: int | None = None) -> pd.DataFrame:
    """``path`` as strings (its header alone with ``rows=0``), or a UserError that names what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found. Expected Dacon layout: {expected} in --data-dir.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=rows)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; it needs a header {','.join(spelled)} and rows.") from None
    except UnicodeDecodeError:
        raise UserError(not_utf8_message(path)) from None
    except pd.errors.ParserError as e:
        raise UserError(f"{path}: cannot parse as CSV ({e}).") from None
    df.columns = [c.strip() for c in df.columns]
    return df


def _checked(df: pd.DataFrame, path, spelled, filled: int | None = None) -> pd.DataFrame:
    """Rows present, no empty cell in ``spelled`` (the file's names of ``df``'s columns; only in the first
    ``filled`` of them where given), unique ids."""
    if len(df) == 0:
        raise UserError(f"{path}: has a header but no rows.")
    for c, shown in list(zip(df.columns, spelled))[:filled]:
        blank = df.index[df[c].str.strip() == ""]
        if len(blank):
            raise UserError(f"{path}: empty '{shown}' at {_rows(blank)}.")
    first = df.columns[0]  # the id column
    dup = df.index[df[first].duplicated(keep=False)]
    if len(dup):
        ids = sorted(set(df.loc[dup, first]))[:MAX_LISTED]
        raise UserError(f"{path}: duplicate id(s) {ids} at {_rows(dup)}; ids must be unique.")
    return df


def read_sample(path, expected: str = DATA_FILES) -> tuple[pd.DataFrame, Columns]:
    """sample_submission.csv as it is written (the submission's template: its header and order), and the
    folder's ``Columns``, which its columns name: the id, then the class, or the id, then one probability
    column per class (the class column's name is then train.csv's, ``Columns.with_class_of``)."""
    df = _read_frame(path, SUBMISSION_COLUMNS, expected)
    head = list(df.columns)
    if len(head) < 2 or len(set(head)) != len(head) or "img_path" in head or any(c.startswith("Unnamed:") or not c
                                                                                for c in head):
        raise UserError(f"{path}: the header must name the id and the class (Dacon's painters: "
                        f"{','.join(SUBMISSION_COLUMNS)}; elsewhere often id,label), or the id and one probability "
                        f"column per class (id,<class 1>,<class 2>,...); found {head}.")
    # its class or probability columns are placeholders (often 0, or left empty): only the ids must be there
    per_class = probability_columns(df)
    names = Columns(head[0], None, tuple(per_class)) if per_class else Columns(*head)
    return _checked(df, path, head, filled=1), names


def probability_columns(sample: pd.DataFrame) -> list[str]:
    """The class columns of a sample submission of one probability column per class (after the id: more than
    one column), in its order; [] for a sample of ``id,class``."""
    head = list(sample.columns)
    return head[1:] if len(head) > 2 else []


def check_probability_columns(names: Columns, classes, sub_csv: Path, train_csv: Path) -> None:
    """A sample of a column per class names train.csv's classes, each once."""
    if not names.probabilities:
        return
    missing = sorted(set(classes) - set(names.probabilities))
    extra = sorted(set(names.probabilities) - set(classes))
    if missing or extra:
        raise UserError(f"{sub_csv}: its probability columns (one per class) must be {train_csv}'s {len(classes)} "
                        f"{names.cls} values; classes without a column {missing[:MAX_LISTED]}, columns that are no "
                        f"class {extra[:MAX_LISTED]}.")


def not_utf8_message(path: Path) -> str:
    """Where a CSV stops being UTF-8: a Korean Excel "CSV" is cp949, for example."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        where = ""
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        where = f" at line {line} (byte 0x{raw[e.start]:02x})"
    return (f"{path}: not UTF-8 text{where}. Save it as UTF-8 (Excel: 'CSV UTF-8'); a Korean Excel file "
            f"converts with `iconv -f cp949 -t utf-8 {path.name} > utf8.csv`.")


def resolve_paths(df: pd.DataFrame, data_dir: Path, csv_path: Path, check_images: bool = True) -> pd.Series:
    """Turn relative ``img_path`` values into absolute paths inside ``data_dir``.

    Absolute paths and paths that climb out with ``..`` are refused: a CSV must not
    make the tool read files outside the data folder.
    """
    root = data_dir.resolve()
    out, bad_abs, bad_escape, missing = [], [], [], []
    for i, rel in zip(df.index, df["img_path"]):
        if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
            bad_abs.append(i)
            out.append(None)
            continue
        # Checked lexically after normalising '..', not after resolve(): ./train/../train/x.jpg stays
        # inside, and a symlinked image (common on Kaggle) is read wherever it points, by design.
        p = Path(os.path.normpath(root / rel.replace("\\", "/")))
        if root not in p.parents:
            bad_escape.append(i)
        elif check_images and not p.is_file():
            missing.append(i)
        out.append(p)
    if bad_abs:
        raise UserError(f"{csv_path}: img_path must be relative to the CSV's folder (like ./train/0000.jpg); "
                        f"absolute path {df.loc[bad_abs[0], 'img_path']!r} at {_rows(bad_abs)}.")
    if bad_escape:
        raise UserError(f"{csv_path}: img_path {df.loc[bad_escape[0], 'img_path']!r} at {_rows(bad_escape)} "
                        f"leaves the data folder {root}; refusing it. Keep images under the data folder.")
    if missing:
        first = df.loc[missing[0], "img_path"]
        raise UserError(f"{csv_path}: image not found: {first!r} at {_rows(missing)} (looked in {root})"
                        f"{_near_miss(root, first, out[df.index.get_loc(missing[0])])}.")
    return pd.Series(out, index=df.index, dtype=object)


def _near_miss(root: Path, rel: str, path: Path) -> str:
    """Why a listed image may be missing, where the folder shows it: spaces around its name, a name of another
    case (a CSV made on Windows or macOS, whose file systems ignore case, read on Linux), a folder that is not
    there; '' where none is seen."""
    if rel.strip() != rel and Path(os.path.normpath(root / rel.strip().replace("\\", "/"))).is_file():
        return "; its img_path has spaces at its ends, and the file without them exists: strip them in the CSV"
    folder = path.parent
    if not folder.is_dir():
        here = sorted(e.name + ("/" if e.is_dir() else "") for e in root.iterdir())
        shown = ", ".join(here[:8]) + (f" and {len(here) - 8} more" if len(here) > 8 else "")
        return (f"; its folder {os.path.relpath(folder, root)!r} is not in the data folder, which holds: "
                f"{shown or 'nothing'}")
    other_case = next((e.name for e in folder.iterdir() if e.name.lower() == path.name.lower()), None)
    if other_case:
        return (f"; {other_case!r} is there, a name of another case (Windows and macOS ignore the case of file "
                "names, Linux does not): make the CSV's names match the files'")
    return ""


def read_option_csv(path, columns, option: str, what: str, names: Columns = Columns()) -> pd.DataFrame:
    """``read_csv`` of a file a command-line option names: a missing one is named with its option and
    what it holds, not as a missing part of the data folder."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: file not found. It is a CSV of {','.join(names.spelled(columns))}{what}.")
    return read_csv(path, columns, names=names)


def apply_corrections(train: pd.DataFrame, path: Path, names: Columns = Columns()) -> pd.DataFrame:
    """Override labels from a CSV with the sample submission's header (``id,artist``) and log each change."""
    fixes = read_option_csv(path, SUBMISSION_COLUMNS, "--corrections", " (train labels to override; Dacon's swapped "
                            "pair 3896 and 3986, say)", names)
    known = set(train["id"])
    unknown = fixes.index[~fixes["id"].isin(known)]
    if len(unknown):
        raise UserError(f"{path}: id {fixes.loc[unknown[0], 'id']!r} at {_rows(unknown)} is not in train.csv.")
    classes = set(train["artist"])
    new_cls = fixes.index[~fixes["artist"].isin(classes)]
    if len(new_cls):
        raise UserError(f"{path}: {names.cls} {fixes.loc[new_cls[0], 'artist']!r} at {_rows(new_cls)} "
                        "is not a class in train.csv; check the spelling.")
    train = train.copy()
    pos = {v: k for k, v in train["id"].items()}
    for fid, artist in zip(fixes["id"], fixes["artist"]):
        old = train.at[pos[fid], "artist"]
        if old != artist:
            log.info("correction: id %s: %r -> %r", fid, old, artist)
            train.at[pos[fid], "artist"] = artist
    return train


GROUP_COLUMNS = ("id", "group")


def read_groups(path, train_ids: pd.Series) -> list[str]:
    """Each train image's group from an ``id,group`` CSV (``--groups``), in train order; an image the file
    does not list is a group of its own."""
    groups = read_option_csv(path, GROUP_COLUMNS, "--groups", " (benchmarks/duplicates.py --groups-out writes one "
                             "for copies of one painting)")
    unknown = groups.index[~groups["id"].isin(set(train_ids))]
    if len(unknown):
        raise UserError(f"{path}: id {groups.loc[unknown[0], 'id']!r} at {_rows(unknown)} is not in train.csv.")
    named = dict(zip(groups["id"], "g:" + groups["group"]))  # apart from "i:<id>": a group named like an id
    return [named.get(i, f"i:{i}") for i in train_ids]


def check_class_names(train: pd.DataFrame, train_csv: Path, names: Columns = Columns()) -> None:
    """Refuse class names that would make a wrong run: two spellings of one artist (they differ only in
    spaces, as an edited spreadsheet leaves them) would be trained as two classes, and a name that is
    also a probability file's own column would overwrite that column. (Names that differ in case alone
    stay apart: 'a' and 'A' are two classes of a letters dataset.)"""
    artists = train["artist"]
    key = artists.str.strip().str.replace(r"\s+", " ", regex=True)
    counts = artists.value_counts()
    for _, alike in artists.groupby(key):
        spellings = alike.unique()
        if len(spellings) > 1:
            rare = sorted(spellings, key=lambda n: (-counts[n], n))[1:]
            where = alike.index[alike.isin(rare)]
            raise UserError(f"{train_csv}: the {names.cls} values {', '.join(repr(n) for n in spellings)} differ only "
                            f"in spaces, so they would be trained as {len(spellings)} classes ({rare[0]!r} at "
                            f"{_rows(where)}). Fix the spelling, or pass --corrections with {names.id},{names.cls} "
                            "rows.")
    reserved = train.index[artists.isin(layout.META_COLUMNS)]
    if len(reserved):
        columns = ", ".join(sorted(layout.META_COLUMNS))
        raise UserError(f"{train_csv}: the {names.cls} name(s) {sorted(set(artists[reserved]))} at {_rows(reserved)} "
                        f"are also column names of the run's probability files ({columns}). Rename them in "
                        "train.csv (and test_labels.csv), for example with a prefix.")


def check_sample(sub: pd.DataFrame, test: pd.DataFrame, sub_csv: Path, test_csv: Path) -> None:
    """The sample submission (as written: its first column is the id) lists test.csv's ids."""
    ids = sub.iloc[:, 0]
    if set(ids) != set(test["id"]) or len(sub) != len(test):
        extra = sorted(set(ids) - set(test["id"]))[:MAX_LISTED]
        lack = sorted(set(test["id"]) - set(ids))[:MAX_LISTED]
        raise UserError(f"{sub_csv}: ids do not match {test_csv}: only in the submission {extra}, "
                        f"only in test {lack}.")


def load_test_set(data_dir, verified_cache=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """test.csv (with absolute ``path``) and sample_submission.csv (as written) of a Dacon-layout folder,
    validated; no train data needed (an inference kernel's hidden test set)."""
    test, sub = read_test_set(data_dir)
    check_readable([(test, Path(data_dir) / TEST_CSV)], verified_cache)  # last: decoding every image is the slow part
    return test, sub


# how deep below --data-dir, and over how many folders, a misplaced data folder is looked for (a Kaggle input's
# /kaggle/input/<dataset>/<folder>, an archive unzipped into a folder of its own); the images' folders are not entered
SEARCH_DEPTH, SEARCH_FOLDERS = 3, 400


def check_data_folder(data_dir, files=(TRAIN_CSV, TEST_CSV, SAMPLE_CSV)) -> Path:
    """``data_dir`` as a folder that holds ``files``, checked before anything slower (the model's weights, the
    images): a UserError that names every missing file at once and, where they are in a folder below it, or in
    an archive not yet unpacked, that folder or archive."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: not a folder. Point it at the folder holding {files[0]}.")
    missing = [f for f in files if not (data_dir / f).is_file()]
    if not missing:
        return data_dir
    hint = ""
    found = folders_holding(data_dir, files)
    archives = sorted(p.name for p in data_dir.iterdir() if p.suffix.lower() in (".zip", ".tar", ".gz", ".tgz"))
    if found:
        hint = (f" They are in {', '.join(str(f) for f in found[:MAX_LISTED])}: point --data-dir there"
                f"{' (one of them)' if len(found) > 1 else ''}.")
    elif archives:
        hint = f" Unpack {', '.join(archives[:MAX_LISTED])} here first (Dacon's data comes as open.zip)."
    expected = DATA_FILES if TRAIN_CSV in files else TEST_FILES
    raise UserError(f"--data-dir {data_dir}: {', '.join(missing)} not found. Expected Dacon layout: {expected} in "
                    f"--data-dir.{hint}")


def folders_holding(top: Path, files) -> list[Path]:
    """Folders below ``top`` (to ``SEARCH_DEPTH``, at most ``SEARCH_FOLDERS`` of them) that hold every one of
    ``files``; hidden folders, and those a data folder's CSVs sit beside (its image folders), are not entered."""
    found, queue, seen = [], [(top, 0)], 0
    while queue and seen < SEARCH_FOLDERS:
        folder, depth = queue.pop(0)
        seen += 1
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        names = {e.name for e in entries if e.is_file()}
        if folder != top and all(f in names for f in files):
            found.append(folder)
            continue  # its train/ and test/ hold images
        if depth < SEARCH_DEPTH:
            queue += [(Path(e.path), depth + 1) for e in sorted(entries, key=lambda e: e.name)
                      if not e.name.startswith(".") and e.is_dir()]
    return found


def read_test_set(data_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``load_test_set`` without decoding the images: the CSVs checked, every image there."""
    data_dir = check_data_folder(data_dir, (TEST_CSV, SAMPLE_CSV))
    test_csv, sub_csv = data_dir / TEST_CSV, data_dir / SAMPLE_CSV
    sub, names = read_sample(sub_csv, TEST_FILES)
    test = read_csv(test_csv, TEST_COLUMNS, TEST_FILES, names)
    test["path"] = resolve_paths(test, data_dir, test_csv)
    check_sample(sub, test, sub_csv, test_csv)
    return test.reset_index(drop=True), sub


def load_dataset(data_dir, corrections=None, check_images: bool = True, verified_cache=None) -> Dataset:
    """Read train.csv, test.csv and sample_submission.csv from ``data_dir`` and validate them.

    >>> ds = load_dataset("../shared/data/wikiart50")  # doctest: +SKIP
    >>> ds.num_classes, len(ds.train), len(ds.test)    # doctest: +SKIP
    (50, 5912, 12670)
    """
    data_dir = check_data_folder(data_dir)
    train_csv, test_csv, sub_csv = data_dir / TRAIN_CSV, data_dir / TEST_CSV, data_dir / SAMPLE_CSV
    sub, names = read_sample(sub_csv)  # its header names the id and class columns of every CSV here
    names = names.with_class_of(train_csv)  # the class column's name, for the messages and the Dataset
    train = read_csv(train_csv, TRAIN_COLUMNS, names=names)
    test = read_csv(test_csv, TEST_COLUMNS, names=names)
    if corrections:
        train = apply_corrections(train, Path(corrections), names)
    train["path"] = resolve_paths(train, data_dir, train_csv, check_images)
    test["path"] = resolve_paths(test, data_dir, test_csv, check_images)
    classes = sorted(train["artist"].unique())
    if len(classes) < 2:
        raise UserError(f"{train_csv}: every row has the {names.cls} {classes[0]!r}; a classifier needs at least 2 "
                        f"classes. Check the {names.cls} column.")
    check_class_names(train, train_csv, names)
    check_probability_columns(names, classes, sub_csv, train_csv)
    check_sample(sub, test, sub_csv, test_csv)
    train["label"] = train["artist"].map({c: i for i, c in enumerate(classes)}).astype(int)
    labels = None
    labels_csv = data_dir / ANSWER_KEY
    if labels_csv.is_file():
        labels = read_csv(labels_csv, SUBMISSION_COLUMNS, names=names)
        unknown = labels.index[~labels["artist"].isin(classes)]
        if len(unknown):
            raise UserError(f"{labels_csv}: {names.cls} {labels.loc[unknown[0], 'artist']!r} at {_rows(unknown)} "
                            f"is not among the {len(classes)} train classes: the test class set does not match "
                            "train.csv. Fix the labels or the train data.")
        if set(labels["id"]) != set(test["id"]):
            raise UserError(f"{labels_csv}: ids do not match {test_csv}.")
    if check_images:  # last: decoding every image is the slow part (5.9 s for WikiArt-50 on 2 cores, more at 1000 px)
        check_readable([(train, train_csv), (test, test_csv)], verified_cache)
    return Dataset(data_dir, train.reset_index(drop=True), test.reset_index(drop=True), sub, classes, labels, names)
