"""Build the real-scan dataset `grids/digits.toml` reads: the UCI handwritten digits (1,797 scans,
8x8, 17 grey levels) that ship with scikit-learn, upscaled to 32x32 RGB, split 1,437 / 360 with a
fixed seed, saved with `datasets.save_to_disk`.

    python grids/digits_data.py PATH/TO/sklearn/datasets/data/digits.csv.gz runs/data/digits

The CSV is in any scikit-learn install or wheel; scikit-learn itself is not needed.
"""

from __future__ import annotations

import gzip
import sys

import datasets
import numpy as np
from PIL import Image

N_TRAIN = 1437


def to_image(scan: np.ndarray) -> Image.Image:
    grey = Image.fromarray((scan * 255 / 16).astype(np.uint8))
    return grey.resize((32, 32), Image.BILINEAR).convert("RGB")


def main(csv_gz: str, out: str) -> None:
    with gzip.open(csv_gz) as f:
        rows = np.loadtxt(f, delimiter=",")
    scans, labels = rows[:, :64].reshape(-1, 8, 8), rows[:, 64].astype(int)
    order = np.random.default_rng(0).permutation(len(scans))
    scans, labels = scans[order], labels[order]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list("0123456789"))}
    )

    def split(rows: slice) -> datasets.Dataset:
        images = [to_image(s) for s in scans[rows]]
        return datasets.Dataset.from_dict(
            {"image": images, "label": labels[rows].tolist()}, features=features
        )

    splits = {"train": split(slice(None, N_TRAIN)), "test": split(slice(N_TRAIN, None))}
    datasets.DatasetDict(splits).save_to_disk(out)
    print(f"wrote {out}: {N_TRAIN} train, {len(scans) - N_TRAIN} test")


if __name__ == "__main__":
    main(*sys.argv[1:])
