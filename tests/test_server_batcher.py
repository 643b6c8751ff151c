"""The batcher alone: coalescing, batch size cap, and 503 + Retry-After when the queue is full."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from server.batcher import Batcher
from server.errors import Overloaded
from server.metrics import Metrics


def make(forward, **kw) -> Batcher:
    opts = dict(max_batch_size=8, max_wait_ms=20, max_queue=64, retry_after_s=3)
    opts.update(kw)
    return Batcher(forward, Metrics(), **opts)


def test_coalesces_and_caps_batches():
    sizes = []

    def forward(x: torch.Tensor) -> np.ndarray:
        sizes.append(len(x))
        return x.flatten(1).numpy()

    async def run():
        b = make(forward)
        await b.start()
        inputs = [torch.full((1, 1, 1, 1), float(i)) for i in range(20)]
        big = torch.arange(11.0).view(11, 1, 1, 1)
        outs = await asyncio.gather(*(b.embed(x) for x in inputs), b.embed(big))
        await b.stop()
        return outs, b.forwards

    outs, forwards = asyncio.run(run())
    assert [float(o[0, 0]) for o in outs[:20]] == [float(i) for i in range(20)]
    assert outs[20][:, 0].tolist() == list(range(11))
    assert max(sizes) <= 8 and sum(sizes) == 31 and forwards == len(sizes) < 21


def test_full_queue_is_refused_with_retry_after():
    gate = threading.Event()

    def forward(x: torch.Tensor) -> np.ndarray:
        gate.wait(5)
        return x.flatten(1).numpy()

    async def run():
        b = make(forward, max_queue=2, max_wait_ms=0)
        await b.start()
        one = torch.zeros(1, 1, 1, 1)
        first = asyncio.create_task(b.embed(one))  # taken by the worker, blocks in forward
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.embed(one)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as e:
            await b.embed(one)
        gate.set()
        await asyncio.gather(first, *queued)
        await b.stop()
        return e.value

    err = asyncio.run(run())
    assert err.status == 503 and err.headers["Retry-After"] == "3"
