"""`ServedModel`: only what serving needs (query encoder, rotation, int8 grid, preprocessing).

A checkpoint also holds the key encoder, the queue, the optimizer and the run's config; an
exported folder (core.export_folder) holds none of them. Both load into this one object, so
the server and the exporters read the same fields whichever they were given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.checkpoint import Checkpoint
from core.config import ModelConfig
from core.quantize import Calibration


@dataclass(eq=False)
class ServedModel:
    model: ModelConfig
    encoder_q: dict[str, torch.Tensor]  # the query encoder's state dict (checkpoint's name)
    rotation: torch.Tensor | None
    calibration: Calibration | None
    fingerprint: str  # core.checkpoint.fingerprint_of(encoder_q, rotation)
    step: int = 0
    epoch: int = 0
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> ServedModel:
        return cls(
            model=checkpoint.model,
            encoder_q=checkpoint.encoder_q,
            rotation=checkpoint.rotation,
            calibration=checkpoint.calibration,
            fingerprint=checkpoint.fingerprint,
            step=checkpoint.step,
            epoch=checkpoint.epoch,
            source=checkpoint.source,
        )
