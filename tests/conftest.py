"""Shared fixtures: a tiny saved dataset and a small, fast training config."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import datasets
import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import shapes

torch.set_num_threads(1)


def save_tiny_shapes(path, n_train: int = 320, n_test: int = 80, size: int = 32) -> str:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(shapes.CLASSES))}
    )
    splits = {}
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = shapes.generate(n, size, seed=100 + i)
        splits[split] = datasets.Dataset.from_dict(
            {"image": list(images), "label": labels.tolist()}, features=features
        )
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """A 320/80-image shapes dataset saved with `datasets` (the local-path code path)."""
    return save_tiny_shapes(tmp_path_factory.mktemp("data") / "tiny-shapes")


@pytest.fixture
def tiny_config(tiny_dataset, tmp_path):
    """Factory for a config that trains a few CPU steps in a second or two."""

    def make(**overrides) -> TrainConfig:
        values = dict(
            dataset=tiny_dataset,
            output_dir=tmp_path / "run",
            cache_dir=tmp_path / "cache",
            batch_size=32,
            queue_size=64,
            epochs=2,
            nesting_list=[8, 16, 32],
            workers=0,
            device="cpu",
            resume="never",
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make
