"""Host-to-device copies that do not stall the GPU.

`tensor.to("cuda")` from pageable memory, and `torch.tensor(..., device="cuda")`, wait for
the stream to drain: one such copy in a step turns the asynchronous GPU queue into a host
round trip. Copies of per-step host data (augmentation draws, permutations, constants) go
through pinned memory without blocking instead; the caching host allocator keeps the pinned
buffer alive until the copy has run.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device`: pinned + non-blocking on CUDA, a plain move elsewhere."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def constant(values, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """`torch.tensor(values, device=device, dtype=dtype)` without a host sync."""
    return to_device(torch.tensor(values, dtype=dtype), device)
