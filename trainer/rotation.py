"""The served basis: an orthogonal rotation that puts the embedding's variance first.

An orthogonal map leaves every full-dim cosine similarity exactly as trained, so the full
embedding loses nothing, while each prefix becomes the top principal components of the
train split's embeddings: the best d-dim linear summary of the full vector. On the
validation slice of `shapes` (5 seeds, docs/EVALUATION.md) it raised kNN top-1 at 8 dims
from 0.698 to 0.749 for the Matryoshka model and from 0.619 to 0.748 for the non-nested one.

Fitted once when training finishes (`--rotation pca`), stored in the checkpoint, applied by
`Encoder` wherever a checkpoint is loaded (evaluation, the server). The int8/uint8 grid
(core.quantize.Calibration) is fitted from the same embeddings, rotated, in the same pass
(with `--rotation none` too), so the two always describe the same served coordinates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Subset

from core.quantize import Calibration, fit_calibration
from trainer.config import TrainConfig
from trainer.progress import use_bars

# enough rows for a 2048-dim covariance; fitting reads at most this many train images
FIT_SAMPLES = 20_000


def pca_rotation(x: np.ndarray) -> np.ndarray:
    """Orthogonal [D, D]: columns are the principal axes of x's rows, largest variance first.

    Each column's sign makes its largest-magnitude entry positive, so a refit on the same
    embeddings gives the same matrix.
    """
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings [N, D] to fit a rotation, got {x.shape}")
    centred = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    vectors = vectors[:, ::-1]
    peak = np.abs(vectors).argmax(0)
    signs = np.where(vectors[peak, np.arange(vectors.shape[1])] < 0, -1.0, 1.0)
    return (vectors * signs).astype(np.float32)


def fit_rotation(
    encoder: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> torch.Tensor:
    """PCA of the train split's embeddings (at most FIT_SAMPLES, evenly spaced), as preprocessed
    for serving. With world_size > 1 every rank must call it: each embeds a share (all-gathered)
    and all return the same rotation."""
    return torch.from_numpy(pca_rotation(train_sample(encoder, cfg, device, rank, world_size)))


def fit_served(
    encoder: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor | None, Calibration]:
    """What training fits when it finishes, from one pass over the train sample: the rotation
    (None unless `--rotation pca`) and the int8 grid of the served (rotated) coordinates."""
    x = train_sample(encoder, cfg, device, rank, world_size)
    rotation = torch.from_numpy(pca_rotation(x)) if cfg.rotation == "pca" else None
    served = x if rotation is None else x @ rotation.numpy()
    return rotation, fit_calibration(served, list(cfg.nesting_list))


def train_sample(
    encoder: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> np.ndarray:
    """Raw full-dim embeddings of at most FIT_SAMPLES train images, evenly spaced."""
    from core.preprocess import EvalPreprocess
    from trainer.data.datasets import load_splits
    from trainer.embed import eval_mode, extract_embeddings

    train_ds, _ = load_splits(cfg)
    step = -(-len(train_ds) // FIT_SAMPLES)
    sample = train_ds if step == 1 else Subset(train_ds, range(0, len(train_ds), step))
    with eval_mode(encoder):
        x, _ = extract_embeddings(
            encoder,
            sample,
            EvalPreprocess.of(cfg.model_spec()),
            cfg.image_column,
            cfg.label_column,
            device,
            cfg.batch_size,
            rank,
            world_size,
            desc="fit rotation",
            bars=use_bars(cfg.log_format),
        )
    return x
