"""The encoder as the server runs it: a frozen TorchScript trace, or the eager module.

Why a trace: the eager module's forward is Python calling one torch op per layer, and each
op hands the GIL back and must take it again before the next layer. Under load the event
loop (HTTP, JSON) and the decode thread hold the GIL in between, so every layer waits for
them: the convnet's eager forward ran 6-12x slower next to one busy Python thread, a
traced one ~2x (`gil` in bench/bench_server.py's JSON). A traced forward runs in C++ and
takes the GIL once, at the end. Freezing also folds BatchNorm into the convolutions, so embeddings
differ from the eager module's by float rounding only (~1e-7; tests/test_server_runtime.py).

`eager` keeps the nn.Module as trained: for a model a trace cannot capture, or to compare.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch

Runtime = Literal["torchscript", "eager"]


def serving_encoder(
    encoder: torch.nn.Module, image_size: int, device: torch.device, runtime: Runtime
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`encoder` (eval mode, on `device`) as the server calls it, on [n, 3, S, S] floats."""
    if runtime == "eager":
        return encoder
    example = torch.zeros(2, 3, image_size, image_size, device=device)
    with warnings.catch_warnings():
        # torch marks torch.jit deprecated (for torch.compile/export); the pinned torch ships
        # it, and a TorchScript call is what runs a whole forward in C++ without the GIL
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        with torch.inference_mode():
            return torch.jit.freeze(torch.jit.trace(encoder, example))
