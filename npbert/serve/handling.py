"""What every route of the server does around its work: reading the body, counting and logging the outcome,
scheduling the forward on the batcher, and the JSON error shape. app.py (the answer routes) and explain.py
(the page's route) both build on it; it imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..pipeline import QuestionAnsweringPipeline
from ..tokenizer import TooManyWindows
from .batcher import Abandoned, LockedTokenizer, OverDeadline, Ticket
from .schemas import BadRequest

log = logging.getLogger("npbert.serve")


def request_pipeline(qa, model, tokenizer_lock, max_request_windows: int | None = None) -> QuestionAnsweringPipeline:
    """A pipeline for one request: `qa`'s settings, its forwards on `model` (the request's ScheduledModel),
    its tokenizer's calls under `tokenizer_lock`, and at most `max_request_windows` windows in all."""
    tokenizer = RequestTokenizer(qa.tokenizer, tokenizer_lock, max_request_windows)
    return QuestionAnsweringPipeline(
        model,
        tokenizer,
        model_id=qa.model_id,
        revision=qa.revision,
        batch_size=qa.batch_size,
        max_windows=qa.max_windows,
    )


class RequestTokenizer(LockedTokenizer):
    """The tokenizer, refusing a request whose questions make more than `max_total` windows in all (after
    tokenizing, before any forward; a question over the pipeline's own max_windows is refused by the
    tokenizer before its windows are made, and named by the pipeline)."""

    def __init__(self, tokenizer, lock, max_total: int | None):
        super().__init__(tokenizer, lock)
        self._max_total = max_total

    def encode_pairs(self, questions, contexts, max_seq_len, doc_stride, *args, **kwargs):
        """One question at a time (the lock is not held for a whole large request, and the count stops at
        the first question past the limit)."""
        encode, per_example, total = self.__getattr__("encode_pairs"), [], 0
        for question, context in zip(questions, contexts):
            try:
                (windows,) = encode([question], [context], max_seq_len, doc_stride, *args, **kwargs)
            except TooManyWindows as e:  # encoded one at a time: its index in the request is the pipeline's
                raise TooManyWindows(len(per_example), e.windows, e.limit) from None
            per_example.append(windows)
            total += len(windows)
            if self._max_total is not None and total > self._max_total:
                raise ValueError(
                    f"the request's first {len(per_example)} of {len(questions)} contexts make {total} "
                    f"windows of max_seq_len {max_seq_len} with doc_stride {doc_stride}, over the "
                    f"server's limit of {self._max_total} per request: send fewer questions or shorter "
                    "contexts per request"
                )
        return per_example


def error_response(
    status: int, message: str, problems: list[str] | None = None, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"status": status, "error": message, "problems": problems or [message]}, status_code=status, headers=headers
    )


ACCESS_LOG_TARGET_CHARS = 200


def short_target(target: str, limit: int = ACCESS_LOG_TARGET_CHARS) -> str:
    return target if len(target) <= limit else f"{target[:limit]}...[{len(target)} characters]"


def server_fault(request: Request, exc: Exception) -> JSONResponse:
    """A fault of the server, not of the request: 500, and the traceback in the log."""
    request.app.state.npbert.failed += 1
    log.error("%s %s failed", request.method, short_target(request.url.path), exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__}); the server log has the cause")


JSON_TYPES = ("application/json",)  # and any application/<something>+json


def check_content_type(request: Request) -> None:
    """415 unless the body is declared JSON (or not declared at all: a bare body is read as JSON), in UTF-8."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    kind, _, params = declared.partition(";")
    kind = kind.strip().lower()
    if kind not in JSON_TYPES and not (kind.startswith("application/") and kind.endswith("+json")):
        raise BadRequest(
            415, f"Content-Type {short_target(declared.strip(), 100)!r} is not JSON: send application/json"
        )
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BadRequest(
                415, f"charset {short_target(value.strip(), 40)!r} is not supported: JSON is sent in UTF-8"
            )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused with 415 if not declared JSON, with 413 as soon as it is known to exceed `limit`
    bytes (before reading it all), with 408 if it has not arrived within `timeout` seconds. A client that
    disconnects meanwhile raises starlette's ClientDisconnect."""
    check_content_type(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body is {int(declared)} bytes, over the server's limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(413, f"request body is over the server's limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        request.app.state.npbert.timeouts["body"] += 1
        raise BadRequest(
            408, f"request body not received within {timeout:g} s ({size} bytes came)", headers={"Connection": "close"}
        ) from None
    return b"".join(chunks)


async def handled(request: Request, state, compute, to_json=lambda data: data) -> JSONResponse:
    """Run a route's `compute()` with the server's bookkeeping: in-flight and the outcome counters, a
    logged 4xx for the client's faults (BadRequest), a logged 500 for anything else, and what is neither
    counted as what it is (app.py's module docstring lists the counters)."""
    limit = state.settings.limit_concurrency
    if limit is not None and state.in_flight >= limit:
        state.busy += 1
        log.warning(
            "%s %s: refused (503): %d requests in progress, the --limit-concurrency",
            request.method,
            short_target(request.url.path),
            state.in_flight,
        )
        return error_response(
            503,
            f"the server has {state.in_flight} requests in progress, its limit: retry shortly",
            headers={"Retry-After": "1"},
        )
    state.in_flight += 1
    t0 = time.monotonic()
    where = f"{request.method} {short_target(request.url.path)}"
    try:
        data = await compute()
    except BadRequest as e:
        state.refused += 1
        log.info("%s refused (%d): %s", where, e.status, e.message)
        return error_response(e.status, e.message, e.problems, e.headers)
    except (ClientDisconnect, Abandoned):
        state.aborted += 1
        log.info(
            "%s: the client went away after %.1f s, before its answer; its remaining work was dropped",
            where,
            time.monotonic() - t0,
        )
        return error_response(499, "the client closed the connection")  # sent to no one
    except OverDeadline as e:
        state.overdue += 1
        log.warning("%s: %s", where, e)
        return error_response(503, str(e), headers={"Retry-After": "10"})
    except asyncio.CancelledError:  # uvicorn cancels what still runs when the graceful timeout ends
        state.cut_off += 1
        log.warning(
            "%s: cut off by the shutdown after %.1f s (--graceful-timeout ended): answered 503",
            where,
            time.monotonic() - t0,
        )
        return error_response(
            503,
            "the server is shutting down; the request was not finished: retry",
            headers={"Connection": "close", "Retry-After": "10"},
        )
    except Exception as e:
        return server_fault(request, e)
    finally:
        state.in_flight -= 1
    state.answered += 1
    return JSONResponse(to_json(data))


async def until_gone(request: Request, ticket: Ticket) -> None:
    """Abandon `ticket` when the client disconnects (after the body, the next ASGI message is the
    disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.abandon()
            return
        await asyncio.sleep(0.05)


async def scheduled(request: Request, state, work):
    """`work(model)` on the batcher with a ticket carrying the request timeout, abandoned when the client
    goes away or the handler ends (a cut-off at shutdown) before the work does."""
    ticket = Ticket(timeout=state.settings.request_timeout)
    watcher = asyncio.ensure_future(until_gone(request, ticket))
    try:
        return await state.batcher.run(work, ticket)
    finally:
        watcher.cancel()
        ticket.abandon()
