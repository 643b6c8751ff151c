"""The training side of the checkpoint: a running MoCo model in, the run's TrainConfig out."""

from __future__ import annotations

import torch
from pydantic import ValidationError

from core.checkpoint import Checkpoint, CheckpointError
from core.quantize import Calibration
from trainer.config import TrainConfig
from trainer.data.survey import SplitRecord
from trainer.moco import MoCo


def capture(
    cfg: TrainConfig,
    model: MoCo,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    epoch: int = 0,
    world_size: int = 1,
    loss: torch.nn.Module | None = None,
    rotation: torch.Tensor | None = None,
    calibration: Calibration | None = None,
    splits: SplitRecord | None = None,
) -> Checkpoint:
    """The state of a running MoCo model (tensors are shared, not copied)."""
    return Checkpoint(
        model=cfg.model_spec(),
        train=cfg.plain(),
        encoder_q=model.encoder_q.state_dict(),
        encoder_k=model.encoder_k.state_dict(),
        queue=model.queue,
        queue_ptr=int(model.queue_ptr),
        optimizer=None if optimizer is None else optimizer.state_dict(),
        epoch=epoch,
        step=step,
        world_size=world_size,
        loss={} if loss is None else loss.state_dict(),
        rotation=rotation,
        calibration=calibration,
        data={} if splits is None else splits.model_dump(mode="json"),
    )


def train_config(checkpoint: Checkpoint) -> TrainConfig:
    """The run's config. Settings of flags that no longer exist (old checkpoints) are dropped."""
    known = {k: v for k, v in checkpoint.train.items() if k in TrainConfig.model_fields}
    try:
        return TrainConfig.model_validate(known)
    except ValidationError as e:
        first = " ".join(str(e).strip().splitlines()[:3])[:200]
        raise CheckpointError(
            f"checkpoint {checkpoint.source} has an unusable training config ({first})"
        ) from None


def split_record(checkpoint: Checkpoint) -> SplitRecord | None:
    """The run's split sizes and held-out rule; None for checkpoints saved before they were
    recorded (or by code that trains without a dataset)."""
    if not checkpoint.data:
        return None
    try:
        return SplitRecord.model_validate(checkpoint.data)
    except ValidationError:
        return None
