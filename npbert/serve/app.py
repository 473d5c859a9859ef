"""The HTTP application of `npbert serve` (FastAPI on uvicorn): the model catalog's scoring route, the
pipeline's full records, health, and an OpenAPI document of both answering routes.

    POST /score      {"input_data": {"question": Q, "context": C}, "parameters": {...}}  ->  ["John"]
    POST /v1/answer  same body  ->  [{"answer": "John", "score": 0.98, "start": 11, "end": 15}]
    POST /v1/attributions  one question and context  ->  per-token attributions of the answer (attributions.py)
    GET  /health     liveness and what is served: model id, revision, weights sha256, batching counters
    GET  /openapi.json, /docs

The model loads once, in `create_app` (before the server listens, so a listening server is a ready
one), and answers a warm-up question so the first request does not pay numba's compilation. Requests are
parsed and checked in `schemas.py`; answering goes through the `Batcher` (the forwards of all requests
take turns on one inference thread, off the event loop). Every refusal is a JSON body
`{"status", "error", "problems"}`; a 500 means a fault of the server and is logged with its traceback.
What is not a fault is counted as what it is: a client that went away (`aborted`: mid-body, or while its
answer was computed, whose remaining work is then dropped), a request over its deadline (503,
`overdue`), one cut off by the shutdown's graceful timeout (503, `cut_off`), one beyond the
`limit_concurrency` requests in progress (503, `busy`; idle connections do not count), a slow head or body
(408, `timeouts`).

To add routes (the teaching page will live at GET /), write a function `add_<name>_routes(app, state)`
beside `add_answer_routes` below and call it from `create_app`; `app.state.npbert` is the `State`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException

from .. import __version__, threads
from ..hub import DEFAULT_MODEL, sha256_file
from ..pipeline import pipeline
from .attributions import add_attribution_routes
from .batcher import Batcher
from .explain import add_explain_routes
from .handling import error_response, handled, log, read_body, request_pipeline, scheduled, server_fault, short_target
from .schemas import AnswerRecord, BadRequest, ErrorResponse, Limits, ScoreRequest, parse_request

SAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}
SETTINGS_ENV = "NPBERT_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
LOG_LEVEL_ENV = "NPBERT_SERVE_LOG_LEVEL"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Settings:
    """Everything `create_app` needs; `npbert serve` builds it from its flags."""

    model: str = DEFAULT_MODEL
    revision: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8  # windows per model call, from any requests (the pipeline's forwards are of 8); 1: off
    batch_wait_ms: float = 5.0  # how long an idle server waits for company before answering
    turn_tokens: int = 512  # most tokens of windows one request runs before the others get a turn
    warmup: bool = True
    request_timeout: float = 120.0  # seconds from a body read to its answer; later: 503, the rest of its work dropped
    header_timeout: float = 10.0  # seconds for a request line and headers to arrive (protocol.py)
    body_timeout: float = 30.0  # seconds for a body to arrive, from the end of its headers
    # Most requests in progress in this process (their bodies being read, or answered); more get 503 at once.
    # Counted here, not by uvicorn's limit_concurrency, which also counts idle open connections: 500 sockets
    # opened and left silent made every real request get 503 until the header timeout closed them.
    limit_concurrency: int | None = 128

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Settings":
        d = json.loads(text)
        return cls(**{**d, "limits": Limits(**d["limits"])})


@dataclass
class State:
    """What the routes share: the loaded pipeline, its provenance, the batcher and counters."""

    settings: Settings
    qa: Any  # npbert.pipeline.QuestionAnsweringPipeline
    folder: Path
    weights_sha256: str
    batcher: Batcher
    started: float = field(default_factory=time.time)
    in_flight: int = 0
    answered: int = 0
    refused: int = 0  # 4xx: the client's fault (408 timeouts included)
    failed: int = 0  # 500: the server's fault
    aborted: int = 0  # the client went away before its answer (mid-body, or while it was computed)
    overdue: int = 0  # 503: not answered within request_timeout
    busy: int = 0  # 503: limit_concurrency requests were in progress
    cut_off: int = 0  # 503: still running when the shutdown's graceful timeout ended
    timeouts: dict = field(default_factory=lambda: {"headers": 0, "body": 0})

    def counters(self) -> str:
        return (
            f"{self.answered} answered, {self.refused} refused, {self.failed} failed, {self.aborted} aborted by "
            f"their clients, {self.overdue} over the request timeout, {self.busy} over the concurrency limit, "
            f"{self.cut_off} cut off by the shutdown"
        )


def answer_questions(qa, questions: list[str], contexts: list[str], params: dict) -> list:
    """One result per question, in order, as plain JSON values.

    No `batch_size` is passed: the pipeline then post-processes each window unpadded, so an answer never
    depends on which requests shared its forwards."""
    out = qa(question=questions, context=contexts, **params)
    # The pipeline (like transformers') unwraps a one-question list: wrap it back.
    results = [out] if len(questions) == 1 else out
    return [_plain(r) for r in results]


def _plain(result):
    """A pipeline result with numpy scalars turned into JSON numbers."""
    if isinstance(result, list):
        return [_plain(r) for r in result]
    return {
        "answer": str(result["answer"]),
        "score": float(result["score"]),
        "start": int(result["start"]),
        "end": int(result["end"]),
    }


# --- the app ---------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, qa=None) -> FastAPI:
    """Load the model (unless `qa`, an already built pipeline, is given) and return the ASGI app."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    if qa is None:
        qa = pipeline("question-answering", model=settings.model, revision=settings.revision)
    folder = Path(qa.folder)
    digest = sha256_file(folder / "model.safetensors")
    log.info(
        "loaded %s (revision %s) from %s in %.1f s, weights sha256 %s",
        qa.model_id,
        qa.revision,
        folder,
        time.perf_counter() - t0,
        digest,
    )
    # A window longer than the position table cannot run: refuse such a max_seq_len as bad input.
    longest = min(qa.model.config.max_position_embeddings, qa.tokenizer.model_max_length)
    settings = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, max_seq_len=longest))
    qa.max_windows = settings.limits.max_windows  # a context making more windows gets 422, not minutes of work
    if settings.warmup:
        t0 = time.perf_counter()
        answer_questions(qa, [SAMPLE["question"]], [SAMPLE["context"]], {})
        log.info("warm-up answer in %.2f s", time.perf_counter() - t0)
    batcher = Batcher(
        qa.model,
        max_batch=settings.max_batch,
        wait_s=settings.batch_wait_ms / 1000,
        turn_tokens=settings.turn_tokens,
        pad_token_id=qa.tokenizer.pad_token_id,
    )
    state = State(settings, qa, folder, digest, batcher)
    _shorten_access_log_targets()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield {"npbert": state}  # the lifespan state: how protocol.py finds the settings and counters
        finally:
            # uvicorn has drained the in-flight requests by now (SIGTERM: graceful shutdown), or cancelled
            # those left when its graceful timeout ended: let their handlers answer and count them first.
            for _ in range(100):
                if not state.in_flight:
                    break
                await asyncio.sleep(0.01)
            await batcher.stop()
            log.info("stopped: %s", state.counters())

    app = FastAPI(
        title="npbert",
        version=__version__,
        lifespan=lifespan,
        description="Extractive question answering with DistilBERT in numpy: the model catalog's "
        "scoring schema (`POST /score`) and the pipeline's full records (`POST /v1/answer`).",
    )
    app.state.npbert = state
    app.add_middleware(HeadLimits, state=state)
    add_error_handlers(app, state)
    add_answer_routes(app, state)
    add_health_routes(app, state)
    add_explain_routes(app, state)  # the teaching page: GET /, /static, POST /v1/explain
    add_attribution_routes(app, state)  # POST /v1/attributions
    app.openapi = lambda: _openapi(app)
    return app


def app_from_env() -> FastAPI:
    """The factory each `--workers N` worker process calls (uvicorn `factory=True`): a fresh interpreter,
    so logging is set up here as `npbert serve` set it up in the parent."""
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format=LOG_FORMAT)
    return create_app(Settings.from_json(os.environ[SETTINGS_ENV]))


class HeadLimits:
    """ASGI middleware: a request target over `max_target_bytes` gets 414, headers over `max_header_bytes`
    get 431, before any route sees them (a 100 KB URL is refused, not logged whole: see also
    `_shorten_access_log_targets`)."""

    def __init__(self, app, state: State):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            limits = self.state.settings.limits
            target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
            headers = sum(len(k) + len(v) for k, v in scope.get("headers") or [])
            problem = None
            if target > limits.max_target_bytes:
                problem = 414, f"request target is {target} bytes, over the server's limit of {limits.max_target_bytes}"
            elif headers > limits.max_header_bytes:
                problem = (
                    431,
                    f"request headers are {headers} bytes, over the server's limit of {limits.max_header_bytes}",
                )
            if problem is not None:
                self.state.refused += 1
                log.info("%s %s refused (%d): %s", scope["method"], short_target(scope["path"]), *problem)
                await error_response(*problem, headers={"Connection": "close"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _ShortTargets(logging.Filter):
    """uvicorn's access log line with the request target cut to ACCESS_LOG_TARGET_CHARS characters."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], short_target(args[2]), *args[3:])
        return True


def _shorten_access_log_targets() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _ShortTargets) for f in access.filters):
        access.addFilter(_ShortTargets())


def add_error_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404, 405 in the same JSON shape
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def any_fault(request: Request, exc: Exception):
        return server_fault(request, exc)


def _texts(result) -> str | list[str]:
    return [r["answer"] for r in result] if isinstance(result, list) else result["answer"]


_REFUSALS = {
    status: {"model": ErrorResponse, "description": why}
    for status, why in [
        (400, "The body is empty, not UTF-8, not JSON, nested too deeply or holds a huge integer."),
        (408, "The body did not arrive within the server's --body-timeout."),
        (413, "The body is over the server's --max-body-bytes."),
        (415, "The body is declared as something other than JSON in UTF-8."),
        (422, "The JSON does not follow the schema, or a text is empty or over the server's size limits."),
        (
            503,
            "Not answered within the server's --request-timeout, over its --limit-concurrency requests in progress, "
            "or the server is shutting down.",
        ),
    ]
}


def add_answer_routes(app: FastAPI, state: State) -> None:
    schema_body = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}},
        }
    }

    async def answer(request: Request) -> list:
        """Parse, check, and answer through the batcher; BadRequest for the client's faults."""
        s = state.settings
        body = await read_body(request, s.limits.max_body_bytes, s.body_timeout)
        req = parse_request(body, s.limits)
        questions, contexts = req.input_data.pairs()
        params = req.parameters.pipeline_kwargs()

        def work(model):
            qa = request_pipeline(state.qa, model, state.batcher.tokenizer_lock, s.limits.max_request_windows)
            return answer_questions(qa, questions, contexts, params)

        try:
            return await scheduled(request, state, work)
        except ValueError as e:  # the pipeline's verdict on this input (e.g. a question too long for max_seq_len)
            raise BadRequest(422, str(e)) from None

    async def respond(request: Request, shape) -> JSONResponse:
        return await handled(request, state, lambda: answer(request), lambda results: [shape(r) for r in results])

    @app.post(
        "/score",
        openapi_extra=schema_body,
        summary="Answer questions (the model catalog's scoring schema)",
        responses={
            200: {
                "description": "One answer text per question, in order (a list of texts per question when top_k > 1).",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"}, "example": ["John"]}
                },
            },
            **_REFUSALS,
        },
    )
    async def score(request: Request):
        """`{"input_data": {"question": ..., "context": ...}, "parameters": {...}}` -> `["John"]`.
        `question` and `context` are strings or equal-length lists of strings."""
        return await respond(request, _texts)

    @app.post(
        "/v1/answer",
        openapi_extra=schema_body,
        summary="Answer questions with the pipeline's full records",
        responses={
            200: {
                "description": "One record per question, in order (a list of records per question "
                "when top_k > 1), as the question-answering pipeline returns them.",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/AnswerResponse"},
                        "example": [{"answer": "John", "score": 0.98, "start": 11, "end": 15}],
                    }
                },
            },
            **_REFUSALS,
        },
    )
    async def answer_records(request: Request):
        """The same body as /score; each answer is `{"answer", "score", "start", "end"}` with `start`/`end`
        character offsets into the context."""
        return await respond(request, lambda r: r)


def add_health_routes(app: FastAPI, state: State) -> None:
    @app.get("/health", summary="Liveness, and what is served")
    async def health():
        s = state.settings
        return {
            "status": "ok",
            "pid": os.getpid(),
            "blas_threads": threads.policy(),  # this process's count (serve --workers N: its share of the cores)
            "model": state.qa.model_id,
            "revision": state.qa.revision,
            "commit": state.qa.commit,
            "folder": str(state.folder),
            "weights_sha256": state.weights_sha256,
            "npbert": __version__,
            "uptime_s": round(time.time() - state.started, 3),
            "in_flight": state.in_flight,
            "answered": state.answered,
            "refused": state.refused,
            "failed": state.failed,
            "aborted": state.aborted,
            "overdue": state.overdue,
            "busy": state.busy,
            "cut_off": state.cut_off,
            "timeouts": dict(state.timeouts),
            "batching": {
                "enabled": s.max_batch > 1,
                "max_batch": s.max_batch,
                "wait_ms": s.batch_wait_ms,
                "turn_tokens": s.turn_tokens,
                **state.batcher.stats.as_dict(),
            },
            "timeouts_s": {"request": s.request_timeout, "header": s.header_timeout, "body": s.body_timeout},
            "limit_concurrency": s.limit_concurrency,
            "limits": dataclasses.asdict(s.limits),
        }


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the request and response schemas the answering routes reference."""
    if app.openapi_schema is None:
        from pydantic import RootModel

        from .schemas import AnswerResponse, AttributionRequest, ScoreResponse

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = [
            (ScoreRequest, "validation"),
            (AttributionRequest, "validation"),
            (type("ScoreResponse", (RootModel[ScoreResponse],), {}), "serialization"),
            (type("AnswerResponse", (RootModel[AnswerResponse],), {}), "serialization"),
            (AnswerRecord, "serialization"),
            (ErrorResponse, "serialization"),
        ]
        _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = doc
    return app.openapi_schema
