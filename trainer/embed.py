"""Batched embedding extraction at full dim; under torchrun every rank embeds its share.

Rank r embeds items r, r + W, r + 2W, ... and the shares are all-gathered back into dataset
order, so every rank ends with the whole [N, D] array and no rank waits idle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

GATHER_ROWS = 16384


class _Share(Dataset):
    """Items rank, rank + world_size, ... of a dataset, preprocessed, with their labels."""

    def __init__(
        self,
        ds: Any,
        preprocess: Callable,
        image_column: str,
        label_column: str,
        rank: int,
        world_size: int,
    ):
        self.ds, self.preprocess = ds, preprocess
        self.image_column, self.label_column = image_column, label_column
        self.indices = range(rank, len(ds), world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, int]:
        row = self.ds[self.indices[j]]
        return self.preprocess(row[self.image_column]), int(row[self.label_column])


def _gather_shares(x: torch.Tensor, y: torch.Tensor, n: int, world_size: int):
    """All-gather interleaved shares (padded to equal length) and restore dataset order."""
    per_rank = -(-n // world_size)
    device = x.device if dist.get_backend() == "nccl" else torch.device("cpu")
    pad = per_rank - len(x)
    x = torch.cat([x, x.new_zeros(pad, x.shape[1])]).to(device)
    y = torch.cat([y, y.new_zeros(pad)]).to(device)
    xs, ys = [], []
    for start in range(0, per_rank, GATHER_ROWS):
        part_x, part_y = x[start : start + GATHER_ROWS], y[start : start + GATHER_ROWS]
        got_x = [torch.empty_like(part_x) for _ in range(world_size)]
        got_y = [torch.empty_like(part_y) for _ in range(world_size)]
        dist.all_gather(got_x, part_x)
        dist.all_gather(got_y, part_y)
        # row j of rank r is item j * world_size + r: stack ranks innermost
        xs.append(torch.stack(got_x, 1).flatten(0, 1).cpu())
        ys.append(torch.stack(got_y, 1).flatten(0, 1).cpu())
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode for an extraction mid-training, then back to the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def extract_embeddings(
    encoder: torch.nn.Module,
    dataset: Any,
    preprocess: Callable,
    image_column: str,
    label_column: str,
    device: torch.device | str,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    desc: str = "embed",
    bars: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw full-dim embeddings (float32 [N, D]) and labels (int64 [N]) in dataset order.

    The caller puts the encoder in eval mode. With world_size > 1 every rank must call this
    (it all-gathers); each returns the full arrays. `bars`: a progress bar on rank 0 (off for
    logs that are not a terminal, trainer.progress).
    """
    device = torch.device(device)
    share = _Share(dataset, preprocess, image_column, label_column, rank, world_size)
    loader = DataLoader(
        share, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    xs, ys = [], []
    with torch.inference_mode():
        for images, labels in tqdm(loader, desc=desc, disable=rank != 0 or not bars, leave=False):
            xs.append(encoder(images.to(device, non_blocking=True)).float())
            ys.append(labels.to(device))
        if xs:
            x, y = torch.cat(xs), torch.cat(ys)
        else:
            width = encoder(_probe(dataset, preprocess, image_column, device)).shape[1]
            x = torch.empty(0, width, device=device)
            y = torch.empty(0, dtype=torch.long, device=device)
        if world_size > 1:
            x, y = _gather_shares(x, y, len(dataset), world_size)
    return x.cpu().numpy().astype(np.float32), y.cpu().numpy().astype(np.int64)


def _probe(dataset: Any, preprocess: Callable, image_column: str, device) -> torch.Tensor:
    """One preprocessed image as a batch, to learn the embedding width of an empty share."""
    return preprocess(dataset[0][image_column]).unsqueeze(0).to(device)
