"""Item thumbnails: small WebP images in one append-only blob, located by a checksummed log.

  thumbnails.bin     the encoded images back to back (read with pread, never loaded whole)
  thumbnails.jsonl   index.wal records {"ids", "offsets", "lengths", "crcs"}, one per batch

A thumbnail belongs to one add, not to an id: an item added through the store carries its
thumbnail's reference [offset, length, crc32] in its own record (None: it has none), so a
deleted item's thumbnail never comes back with a later item of the same id. Items of an index
build (and of folders written before references) are looked up by id. Every read is checked
against its CRC-32, which is also the ETag: a damaged or replaced blob is never served.
Bytes are fsync'ed before the record that points at them, and the record before the add that
uses them is logged, so an acknowledged item always has its thumbnail; a crash in between only
leaves unreferenced bytes.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageOps

from index.errors import IndexFolderError
from index.wal import WriteAheadLog, read_records

BLOB = "thumbnails.bin"
LOG = "thumbnails.jsonl"
SIZE = 96
QUALITY = 80
MEDIA_TYPE = "image/webp"
ORIENTATION = 0x0112  # the EXIF tag exif_transpose reads

Ref = list[int]  # [offset, length, crc32]; the crc is absent in records older than it
# (blob path, device, inode) -> how far into that blob this process has checked every
# thumbnail: the blob only grows, so a reopen checks only the thumbnails added since.
_checked: dict[tuple[str, int, int], int] = {}


def make_thumbnail(image: Image.Image, size: int = SIZE) -> bytes:
    """WebP no larger than `size` px on its longest side (smaller images keep their size).

    Turned and converted only when needed, then shrunk in place: turning and converting
    always copied the whole image (a 1 x 16,777,216 strip took 578 MB), so an upright RGB
    `image` is itself shrunk (callers pass a decoded image they do not use again)."""
    if image.getexif().get(ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "WEBP", quality=QUALITY, method=6)
    return buf.getvalue()


class Thumbnails:
    """Id -> thumbnail bytes for one index folder; `writable` allows adding more."""

    def __init__(self, directory: Path, writable: bool, expected_records: int | None = None):
        self.directory = Path(directory)
        self.writable = writable
        self.where: dict[str, Ref] = {}
        records, self._valid = read_records(self.directory / LOG)
        self.records = len(records)
        self._check(records, expected_records)
        for record in records:
            self._apply(record)
        self._log: WriteAheadLog | None = None
        self._fd: int | None = None
        if (self.directory / BLOB).exists():
            self._open()

    def _check(self, records: list[dict], expected: int | None) -> None:
        """The log holds every record the manifest counts, and the blob every byte they name."""
        if expected is not None and len(records) < expected:
            log = self.directory / LOG
            state = "is missing" if not log.exists() else f"holds {len(records)} intact records"
            raise IndexFolderError(
                f"{log} {state} but manifest.json counts {expected}: thumbnails of acknowledged "
                "items would be lost; restore it or rebuild the index"
            )
        ends = (o + n for r in records for o, n in zip(r["offsets"], r["lengths"], strict=True))
        end = max(ends, default=0)
        blob = self.directory / BLOB
        size = blob.stat().st_size if blob.exists() else 0
        if size < end:
            raise IndexFolderError(
                f"{blob} holds {size} bytes but its log points up to byte {end}: it was deleted "
                "or truncated; restore it or rebuild the index"
            )

    def _open(self) -> None:
        """The blob (and, for a writer, the log: cutting a torn tail); files made on first add."""
        if self.writable:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
            self._fd = os.open(self.directory / BLOB, flags, 0o644)
            self._log = WriteAheadLog(self.directory / LOG, self._valid)
        else:
            self._fd = os.open(self.directory / BLOB, os.O_RDONLY)

    def _apply(self, record: dict) -> None:
        crcs = record.get("crcs") or [None] * len(record["ids"])
        for item_id, offset, length, crc in zip(
            record["ids"], record["offsets"], record["lengths"], crcs, strict=True
        ):
            self.where[item_id] = [offset, length] if crc is None else [offset, length, crc]

    def __len__(self) -> int:
        return len(self.where)

    def by_id(self, item_id: str) -> Ref | None:
        """The reference of an item that carries none of its own (index builds, old folders)."""
        return self.where.get(item_id)

    def get(self, item_id: str) -> bytes | None:
        """The latest thumbnail recorded under an id (an index build's items)."""
        ref = self.by_id(item_id)
        return None if ref is None else self.read(ref)

    def read(self, ref: Ref) -> bytes | None:
        """The bytes `ref` points at, or None when they are missing or not what was written."""
        if self._fd is None:
            return None
        offset, length = ref[0], ref[1]
        data = os.pread(self._fd, length, offset)
        if len(data) != length or (len(ref) > 2 and zlib.crc32(data) != ref[2]):
            return None
        return data

    def damaged(self, after: int = 0) -> list[str]:
        """Ids whose recorded thumbnail (ending past byte `after`) fails its checksum or is
        cut short, read in blob order."""
        refs = sorted(self.where.items(), key=lambda pair: pair[1][0])
        return [i for i, ref in refs if ref[0] + ref[1] > after and self.read(ref) is None]

    def check_once(self) -> None:
        """Every recorded thumbnail against its checksum, once per process (a reopen reads only
        those added since): a blob garbled in place is refused at start, not per request."""
        if self._fd is None:
            return
        blob = self.directory / BLOB
        stat = os.fstat(self._fd)
        key = (str(blob.resolve()), stat.st_dev, stat.st_ino)
        end = max((o + n for o, n, *_ in self.where.values()), default=0)
        damaged = self.damaged(after=_checked.get(key, 0))
        if damaged:
            raise IndexFolderError(
                f"{blob}: {len(damaged)} thumbnails fail their checksum (first: {damaged[0]!r}): "
                "it was changed in place; restore it from a backup or rebuild the index "
                "(MOCO_VERIFY_INDEX=false starts anyway and answers each damaged one with 500)"
            )
        _checked[key] = max(_checked.get(key, 0), end)

    @staticmethod
    def etag(ref: Ref) -> str:
        """The content's CRC-32 (where and how long, for records older than checksums)."""
        return f'"{ref[2]:08x}"' if len(ref) > 2 else f'"{ref[0]:x}-{ref[1]:x}"'

    def add(self, pairs: Iterable[tuple[str, bytes]]) -> dict[str, Ref]:
        """Append the images, fsync them, then durably record where they are; the references,
        by id, for the items to carry."""
        if not self.writable:
            raise RuntimeError("these thumbnails were opened read-only")
        pairs = list(pairs)
        if not pairs:
            return {}
        if self._log is None:
            self._open()
        assert self._fd is not None and self._log is not None
        offset = os.fstat(self._fd).st_size
        record: dict[str, list] = {"ids": [], "offsets": [], "lengths": [], "crcs": []}
        for item_id, data in pairs:
            os.write(self._fd, data)
            record["ids"].append(item_id)
            record["offsets"].append(offset)
            record["lengths"].append(len(data))
            record["crcs"].append(zlib.crc32(data))
            offset += len(data)
        os.fsync(self._fd)
        self._log.append(record)
        self.records += 1
        self._apply(record)
        return {item_id: self.where[item_id] for item_id, _ in pairs}

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
