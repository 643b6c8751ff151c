"""The one device choice shared by training, evaluation, index building and the server, and
host-to-device copies that do not stall the GPU.

`tensor.to("cuda")` from pageable memory, and `torch.tensor(..., device="cuda")`, wait for
the stream to drain: one such copy in a step turns the asynchronous GPU queue into a host
round trip. Per-step host data (augmentation draws, permutations, constants) goes through
pinned memory without blocking instead; the caching host allocator keeps the pinned buffer
alive until the copy has run.
"""

from __future__ import annotations

import torch

from core.cli import UsageError


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


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`: pinned + non-blocking on CUDA, a plain move elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def constant(values, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """`torch.tensor(values, device=device, dtype=dtype)` without a host sync."""
    return to_device(torch.tensor(values, dtype=dtype), device)
