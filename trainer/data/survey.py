"""What the data hold, told to the user before training and recorded with the run.

`SplitRecord` says how many images train and how many were held out, and how: it is printed at
start-up and stored in the checkpoint (`Checkpoint.data`, read back through
`trainer.checkpointing.split_record`), so a score can be read against its n_test.
`median_image_size` makes the training resolution a stated choice beside the data's own.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path

import datasets
from PIL import Image
from pydantic import BaseModel

SIZE_SAMPLE = 200  # images whose headers are read for the median size


class SplitRecord(BaseModel):
    """The run's train / evaluation split: sizes and the rule that drew it."""

    n_train: int
    n_test: int
    train_split: str
    test_split: str | None  # a split of the dataset; None when held out of the train split
    held_out_fraction: float = 0.0  # the share of the train split held out (0: a real split)
    held_out_seed: int | None = None
    held_out_by: str = ""  # the flag that seeds (or asks for) the held-out part
    from_folder: bool = False  # a local image folder: its one split is "the folder"

    def line(self) -> str:
        """E.g. `train 270 / held out 30 (10% of the folder, seeded by --data-seed 0)`."""
        if self.test_split is not None:
            return f"train {self.n_train} / test {self.n_test} (split {self.test_split!r})"
        source = "the folder" if self.from_folder else f"split {self.train_split!r}"
        return (
            f"train {self.n_train} / held out {self.n_test} ({self.held_out_fraction:.0%} of "
            f"{source}, {self.held_out_by} {self.held_out_seed})"
        )


def median_image_size(ds: datasets.Dataset, image_column: str) -> tuple[int, int] | None:
    """Median (width, height) of up to 200 evenly spaced images, from their headers only;
    None when the column holds no encoded images."""
    if not isinstance(ds.features.get(image_column), datasets.Image) or len(ds) == 0:
        return None
    raw = ds.cast_column(image_column, datasets.Image(decode=False))
    step = max(1, len(ds) // SIZE_SAMPLE)
    sizes = [_header_size(raw[i][image_column]) for i in range(0, len(ds), step)[:SIZE_SAMPLE]]
    return int(statistics.median(w for w, _ in sizes)), int(statistics.median(h for _, h in sizes))


def _header_size(item: dict) -> tuple[int, int]:
    source = io.BytesIO(item["bytes"]) if item["bytes"] is not None else Path(item["path"])
    with Image.open(source) as image:
        return image.size


def image_size_line(median: tuple[int, int] | None, image_size: int) -> str:
    """E.g. `images: median 240x180 px; training at 32 px (--image-size)`."""
    seen = f"median {median[0]}x{median[1]} px" if median else "sizes unknown"
    return f"images: {seen}; training at {image_size} px (--image-size)"
