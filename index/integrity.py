"""Checksums of a generation's files, recorded in the manifest when the generation is written
and checked when a folder is opened: a flipped byte in `items-0.jsonl` or a NaN written into
`vectors-0.npy` is refused with one line instead of served. Opening a huge folder reads every
byte once (docs/RELIABILITY.md has the cost); `verify=False` (MOCO_VERIFY_INDEX=false) skips it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import IndexFolderError, UnstorableVectors

CHUNK = 16 << 20
ROWS = 65536
_verified: set[tuple[str, str, str]] = set()  # (folder, generation, checksums): no reread


def crc32_of(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            crc = zlib.crc32(block, crc)
    return f"crc32:{crc:08x}"


def generation_files(manifest: dict[str, Any]) -> list[str]:
    """The files a generation is made of (its log grows after it, so it has no checksum)."""
    files = [manifest["vectors"], manifest["items"]]
    if manifest.get("columns"):
        files.append(manifest["columns"])
    if manifest.get("ann"):
        files.append(manifest["ann"]["file"])
    return files


def checksums(
    directory: Path, manifest: dict[str, Any], known: dict[str, str] | None = None
) -> dict[str, str]:
    """Per generation file, its checksum: `known` ones (computed as they were written) as given."""
    known = known or {}
    return {
        name: known.get(name) or crc32_of(directory / name) for name in generation_files(manifest)
    }


def nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """The rows of [n, d] `x` holding NaN or inf: no search can find them."""
    return np.flatnonzero(~np.isfinite(x).all(axis=1))


def verify_generation(directory: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest checksums matches, and every stored vector is finite."""
    for name, expected in (manifest.get("checksums") or {}).items():
        path = directory / name
        if not path.is_file():
            raise IndexFolderError(f"index {directory}: {name} is missing")
        got = crc32_of(path)
        if got != expected:
            raise IndexFolderError(
                f"index {directory}: {name} fails its checksum ({got}, manifest.json says "
                f"{expected}): the file was changed or damaged; restore it or rebuild the index"
            )
    vectors = np.load(directory / manifest["vectors"], mmap_mode="r")
    for start in range(0, len(vectors), ROWS):
        block = np.asarray(vectors[start : start + ROWS])
        bad = nonfinite_rows(block)
        if len(bad):
            raise IndexFolderError(
                f"index {directory}: {manifest['vectors']} row {start + int(bad[0])} holds NaN "
                "or inf: no search could find that item; rebuild the index"
            )


def verify_once(directory: Path, manifest: dict[str, Any]) -> None:
    """verify_generation, once per generation per process (read replicas reopen often)."""
    checked = (manifest.get("checksums") or {}).items()
    key = (str(Path(directory).resolve()), manifest["vectors"], repr(sorted(checked)))
    if key not in _verified:
        verify_generation(directory, manifest)
        _verified.add(key)


def check_storable(ids: list[str], vectors: np.ndarray, dtype: str, smallest_dim: int) -> None:
    """Refuse an add the generation file cannot hold: compaction would write NaN/inf (refused
    at every later start) or a smallest-dim prefix rounded to zeros (found by no search)."""
    x = np.asarray(vectors, np.float32)
    bad = nonfinite_rows(x)
    if len(bad):
        raise UnstorableVectors(f"item {ids[bad[0]]!r}: its vector holds NaN or inf")
    with np.errstate(over="ignore", under="ignore"):
        cast = x.astype(dtype)
    fix = "scale the vector (only its direction is searched) or use --store-dtype float32"
    bad = nonfinite_rows(cast)
    if len(bad):
        raise UnstorableVectors(
            f"item {ids[bad[0]]!r}: this index stores {dtype} and the vector holds values "
            f"beyond its range (+-{float(np.finfo(dtype).max):,.0f}); {fix}"
        )
    head = slice(0, smallest_dim)
    bad = np.flatnonzero(~cast[:, head].any(axis=1) & x[:, head].any(axis=1))
    if len(bad):
        raise UnstorableVectors(
            f"item {ids[bad[0]]!r}: this index stores {dtype} and the vector's first "
            f"{smallest_dim} values round to zero in it: no search could find it; {fix}"
        )
