"""The checkpoint file: atomic writes, safe loads, and clear errors for bad files.

Only tensors and plain Python types are stored, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from trainer.errors import UsageError

FORMAT = "moco-matryoshka/1"
REQUIRED_KEYS = ("format", "config", "encoder_q", "encoder_k", "queue", "epoch", "step")


class CheckpointError(UsageError):
    """A checkpoint that is missing, truncated or not one of ours."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint; any problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (train one with `make train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a torch file ({first[:160]})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a MoCo-Matryoshka checkpoint (expected format {FORMAT!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {', '.join(missing)}")
    return state


def checkpoint_fingerprint(state: dict[str, Any]) -> str:
    """A short id of the weights, so an index built from another checkpoint can be refused."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(state["encoder_q"].items()):
        h.update(name.encode())
        t = tensor.detach().cpu()
        h.update((t.float() if t.is_floating_point() else t).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
