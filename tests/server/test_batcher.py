"""The batcher alone: coalescing, batch size cap, a bad image failing only its request, the
timing split, and 503 + Retry-After when the queue is full."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from server.batcher import Batcher
from server.errors import BadInput, Overloaded
from server.metrics import Metrics


def decode(out: torch.Tensor, sources: list, first: int) -> None:
    """Test 'images': bytes holding one small number, which fills the 1x1x1 image."""
    for i, s in enumerate(sources):
        if s == b"bad":
            raise BadInput(f"image {first + i} is not an image file PIL can read")
        out[i] = int(s)


def make(forward, **kw) -> Batcher:
    opts = dict(max_batch_size=8, max_wait_ms=20, max_queue=64, retry_after_s=3)
    opts.update(kw)
    return Batcher(decode, forward, (1, 1, 1), Metrics(), **opts)


def values(n: int, start: int = 0) -> list[bytes]:
    return [str(start + i).encode() for i in range(n)]


def test_coalesces_and_caps_batches():
    sizes = []

    def forward(x: torch.Tensor) -> np.ndarray:
        assert x.dtype == torch.uint8
        sizes.append(len(x))
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward)
        await b.start()
        outs = await asyncio.gather(
            *(b.embed(values(1, i)) for i in range(20)), b.embed(values(11))
        )
        await b.stop()
        return outs, b.forwards

    outs, forwards = asyncio.run(run())
    assert [float(o[0, 0]) for o, _ in outs[:20]] == [float(i) for i in range(20)]
    assert outs[20][0][:, 0].tolist() == list(range(11))
    assert max(sizes) <= 8 and sum(sizes) == 31 and forwards == len(sizes) < 21


def test_bad_image_fails_only_its_request_and_names_its_position():
    def forward(x: torch.Tensor) -> np.ndarray:
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward, max_batch_size=4)
        await b.start()
        bad = [b"1", b"2", b"3", b"4", b"5", b"bad"]  # split into jobs of 4 and 2
        outs = await asyncio.gather(
            b.embed(values(2, 10)), b.embed(bad), b.embed(values(1, 20)), return_exceptions=True
        )
        await b.stop()
        return outs

    good, err, other = asyncio.run(run())
    assert isinstance(err, BadInput) and "image 5 " in err.message
    assert good[0][:, 0].tolist() == [10.0, 11.0] and other[0][:, 0].tolist() == [20.0]


def test_while_the_model_is_busy_the_next_batch_keeps_filling():
    gate, entered = threading.Event(), threading.Event()
    sizes = []

    def forward(x: torch.Tensor) -> np.ndarray:
        sizes.append(len(x))
        entered.set()
        gate.wait(5)
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward, max_wait_ms=1)
        await b.start()
        first = asyncio.create_task(b.embed(values(1)))
        while not entered.is_set():  # first is in the model; max_wait passes many times below
            await asyncio.sleep(0.01)
        rest = []
        for i in range(5):
            rest.append(asyncio.create_task(b.embed(values(1, i))))
            await asyncio.sleep(0.02)
        gate.set()
        await asyncio.gather(first, *rest)
        await b.stop()

    asyncio.run(run())
    assert sizes == [1, 5]


def test_timing_split_adds_up_to_the_wait():
    def forward(x: torch.Tensor) -> np.ndarray:
        time.sleep(0.05)
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward, max_batch_size=2, max_wait_ms=0)
        await b.start()
        start = time.perf_counter()
        outs = await asyncio.gather(*(b.embed(values(1, i)) for i in range(4)))
        elapsed = time.perf_counter() - start
        await b.stop()
        return [t for _, t in outs], elapsed

    timings, elapsed = asyncio.run(run())
    for t in timings:
        assert t.inference >= 0.05 and t.preprocess >= 0 and t.queue >= 0
        assert t.queue + t.preprocess + t.inference <= elapsed + 1e-3
    # 2 batches of 2 run one after the other: the later pair waited for the first forward
    assert sorted(t.queue for t in timings)[-1] >= 0.04


def test_full_queue_is_refused_with_retry_after():
    gate = threading.Event()

    def forward(x: torch.Tensor) -> np.ndarray:
        gate.wait(5)
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward, max_queue=2, max_wait_ms=0, max_batch_size=1)
        await b.start()
        one = values(1)
        first = asyncio.create_task(b.embed(one))  # taken by the worker, blocks in forward
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.embed(one))  # decoded, waits for the forward
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(b.embed(one)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as e:
            await b.embed(one)
        gate.set()
        await asyncio.gather(first, second, *queued)
        await b.stop()
        return e.value

    err = asyncio.run(run())
    assert err.status == 503 and err.headers["Retry-After"] == "3"


def test_a_failed_forward_fails_only_its_batch():
    def forward(x: torch.Tensor) -> np.ndarray:
        if int(x[0].item()) == 7:
            raise RuntimeError("CUDA out of memory")
        return x.flatten(1).float().numpy()

    async def run():
        b = make(forward, max_batch_size=1, max_wait_ms=0)
        await b.start()
        outs = await asyncio.gather(
            *(b.embed(values(1, i)) for i in (5, 7, 9)), return_exceptions=True
        )
        after = await asyncio.wait_for(b.embed(values(1, 11)), 5)  # still serving
        await b.stop()
        return outs, after

    (five, seven, nine), after = asyncio.run(run())
    assert isinstance(seven, RuntimeError)
    assert five[0][0, 0] == 5 and nine[0][0, 0] == 9 and after[0][0, 0] == 11
