"""Every value option of an entry point given -1, 0, 'abc' and an empty value, each in a fresh process: a bad
value must be refused with its option's name (exit 2) or run, never end in a traceback.

Examples:
    python benchmarks/option_fuzz.py folds/run.py -- --data-dir runs/demo-data --preset demo --img-size 32 \
        --epochs 1 --num-workers 0 --dry-run
    python benchmarks/option_fuzz.py ensemble/build.py -- runs/demo --out /tmp/f.csv --no-report
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VALUES = ("-1", "0", "abc", "")


def entry_point(script: str) -> Path:
    """``script`` as a path inside this project: as given (absolute, or from the current folder), else from the
    project's root, so the fuzz can run from a scratch folder."""
    given = Path(script)
    path = (given if given.exists() else ROOT / given).resolve()
    if not path.is_file() or not path.is_relative_to(ROOT):
        raise SystemExit(f"option_fuzz.py: {script} is not an entry point of this project ({ROOT})")
    return path


def value_options(script: str) -> list[str]:
    """The options of ``script``'s parser that take a value (its ``build_parser``)."""
    module = ".".join(entry_point(script).relative_to(ROOT).with_suffix("").parts)
    parser = importlib.import_module(module).build_parser()
    return [a.option_strings[-1] for a in parser._actions if a.option_strings and a.nargs != 0]


def with_option(base: list[str], option: str, value: str) -> list[str]:
    """``base`` with ``option value`` in place of its own value for ``option``, if it gives one."""
    argv = list(base)
    if option in argv:
        i = argv.index(option)
        del argv[i:i + 2]
    return [*argv, option, value]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="an entry point with a build_parser(), e.g. folds/run.py")
    p.add_argument("base", nargs=argparse.REMAINDER, help="after --: the options every call starts from")
    p.add_argument("--timeout", type=float, default=120, help="seconds a call may take")
    args = p.parse_args(argv)
    base = args.base[1:] if args.base[:1] == ["--"] else args.base
    tracebacks, script, options = 0, str(entry_point(args.script)), value_options(args.script)
    for option in options:
        for value in VALUES:
            try:
                done = subprocess.run([sys.executable, script, *with_option(base, option, value)],
                                      capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"timeout: {option} {value!r}", flush=True)
                continue
            if "Traceback" in done.stdout + done.stderr:
                tracebacks += 1
                last = (done.stdout + done.stderr).strip().splitlines()[-1]
                print(f"TRACEBACK: {option} {value!r}: {last[:200]}", flush=True)
    print(f"{args.script}: {len(options)} options x {len(VALUES)} values, {tracebacks} tracebacks")
    return 1 if tracebacks else 0


if __name__ == "__main__":
    sys.exit(main())
