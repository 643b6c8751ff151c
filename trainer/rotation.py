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

from pathlib import Path

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


def rotate_checkpoint(path: Path, output: Path | None = None, device: str = "auto") -> Path:
    """Fit the PCA rotation on a finished checkpoint's train split and write the checkpoint with
    it: the post-hoc path that gives any MoCo model (e.g. one trained with --rotation none or
    by another recipe) the nested prefixes `--rotation pca` serves. Returns the written path."""
    from dataclasses import replace

    from core.checkpoint import load_checkpoint, save_checkpoint
    from core.device import pick_device
    from core.encoder import load_encoder
    from trainer.checkpointing import train_config

    ckpt = load_checkpoint(path)
    cfg = train_config(ckpt)
    dev = pick_device(device)
    encoder = load_encoder(ckpt, dev)
    encoder.rotation = None  # fit on the trained coordinates, replacing any earlier rotation
    # what training with --rotation pca would have fitted at its end, rotation and int8 grid
    rotation, calibration = fit_served(encoder, cfg.model_copy(update={"rotation": "pca"}), dev)
    out = Path(output or path)
    train = {**ckpt.train, "rotation": "pca"}
    save_checkpoint(replace(ckpt, rotation=rotation, calibration=calibration, train=train), out)
    return out


def main(argv: list[str] | None = None) -> int:
    from core.cli import make_parser

    parser = make_parser(
        "python -m trainer.rotation",
        "Fit the PCA rotation (--rotation pca) on a trained checkpoint, after training.",
    )
    parser.add_argument("checkpoint", type=Path, help="a trainer checkpoint.pt")
    parser.add_argument("--output", type=Path, help="where to write it (default: in place)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    out = rotate_checkpoint(args.checkpoint, args.output, args.device)
    print(f"wrote {out}: served prefixes are now the principal axes of the train split")
    return 0


if __name__ == "__main__":
    from core.cli import run_cli

    run_cli(main, "python -m trainer.rotation")
