"""POST /v1/attributions: why the model gave its answer, token by token (npbert/attributions.py, Captum's
semantics; docs/attributions.md).

    POST /v1/attributions   {"input_data": {"question": Q, "context": C}, "parameters": {...},
                             "attribution": {"method": "ig", "n_steps": 50, "span": [start, end], ...}}

The response is what `npbert explain --json` prints, plus `server_seconds`. The answer comes from the
pipeline (its forwards queued on the batcher as any request's); every forward and backward of the
attribution runs on the inference thread as a turn of this request's own (`ScheduledModel.turn`), one
internal batch of path points at a time, so other requests are answered between them and a client that
goes away stops the work at the next batch. Windows per question, n_steps and samples are bounded by the
server's limits (`Limits.max_attribution_windows`, `max_n_steps`, `max_samples`).
"""

from __future__ import annotations

import time

from fastapi import Request

from ..attributions import AttributionError, explain
from ..pipeline import WindowLimitError
from .handling import handled, read_body, request_pipeline, scheduled
from .schemas import AttributionRequest, BadRequest, parse_request


class TurnModel:
    """The model as an attribution sees it in the server: its forwards through the request's ScheduledModel,
    its embeddings and backward passes as turns on the inference thread."""

    def __init__(self, scheduled):
        self._scheduled = scheduled

    def __getattr__(self, name):  # config, dtype, ...
        return getattr(self._scheduled, name)

    def __call__(self, *args, **kwargs):
        return self._scheduled(*args, **kwargs)

    def embed(self, *args, **kwargs):
        return self._scheduled.turn(lambda model: model.embed(*args, **kwargs))

    def gradients_from_embedded(self, *args, **kwargs):
        return self._scheduled.turn(lambda model: model.gradients_from_embedded(*args, **kwargs))


def add_attribution_routes(app, state) -> None:
    """POST /v1/attributions."""

    def work(model, req: AttributionRequest) -> dict:
        t0 = time.perf_counter()
        limits = state.settings.limits
        qa = request_pipeline(state.qa, model, state.batcher.tokenizer_lock)
        a = req.attribution
        try:
            data = explain(
                qa,
                req.input_data.question,
                req.input_data.context,
                a.method,
                n_steps=a.n_steps,
                approximation_method=a.approximation,
                samples=a.samples,
                noise=a.noise,
                seed=a.seed,
                span=a.span,
                params=req.parameters.pipeline_kwargs(),
                max_windows=limits.max_attribution_windows,
                model=TurnModel(model),
            )
        except AttributionError as e:
            raise BadRequest(422, f"attribution.{e.field}: {e}") from None
        except WindowLimitError as e:
            raise BadRequest(422, f"input_data.context: {e}") from None
        except ValueError as e:  # the pipeline's verdict on this input
            raise BadRequest(422, str(e)) from None
        return {**data, "server_seconds": round(time.perf_counter() - t0, 4)}

    @app.post(
        "/v1/attributions",
        summary="Attribute the answer's start and end to the input tokens (integrated gradients and others)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AttributionRequest"}}},
            }
        },
    )
    async def attributions_route(request: Request):
        """One question and one context; `attribution` says the method (ig, grad-x-input, smoothgrad, rollout),
        n_steps and approximation (ig), samples, noise and seed (smoothgrad) and optionally the span of the
        context to explain. The response has the answer, the window's tokens, and per token the start and
        end attributions (summed over the hidden dimension, divided by the L2 norm over tokens), per word
        their sums, and for ig the convergence deltas; several windows: a `windows` list of such objects."""

        async def compute():
            s = state.settings
            body = await read_body(request, s.limits.max_body_bytes, s.body_timeout)
            req = parse_request(body, s.limits, AttributionRequest)
            if not isinstance(req.input_data.question, str):
                raise BadRequest(
                    422, "input_data: /v1/attributions takes one question and one context (strings), not lists"
                )
            return await scheduled(request, state, lambda model: work(model, req))

        return await handled(request, state, compute)
