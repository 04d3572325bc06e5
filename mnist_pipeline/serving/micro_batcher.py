"""Micro-batching: the digits of concurrent requests classified together, in one session run.

One `MicroBatcher` per loaded model (a model swap makes a new one and retires the old one
once its queue is served), so a run never mixes two models.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
from starlette.concurrency import run_in_threadpool

from mnist_pipeline.serving import predict

Digits = tuple[list[np.ndarray], list[str]]  # uint8 (28, 28) digits and their names
Job = tuple[list[np.ndarray], list[str], asyncio.Future]


class MicroBatcher:
    """Classifies the digits of concurrent requests together, in one session run.

    A request that finds no run in progress runs at once, alone. The others queue, and a run
    takes the requests that queued while earlier ones ran, up to `max_batch` digits (a request
    with more runs alone), waiting at most `max_wait_ms` for more when that leaves room (0:
    none). So batching only happens under load, and a lone request pays nothing for it. Runs
    are off the event loop. With `max_batch` 1 every request runs on its own, at once.
    `on_run` sees the number of digits of every run.
    """

    def __init__(
        self,
        sess: ort.InferenceSession,
        max_batch: int,
        max_wait_ms: float,
        on_run: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.sess, self.max_batch, self.max_wait = sess, max_batch, max_wait_ms / 1000
        self.on_run = on_run
        self._running = 0  # session runs in progress
        self._callers = 0  # requests in `classify`, queued or not
        # The queue and its worker task belong to the event loop that serves (uvicorn has one).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Job]
        self._worker: asyncio.Task | None = None

    def _classify(self, digits: list[np.ndarray], names: list[str]) -> list[predict.Prediction]:
        preds = predict.classify(self.sess, digits, names)
        self.on_run(len(digits))
        return preds

    async def classify(self, load: Callable[[], Digits]) -> tuple[list[predict.Prediction], int]:
        """The predictions for the digits `load` gives (it runs off the event loop too), and
        the number of digits in the run that classified them.

        With nothing running, a request runs at once, loading and classifying in one trip to a
        worker thread; otherwise its digits queue for the next shared run."""
        self._callers += 1
        try:
            return await self._classify_one(load)
        finally:
            self._callers -= 1

    async def _classify_one(
        self, load: Callable[[], Digits]
    ) -> tuple[list[predict.Prediction], int]:
        loop = asyncio.get_running_loop()
        idle = self._running == 0 and (loop is not self._loop or self._queue.empty())
        if self.max_batch <= 1 or idle:
            self._running += 1
            try:
                preds = await run_in_threadpool(lambda: self._classify(*load()))
                return preds, len(preds)
            finally:
                self._running -= 1
        digits, names = await run_in_threadpool(load)
        if loop is not self._loop:
            await self.close()
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._serve(self._queue))
        done = loop.create_future()
        await self._queue.put((digits, names, done))
        return await done

    async def _serve(self, queue: asyncio.Queue[Job]) -> None:
        carry = None  # a request that would have made the last run too big: the next one's
        while True:
            jobs = [carry if carry is not None else await queue.get()]
            carry, size = None, len(jobs[0][0])
            deadline = time.monotonic() + self.max_wait
            while size < self.max_batch:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                if size + len(job[0]) > self.max_batch:
                    carry = job
                    break
                jobs.append(job)
                size += len(job[0])
            await self._run(jobs)

    async def _run(self, jobs: list[Job]) -> None:
        digits = [d for job in jobs for d in job[0]]
        names = [n for job in jobs for n in job[1]]
        self._running += 1
        try:
            preds = await run_in_threadpool(self._classify, digits, names)
        except Exception as err:  # each waiting request gets the error
            for *_, done in jobs:
                if not done.done():
                    done.set_exception(err)
            return
        finally:
            self._running -= 1
        start = 0
        for job_digits, _, done in jobs:
            if not done.done():  # a request whose client went away
                done.set_result((preds[start : start + len(job_digits)], len(digits)))
            start += len(job_digits)

    async def retire(self, poll_s: float = 0.01) -> None:
        """Close once the requests already given to this batcher are answered."""
        while self._callers:
            await asyncio.sleep(poll_s)
        await self.close()

    async def close(self) -> None:
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
        self._worker = None
