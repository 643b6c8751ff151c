"""Peak memory of decoding + preprocessing one accepted image, worst cases included: each case
in a fresh process (ru_maxrss from the encoded bytes to the [3, S, S] tensor), the working
tree's core.preprocess against the same file at earlier git revisions (BASELINES), and the
thumbnail an image item's add makes. Prints the ratios, writes JSON (default
docs/results/reliability/image-memory.json).

    python bench/bench_image_memory.py
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]
TALL = 16_777_216  # the tallest 1-pixel-wide image inside the server's default pixel limit
# (width, height, PIL mode): a photo, the largest square inside the limit, the issue's
# 500,000 x 1 strip, and the tallest strip in every mode family decode_rgb converts.
CASES = [
    (640, 480, "RGB"),
    (4096, 4096, "RGB"),
    (4096, 4096, "RGBA"),
    (500_000, 1, "RGB"),
    (1, TALL, "RGB"),
    (1, TALL, "RGBA"),
    (1, TALL, "LA"),
    (1, TALL, "I;16"),
    (65_535, 8, "RGBA"),
]
# Earlier revisions of core/preprocess.py: before the bounded window (it needs ~5 KB per pixel
# of width, so only the small cases run there) and the first window (resized, not converted).
BASELINES = {
    "bb72f5b": {(640, 480, "RGB"), (4096, 4096, "RGB"), (500_000, 1, "RGB")},
    "e8894b4": None,
}

MEASURE = """
import importlib.util, io, resource, sys, time
from PIL import Image
path, module, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if module == "thumbnail":
    from index.thumbnails import make_thumbnail as run
else:
    spec = importlib.util.spec_from_file_location("preprocess_under_test", module)
    pre = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pre)
    run = pre.EvalPreprocess(size, (0.5,) * 3, (0.5,) * 3).uint8
data = open(path, "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
image = Image.open(io.BytesIO(data))
image.load()  # as the server does before either
run(image)
seconds = time.perf_counter() - start
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, seconds)
"""


ENCODE = """
import sys
import numpy as np
from PIL import Image
path, w, h, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ramp = (np.arange(w * h) % 251).reshape(h, w)  # a cheap pattern: content does not change cost
if mode == "I;16":
    image = Image.fromarray((ramp * 257).astype(np.uint16))
else:
    channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
    image = Image.fromarray(np.repeat(ramp[..., None], channels, axis=2).astype(np.uint8), mode)
image.save(path, "PNG", compress_level=1)
"""


def encode(path: Path, w: int, h: int, mode: str) -> None:
    """A PNG of that size and mode, made in another process: a child's peak RSS starts at its
    parent's RSS when forked (Linux keeps the high-water mark across exec), so this process
    must stay small for the measurements to mean anything."""
    subprocess.run([sys.executable, "-c", ENCODE, str(path), str(w), str(h), mode], check=True)


def module_at(rev: str | None, folder: Path) -> Path:
    """core/preprocess.py of the working tree (None) or of a git revision."""
    if rev is None:
        return ROOT / "core" / "preprocess.py"
    text = subprocess.run(
        ["git", "show", f"{rev}:core/preprocess.py"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    path = folder / f"preprocess-{rev}.py"
    path.write_bytes(text)
    return path


def measure(png: Path, module: Path, size: int) -> tuple[float, float]:
    """(MB added to the peak RSS, seconds) of preprocessing one image in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(png), str(module), str(size)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    base, peak, seconds = int(out[0]), int(out[1]), float(out[2])
    return round((peak - base) / 1024, 1), round(seconds, 3)


def ratio(row: dict, rev: str) -> str:
    then, now = row[f"added_mb_{rev}"], row["added_mb_now"]
    return f"{rev} {then} MB ({then / max(now, 0.1):.0f}x)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32, help="the model's image size")
    p.add_argument(
        "--output",
        type=Path,
        default=ROOT / "docs" / "results" / "reliability" / "image-memory.json",
    )
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        modules = {"now": module_at(None, folder)}
        modules |= {rev: module_at(rev, folder) for rev in BASELINES}
        modules["thumbnail"] = Path("thumbnail")  # index.thumbnails: an image item's add
        for w, h, mode in CASES:
            png = folder / "case.png"
            encode(png, w, h, mode)
            row = {"width": w, "height": h, "mode": mode, "png_bytes": png.stat().st_size}
            for name, module in modules.items():
                only = BASELINES.get(name)
                if only is None or (w, h, mode) in only:
                    row[f"added_mb_{name}"], row[f"seconds_{name}"] = measure(
                        png, module, args.size
                    )
            print(json.dumps(row), flush=True)
            rows.append(row)
    for r in rows:
        ratios = ", ".join(ratio(r, rev) for rev in BASELINES if f"added_mb_{rev}" in r)
        print(f"{r['width']}x{r['height']} {r['mode']}: now {r['added_mb_now']} MB; {ratios}")
    write_result(
        args.output,
        {
            "what": "MB added to the peak RSS by decoding + preprocessing one PNG (fresh "
            "process per case): the working tree (now), core/preprocess.py at the revisions, "
            "and the thumbnail an image item's add makes (index.thumbnails, working tree)",
            "image_size": args.size,
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
