"""`python -m index.verify FOLDER`: check an index folder offline, as a server would on start.

The manifest, every generation file against its checksum, the vectors' finiteness, the
write-ahead log against the manifest's count, and every thumbnail against its checksum. One
line per folder: `ok` with what was checked, or what is wrong (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from core.cli import UsageError, make_parser, run_cli
from index.errors import IndexFolderError
from index.folder import readable
from index.integrity import verify_generation
from index.store import IndexStore, read_manifest

PROG = "python -m index.verify"


def verify_folder(folder: Path) -> str:
    """What was checked, or an IndexFolderError naming the first problem: the folder is
    loaded as a server loads it (items, log, thumbnail log), after every checksum."""
    start = time.perf_counter()
    manifest = read_manifest(folder)
    with readable(folder):
        verify_generation(folder, manifest)
        store = IndexStore(folder, manifest, writable=False)
    try:
        thumbs = store.thumbnails
        damaged = thumbs.damaged()
    finally:
        store.close()
    if damaged:
        raise IndexFolderError(
            f"{folder}: {len(damaged)} thumbnails fail their checksum (first: {damaged[0]!r})"
        )
    checked = "checksummed" if manifest.get("checksums") else "no checksums (an older folder)"
    return (
        f"{folder}: ok (generation {manifest.get('generation')}, {manifest.get('count')} rows + "
        f"{store.ops_since_compaction} logged edits, {len(thumbs.where)} thumbnails; {checked}; "
        f"{time.perf_counter() - start:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Check an index folder offline.")
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER")
    ns: argparse.Namespace = parser.parse_args(argv)
    failed = 0
    for folder in ns.folders:
        try:
            print(verify_folder(folder))
        except IndexFolderError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            failed += 1
    if failed:
        raise UsageError(f"{failed} of {len(ns.folders)} folders failed the check")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
