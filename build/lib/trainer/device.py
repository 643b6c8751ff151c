"""The one device choice shared by training, evaluation, index building and the server."""

from __future__ import annotations

import torch

from trainer.errors import UsageError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda -> a device; auto falls back to the CPU, cuda without a GPU is refused.

    `local_rank` picks this process's GPU when several processes share a machine.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not allowed; use auto, cpu or cuda")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "cuda":
            raise UsageError("--device cuda, but no CUDA GPU is available")
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())
