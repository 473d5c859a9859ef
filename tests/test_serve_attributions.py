"""POST /v1/attributions (npbert serve, in-process through starlette's TestClient): its JSON is
`attributions.explain`'s for the same input, its model work runs on the inference thread, and every
refusal is a 4xx naming the field."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("fastapi", reason="npbert serve needs the serve extra (fastapi, uvicorn)")

import npbert  # noqa: E402
from checkpoints import LONG_CONTEXT, SMALL_WINDOWS, context_of_windows  # noqa: E402
from npbert.attributions import explain  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
SAMPLE = {"question": "Where do I live?", "context": "My name is John and I live in Seattle. I work in Paris."}


class ThreadRecordingModel:
    """The real model, noting the thread each forward, embedding and backward runs on."""

    def __init__(self, model):
        self.model, self.threads = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def _noted(self, name, *args, **kwargs):
        self.threads.append((name, threading.current_thread().name))
        return getattr(self.model, name)(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        self.threads.append(("__call__", threading.current_thread().name))
        return self.model(*args, **kwargs)

    def embed(self, *args, **kwargs):
        return self._noted("embed", *args, **kwargs)

    def gradients_from_embedded(self, *args, **kwargs):
        return self._noted("gradients_from_embedded", *args, **kwargs)


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    from fastapi.testclient import TestClient

    from npbert.serve import Settings, create_app

    qa = npbert.pipeline("question-answering", model=str(tiny_checkpoint))
    qa.model = ThreadRecordingModel(qa.model)
    with TestClient(create_app(Settings(warmup=False), qa=qa)) as client:
        yield client, qa.model


@pytest.mark.parametrize(
    "attribution, kwargs",
    [
        ({}, {}),
        (
            {"method": "ig", "n_steps": 9, "approximation": "riemann_left"},
            {"n_steps": 9, "approximation_method": "riemann_left"},
        ),
        (
            {"method": "smoothgrad", "samples": 3, "noise": 0, "seed": 4},
            {"method": "smoothgrad", "samples": 3, "noise": 0.0, "seed": 4},
        ),
        ({"method": "rollout", "span": [49, 54]}, {"method": "rollout", "span": (49, 54)}),
    ],
    ids=["ig", "riemann", "smoothgrad", "rollout-span"],
)
def test_response_is_explains(served, qa, attribution, kwargs):
    client, model = served
    model.threads.clear()
    resp = client.post("/v1/attributions", json={"input_data": SAMPLE, "attribution": attribution})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert got.pop("server_seconds") >= 0
    assert got == json.loads(json.dumps(explain(qa, SAMPLE["question"], SAMPLE["context"], **kwargs)))
    # every forward, embedding and backward ran on the inference thread, none in the request's own
    assert model.threads and {thread for _, thread in model.threads} == {"npbert-infer"}
    if kwargs.get("method", "ig") != "rollout":
        assert {name for name, _ in model.threads} >= {"embed", "gradients_from_embedded"}


def test_several_windows(served, tiny_checkpoint):
    client, _ = served
    tokenizer = npbert.Tokenizer.from_folder(tiny_checkpoint)
    body = {
        "input_data": {"question": "Who scored?", "context": LONG_CONTEXT},
        "parameters": SMALL_WINDOWS,
        "attribution": {"method": "rollout"},
    }
    resp = client.post("/v1/attributions", json=body)
    assert resp.status_code == 422 and resp.json()["error"].startswith("input_data.context: ")
    assert "over this pipeline's limit of 4" in resp.json()["error"]
    body["input_data"]["context"] = context_of_windows(tokenizer, "Who scored?", range(2, 5))
    got = client.post("/v1/attributions", json=body).json()
    assert 1 < len(got["windows"]) <= 4 and "tokens" not in got


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"attribution": {"method": "lime"}}, 422, "attribution.method"),
        ({"attribution": {"n_steps": 0}}, 422, "attribution.n_steps"),
        ({"attribution": {"n_steps": 301}}, 422, "n_steps is 301, over the server's limit of 300"),
        ({"attribution": {"n_steps": 1, "approximation": "riemann_left"}}, 422, "attribution.n_steps"),
        ({"attribution": {"samples": 101}}, 422, "samples is 101, over the server's limit of 100"),
        ({"attribution": {"span": [50, 80]}}, 422, "attribution.span: the span 50-80 is outside"),
        ({"attribution": {"span": [1, 5]}}, 422, "attribution.span: the span 1-5 ("),
        ({"attribution": {"span": [1]}}, 422, "attribution.span"),
        ({"attribution": {"colour": "red"}}, 422, "attribution.colour"),
        ({"attribution": "ig"}, 422, "attribution: must be an object"),
        ({"input_data": {"question": ["a"], "context": ["b"]}}, 422, "input_data: /v1/attributions takes one question"),
    ],
)
def test_refusals_name_the_field(served, body, status, field):
    client, _ = served
    resp = client.post("/v1/attributions", json={"input_data": SAMPLE, **body})
    assert resp.status_code == status and field in resp.json()["error"], resp.text


def test_openapi_documents_the_route(served):
    client, _ = served
    doc = client.get("/openapi.json").json()
    assert "/v1/attributions" in doc["paths"] and "AttributionRequest" in doc["components"]["schemas"]
