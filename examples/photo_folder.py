"""Make a folder of real photos to try MoCo-Matryoshka on: `python examples/photo_folder.py DIR`.

The photos ship with scikit-image (its `skimage/data`; the wheel is downloaded with
`pip download`, not installed). Each class is one photo, cut into crops of random size (48-320
px), position and aspect, a fifth of them grayscale, saved as JPEG or PNG, the way a folder of
phone pictures mixes sizes and formats:

    DIR/brick/brick_000.jpg ... DIR/motorcycle/motorcycle_049.png   (6 classes x 50)
    DIR-queries/astronaut.png, cat.jpg, coffee.jpg                   (whole photos to search with)

`astronaut.png` belongs to no class: a search with it shows what a weak match looks like.
"""

from __future__ import annotations

import argparse
import glob
import io
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

CLASSES = {
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "cat": "chelsea.png",
    "coffee": "coffee.png",
    "motorcycle": "motorcycle_left.png",
}
QUERIES = {"astronaut.png": "astronaut.png", "cat.jpg": "chelsea.png", "coffee.jpg": "coffee.png"}


def skimage_photos(wheel: Path | None) -> dict[str, Image.Image]:
    """The photos from scikit-image's wheel (downloaded into a temporary folder if not given)."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "-q", "-d", tmp, "scikit-image"],
                check=True,
            )  # fmt: skip
            wheel = Path(glob.glob(f"{tmp}/scikit_image-*.whl")[0])
        with zipfile.ZipFile(wheel) as z:
            names = {*CLASSES.values(), *QUERIES.values()}
            return {
                n: Image.open(io.BytesIO(z.read(f"skimage/data/{n}"))).convert("RGB") for n in names
            }


def crop(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop, 48-320 px on its longer side, aspect 3:4 to 4:3, maybe grayscale."""
    w, h = photo.size
    side = rng.randint(48, min(320, w, h))
    aspect = rng.uniform(0.75, 4 / 3)
    cw, ch = min(w, round(side * aspect)), min(h, side)
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    out = photo.crop((x, y, x + cw, y + ch))
    return out.convert("L") if rng.random() < 0.2 else out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the folder to write (one sub-folder per class)")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wheel", type=Path, help="a scikit-image wheel already downloaded")
    args = p.parse_args()
    photos = skimage_photos(args.wheel)
    rng = random.Random(args.seed)
    for label, source in CLASSES.items():
        folder = args.out / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            ext = "jpg" if i % 2 == 0 else "png"
            crop(photos[source], rng).save(folder / f"{label}_{i:03d}.{ext}")
    queries = args.out.with_name(args.out.name + "-queries")
    queries.mkdir(parents=True, exist_ok=True)
    for name, source in QUERIES.items():
        photos[source].save(queries / name)
    n = len(CLASSES) * args.per_class
    print(f"wrote {n} photos in {len(CLASSES)} classes to {args.out}, queries to {queries}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
