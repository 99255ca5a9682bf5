"""Pack a data folder into tar parts that fit the device tool's 64 MiB a call, the first one
sharing its call with the wheels (.whl/). Symlinks (benchmarks/subset.py makes them) are packed
as the files they point to.

    python benchmarks/subset.py ../shared/data/wikiart50 /tmp/w50 --classes 0 --per-class 0 --test 0 --test-every 5
    python benchmarks/pack.py /tmp/w50 .carry/w50       # -> .carry/w50.part1.tar, part2, ... and the calls
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from pathlib import Path

MIB = 1024 * 1024


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def repo_bytes(root: Path) -> int:
    """What travels with every call besides carried paths: the tracked and untracked, not ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file())


def split(files: list[tuple[str, int]], first: int, rest: int) -> list[list[str]]:
    """Consecutive groups of files: the first group holds at most ``first`` bytes, the others ``rest``."""
    parts, cur, size, cap = [], [], 0, first
    for name, n in files:
        if cur and size + n > cap:
            parts.append(cur)
            cur, size, cap = [], 0, rest
        cur.append(name)
        size += n
    return parts + [cur] if cur else parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="the data folder (its symlinks are followed)")
    p.add_argument("prefix", help="write PREFIX.partK.tar (keep it in a git-ignored folder such as .carry/)")
    p.add_argument("--limit-mib", type=float, default=64, help="what one call may carry (default: 64)")
    p.add_argument("--margin-mib", type=float, default=1.5, help="room left in each call (default: 1.5)")
    p.add_argument("--wheels", default=".whl", help="the wheel folder the first call also carries (default: .whl)")
    a = p.parse_args(argv)
    src, root = Path(a.src), Path(__file__).resolve().parents[1]
    if not src.is_dir():
        print(f"error: {src}: not a folder.", file=sys.stderr)
        return 2
    # a file's room in a tar: a 512-byte header and its data padded to 512 bytes
    files = sorted((str(f.relative_to(src)), 512 + -(-f.stat().st_size // 512) * 512)
                   for f in src.rglob("*") if f.is_file())
    # the CSVs first (part 1 then names every image), then the train images: part 1 alone holds
    # the first rows of train.csv, enough for a speed benchmark while part 2 is on its way
    files.sort(key=lambda f: (not f[0].endswith(".csv"), not f[0].startswith("train"), f[0]))
    base = repo_bytes(root) + a.margin_mib * MIB + 10240  # the tar's end blocks
    rest = int(a.limit_mib * MIB - base)
    first = int(rest - tree_bytes(root / a.wheels))
    if first <= 0 or max(n for _, n in files) > rest:
        print(f"error: the wheels or a file leave no room under {a.limit_mib} MiB a call.", file=sys.stderr)
        return 2
    prefix = Path(a.prefix).resolve()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    if prefix.is_relative_to(root) and (root / ".git").is_dir():  # keep the parts out of every call's tree
        top = "/" + prefix.relative_to(root).parts[0] + "/"
        exclude = root / ".git" / "info" / "exclude"
        if top not in (exclude.read_text().split() if exclude.is_file() else []):
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with open(exclude, "a") as f:
                f.write(top + "\n")
    for old in prefix.parent.glob(prefix.name + ".part*.tar"):
        old.unlink()
    parts = split(files, first, rest)
    for k, names in enumerate(parts, 1):
        # GNU format: PAX would add an extended header to every file (float mtimes), 1 KiB each
        with tarfile.open(f"{prefix}.part{k}.tar", "w", dereference=True, format=tarfile.GNU_FORMAT) as tar:
            for name in names:
                tar.add(src / name, arcname=name)
        size = Path(f"{prefix}.part{k}.tar").stat().st_size / MIB
        print(f"{Path(a.prefix)}.part{k}.tar: {len(names)} files, {size:.1f} MiB"
              + (f" (+ {a.wheels}/ in the same call)" if k == 1 else ""))
    print(f"{len(parts)} calls, back to back; each unpacks its part with `mkdir -p /tmp/DATA && tar -xf "
          f"{Path(a.prefix)}.partK.tar -C /tmp/DATA` (benchmarks/RESULTS.md has the calls).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
