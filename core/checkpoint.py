"""The checkpoint: the one contract between training and serving.

`Checkpoint` is what every reader gets; only this module knows the file's keys. The file holds
tensors and plain Python types only, so `torch.load(weights_only=True)` reads it. Files of an
older format are brought up to date by `_upgrade`, one step per format version.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from core.atomic import atomic_write
from core.cli import UsageError
from core.config import ModelConfig
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from core.quantize import Calibration

FORMAT = "moco-matryoshka/2"
FORMAT_V1 = "moco-matryoshka/1"


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated or not one of ours."""


@dataclass(eq=False)
class Checkpoint:
    """A training state: the model's config, the run's config, weights, queue and progress."""

    model: ModelConfig
    # The run's training config as saved (JSON-safe): only the trainer reads it, through
    # trainer.checkpointing.train_config; serving needs nothing of it.
    train: dict[str, Any]
    encoder_q: dict[str, torch.Tensor]
    encoder_k: dict[str, torch.Tensor]
    queue: torch.Tensor
    queue_ptr: int = 0
    optimizer: dict[str, Any] | None = None
    epoch: int = 0
    step: int = 0
    world_size: int = 1
    # Training-only loss parameters (the per-prefix heads); nothing that serves reads them.
    loss: dict[str, torch.Tensor] = field(default_factory=dict)
    # The served basis ([D, D], orthogonal; trainer.rotation), fitted when training finished.
    # None: serve the trained coordinates (also every checkpoint saved mid-run).
    rotation: torch.Tensor | None = None
    # The run's data record (split sizes and the held-out rule, JSON-safe): only the trainer
    # reads it, through trainer.checkpointing.split_record; {} in files saved before it existed.
    data: dict[str, Any] = field(default_factory=dict)
    # The int8/uint8 grid per nesting dim (core.quantize), fitted with the rotation when
    # training finished; None in files saved before it existed (`python -m trainer.calibrate`).
    calibration: Calibration | None = None
    source: Path | None = field(default=None, compare=False)

    @cached_property
    def fingerprint(self) -> str:
        """A short id of what it serves (weights and rotation), so an index built from another
        checkpoint can be refused."""
        return fingerprint_of(self.encoder_q, self.rotation)

    def _to_file(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model.model_dump(mode="json"),
            "train": self.train,
            "encoder_q": self.encoder_q,
            "encoder_k": self.encoder_k,
            "queue": self.queue,
            "queue_ptr": self.queue_ptr,
            "optimizer": self.optimizer,
            "epoch": self.epoch,
            "step": self.step,
            "world_size": self.world_size,
            "loss": self.loss,
            "rotation": self.rotation,
            "data": self.data,
            "calibration": _calibration_to_file(self.calibration),
        }


def fingerprint_of(weights: dict[str, torch.Tensor], rotation: torch.Tensor | None) -> str:
    """sha256 of the served weights and rotation (16 hex digits): the same for a checkpoint
    and its exported folder, so an index built from one is served by the other."""
    h = hashlib.sha256()
    served = dict(weights)
    if rotation is not None:
        served["<rotation>"] = rotation
    for name, tensor in sorted(served.items()):
        h.update(name.encode())
        t = tensor.detach().cpu()
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _calibration_to_file(c: Calibration | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"dims": list(c.dims), "low": torch.from_numpy(c.low), "high": torch.from_numpy(c.high)}


def _calibration(value: Any, model: ModelConfig, path: Path) -> Calibration | None:
    """None, or ranges at exactly the model's nesting dims."""
    if value is None:
        return None
    try:
        c = Calibration.from_arrays(value["dims"], value["low"].numpy(), value["high"].numpy())
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has an unusable int8 calibration ({e})") from None
    if list(c.dims) != list(model.nesting_list):
        raise CheckpointError(
            f"checkpoint {path} has an int8 calibration at dims {list(c.dims)}, "
            f"not the model's {model.nesting_list}"
        )
    return c


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Atomically: a crash leaves the previous file or the new one, never half of one."""
    atomic_write(path, lambda f: torch.save(checkpoint._to_file(), f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load, upgrade and validate a checkpoint; any problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with `make train`)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a torch file ({first[:160]})"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, FORMAT_V1):
        raise CheckpointError(
            f"checkpoint {path} is not a MoCo-Matryoshka checkpoint "
            f"(expected format {FORMAT!r} or {FORMAT_V1!r})"
        )
    raw = _upgrade(raw, path)
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    try:
        model = ModelConfig.model_validate(raw["model"])
        return Checkpoint(
            model=model,
            train=_train_dict(raw["train"], path),
            encoder_q=raw["encoder_q"],
            encoder_k=raw["encoder_k"],
            queue=raw["queue"],
            queue_ptr=int(raw["queue_ptr"]),
            optimizer=raw["optimizer"],
            epoch=int(raw["epoch"]),
            step=int(raw["step"]),
            world_size=int(raw["world_size"]),
            loss=raw["loss"],
            rotation=_rotation(raw["rotation"], model.full_dim, path),
            data=raw["data"] if isinstance(raw["data"], dict) else {},
            calibration=_calibration(raw["calibration"], model, path),
            source=path,
        )
    except (ValidationError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} has an unusable config ({' '.join(first[:3])[:200]})"
        ) from None


REQUIRED = ("model", "train", "encoder_q", "encoder_k", "queue", "epoch", "step")


def _upgrade(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """Any known format -> the current layout (optional entries filled in)."""
    if raw["format"] == FORMAT_V1:
        raw = _upgrade_v1(raw, path)
    if "rotation" not in raw and isinstance(raw.get("train"), dict):
        # saved before --rotation existed: trained and served in the trained coordinates
        raw = {**raw, "train": {"rotation": "none", **raw["train"]}}
    return {
        "queue_ptr": 0,
        "optimizer": None,
        "world_size": 1,
        "loss": {},
        "rotation": None,
        "data": {},
        "calibration": None,  # saved before int8 outputs: `python -m trainer.calibrate` fits it
        **raw,
    }


def _train_dict(value: Any, path: Path) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {path} has a training config that is not a mapping")
    return value


def _rotation(value: Any, width: int, path: Path) -> torch.Tensor | None:
    """None, or a finite float [D, D] matrix for the model's D-dim embedding."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != (width, width):
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(
            f"checkpoint {path} has a rotation {got}, not a [{width}, {width}] matrix"
        )
    if not torch.isfinite(value).all():
        raise CheckpointError(f"checkpoint {path} has a rotation with NaN or inf")
    return value.float()


def _upgrade_v1(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """v1 kept one flat `config` dict: the training flags plus mean, std and world_size.

    Checkpoints older than the head options lack `mlp_hidden` and `head_bn`; they were
    trained with neither (0 and False), whatever today's defaults say.
    """
    config = raw.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path} is missing config")
    known = {k: v for k, v in config.items() if k not in ("mean", "std", "world_size")}
    known = {"mlp_hidden": 0, "head_bn": False, **known}
    model = {k: known[k] for k in ModelConfig.model_fields if k in known}
    model |= {"mean": config.get("mean", IMAGENET_MEAN), "std": config.get("std", IMAGENET_STD)}
    rest = {k: v for k, v in raw.items() if k not in ("config", "scaler")}
    world = {"world_size": config["world_size"]} if "world_size" in config else {}
    return {**rest, **world, "format": FORMAT, "model": model, "train": known}
