"""Item identity: one id per image, the same for training, evaluation and the index.

A local image folder names each image by its path relative to the folder ("cat/img_001.jpg"),
which survives rebuilds, re-splits and new files; the id is that path made a safe item id
("cat:img_001.jpg"). Other datasets (shapes, hub ids, `save_to_disk` folders) have no file
names: their items are "<part>-<row>", the row counted in the trainer's own part (the list
trainer.data.datasets.load_splits returns), so "train-17" is the trainer's 18th image.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import datasets

# What server.schemas.ItemId accepts: letters, digits and . _ : @ -, at most 128 characters.
SAFE = re.compile(r"[^A-Za-z0-9._:@-]")
MAX_ID = 128
HASH_CHARS = 10


def path_id(relative: str) -> str:
    """The item id of a folder-relative path: "/" becomes ":"; a path that needs other
    changes (spaces, accents, over 128 characters) keeps a hash of itself so ids stay unique."""
    plain = relative.replace("/", ":")
    safe = SAFE.sub("_", plain)
    if safe == plain and len(safe) <= MAX_ID and safe.strip(".") and not safe.startswith(".."):
        return safe
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:HASH_CHARS]
    head = safe.lstrip(".")[: MAX_ID - HASH_CHARS - 1]
    return f"{head}@{digest}"


def file_paths(ds: datasets.Dataset, image_column: str, root: Path) -> list[str | None]:
    """Each row's file path relative to `root` (POSIX), None where the image has no file there.

    The column is read undecoded (`{"path", "bytes"}`), so no image is opened.
    """
    raw = ds.select_columns([image_column]).cast_column(image_column, datasets.Image(decode=False))
    base = os.path.realpath(root)
    out: list[str | None] = []
    for cell in raw[image_column]:
        path = cell.get("path") if isinstance(cell, dict) else None
        rel = os.path.relpath(os.path.realpath(path), base) if path else None
        inside = rel is not None and not rel.startswith("..") and not os.path.isabs(rel)
        out.append(PurePosixPath(*Path(rel).parts).as_posix() if inside else None)
    return out


def item_records(
    part: str,
    labels: list[int],
    class_names: list[str] | None,
    paths: list[str | None] | None,
) -> list[dict[str, Any]]:
    """Index items for one part of the trainer's split: id, label, {"class", "path"}."""
    records = []
    for i, label in enumerate(labels):
        path = paths[i] if paths is not None else None
        metadata: dict[str, Any] = {}
        if class_names:
            metadata["class"] = class_names[label]
        if path is not None:
            metadata["path"] = path
        records.append(
            {
                "id": path_id(path) if path is not None else f"{part}-{i}",
                "label": int(label),
                "metadata": metadata or None,
            }
        )
    return records
