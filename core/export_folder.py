"""The exported folder: safetensors weights + config.json + preprocessor_config.json, read
with no training code, and `load_served`, which takes a checkpoint file or such a folder.

Layout (the Hugging Face Hub's; docs/EXPORT.md):

  model.safetensors          the query encoder's state dict (its own names), `rotation`
                             [D, D] when the model serves one, `calibration.low`/`.high`
                             [len(nesting_list), D] when it has an int8 grid
  config.json                format, `ModelConfig` (arch, nesting_list, image_size, mean, std,
                             head), rotation, calibration dims, fingerprint, step, epoch
  preprocessor_config.json   the image processor in transformers' keys (resize, crop, rescale,
                             normalise), plus the exact rule as `moco_preprocess`

The fingerprint in config.json is recomputed from the weights on load, so a folder whose
weights changed after export is refused, and an index built from the checkpoint is served
from its export (same weights and rotation, same fingerprint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.checkpoint import CheckpointError, fingerprint_of, load_checkpoint
from core.config import ModelConfig
from core.preprocess import MAX_ASPECT, stored_size
from core.quantize import Calibration
from core.served import ServedModel

FORMAT = "moco-matryoshka-export/1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREPROCESSOR = "preprocessor_config.json"
ROTATION = "rotation"
CALIBRATION = ("calibration.low", "calibration.high")


def preprocessor_config(model: ModelConfig) -> dict[str, Any]:
    """transformers' image-processor keys for core.preprocess.EvalPreprocess (what the served
    encoder expects), and the exact rule in our own words."""
    size, stored = model.image_size, stored_size(model.image_size)
    return {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": stored},
        "resample": 2,  # bilinear (antialiased), as PIL numbers it
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(model.mean),
        "image_std": list(model.std),
        "moco_preprocess": (
            f"decode to RGB (alpha over black; 16-bit and float images stretched over their "
            f"range to 8 bits); of an image longer than {MAX_ASPECT}:1 keep the central "
            f"{MAX_ASPECT}:1 window; resize the shorter side to {stored} (bilinear, "
            f"antialiased); centre-crop {stored}x{stored}, then {size}x{size}; uint8 HWC -> "
            f"float NCHW / 255; subtract mean, divide by std (per RGB channel)"
        ),
    }


def save_folder(served: ServedModel, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """Write the three files of the layout above into `folder` (created if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in served.encoder_q.items()}
    if served.rotation is not None:
        tensors[ROTATION] = served.rotation.detach().cpu().float().contiguous()
    c = served.calibration
    if c is not None:
        tensors[CALIBRATION[0]] = torch.from_numpy(c.low.copy())
        tensors[CALIBRATION[1]] = torch.from_numpy(c.high.copy())
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "model_type": "moco-matryoshka",
        "architectures": ["Encoder"],
        "hidden_size": served.model.full_dim,
        "model": served.model.model_dump(mode="json"),
        "rotation": "none" if served.rotation is None else "pca",
        "calibration_dims": None if c is None else list(c.dims),
        "fingerprint": served.fingerprint,
        "step": served.step,
        "epoch": served.epoch,
        **(extra or {}),
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / PREPROCESSOR).write_text(
        json.dumps(preprocessor_config(served.model), indent=2) + "\n"
    )


def load_folder(folder: str | Path) -> ServedModel:
    """An exported folder -> ServedModel; any problem is a CheckpointError naming the folder."""
    folder = Path(folder)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(
                f"{folder} is not an exported model: {name} is missing "
                f"(export one with `python -m trainer.export CHECKPOINT {folder}`)"
            )
    try:
        config = json.loads((folder / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"format {config.get('format')!r}, expected {FORMAT!r}")
        model = ModelConfig.model_validate(config["model"])
        tensors = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError, ValidationError, SafetensorError) as e:
        first = " ".join(str(e).strip().splitlines()[:2])[:200]
        raise CheckpointError(f"exported model {folder} is unreadable ({first})") from None
    rotation = tensors.pop(ROTATION, None)
    low, high = (tensors.pop(k, None) for k in CALIBRATION)
    calibration = None
    if low is not None and high is not None and config.get("calibration_dims"):
        try:
            calibration = Calibration.from_arrays(
                config["calibration_dims"], low.numpy(), high.numpy()
            )
        except ValueError as e:
            raise CheckpointError(f"exported model {folder}: {e}") from None
    fingerprint = fingerprint_of(tensors, rotation)
    if fingerprint != config.get("fingerprint"):
        raise CheckpointError(
            f"exported model {folder}: its weights have fingerprint {fingerprint}, but "
            f"config.json says {config.get('fingerprint')} (changed after export? export again)"
        )
    return ServedModel(
        model=model,
        encoder_q=tensors,
        rotation=rotation,
        calibration=calibration,
        fingerprint=fingerprint,
        step=int(config.get("step", 0)),
        epoch=int(config.get("epoch", 0)),
        source=folder,
    )


def load_served(path: str | Path) -> ServedModel:
    """A checkpoint file or an exported folder -> what the server serves."""
    path = Path(path)
    if path.is_dir():
        return load_folder(path)
    return ServedModel.of(load_checkpoint(path))
