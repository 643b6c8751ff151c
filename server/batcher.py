"""Coalesce concurrent embed requests into batched decodes and model forwards.

Requests put jobs (at most max_batch_size images each, still encoded: file bytes or base64
text) on a bounded queue and return to the event loop. One worker task takes jobs until the
batch is full or max_wait has passed, decodes and preprocesses the whole batch in the decode
thread (into one uint8 tensor), then runs the model in the model thread. The two stages
overlap: batch n+1 is decoded while batch n runs. A bad image fails only its own request.
A full queue is refused at once (503 + Retry-After) instead of growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from server.errors import ApiError, Overloaded, TooManyImages
from server.metrics import Metrics
from server.timing import Timing

Source = bytes | str
Decode = Callable[[torch.Tensor, list[Source], int], None]


@dataclass
class _Job:
    sources: list[Source]
    first: int
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class _Prepared:
    images: torch.Tensor
    jobs: list[_Job]
    failed: list[tuple[_Job, Exception]]
    decode_start: float
    decode_end: float


class Batcher:
    def __init__(
        self,
        decode: Decode,
        forward: Callable[[torch.Tensor], np.ndarray],
        image_shape: Sequence[int],
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        retry_after_s: int,
    ):
        self.decode_fn = decode
        self.forward_fn = forward
        self.image_shape = tuple(image_shape)
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.forwards = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._model = ThreadPoolExecutor(1, thread_name_prefix="model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._decoder.shutdown(wait=True)
        self._model.shutdown(wait=True)

    async def embed(self, sources: list[Source]) -> tuple[np.ndarray, Timing]:
        """Raw full-dim embeddings [n, D] for encoded images, and where the time went."""
        assert self._queue is not None, "Batcher.start() was not awaited"
        size = self.max_batch_size
        starts = range(0, len(sources), size)
        if len(starts) > self._queue.maxsize:  # not a busy moment: it could never be admitted
            limit = self._queue.maxsize * size
            raise TooManyImages(
                f"{len(sources)} images need {len(starts)} batch slots but the embedding queue "
                f"holds {self._queue.maxsize} (max_queue x max_batch_size = {limit} images); "
                f"send at most {limit} images per request"
            )
        if self._queue.maxsize - self._queue.qsize() < len(starts):
            self.metrics.rejected.inc()
            raise Overloaded(
                "the embedding queue is full; retry shortly",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        loop = asyncio.get_running_loop()
        jobs = [_Job(sources[s : s + size], s, loop.create_future()) for s in starts]
        for job in jobs:
            self._queue.put_nowait(job)
        self.metrics.queue_depth.set(self._queue.qsize())
        if len(jobs) == 1:  # most requests: no gather (it costs a future and callbacks)
            results = [await jobs[0].future]
        else:
            results = await asyncio.gather(*(j.future for j in jobs), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        preprocess = sum(t.preprocess for _, t in results)
        inference = sum(t.inference for _, t in results)
        waited = time.perf_counter() - jobs[0].enqueued - preprocess - inference
        timing = Timing(max(waited, 0.0), preprocess, inference)
        return np.concatenate([out for out, _ in results]), timing

    async def _next_batch(self, running: asyncio.Future | None) -> list[_Job]:
        """Jobs until the batch is full or max_wait has passed, and while the previous
        forward runs (the model is busy, so sealing a partial batch early gains nothing)."""
        queue = self._queue
        assert queue is not None
        first = self._carry or await queue.get()
        self._carry = None
        batch, n = [first], len(first.sources)
        deadline = time.monotonic() + self.max_wait
        while n < self.max_batch_size:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    try:
                        job = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        continue
                elif running is not None and not running.done():
                    getter = asyncio.ensure_future(queue.get())
                    await asyncio.wait((getter, running), return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():
                        getter.cancel()
                        break
                    job = getter.result()
                else:
                    break
            if n + len(job.sources) > self.max_batch_size:
                self._carry = job
                break
            batch.append(job)
            n += len(job.sources)
        self.metrics.queue_depth.set(queue.qsize())
        return batch

    def _decode(self, jobs: list[_Job]) -> _Prepared:
        """Decode thread: every job's images into one uint8 batch; a bad job is left out."""
        start = time.perf_counter()
        out = torch.empty((sum(len(j.sources) for j in jobs), *self.image_shape), dtype=torch.uint8)
        ok, failed, row = [], [], 0
        for job in jobs:
            n = len(job.sources)
            try:
                self.decode_fn(out[row : row + n], job.sources, job.first)
            except ApiError as e:
                failed.append((job, e))
                continue
            ok.append(job)
            row += n
        return _Prepared(out[:row], ok, failed, start, time.perf_counter())

    def _timed_forward(self, images: torch.Tensor) -> tuple[np.ndarray, float, float]:
        start = time.perf_counter()
        out = self.forward_fn(images)
        return out, start, time.perf_counter()

    async def _answer(self, batch: _Prepared, forward: asyncio.Future) -> None:
        """Resolve the batch's requests once its forward is done."""
        try:
            out, start, end = await forward
        except Exception as e:
            for job in batch.jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        self.forwards += 1
        self.metrics.forwards.inc()
        self.metrics.batch_size.observe(len(batch.images))
        self.metrics.model_seconds.observe(end - start)
        preprocess = batch.decode_end - batch.decode_start
        row = 0
        for job in batch.jobs:
            n = len(job.sources)
            if not job.future.done():
                queued = (batch.decode_start - job.enqueued) + (start - batch.decode_end)
                job.future.set_result((out[row : row + n], Timing(queued, preprocess, end - start)))
            row += n

    async def _run(self) -> None:
        """Collect, decode, forward. The loop waits on the model's own future, not on the
        task answering its batch: when a forward ends, the next one is handed to the model
        thread before the event loop writes the 32 answers (~4 ms of idle model otherwise)."""
        loop = asyncio.get_running_loop()
        running: asyncio.Future | None = None
        answering: set[asyncio.Task] = set()
        try:
            while True:
                live = [job for job in await self._next_batch(running) if not job.future.done()]
                if not live:
                    continue
                try:
                    batch = await loop.run_in_executor(self._decoder, self._decode, live)
                except Exception as e:
                    for job in live:
                        if not job.future.done():
                            job.future.set_exception(e)
                    continue
                for job, error in batch.failed:
                    if not job.future.done():
                        job.future.set_exception(error)
                if running is not None:
                    with contextlib.suppress(Exception):  # its task answers its requests
                        await running  # directly: woken right after that task, before answers
                running = None
                if batch.jobs:
                    running = loop.run_in_executor(self._model, self._timed_forward, batch.images)
                    task = asyncio.create_task(self._answer(batch, running), name="answer")
                    answering.add(task)
                    task.add_done_callback(answering.discard)
        finally:
            for task in answering:
                task.cancel()
