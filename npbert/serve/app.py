"""The HTTP application of `npbert serve` (FastAPI on uvicorn): the model catalog's scoring route, the
pipeline's full records, health, and an OpenAPI document of both answering routes.

    POST /score      {"input_data": {"question": Q, "context": C}, "parameters": {...}}  ->  ["John"]
    POST /v1/answer  same body  ->  [{"answer": "John", "score": 0.98, "start": 11, "end": 15}]
    GET  /health     liveness and what is served: model id, revision, weights sha256, batching counters
    GET  /openapi.json, /docs

The model loads once, in `create_app` (before the server listens, so a listening server is a ready
one), and answers a warm-up question so the first request does not pay numba's compilation. Requests are
parsed and checked in `schemas.py`; answering goes through the `Batcher` (one worker thread, off the
event loop). Every refusal is a JSON body `{"status", "error", "problems"}`; a 5xx means a fault of the
server and is logged with its traceback.

To add routes (the teaching page will live at GET /), write a function `add_<name>_routes(app, state)`
beside `add_answer_routes` below and call it from `create_app`; `app.state.npbert` is the `State`.
"""

from __future__ import annotations

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

from .. import __version__
from ..hub import DEFAULT_MODEL, sha256_file
from ..pipeline import pipeline
from .batcher import Batcher
from .explain import add_explain_routes
from .schemas import (AnswerRecord, BadRequest, ErrorResponse, Limits, ScoreRequest, parse_request)

log = logging.getLogger("npbert.serve")

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
    max_batch: int = 8  # questions per shared pipeline call (one forward of the pipeline's 8 windows); 1: off
    batch_wait_ms: float = 5.0  # how long an idle server waits for company before answering
    warmup: bool = True

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
    refused: int = 0
    failed: int = 0


def make_infer(qa):
    """The blocking call the batcher runs in its worker thread: one result per question, in order.

    No `batch_size` is passed: the pipeline then forwards its default number of windows at a time and
    post-processes each window unpadded, so an answer never depends on which requests shared its call.
    """

    def infer(questions: list[str], contexts: list[str], params: dict) -> list:
        out = qa(question=questions, context=contexts, **params)
        # The pipeline (like transformers') unwraps a one-question list: wrap it back.
        results = [out] if len(questions) == 1 else out
        return [_plain(r) for r in results]

    return infer


def _plain(result):
    """A pipeline result with numpy scalars turned into JSON numbers."""
    if isinstance(result, list):
        return [_plain(r) for r in result]
    return {"answer": str(result["answer"]), "score": float(result["score"]),
            "start": int(result["start"]), "end": int(result["end"])}


# --- the app ---------------------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, qa=None) -> FastAPI:
    """Load the model (unless `qa`, an already built pipeline, is given) and return the ASGI app."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    if qa is None:
        qa = pipeline("question-answering", model=settings.model, revision=settings.revision)
    folder = Path(qa.folder)
    digest = sha256_file(folder / "model.safetensors")
    log.info("loaded %s (revision %s) from %s in %.1f s, weights sha256 %s", qa.model_id, qa.revision, folder,
             time.perf_counter() - t0, digest)
    # A window longer than the position table cannot run: refuse such a max_seq_len as bad input.
    longest = min(qa.model.config.max_position_embeddings, qa.tokenizer.model_max_length)
    settings = dataclasses.replace(settings, limits=dataclasses.replace(settings.limits, max_seq_len=longest))
    qa.max_windows = settings.limits.max_windows  # a context making more windows gets 422, not minutes of work
    infer = make_infer(qa)
    if settings.warmup:
        t0 = time.perf_counter()
        infer([SAMPLE["question"]], [SAMPLE["context"]], {})
        log.info("warm-up answer in %.2f s", time.perf_counter() - t0)
    batcher = Batcher(infer, max_batch=settings.max_batch, wait_s=settings.batch_wait_ms / 1000)
    state = State(settings, qa, folder, digest, batcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            # uvicorn has drained the in-flight requests by now (SIGTERM: graceful shutdown).
            await batcher.stop()
            log.info("stopped: %d answered, %d refused, %d failed", state.answered, state.refused, state.failed)

    app = FastAPI(title="npbert", version=__version__, lifespan=lifespan,
                  description="Extractive question answering with DistilBERT in numpy: the model catalog's "
                              "scoring schema (`POST /score`) and the pipeline's full records (`POST /v1/answer`).")
    app.state.npbert = state
    add_error_handlers(app, state)
    add_answer_routes(app, state)
    add_health_routes(app, state)
    add_explain_routes(app, state)  # the teaching page: GET /, /static, POST /v1/explain
    app.openapi = lambda: _openapi(app)
    return app


def app_from_env() -> FastAPI:
    """The factory each `--workers N` worker process calls (uvicorn `factory=True`): a fresh interpreter,
    so logging is set up here as `npbert serve` set it up in the parent."""
    logging.basicConfig(level=os.environ.get(LOG_LEVEL_ENV, "INFO"), format=LOG_FORMAT)
    return create_app(Settings.from_json(os.environ[SETTINGS_ENV]))


def error_response(status: int, message: str, problems: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"status": status, "error": message, "problems": problems or [message]}, status_code=status)


def add_error_handlers(app: FastAPI, state: State) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # 404, 405 in the same JSON shape
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    async def any_fault(request: Request, exc: Exception):
        return server_fault(request, exc)


def server_fault(request: Request, exc: Exception) -> JSONResponse:
    """A fault of the server, not of the request: 500, and the traceback in the log."""
    request.app.state.npbert.failed += 1
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error ({type(exc).__name__}); the server log has the cause")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body is {int(declared)} bytes, over the server's limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"request body is over the server's limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def handled(request: Request, state: State, compute, to_json=lambda data: data) -> JSONResponse:
    """Run a route's `compute()` with the server's bookkeeping: in-flight and answered/refused counters,
    a logged 4xx for the client's faults (BadRequest), a logged 500 for anything else."""
    state.in_flight += 1
    try:
        data = await compute()
    except BadRequest as e:
        state.refused += 1
        log.info("%s %s refused (%d): %s", request.method, request.url.path, e.status, e.message)
        return error_response(e.status, e.message, e.problems)
    except Exception as e:
        return server_fault(request, e)
    finally:
        state.in_flight -= 1
    state.answered += 1
    return JSONResponse(to_json(data))


def _texts(result) -> str | list[str]:
    return [r["answer"] for r in result] if isinstance(result, list) else result["answer"]


_REFUSALS = {status: {"model": ErrorResponse, "description": why} for status, why in [
    (400, "The body is empty, not UTF-8, or not JSON."),
    (413, "The body is over the server's --max-body-bytes."),
    (422, "The JSON does not follow the schema, or a text is empty or over the server's size limits.")]}


def add_answer_routes(app: FastAPI, state: State) -> None:
    schema_body = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ScoreRequest"}}}}}

    async def answer(request: Request) -> list:
        """Parse, check, and answer through the batcher; BadRequest for the client's faults."""
        body = await read_body(request, state.settings.limits.max_body_bytes)
        req = parse_request(body, state.settings.limits)
        questions, contexts = req.input_data.pairs()
        try:
            return await state.batcher.submit(questions, contexts, req.parameters.pipeline_kwargs())
        except ValueError as e:  # the pipeline's verdict on this input (e.g. a question too long for max_seq_len)
            raise BadRequest(422, str(e)) from None

    async def respond(request: Request, shape) -> JSONResponse:
        return await handled(request, state, lambda: answer(request), lambda results: [shape(r) for r in results])

    @app.post("/score", openapi_extra=schema_body, summary="Answer questions (the model catalog's scoring schema)",
              responses={200: {"description": "One answer text per question, in order (a list of texts per "
                                              "question when top_k > 1).",
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreResponse"},
                                                                 "example": ["John"]}}}, **_REFUSALS})
    async def score(request: Request):
        """`{"input_data": {"question": ..., "context": ...}, "parameters": {...}}` -> `["John"]`.
        `question` and `context` are strings or equal-length lists of strings."""
        return await respond(request, _texts)

    @app.post("/v1/answer", openapi_extra=schema_body, summary="Answer questions with the pipeline's full records",
              responses={200: {"description": "One record per question, in order (a list of records per question "
                                              "when top_k > 1), as the question-answering pipeline returns them.",
                               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AnswerResponse"},
                                                                 "example": [{"answer": "John", "score": 0.98,
                                                                              "start": 11, "end": 15}]}}},
                         **_REFUSALS})
    async def answer_records(request: Request):
        """The same body as /score; each answer is `{"answer", "score", "start", "end"}` with `start`/`end`
        character offsets into the context."""
        return await respond(request, lambda r: r)


def add_health_routes(app: FastAPI, state: State) -> None:
    @app.get("/health", summary="Liveness, and what is served")
    async def health():
        s = state.settings
        return {
            "status": "ok", "model": state.qa.model_id, "revision": state.qa.revision,
            "commit": state.qa.commit, "folder": str(state.folder), "weights_sha256": state.weights_sha256, "npbert": __version__,
            "uptime_s": round(time.time() - state.started, 3), "in_flight": state.in_flight,
            "answered": state.answered, "refused": state.refused, "failed": state.failed,
            "batching": {"enabled": s.max_batch > 1, "max_batch": s.max_batch, "wait_ms": s.batch_wait_ms,
                         **state.batcher.stats.as_dict()},
            "limits": dataclasses.asdict(s.limits),
        }


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document plus the request and response schemas the answering routes reference."""
    if app.openapi_schema is None:
        from pydantic import RootModel

        from .schemas import AnswerResponse, ScoreResponse

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        models = [(ScoreRequest, "validation"), (type("ScoreResponse", (RootModel[ScoreResponse],), {}), "serialization"),
                  (type("AnswerResponse", (RootModel[AnswerResponse],), {}), "serialization"),
                  (AnswerRecord, "serialization"), (ErrorResponse, "serialization")]
        _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
        doc.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        app.openapi_schema = doc
    return app.openapi_schema
