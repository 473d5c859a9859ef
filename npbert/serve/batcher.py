"""Dynamic batching: concurrent requests asking with the same parameters share one pipeline call.

The pipeline answers equal-length lists of questions and contexts with all their windows in shared
forward batches, and a forward over B windows costs much less than B forwards of one (the weights are
read once per GEMM instead of B times). So requests that arrive close together are queued, coalesced
for at most `wait_s` after the first one (or until `max_batch` questions are collected), and answered
by one call in a single worker thread, off the event loop. While that call runs, new requests queue up
and form the next batch at once; the wait window only delays a request that finds the server idle.

Requests with different parameters (top_k, max_seq_len, ...) cannot share a call: each batch holds one
parameter set, and requests that do not fit wait, in arrival order, for a later batch. If a shared call
fails, each request in it is answered again on its own, so one request's bad input never fails the
others.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

# infer(questions, contexts, params) -> one result per question, in order (blocking; runs in the worker)
Infer = Callable[[list, list, dict], list]


@dataclass
class Job:
    questions: list[str]
    contexts: list[str]
    params: dict[str, Any]
    future: asyncio.Future
    key: tuple = field(init=False)

    def __post_init__(self):
        self.key = tuple(sorted(self.params.items()))


@dataclass
class Stats:
    calls: int = 0  # pipeline calls made
    requests: int = 0  # requests answered through them
    questions: int = 0
    largest: int = 0  # most questions in one call

    def as_dict(self) -> dict:
        mean = self.questions / self.calls if self.calls else 0.0
        return {"calls": self.calls, "requests": self.requests, "questions": self.questions,
                "mean_questions_per_call": round(mean, 3), "largest_call": self.largest}


class Batcher:
    """Queue of requests in front of one worker thread running `infer`.

    With `max_batch=1` (or `wait_s=0` and no queue) every request is its own call: batching off.
    """

    def __init__(self, infer: Infer, max_batch: int = 16, wait_s: float = 0.005):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, got {max_batch} and {wait_s}")
        self.infer, self.max_batch, self.wait_s = infer, max_batch, wait_s
        self.stats = Stats()
        self._queue: asyncio.Queue[Job] | None = None
        self._held: collections.deque[Job] = collections.deque()  # queued jobs that did not fit the last batch
        self._task: asyncio.Task | None = None
        self._busy = False  # a batch is being answered
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npbert-infer")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="npbert-batcher")

    async def stop(self) -> None:
        """Stop after the calls already queued are answered (the server drains requests before this)."""
        if self._task is None:
            return
        while (self._busy or self._held or not self._queue.empty()) and not self._task.done():
            await asyncio.sleep(0.01)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=True)
        self._task = None

    async def run_exclusive(self, fn, *args):
        """fn(*args) on the thread that runs the batches, between two of them: the model is only ever
        used from that one thread (one forward at a time, its scratch memory bounded)."""
        if self._executor is None:
            raise RuntimeError("the batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, questions: list[str], contexts: list[str], params: dict[str, Any]) -> list:
        """The results for these questions, in order; raises what `infer` raised for them."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        job = Job(questions, contexts, params, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    # --- the loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            first = self._held.popleft() if self._held else await self._queue.get()
            self._busy = True
            try:
                await self._answer(await self._collect(first))
            finally:
                self._busy = False

    async def _collect(self, first: Job) -> list[Job]:
        batch, size = [first], len(first.questions)

        def fits(job: Job) -> bool:
            return job.key == first.key and size + len(job.questions) <= self.max_batch

        for job in list(self._held):  # earlier arrivals first
            if fits(job):
                self._held.remove(job)
                batch.append(job)
                size += len(job.questions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while size < self.max_batch:
            if self._queue.empty():
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if fits(job):
                batch.append(job)
                size += len(job.questions)
            else:
                self._held.append(job)
        return batch

    async def _answer(self, batch: list[Job]) -> None:
        questions = [q for job in batch for q in job.questions]
        contexts = [c for job in batch for c in job.contexts]
        try:
            results = await self._call(questions, contexts, batch[0].params, len(batch))
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0], error=e)
                return
            for job in batch:  # find whose input failed: answer each on its own
                try:
                    _settle(job, await self._call(job.questions, job.contexts, job.params, 1))
                except Exception as e:
                    _settle(job, error=e)
            return
        at = 0
        for job in batch:
            _settle(job, results[at:at + len(job.questions)])
            at += len(job.questions)

    async def _call(self, questions: list, contexts: list, params: dict, n_requests: int) -> list:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, self.infer, questions, contexts, params)
        if len(results) != len(questions):
            raise RuntimeError(f"infer returned {len(results)} results for {len(questions)} questions")
        s = self.stats
        s.calls, s.requests, s.questions = s.calls + 1, s.requests + n_requests, s.questions + len(questions)
        s.largest = max(s.largest, len(questions))
        return results


def _settle(job: Job, results: list | None = None, error: BaseException | None = None) -> None:
    if job.future.done():  # the client went away and its handler was cancelled
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(results)
