"""Decode images as the loader will, and check before training that every one of them decodes.

Every problem a user can fix raises :class:`UserError` naming the file (and, for the check, its CSV line).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from common import UserError
from common.machine import usable_cores

log = logging.getLogger(__name__)

MAX_BAD_SHOWN = 20


def set_max_image_pixels(limit: int | None) -> None:
    """PIL's decompression-bomb limit: None keeps PIL's default, 0 turns it off."""
    if limit is not None:
        Image.MAX_IMAGE_PIXELS = int(limit) or None


def check_limit(limit: int | None) -> None:
    """``--max-image-pixels``, of whichever command takes it: 0 or more."""
    if limit is not None and limit < 0:
        raise UserError(f"--max-image-pixels must be 0 (no limit) or more, but got {limit}.")


def loosest_limit(limits) -> int | None:
    """The decompression-bomb limit that admits what each of several runs admitted (their saved
    ``max_image_pixels``): 0 (off) where any run had it off, else the largest; None: PIL's default.
    A build or a prediction reads the images the runs read, so it replays their limit."""
    given = [int(v) for v in limits if v is not None]
    return None if not given else 0 if 0 in given else max(given)


def _verify_key(path: Path) -> str:
    st = os.stat(path)
    return hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _decode_error(path) -> str | None:
    """None when the image decodes exactly as the loader will decode it; else the reason."""
    try:
        read_rgb(path)
        return None
    except UserError as e:
        return str(e).removeprefix(f"{path}: ")


def check_readable(frames: list[tuple[pd.DataFrame, Path]], cache_dir: Path | None = None,
                   workers: int | None = None) -> None:
    """Decode every image fully, in parallel threads, so a corrupt or truncated file fails now.

    Reading only the header misses a truncated JPEG, which then breaks a DataLoader worker
    mid-fold. Images that decoded before (same path, size and mtime) are remembered in
    ``cache_dir/verified.txt``, so a second run does not pay again. All bad files of all CSVs
    are reported at once, each with its CSV line.
    """
    from concurrent.futures import ThreadPoolExecutor

    store = Path(cache_dir) / "verified.txt" if cache_dir else None
    known = set(store.read_text().split()) if store is not None and store.is_file() else set()
    todo = []  # (csv, row index, img_path, path, key)
    for df, csv_path in frames:
        for i, rel, p in zip(df.index, df["img_path"], df["path"]):
            key = _verify_key(p)
            if key not in known:
                todo.append((csv_path, i, rel, p, key))
    if not todo:
        return
    n_threads = workers or min(16, usable_cores())
    with ThreadPoolExecutor(n_threads) as ex:  # PIL releases the GIL while it decodes
        errors = list(ex.map(_decode_error, [t[3] for t in todo]))
    good = {t[4] for t, err in zip(todo, errors) if err is None}
    if store is not None and good:
        try:
            remember(store, good)
        except OSError as e:  # a read-only cache only costs the next run time
            log.warning("could not record verified images in %s (%s)", store, e)
    bad = [(t, err) for t, err in zip(todo, errors) if err is not None]
    if bad:
        lines = [f"  {t[0]} line {int(t[1]) + 2}: {t[2]!r}: {err}" for t, err in bad[:MAX_BAD_SHOWN]]
        more = f"\n  ... and {len(bad) - MAX_BAD_SHOWN} more" if len(bad) > MAX_BAD_SHOWN else ""
        raise UserError(f"{len(bad)} image(s) cannot be decoded; replace or remove them (nothing was trained):\n"
                        + "\n".join(lines) + more)


def remember(store: Path, keys) -> None:
    """Add ``keys`` to the record of decoded images by appending them in one write. A record rewritten whole
    would lose what another process (a fold process, another machine's run on a shared runs folder) added
    after this one read it; appended lines are never lost, and a line cut short by a kill only fails to match
    (that image is checked again)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the user's umask applies
    try:
        os.write(fd, ("\n".join(sorted(keys)) + "\n").encode())
    finally:
        os.close(fd)


def read_rgb(path, max_side: int | None = None) -> np.ndarray:
    """Decode any image mode (L, P, CMYK, RGBA, I;16 ...) to an HxWx3 uint8 RGB array.

    ``max_side`` lets JPEG decode at reduced scale (``draft``), far cheaper for huge paintings.
    """
    try:
        with Image.open(path) as im:
            if max_side and im.format == "JPEG":
                im.draft("RGB", (max_side, max_side))
            im = to_rgb(im)
            return np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: {e} If the image is genuine, raise the limit with --max-image-pixels N "
                        "(0: no limit).") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: cannot decode image ({type(e).__name__}: {e}).") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert to RGB; transparent pixels become white, as a painting's canvas would be."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() or 1.0
        im = Image.fromarray((arr / hi * 255).astype(np.uint8), "L")
    return im.convert("RGB")
