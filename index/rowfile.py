"""Rows of a stored `.npy` matrix read with pread: the serving process maps none of the file.

A memory map would do the same reads, but every page it touches (and, through the kernel's
fault-around, up to 64 KiB around it) stays mapped and counts in the process's resident
memory: after a few thousand reranks most of a 4 GB store did. pread copies only the bytes
asked for (the rows' column span) out of the page cache; nothing stays mapped.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

import numpy as np

BLOCK_BYTES = 8 << 20
HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


class RowFile:
    """Read-only [N, D] float16/float32 `.npy` file; `read(rows, cols)` is `a[rows, cols]`."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in HEADER_READERS:
                raise ValueError(f"{path} is a .npy file of version {version}, not 1.0 or 2.0")
            shape, fortran, dtype = HEADER_READERS[version](f)
            self.offset = f.tell()
        if len(shape) != 2 or fortran or dtype.hasobject:
            raise ValueError(f"{path} holds a {shape} array (fortran={fortran}), not [N, D] rows")
        self.path = Path(path)
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        expected = self.offset + self.shape[0] * self.row_bytes
        if os.path.getsize(path) < expected:
            raise ValueError(f"{path} is shorter than its header says ({expected} bytes)")
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def _pread(self, size: int, offset: int) -> bytes:
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.path}: short read at byte {offset} ({len(data)} of {size})")
        return data

    def read(self, rows: np.ndarray, cols: slice) -> np.ndarray:
        """`a[rows, cols]` in the file's dtype; consecutive rows are read as one run."""
        lo, hi, step = cols.indices(self.shape[1])
        if step != 1 or hi <= lo:
            return self.read(rows, slice(None))[:, cols]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row ids must be in 0..{self.shape[0] - 1}")
        item = self.dtype.itemsize
        out = np.empty((len(rows), hi - lo), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks]).tolist()
        ends = [*breaks.tolist(), len(rows)]
        if len(starts) == len(rows):  # scattered rows (a rerank's gather): one read each,
            # straight into `out` (no bytes objects to join and copy again)
            span, base = (hi - lo) * item, self.offset + lo * item
            flat = memoryview(out.reshape(-1).view(np.uint8))
            for i, r in enumerate(rows.tolist()):
                got = os.preadv(
                    self._fd, [flat[i * span : (i + 1) * span]], base + r * self.row_bytes
                )
                if got != span:
                    raise OSError(f"{self.path}: short read of row {r} ({got} of {span} bytes)")
            return out
        block = max(1, BLOCK_BYTES // self.row_bytes)
        for s, e in zip(starts, ends, strict=True):
            for a in range(s, e, block):
                b = min(e, a + block)
                data = self._pread(
                    (b - a) * self.row_bytes, self.offset + int(rows[a]) * self.row_bytes
                )
                out[a:b] = np.frombuffer(data, self.dtype).reshape(b - a, -1)[:, lo:hi]
        return out
