"""Append-only write-ahead log: one checksummed JSON line per index mutation, fsync'ed.

A mutation is acknowledged only after its line is on disk. A torn last line (a crash mid-
write, never acknowledged) is dropped on replay; a last line that is complete and checksummed
but lost its newline is kept; damage anywhere else is an error. How many records the log must
hold is the manifest's business (index.store), which catches a deleted or shortened log.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import fsync_dir
from index.errors import IndexFolderError


def encode_vectors(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


def decode_vectors(text: str, width: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(-1, width).astype(np.float32)


def _line(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def read_records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """All intact records and the byte length they span (a torn tail is not counted)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    records, good = [], 0
    for raw in _lines(data):
        end = good + len(raw)
        record = _parse(raw)
        if record is None:
            if end < len(data):
                raise IndexFolderError(f"write-ahead log {path} is corrupt at byte {good}")
            break
        records.append(record)
        good = end
    return records, good


def _lines(data: bytes) -> Iterator[bytes]:
    start = 0
    while start < len(data):
        nl = data.find(b"\n", start)
        end = len(data) if nl < 0 else nl + 1
        yield data[start:end]
        start = end


def _parse(raw: bytes) -> dict[str, Any] | None:
    crc, _, body = raw.rstrip(b"\n").partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(body):
            return None
        return json.loads(body)
    except ValueError:
        return None


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)


class WriteAheadLog:
    """The writer's handle: appends durably, after cutting any torn tail left by a crash."""

    def __init__(self, path: Path, valid_bytes: int):
        self.path = path
        existed = path.exists()
        self._f = open(path, "ab")  # noqa: SIM115 - held open for the process lifetime
        if self._f.tell() != valid_bytes:
            self._f.truncate(valid_bytes)
            os.fsync(self._f.fileno())
        if valid_bytes and _byte_at(path, valid_bytes - 1) != b"\n":
            self._f.write(b"\n")  # a kept last record that had lost its newline
            self._f.flush()
            os.fsync(self._f.fileno())
        if not existed:
            fsync_dir(path.parent)

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(_line(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
