"""The teaching page of `npbert serve` (GET /) and its data route, POST /v1/explain.

`explain` answers one question with the pipeline (npbert/pipeline.py, transformers 4.57.6
`pipelines/question_answering.py` semantics) and lays open how: the windows the context was cut into
(tokens, character offsets, which part each token belongs to), and for one chosen window its start/end
logits, the pipeline's start/end probabilities (`qa.select_starts_ends`: softmax over the tokens that
may be in an answer, everything else at -10000) and the attention probabilities of the forward
(`model(..., output_attentions=True)`, [layers, H, S, S]).

    POST /v1/explain?window=W&layer=L   body as POST /v1/answer, one question and one context

`window` defaults to the first window holding the best answer. Attention is sent for every layer when
layers x H x S x S stays within `MAX_ATTENTION_VALUES`, else for layer `layer` alone (default 0); it is
float32 little-endian, base64, C order, so the page (and a test) gets the model's exact numbers in a
third of the size of JSON numbers.

The page itself is static (npbert/serve/static/: index.html, page.css, page.js; no build step, no
network) and draws everything from this route's JSON.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
from fastapi import Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..pipeline import QuestionAnsweringPipeline, check_parameters, model_inputs, window_settings
from ..qa import answer_probabilities, possible_tokens
from .handling import handled, read_body, request_pipeline, scheduled
from .schemas import BadRequest, parse_request

STATIC = Path(__file__).parent / "static"
# 4M float32 values = 16 MB (21 MB as base64): one layer of a 512-token window with 12 heads (3.1M) fits.
MAX_ATTENTION_VALUES = 4_000_000


class ExplainError(ValueError):
    """A request `explain` cannot serve (a window or layer that does not exist): the client's fault."""


def context_span(window) -> tuple[int, int]:
    """The characters of the context a window covers; (0, 0) when its context makes no token at all (say,
    only NUL or zero-width characters, which the tokenizer drops)."""
    ctx = [i for i, s in enumerate(window.sequence_ids) if s == 1]
    if not ctx:
        return 0, 0
    return int(window.offsets[ctx[0], 0]), int(window.offsets[ctx[-1], 1])


def window_of(answer: dict, spans: list[tuple[int, int]]) -> int:
    """The first window whose context holds the answer's characters (window 0 for the empty answer)."""
    for i, (c0, c1) in enumerate(spans):
        if c0 <= answer["start"] and answer["end"] <= c1:
            return i
    return 0


def encode_attention(probs: np.ndarray) -> dict:
    return {
        "shape": list(probs.shape),
        "dtype": "float32",
        "byte_order": "little",
        "encoding": "base64",
        "data": base64.b64encode(np.ascontiguousarray(probs, dtype="<f4").tobytes()).decode("ascii"),
    }


def decode_attention(attention: dict) -> np.ndarray:
    """The inverse of `encode_attention` (for clients and tests)."""
    raw = base64.b64decode(attention["data"])
    return np.frombuffer(raw, dtype="<f4").reshape(attention["shape"])


def explain(
    qa,
    question: str,
    context: str,
    params: dict | None = None,
    window: int | None = None,
    layer: int | None = None,
    max_attention_values: int = MAX_ATTENTION_VALUES,
) -> dict:
    """Everything the page shows for one question, as plain JSON values (see the module docstring).

    `params` are the pipeline's (top_k, max_seq_len, doc_stride, ...). Raises ValueError for input the
    pipeline refuses, ExplainError for a window or layer that does not exist.
    """
    params = check_parameters(dict(params or {}))
    max_seq_len, doc_stride = window_settings(qa.tokenizer, params.get("max_seq_len"), params.get("doc_stride"))
    recorder = _Recorder(qa.model)
    result = QuestionAnsweringPipeline(
        recorder, qa.tokenizer, batch_size=qa.batch_size, max_windows=getattr(qa, "max_windows", None)
    )(question=question, context=context, **params)
    answers = result if isinstance(result, list) else [result]
    windows = qa.tokenizer.encode_pair(question, context, max_seq_len, doc_stride, params.get("padding", "do_not_pad"))
    spans = [context_span(w) for w in windows]
    answers = [
        {
            "answer": str(a["answer"]),
            "score": float(a["score"]),
            "start": int(a["start"]),
            "end": int(a["end"]),
            "window": window_of(a, spans),
        }
        for a in answers
    ]
    if window is None:
        window = answers[0]["window"] if answers else 0
    if not 0 <= window < len(windows):
        raise ExplainError(
            f"window {window} does not exist: this context has {len(windows)} window"
            f"{'' if len(windows) == 1 else 's'} (0 to {len(windows) - 1})"
        )
    config = qa.model.config
    if layer is not None and not 0 <= layer < config.n_block_runs:
        raise ExplainError(
            f"layer {layer} does not exist: the model has {config.n_block_runs} layers (0 to {config.n_block_runs - 1})"
        )

    w = windows[window]
    out = recorder.single.get(w.input_ids.tobytes())
    if out is None:
        out = qa.model(**model_inputs([w], qa.tokenizer), output_attentions=True)
    S, H, L = len(w), config.n_heads, len(out.attentions)
    if L * H * S * S <= max_attention_values and layer is None:
        layers = list(range(L))
    elif H * S * S <= max_attention_values:
        layers = [layer or 0]
    else:
        layers = []
    attention = encode_attention(np.stack([out.attentions[i][0] for i in layers])) if layers else None
    possible = possible_tokens(w.p_mask, w.attention_mask)
    return {
        "question": question,
        "context": context,
        "answers": answers,
        "model": {"n_layers": L, "n_heads": H, "dim": config.dim, "vocab_size": config.vocab_size},
        "settings": {"max_seq_len": max_seq_len, "doc_stride": doc_stride},
        "windows": [
            {
                "tokens": qa.tokenizer.convert_ids_to_tokens(x.input_ids),
                "input_ids": x.input_ids.tolist(),
                "offsets": x.offsets.tolist(),
                "sequence_ids": list(x.sequence_ids),
                "context_span": list(span),
            }
            for x, span in zip(windows, spans)
        ],
        "window": window,
        "start_logits": out.start_logits[0].tolist(),
        "end_logits": out.end_logits[0].tolist(),
        "start_probs": answer_probabilities(out.start_logits[0].astype(np.float32), possible).tolist(),
        "end_probs": answer_probabilities(out.end_logits[0].astype(np.float32), possible).tolist(),
        "attention_layers": layers,
        "attention": attention,
        "attention_note": _attention_note(layers, L, H, S, max_attention_values),
    }


class _Recorder:
    """The model, asked for attention probabilities on every forward of the pipeline, keeping the outputs
    of single-window forwards (unpadded: exactly `model(window, output_attentions=True)`).

    The probabilities are computed by every forward anyway (only returned when asked), so a context that
    fits one window is answered and explained by one forward, and the page's probabilities come from the
    very logits the answer came from."""

    def __init__(self, model):
        self.model, self.single = model, {}

    def __getattr__(self, name):  # config, dtype, ...: the model's
        return getattr(self.model, name)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None):
        out = self.model(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_attentions=True
        )
        if len(input_ids) == 1 and not self.single:  # one kept: a window's attention is ~42 MB at full size
            self.single[np.asarray(input_ids[0], dtype=np.int64).tobytes()] = out
        return out


def _attention_note(layers: list[int], L: int, H: int, S: int, limit: int) -> str:
    if len(layers) == L:
        return ""
    if layers:
        return (
            f"all {L} layers would be {L * H * S * S:,} values, over the server's limit of {limit:,}: "
            f"sending layer {layers[0]} only (ask for another with ?layer=N)"
        )
    return f"one layer is {H * S * S:,} values, over the server's limit of {limit:,}: no attention sent"


# --- the HTTP side ---------------------------------------------------------------------------------------


def _query_int(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if len(text) > 10:  # a window or layer index; never a 4301-digit number (which int() refuses, slowly)
        raise BadRequest(422, f"query parameter {name} has {len(text)} characters: an index has at most 10")
    try:
        return int(text)
    except ValueError:
        raise BadRequest(422, f"query parameter {name} must be an integer, got {text!r}") from None


def add_explain_routes(app, state) -> None:
    """GET / (the page), GET /static/* (its files), POST /v1/explain (its data)."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    def work(model, question, context, params, window, layer):
        t0 = time.perf_counter()
        qa = request_pipeline(state.qa, model, state.batcher.tokenizer_lock)
        try:
            data = explain(qa, question, context, params, window, layer)
        except ValueError as e:  # the pipeline's or explain's verdict on this input
            raise BadRequest(422, str(e)) from None
        return {**data, "server_seconds": round(time.perf_counter() - t0, 4)}

    @app.post(
        "/v1/explain",
        summary="Answer one question and show how: tokens, windows, probabilities, attention",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ScoreRequest"}}},
            }
        },
    )
    async def explain_route(request: Request):
        """The body of POST /v1/answer with one question and one context (strings). Query: `window` (default:
        the first window holding the best answer) and `layer` (attention of that layer only). The response
        holds every window's tokens and offsets, the chosen window's start/end logits and probabilities, and
        its attention probabilities [layers, heads, S, S] as base64 float32."""

        async def compute():
            body = await read_body(request, state.settings.limits.max_body_bytes, state.settings.body_timeout)
            req = parse_request(body, state.settings.limits)
            if not isinstance(req.input_data.question, str):
                raise BadRequest(422, "input_data: /v1/explain takes one question and one context (strings), not lists")
            window, layer = _query_int(request, "window"), _query_int(request, "layer")
            # Its forwards take turns with the other requests' on the inference thread (each alone: they
            # return attention), so a long context cannot hold the model for the whole explanation.
            params = req.parameters.pipeline_kwargs()
            return await scheduled(
                request,
                state,
                lambda model: work(model, req.input_data.question, req.input_data.context, params, window, layer),
            )

        return await handled(request, state, compute)
