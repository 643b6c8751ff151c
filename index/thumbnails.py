"""Item thumbnails: small WebP images in one append-only blob, located by a checksummed log.

  thumbnails.bin     the encoded images back to back (read with pread, never loaded whole)
  thumbnails.jsonl   index.wal records {"ids", "offsets", "lengths"}, one per batch

Thumbnails are keyed by item id and live beside the generations (compaction leaves them
alone). Bytes are fsync'ed before the record that points at them, and the record before the
add that uses them is logged, so an acknowledged item always has its thumbnail; a crash in
between only leaves unreferenced bytes. A re-added id's newer record wins.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageOps

from index.wal import WriteAheadLog, read_records

BLOB = "thumbnails.bin"
LOG = "thumbnails.jsonl"
SIZE = 96
QUALITY = 80
MEDIA_TYPE = "image/webp"


def make_thumbnail(image: Image.Image, size: int = SIZE) -> bytes:
    """WebP no larger than `size` px on its longest side (smaller images keep their size)."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=QUALITY, method=6)
    return buf.getvalue()


class Thumbnails:
    """Id -> thumbnail bytes for one index folder; `writable` allows adding more."""

    def __init__(self, directory: Path, writable: bool):
        self.directory = Path(directory)
        self.writable = writable
        self.where: dict[str, tuple[int, int]] = {}
        records, self._valid = read_records(self.directory / LOG)
        for record in records:
            self._apply(record)
        self._log: WriteAheadLog | None = None
        self._fd: int | None = None
        if (self.directory / BLOB).exists():
            self._open()

    def _open(self) -> None:
        """The blob (and, for a writer, the log: cutting a torn tail); files made on first add."""
        if self.writable:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
            self._fd = os.open(self.directory / BLOB, flags, 0o644)
            self._log = WriteAheadLog(self.directory / LOG, self._valid)
        else:
            self._fd = os.open(self.directory / BLOB, os.O_RDONLY)

    def _apply(self, record: dict) -> None:
        for item_id, offset, length in zip(
            record["ids"], record["offsets"], record["lengths"], strict=True
        ):
            self.where[item_id] = (offset, length)

    def __len__(self) -> int:
        return len(self.where)

    def get(self, item_id: str) -> bytes | None:
        at = self.where.get(item_id)
        if at is None or self._fd is None:
            return None
        offset, length = at
        return os.pread(self._fd, length, offset)

    def etag(self, item_id: str) -> str | None:
        """Changes when the id's thumbnail does (a re-added id gets new bytes elsewhere)."""
        at = self.where.get(item_id)
        return None if at is None else f'"{at[0]:x}-{at[1]:x}"'

    def add(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        """Append the images, fsync them, then durably record where they are."""
        if not self.writable:
            raise RuntimeError("these thumbnails were opened read-only")
        pairs = list(pairs)
        if not pairs:
            return
        if self._log is None:
            self._open()
        assert self._fd is not None and self._log is not None
        offset = os.fstat(self._fd).st_size
        record: dict[str, list] = {"ids": [], "offsets": [], "lengths": []}
        for item_id, data in pairs:
            os.write(self._fd, data)
            record["ids"].append(item_id)
            record["offsets"].append(offset)
            record["lengths"].append(len(data))
            offset += len(data)
        os.fsync(self._fd)
        self._log.append(record)
        self._apply(record)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_thumbnails(
    directory: Path, pairs: Iterator[tuple[str, bytes]], batch: int = 4096
) -> None:
    """Index build: every (id, thumbnail) into a new folder, one log record per batch."""
    thumbs = Thumbnails(directory, writable=True)
    try:
        chunk: list[tuple[str, bytes]] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) == batch:
                thumbs.add(chunk)
                chunk = []
        thumbs.add(chunk)
    finally:
        thumbs.close()
