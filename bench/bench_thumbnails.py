"""Thumbnail storage cost: build the default index (shapes train split) and weigh its files.

Prints each file group's bytes and share of the folder, and the thumbnails' cost next to the
vectors; writes bench/results/thumbnails.json (docs/results/thumbnails.json is this run on
the default index). Model weights do not change any size, so a missing checkpoint is
replaced by a 2-step one of the default config.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench_server import random_checkpoint
from common import RESULTS, write_result

from index.thumbnails import BLOB, LOG, QUALITY, SIZE
from trainer.build_index import IndexBuildConfig, build_index_folder


def weigh(folder: Path) -> dict[str, int]:
    """Bytes per file group of a built index folder."""
    groups = {"vectors": 0, "items": 0, "thumbnails": 0, "other": 0}
    for path in folder.iterdir():
        if path.name in (BLOB, LOG):
            key = "thumbnails"
        elif path.name.startswith("vectors-"):
            key = "vectors"
        elif path.name.startswith("items-"):
            key = "items"
        else:
            key = "other"
        groups[key] += path.stat().st_size
    return groups


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/default/checkpoint.pt"))
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--split", default="train")
    p.add_argument("--thumbnail-size", type=int, default=SIZE)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--output", type=Path, default=RESULTS / "thumbnails.json")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-thumbs-", dir=args.workdir))
    checkpoint = args.checkpoint
    if not checkpoint.is_file():  # thumbnails and sizes do not depend on the weights
        checkpoint = random_checkpoint("convnet", work)
    folder = work / "index"
    start = time.perf_counter()
    info = build_index_folder(
        IndexBuildConfig(
            checkpoint=checkpoint,
            dataset=args.dataset,
            split=args.split,
            out=folder,
            thumbnail_size=args.thumbnail_size,
        )
    )
    seconds = time.perf_counter() - start
    sizes = weigh(folder)
    total = sum(sizes.values())
    count = info["count"]
    result = {
        "dataset": args.dataset,
        "split": args.split,
        "items": count,
        "width": info["width"],
        "thumbnail": {"format": "WEBP", "max_side": args.thumbnail_size, "quality": QUALITY},
        "bytes": sizes,
        "total_bytes": total,
        "thumbnail_share_of_index": sizes["thumbnails"] / total,
        "thumbnails_vs_vectors": sizes["thumbnails"] / sizes["vectors"],
        "thumbnail_bytes_per_item": sizes["thumbnails"] / count,
        "vector_bytes_per_item": sizes["vectors"] / count,
        "build_seconds": round(seconds, 1),
        "machine": platform.platform(),
    }
    print(f"index of {count} x {info['width']}-dim items ({args.dataset} {args.split}):")
    for key, n in sizes.items():
        print(f"  {key:<10} {n:>12,d} bytes  {n / total:6.1%}")
    print(
        f"thumbnails: {result['thumbnail_share_of_index']:.1%} of the index, "
        f"{result['thumbnails_vs_vectors']:.2f}x the vectors, "
        f"{result['thumbnail_bytes_per_item']:.0f} bytes per item"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.output, result)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
