"""Peak memory of preprocessing one accepted image, worst cases included: each case in a fresh
process (ru_maxrss), the shared preprocessing (core.preprocess) against the old whole-image
resize. Prints the ratios, writes JSON (default docs/results/reliability/image-memory.json).

    python bench/bench_image_memory.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]
# (width, height): a square photo, the 500,000 x 1 strip, the tallest image inside the
# server's default 16,777,216-pixel limit, a 65,535-wide JPEG-sized strip.
CASES = [(640, 480), (500_000, 1), (1, 16_777_216), (65_535, 8)]
OLD_CASES = [(640, 480), (100_000, 1), (500_000, 1)]  # the old path needs ~5 KB per px of width

MEASURE = """
import io, resource, sys, time
import numpy as np
from PIL import Image
w, h, mode, size = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
buf = io.BytesIO()
pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
Image.fromarray(pixels).save(buf, "PNG")
del pixels
data = buf.getvalue()
import torch
from torchvision.transforms.v2 import functional as F
from core.preprocess import EvalPreprocess, decode_rgb
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
image = decode_rgb(Image.open(io.BytesIO(data)))
if mode == "new":
    EvalPreprocess(size, (0.5,) * 3, (0.5,) * 3).uint8(image)
else:
    F.center_crop(F.resize(F.pil_to_tensor(image), [size], antialias=True), [size, size])
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(data), base, peak, seconds)
"""


def measure(w: int, h: int, mode: str, size: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(w), str(h), mode, str(size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    png, base, peak, seconds = int(out[0]), int(out[1]), int(out[2]), float(out[3])
    return {
        "width": w,
        "height": h,
        "mode": mode,
        "png_bytes": png,
        "peak_rss_mb": round(peak / 1024, 1),
        "added_mb": round((peak - base) / 1024, 1),
        "seconds": round(seconds, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32, help="the model's image size")
    p.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "results" / "reliability" / "image-memory.json",
    )
    args = p.parse_args()
    rows = [measure(w, h, "new", args.size) for w, h in CASES]
    rows += [measure(w, h, "old", args.size) for w, h in OLD_CASES]
    for r in rows:
        print(json.dumps(r), flush=True)
    new = {(r["width"], r["height"]): r for r in rows if r["mode"] == "new"}
    for r in (r for r in rows if r["mode"] == "old" and (r["width"], r["height"]) in new):
        n = new[(r["width"], r["height"])]
        print(
            f"{r['width']}x{r['height']}: memory added old/new {r['added_mb']}/{n['added_mb']} "
            f"MB = {r['added_mb'] / max(n['added_mb'], 0.1):.0f}x, "
            f"time {r['seconds']}/{n['seconds']} s"
        )
    write_result(
        args.output,
        {
            "what": "peak RSS of decoding + preprocessing one PNG, one fresh process per case",
            "image_size": args.size,
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
