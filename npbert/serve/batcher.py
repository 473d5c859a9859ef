"""Fair dynamic batching: the forwards of concurrent requests take turns on one inference thread, and
forwards of different requests share model calls.

Each request is answered by the question-answering pipeline (npbert/pipeline.py) in a thread of its own
(a *driver*), on a stand-in for the model (`ScheduledModel`): its forward does not run the model but
queues the windows and waits. One inference thread runs the model. It takes the queued forwards in
arrival order; since a pipeline waits for each forward before it queues the next, a request has at most
one forward queued, and the requests take turns. A turn is at most `turn_tokens` tokens of windows (a
pipeline forward of 8 long windows is queued as pieces of that size, one after the other): a request of
600 windows of 384 tokens gets one window per turn, and a one-window request arriving meanwhile waits
for at most one such piece before its own forward is run. The forwards found queued together (after at
most `wait_s` when the server was idle) are joined into one model call of at most `max_batch` windows
and, padded to the longest, at most `turn_tokens` tokens (a short window is not padded to a long one's
width), and each request gets back its own rows: that is the dynamic batching, and it joins requests
with any parameters (parameters act on tokenizing and post-processing, not on the forward). If a joined
call fails, each forward in it is run again on its own, so one request's fault never fails another's.

Before each forward a request checks its `Ticket`: a request whose client went away stops
(`Abandoned`), one past its deadline stops (`OverDeadline`), and its remaining forwards are never run.
Tokenizing and post-processing run in the drivers, the tokenizer's calls one at a time
(`LockedTokenizer`); the model only ever runs on the inference thread.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


class Abandoned(Exception):
    """The request's client went away (or the server is cutting it off): its work is dropped."""


class OverDeadline(Exception):
    """The request was not finished within its deadline: its remaining work is dropped."""

    def __init__(self, seconds: float, forwards: int):
        super().__init__(
            f"not answered within the server's request timeout of {seconds:g} s ({forwards} forwards "
            "run); retry later or send fewer or shorter contexts"
        )


@dataclass
class Ticket:
    """One request's standing: its deadline (monotonic seconds; None: none) and whether anyone still waits."""

    timeout: float | None = None
    forwards: int = 0  # forwards run for it
    started: float = field(default_factory=time.monotonic)
    _gone: threading.Event = field(default_factory=threading.Event)

    def abandon(self) -> None:
        self._gone.set()

    @property
    def abandoned(self) -> bool:
        return self._gone.is_set()

    def check(self) -> None:
        if self._gone.is_set():
            raise Abandoned("the client went away")
        if self.timeout is not None and time.monotonic() - self.started > self.timeout:
            raise OverDeadline(self.timeout, self.forwards)


@dataclass
class Forward:
    input_ids: np.ndarray  # [B, S]
    attention_mask: np.ndarray | None
    kwargs: dict  # output_attentions=True: run alone, the model's own output returned
    ticket: Ticket
    future: Future = field(default_factory=Future)
    job: object = None  # a callable job(model), run alone in place of a forward (ScheduledModel.turn)

    @property
    def alone(self) -> bool:
        return bool(self.kwargs) or self.job is not None

    @property
    def rows(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Rows:
    """One forward's rows of a joined model call, cut to its own sequence length."""

    start_logits: np.ndarray
    end_logits: np.ndarray


@dataclass
class Stats:
    forwards: int = 0  # model calls made
    windows: int = 0  # windows (rows) run through them
    shared: int = 0  # model calls holding forwards of more than one request
    requests: int = 0  # requests answered
    largest: int = 0  # most windows in one call
    skipped: int = 0  # queued forwards dropped: their client had gone or their deadline passed

    def as_dict(self) -> dict:
        mean = self.windows / self.forwards if self.forwards else 0.0
        return {
            "forwards": self.forwards,
            "windows": self.windows,
            "shared_forwards": self.shared,
            "requests": self.requests,
            "mean_windows_per_forward": round(mean, 3),
            "largest_forward": self.largest,
            "skipped_forwards": self.skipped,
        }


class ScheduledModel:
    """The model as one request's pipeline sees it: attributes are the model's; a call queues the forward
    on the batcher and waits for its rows."""

    def __init__(self, model, batcher: "Batcher", ticket: Ticket):
        self._model, self._batcher, self._ticket = model, batcher, ticket

    def __getattr__(self, name):  # config, dtype, ...
        return getattr(self._model, name)

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        ids = np.asarray(input_ids)
        mask = None if attention_mask is None else np.asarray(attention_mask)
        rows = max(1, self._batcher.turn_tokens // max(1, ids.shape[1]))  # rows of this width in one turn
        if kwargs or len(ids) <= rows:  # attention asked for: one piece (its arrays are per forward)
            return self._turn(ids, mask, kwargs)
        pieces = [
            self._turn(ids[i : i + rows], None if mask is None else mask[i : i + rows], {})
            for i in range(0, len(ids), rows)
        ]
        return Rows(np.concatenate([p.start_logits for p in pieces]), np.concatenate([p.end_logits for p in pieces]))

    def turn(self, job):
        """`job(model)` on the inference thread, as one turn of this request's own (an attribution's backward
        pass: npbert/serve/attributions.py); its result, or what it raised."""
        return self._turn(np.zeros((1, 1), np.int64), None, {}, job)

    def _turn(self, ids, mask, kwargs, job=None):
        self._ticket.check()
        forward = Forward(ids, mask, kwargs, self._ticket, job=job)
        self._batcher.queue(forward)
        result = forward.future.result()
        self._ticket.forwards += 1
        return result


class LockedTokenizer:
    """A tokenizer whose methods run one at a time (a tokenizers backend keeps per-call state)."""

    def __init__(self, tokenizer, lock: threading.Lock):
        self._tokenizer, self._lock = tokenizer, lock

    def __getattr__(self, name):
        value = getattr(self._tokenizer, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked


class Batcher:
    """The inference thread and the drivers; see the module docstring. `max_batch=1`: every forward is
    its own model call (batching off)."""

    def __init__(
        self,
        model,
        max_batch: int = 8,
        wait_s: float = 0.005,
        turn_tokens: int = 512,
        max_drivers: int = 256,
        pad_token_id: int = 0,
    ):
        if max_batch < 1 or wait_s < 0 or turn_tokens < 1:
            raise ValueError(
                f"max_batch and turn_tokens must be >= 1 and wait_s >= 0, got {max_batch}, {turn_tokens} and {wait_s}"
            )
        self.model, self.max_batch, self.wait_s, self.pad_token_id = model, max_batch, wait_s, pad_token_id
        self.turn_tokens = turn_tokens
        self.stats = Stats()
        self.tokenizer_lock = threading.Lock()
        self._queue: queue.Queue[Forward | None] = queue.Queue()
        self._held: collections.deque[Forward] = collections.deque()  # taken from the queue, not yet run
        self._thread: threading.Thread | None = None
        self._drivers = ThreadPoolExecutor(max_workers=max_drivers, thread_name_prefix="npbert-request")
        self._active = 0  # requests being driven (changed by the event loop and the drivers: under the lock)
        self._active_lock = threading.Lock()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="npbert-infer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop once no request is being driven (the server drains or cuts off its requests before this)."""
        if self._thread is None:
            return
        while self._active:
            await asyncio.sleep(0.01)
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._drivers.shutdown(wait=True)
        self._thread = None

    async def run(self, work, ticket: Ticket):
        """`work(model)` in a driver thread, `model` being this request's ScheduledModel; its result, or what
        it raised. Raises Abandoned at once if the ticket is abandoned meanwhile."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the batcher is not running")

        def drive():
            try:
                return work(ScheduledModel(self.model, self, ticket))
            finally:
                with self._active_lock:
                    self._active -= 1

        with self._active_lock:  # counted here, on the event loop: stop() must not miss a request not yet started
            self._active += 1
        result = await asyncio.get_running_loop().run_in_executor(self._drivers, drive)
        self.stats.requests += 1
        return result

    def queue(self, forward: Forward) -> None:
        self._queue.put(forward)

    # --- the inference thread ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            first = self._held.popleft() if self._held else self._queue.get()
            if first is None:
                return
            batch = self._collect(first)
            if batch is None:
                return
            self._run(batch)

    def _collect(self, first: Forward) -> list[Forward] | None:
        """`first` and the forwards queued after it that fit one call with it: at most `max_batch` rows and,
        padded to the widest, at most `turn_tokens` tokens (a short window is not padded to a long one's
        width: the two run faster apart). None: stop."""
        batch, rows, width = [first], first.rows, first.input_ids.shape[1]
        if first.alone or self.max_batch == 1:
            return batch
        deadline = time.monotonic() + self.wait_s
        held = []
        while rows < self.max_batch:
            if self._held:
                f = self._held.popleft()
            else:
                try:
                    f = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if f is None:  # stop: after this batch
                self._queue.put(None)
                break
            wider = max(width, f.input_ids.shape[1])
            if not f.alone and rows + f.rows <= self.max_batch and (rows + f.rows) * wider <= self.turn_tokens:
                batch.append(f)
                rows, width = rows + f.rows, wider
            else:
                held.append(f)
        self._held.extendleft(reversed(held))  # in arrival order, before anything still queued
        return batch

    def _run(self, batch: list[Forward]) -> None:
        live = []
        for f in batch:
            try:  # its client went away or its deadline passed while it was queued: do not spend the model on it
                f.ticket.check()
            except (Abandoned, OverDeadline) as e:
                self.stats.skipped += 1
                f.future.set_exception(e)
            else:
                live.append(f)
        if not live:
            return
        try:
            outputs = self._call(live)
        except Exception as e:
            if len(live) == 1:
                live[0].future.set_exception(e)
                return
            for f in live:  # find whose forward failed: run each on its own
                try:
                    f.future.set_result(self._call([f])[0])
                except Exception as e:
                    f.future.set_exception(e)
            return
        for f, out in zip(live, outputs):
            f.future.set_result(out)

    def _call(self, batch: list[Forward]) -> list:
        if len(batch) == 1:
            f = batch[0]
            if f.job is not None:
                outputs = [f.job(self.model)]
            else:
                outputs = [self.model(f.input_ids, attention_mask=f.attention_mask, **f.kwargs)]
        else:
            width = max(f.input_ids.shape[1] for f in batch)
            ids = np.concatenate([_pad(f.input_ids, width, self.pad_token_id) for f in batch])
            mask = np.concatenate(
                [
                    _pad(f.attention_mask if f.attention_mask is not None else np.ones_like(f.input_ids), width, 0)
                    for f in batch
                ]
            )
            out = self.model(ids, attention_mask=mask)
            outputs, at = [], 0
            for f in batch:
                S = f.input_ids.shape[1]
                outputs.append(Rows(out.start_logits[at : at + f.rows, :S], out.end_logits[at : at + f.rows, :S]))
                at += f.rows
        s = self.stats
        rows = sum(f.rows for f in batch)
        s.forwards, s.windows, s.largest = s.forwards + 1, s.windows + rows, max(s.largest, rows)
        s.shared += len({id(f.ticket) for f in batch}) > 1
        return outputs


def _pad(a: np.ndarray, width: int, value) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=value)
