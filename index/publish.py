"""Publishing a built index folder: generation 0 (vectors, items, optional ANN), extra files and
dims.json are written beside the target, then swapped in, so servers never see half a folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import UsageError
from index.dims import write_dims_report
from index.folder import publish_manifest
from index.store import IndexStore, read_manifest, write_generation
from index.thumbnails import Thumbnails


@dataclass(frozen=True)
class SearchBuild:
    """How the folder is searched: stored dtype, optional ANN, the eval behind /v1/dims."""

    store_dtype: str = "float32"
    shortlist_dim: int | None = None
    index_factory: str = "HNSW32"
    train_size: int = 100_000
    eval_json: Path | None = None


def publish_index(
    out: Path,
    width: int,
    count: int,
    vector_chunks: Iterable[np.ndarray],
    items: Iterable[dict[str, Any]],
    info: dict[str, Any],
    search: SearchBuild,
    nesting_list: Iterable[int],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write generation 0 (vectors, ANN), `extra` files and dims.json beside `out`, then
    swap the folder in."""
    if search.shortlist_dim is not None and search.shortlist_dim not in nesting_list:
        dims = ", ".join(map(str, nesting_list))
        raise UsageError(f"--shortlist-dim {search.shortlist_dim} is not a nesting dim ({dims})")
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {**info, "store_dtype": search.store_dtype}
    if search.shortlist_dim is not None:
        info["ann"] = {
            "factory": search.index_factory,
            "dim": search.shortlist_dim,
            "train_size": search.train_size,
        }
    try:
        write_generation(tmp, 0, width, count, vector_chunks, items, info)
    except ValueError as e:  # a factory FAISS cannot build, named with examples
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(str(e)) from None
    if extra is not None:
        extra(tmp)
    count_thumbnails(tmp)
    calibrate_folder(tmp)
    write_dims_report(tmp, list(nesting_list), search.eval_json)
    _publish(tmp, out)


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place (the old one, if any, is removed after)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def calibrate_folder(folder: Path) -> None:
    """The folder's recall table (index.calibration), measured on the built generation."""
    store = IndexStore(folder, read_manifest(folder), writable=False)
    try:
        store.recalibrate()
    finally:
        store.close()


def count_thumbnails(folder: Path) -> None:
    """Record in the manifest how many thumbnail records the log must hold from now on."""
    thumbs = Thumbnails(folder, writable=False)
    records = thumbs.records
    thumbs.close()
    publish_manifest(folder, {**read_manifest(folder), "thumbnail_records": records})
