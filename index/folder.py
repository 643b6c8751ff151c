"""Start-up rules for an index folder: what may be created, what the log must hold, what is stale.

The manifest is the commit point. It names the current generation's files and counts the
records the write-ahead log must hold (`wal_records`, rewritten after every acknowledged
mutation), so a deleted or shortened log is refused instead of silently dropping writes.
A folder is never overwritten: index files without a manifest are refused, not replaced.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.atomic import atomic_write
from index.errors import IndexFolderError

log = logging.getLogger("index.folder")

# Per-generation files (vectors-3.npy, items-3.jsonl, wal-3.jsonl, ann-3.faiss) and the
# temp files an interrupted atomic write leaves (.manifest.json.x8f2.tmp).
GENERATION_FILE = re.compile(r"^[a-z]+-\d+\.[a-z0-9]+$")
TEMP_FILE = re.compile(r"^\..+\.tmp$")


def publish_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(directory / "manifest.json", lambda f: f.write(text))


@contextmanager
def readable(directory: Path) -> Iterator[None]:
    """A file of the folder that is missing, cut short or not what the manifest says, met by
    a loader, as one IndexFolderError naming the folder instead of a traceback."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise IndexFolderError(
            f"index {directory} cannot be read ({type(e).__name__}: {e}); restore it or "
            "rebuild the index"
        ) from None


def refuse_orphans(directory: Path) -> None:
    """Index files without manifest.json: refuse to start rather than write over them."""
    if not directory.is_dir():
        return
    found = sorted(p.name for p in directory.iterdir() if GENERATION_FILE.match(p.name))
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise IndexFolderError(
            f"{directory} holds index files ({shown}) but no manifest.json; refusing to start "
            "rather than overwrite them. Restore manifest.json from a backup, or move the "
            "files away to start a new index there"
        )


def check_log(path: Path, records: int, manifest: dict[str, Any]) -> None:
    """The log must hold at least the records the manifest counts as acknowledged."""
    expected = int(manifest.get("wal_records", 0))  # absent in folders written before it
    if records >= expected:
        return
    state = "is missing" if not path.exists() else f"holds {records} intact records"
    raise IndexFolderError(
        f"write-ahead log {path} {state} but manifest.json counts {expected} acknowledged "
        f"mutations since generation {manifest.get('generation')}: acknowledged writes would "
        'be lost. Restore the log from a backup; to serve without them, set "wal_records" '
        f"in manifest.json to {records}"
    )


def referenced(manifest: dict[str, Any]) -> set[str]:
    """Every file name the manifest mentions, at any depth."""
    names: set[str] = set()
    stack: list[Any] = [manifest]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            names.add(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return names


def remove_stale(directory: Path, manifest: dict[str, Any]) -> list[str]:
    """Delete generation files and temp files the manifest does not name (writer only)."""
    keep = referenced(manifest)
    stale = sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and p.name not in keep
        and (GENERATION_FILE.match(p.name) or TEMP_FILE.match(p.name))
    )
    if stale:
        size = sum(p.stat().st_size for p in stale)
        log.warning(
            "removing %d stale files (%d bytes) from %s that manifest.json does not name: %s",
            len(stale),
            size,
            directory,
            ", ".join(p.name for p in stale[:10]),
        )
        for p in stale:
            p.unlink(missing_ok=True)
    return [p.name for p in stale]
