"""Where a request's time went; the batcher measures it, metrics and headers report it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Where a request's embedding time went, in seconds (sent as x-*-time headers)."""

    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
