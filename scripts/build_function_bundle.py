#!/usr/bin/env python3
"""Build the Cloud Run functions source bundle: one zip that every function deploys,
each with its own ``--entry-point`` (docs/architecture.md, "GCP packaging").

The zip holds ``main.py`` and ``api.py`` at its root (functions/: Cloud Run functions
load ``main.py`` from the source root unless the build's ``GOOGLE_FUNCTION_SOURCE``
names another file, as the ``api`` function's does), the ``shared`` package, and ``requirements.txt``
(functions/requirements.lock: exact versions with hashes, installed by the
functions' build). Nothing else: no tests, bench, docs or byte code.

It is reproducible: entries sorted, every timestamp 1980-01-01, fixed permissions, and
stored uncompressed (deflate's bytes depend on the zlib build, zlib-ng or not), so
one commit gives the same bytes and the same sha256 on any machine, which names the
object in the bucket (``functions-<sha256>.zip``).

    python scripts/build_function_bundle.py --out-dir build      # prints the zip's path
    python scripts/build_function_bundle.py --out build/f.zip    # a fixed name
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "shared"
# the earliest time a zip entry can carry (DOS dates start in 1980)
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
# functions/ modules shipped at the bundle's root: main.py (Cloud Run functions' default
# source file) and api.py (the ASGI api, deployed with GOOGLE_FUNCTION_SOURCE=api.py)
ENTRY_MODULES = ("main.py", "api.py")
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def bundle_files(repo: Path = REPO) -> dict[str, Path]:
    """Archive name -> file, for everything the bundle holds."""
    files = {name: repo / "functions" / name for name in ENTRY_MODULES}
    files["requirements.txt"] = repo / "functions" / "requirements.lock"
    for path in sorted((repo / PACKAGE).rglob("*")):
        rel = path.relative_to(repo)
        if path.is_dir() or SKIPPED_DIRS & set(rel.parts) or path.suffix in SKIPPED_SUFFIXES:
            continue
        files[rel.as_posix()] = path
    for name, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"bundle entry {name}: {path} is missing")
    return files


def write_bundle(out: Path, repo: Path = REPO) -> str:
    """Write the zip to ``out``; returns its sha256 (hex)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, path in sorted(bundle_files(repo).items()):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, so external_attr's mode is read as one
            info.external_attr = (0o100644 << 16)  # a regular file, rw-r--r--, whatever the checkout's mode
            zf.writestr(info, path.read_bytes())
    tmp.replace(out)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write the zip to this path")
    where.add_argument("--out-dir", type=Path, help="write functions-<sha256>.zip into this directory")
    args = parser.parse_args(argv)
    if args.out:
        digest = write_bundle(args.out)
        path = args.out
    else:
        staging = args.out_dir / "functions.zip"
        digest = write_bundle(staging)
        path = args.out_dir / f"functions-{digest}.zip"
        staging.replace(path)
    print(path)
    print(f"sha256 {digest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
