"""Coalesce concurrent embed requests into batched model forwards.

Requests put jobs (at most max_batch_size images each) on a bounded queue; one worker
task takes jobs until the batch is full or max_wait has passed, runs the model in its own
thread (the event loop keeps serving), and hands each job its rows. A full queue is
refused at once (503 + Retry-After) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from server.errors import Overloaded
from server.metrics import Metrics


@dataclass
class _Job:
    images: torch.Tensor
    future: asyncio.Future = field(repr=False)


class Batcher:
    def __init__(
        self,
        forward: Callable[[torch.Tensor], np.ndarray],
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        retry_after_s: int,
    ):
        self.forward_fn = forward
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.forwards = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def embed(self, images: torch.Tensor) -> np.ndarray:
        """Raw full-dim embeddings [n, D] for preprocessed images [n, 3, H, W]."""
        assert self._queue is not None, "Batcher.start() was not awaited"
        chunks = images.split(self.max_batch_size)
        if self._queue.maxsize - self._queue.qsize() < len(chunks):
            self.metrics.rejected.inc()
            raise Overloaded(
                "the embedding queue is full; retry shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(chunk, loop.create_future()) for chunk in chunks]
        for job in jobs:
            self._queue.put_nowait(job)
        self.metrics.queue_depth.set(self._queue.qsize())
        return np.concatenate(await asyncio.gather(*(job.future for job in jobs)))

    async def _next_batch(self) -> list[_Job]:
        queue = self._queue
        assert queue is not None
        first = self._carry or await queue.get()
        self._carry = None
        batch, n = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch_size:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if n + len(job.images) > self.max_batch_size:
                self._carry = job
                break
            batch.append(job)
            n += len(job.images)
        self.metrics.queue_depth.set(queue.qsize())
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            live = [job for job in batch if not job.future.done()]
            if not live:
                continue
            images = torch.cat([job.images for job in live])
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._executor, self.forward_fn, images)
            except Exception as e:
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            self.forwards += 1
            self.metrics.forwards.inc()
            self.metrics.batch_size.observe(len(images))
            self.metrics.model_seconds.observe(time.perf_counter() - start)
            row = 0
            for job in live:
                n = len(job.images)
                if not job.future.done():
                    job.future.set_result(out[row : row + n])
                row += n
