"""What start-up verification costs: write one index generation of N x D random vectors (the
checksums are computed as it is written), then time `verify_generation` (every file's CRC-32
and every vector's finiteness), cold-ish and warm; with --thumbnails N, also N thumbnails of
the shapes index's mean size, and the start-up check of every one's CRC-32. Prints seconds and
GB/s, writes JSON.

    python bench/bench_verify.py --rows 1000000 --width 2048
    python bench/bench_verify.py --rows 1000 --width 32 --thumbnails 1000000 \
        --output docs/results/reliability/verify-thumbnails-1M.json
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_result

from index.integrity import verify_generation
from index.store import read_manifest, write_generation
from index.thumbnails import Thumbnails, write_thumbnails

THUMBNAIL_BYTES = 459  # docs/results/thumbnails.json: mean WebP bytes per item (shapes)


def chunks(rows: int, width: int, dtype: str, size: int = 65536):
    rng = np.random.default_rng(0)
    for start in range(0, rows, size):
        n = min(size, rows - start)
        yield rng.standard_normal((n, width), dtype=np.float32).astype(dtype)


def time_thumbnails(folder: Path, n: int) -> dict:
    """Write n random thumbnails, then time checking every one (what a start-up does)."""
    rng = np.random.default_rng(1)
    pairs = ((f"i{r}", rng.bytes(THUMBNAIL_BYTES)) for r in range(n))
    write_thumbnails(folder, pairs)
    timings = []
    for _ in range(2):
        thumbs = Thumbnails(folder, writable=False)
        start = time.perf_counter()
        assert thumbs.damaged() == []
        timings.append(time.perf_counter() - start)
        thumbs.close()
    return {
        "thumbnails": n,
        "thumbnail_bytes": n * THUMBNAIL_BYTES,
        "check_s": [round(t, 2) for t in timings],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--thumbnails", type=int, default=0, help="also time checking N thumbnails")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--output", type=Path, default=RESULTS / "verify.json")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-verify-", dir=args.workdir))
    try:
        items = ({"id": f"i{r}", "label": 0, "metadata": None} for r in range(args.rows))
        start = time.perf_counter()
        info = {"fingerprint": "bench", "store_dtype": args.dtype}
        write_generation(
            folder, 0, args.width, args.rows, chunks(args.rows, args.width, args.dtype), items, info
        )
        written = time.perf_counter() - start
        manifest = read_manifest(folder)
        size = sum((folder / name).stat().st_size for name in manifest["checksums"])
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            verify_generation(folder, manifest)
            timings.append(time.perf_counter() - start)
        thumbs = time_thumbnails(folder, args.thumbnails) if args.thumbnails else {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "rows": args.rows,
        "width": args.width,
        "dtype": args.dtype,
        "bytes_checked": size,
        "write_with_checksums_s": round(written, 1),
        "verify_s": [round(t, 2) for t in timings],
        "verify_gb_per_s": [round(size / t / 1e9, 2) for t in timings],
        **thumbs,
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(result, flush=True)
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
