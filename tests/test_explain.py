"""POST /v1/explain and the page's files: tokens, windows, probabilities and attention equal what the model
(`model(..., output_attentions=True)`), the tokenizer and the pipeline give for the same input; size limits;
refusals; GET / and its static files, offline and shipped in the wheel. `explain` is called directly and
through a real `npbert serve` process."""

from __future__ import annotations

import http.client
import importlib.util
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="npbert serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="npbert serve needs the serve extra (fastapi, uvicorn)")

import npbert  # noqa: E402
from checkpoints import LONG, SMALL_WINDOWS  # noqa: E402
from npbert.serve.explain import STATIC, ExplainError, decode_attention, explain  # noqa: E402
from serve_helpers import Server  # noqa: E402

SAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = Server(tiny_checkpoint, tmp_path_factory.mktemp("explain") / "server.log", "--max-context-chars", "2000")
    yield s
    assert s.stop() == 0, s.output()


def reference_probabilities(logits, window) -> np.ndarray:
    """Softmax (float64) over the tokens the pipeline lets be in an answer: the context and [CLS]."""
    possible = np.array([s == 1 for s in window.sequence_ids])
    possible[0] = True
    z = np.where(possible, logits.astype(np.float64), -10000.0)
    e = np.exp(z - z.max())
    return e / e.sum()


def assert_explains(data, qa, question, context, params=None, window=None):
    """Every field of an explain response against the tokenizer, the model and the pipeline."""
    params = params or {}
    seq = params.get("max_seq_len", 384)
    windows = qa.tokenizer.encode_pair(question, context, seq, params.get("doc_stride", min(seq // 2, 128)))
    assert len(data["windows"]) == len(windows)
    for got, w in zip(data["windows"], windows):
        assert got["input_ids"] == w.input_ids.tolist()
        assert got["tokens"] == qa.tokenizer.convert_ids_to_tokens(w.input_ids)
        assert got["offsets"] == w.offsets.tolist()
        assert got["sequence_ids"] == list(w.sequence_ids)
        ctx = [i for i, s in enumerate(w.sequence_ids) if s == 1]
        assert got["context_span"] == [w.offsets[ctx[0], 0], w.offsets[ctx[-1], 1]]

    result = qa(question=question, context=context, **params)
    want = result if isinstance(result, list) else [result]
    assert [(a["answer"], a["start"], a["end"]) for a in data["answers"]] == [
        (a["answer"], a["start"], a["end"]) for a in want
    ]
    assert [a["score"] for a in data["answers"]] == pytest.approx([a["score"] for a in want], rel=1e-6)
    for a in data["answers"]:  # each answer's window holds its characters
        c0, c1 = data["windows"][a["window"]]["context_span"]
        assert c0 <= a["start"] <= a["end"] <= c1
        assert context[a["start"] : a["end"]] == a["answer"]
    k = data["answers"][0]["window"] if window is None else window
    assert data["window"] == k

    w = windows[k]
    out = qa.model(w.input_ids[None], attention_mask=w.attention_mask[None], output_attentions=True)
    np.testing.assert_array_equal(np.float32(data["start_logits"]), out.start_logits[0])
    np.testing.assert_array_equal(np.float32(data["end_logits"]), out.end_logits[0])
    np.testing.assert_allclose(
        data["start_probs"], reference_probabilities(out.start_logits[0], w), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(data["end_probs"], reference_probabilities(out.end_logits[0], w), rtol=1e-5, atol=1e-9)
    attention = decode_attention(data["attention"])
    layers = data["attention_layers"]
    config = qa.model.config
    assert attention.shape == (len(layers), config.n_heads, len(w), len(w))
    for at, layer in enumerate(layers):
        np.testing.assert_array_equal(attention[at], out.attentions[layer][0])
    np.testing.assert_allclose(attention.sum(-1), 1.0, rtol=1e-5)  # each row is a distribution
    return attention


# --- explain, called directly ----------------------------------------------------------------------------


def test_sample_equals_model_tokenizer_and_pipeline(qa, tiny_checkpoint):
    from tokenizers import Tokenizer

    data = explain(qa, SAMPLE["question"], SAMPLE["context"], {"top_k": 3})
    attention = assert_explains(data, qa, SAMPLE["question"], SAMPLE["context"], {"top_k": 3})
    assert data["attention_layers"] == list(range(qa.model.config.n_layers)) and data["attention_note"] == ""
    assert attention.shape[0] == qa.model.config.n_layers
    # The tokens also equal the checkpoint's tokenizer.json run by the tokenizers library, not only npbert's.
    expected = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).encode(
        SAMPLE["question"], SAMPLE["context"]
    )
    assert data["windows"][0]["tokens"] == expected.tokens
    assert expected.tokens[0] == "[CLS]" and expected.tokens[-1] == "[SEP]"
    assert len(data["answers"]) == 3


def test_long_context_windows_and_choosing_one(qa):
    data = explain(qa, LONG["question"], LONG["context"], SMALL_WINDOWS)
    assert len(data["windows"]) > 3
    assert_explains(data, qa, LONG["question"], LONG["context"], SMALL_WINDOWS)
    spans = [w["context_span"] for w in data["windows"]]
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG["context"])
    assert all(a[0] < b[0] < a[1] for a, b in zip(spans, spans[1:]))  # consecutive windows overlap
    last = len(data["windows"]) - 1
    other = explain(qa, LONG["question"], LONG["context"], SMALL_WINDOWS, window=last)
    assert_explains(other, qa, LONG["question"], LONG["context"], SMALL_WINDOWS, window=last)
    assert other["answers"] == data["answers"]


def test_attention_size_limit(qa):
    q, c = SAMPLE["question"], SAMPLE["context"]
    S = len(qa.tokenizer.encode_pair(q, c)[0])
    H, L = qa.model.config.n_heads, qa.model.config.n_layers
    one_layer = explain(qa, q, c, max_attention_values=H * S * S, layer=1)
    assert one_layer["attention_layers"] == [1] and "ask for another with ?layer=N" in one_layer["attention_note"]
    assert_explains(one_layer, qa, q, c)
    first = explain(qa, q, c, max_attention_values=L * H * S * S - 1)
    assert first["attention_layers"] == [0] and f"{L * H * S * S:,} values" in first["attention_note"]
    none = explain(qa, q, c, max_attention_values=H * S * S - 1)
    assert (
        none["attention"] is None and none["attention_layers"] == [] and "no attention sent" in none["attention_note"]
    )


def test_refusals_name_the_problem(qa):
    with pytest.raises(ExplainError, match=r"window 1 does not exist: this context has 1 window \(0 to 0\)"):
        explain(qa, **SAMPLE, window=1)
    with pytest.raises(ExplainError, match=r"layer -1 does not exist: the model has 2 layers"):
        explain(qa, **SAMPLE, layer=-1)
    with pytest.raises(ValueError, match="unknown parameters"):
        explain(qa, **SAMPLE, params={"top": 3})
    with pytest.raises(ValueError, match="no room is left for the context"):
        explain(qa, "why " * 40, SAMPLE["context"], {"max_seq_len": 16})


# --- over HTTP --------------------------------------------------------------------------------------------


def test_route_equals_model_and_pipeline(server, qa):
    status, data = server.post("/v1/explain", {"input_data": SAMPLE, "parameters": {"top_k": 2}})
    assert status == 200, data
    assert_explains(data, qa, SAMPLE["question"], SAMPLE["context"], {"top_k": 2})
    assert data["server_seconds"] >= 0
    status, data = server.post("/v1/explain?window=2&layer=1", {"input_data": LONG, "parameters": SMALL_WINDOWS})
    assert status == 200, data
    assert data["attention_layers"] == [1]
    assert_explains(data, qa, LONG["question"], LONG["context"], SMALL_WINDOWS, window=2)


@pytest.mark.parametrize(
    "query, body, status, message",
    [
        ("?window=9", {"input_data": SAMPLE}, 422, "window 9 does not exist"),
        ("?layer=two", {"input_data": SAMPLE}, 422, "query parameter layer must be an integer, got 'two'"),
        ("?layer=2", {"input_data": SAMPLE}, 422, "layer 2 does not exist: the model has 2 layers (0 to 1)"),
        ("", {"input_data": {"question": ["a"], "context": ["b"]}}, 422, "takes one question and one context"),
        (
            "",
            {"input_data": {"question": "a", "context": "   "}},
            422,
            "input_data.context: must not be empty or blank",
        ),
        ("", {"input_data": {"question": "a", "context": "x" * 2001}}, 422, "over the server's limit of 2000"),
        (
            "",
            {"input_data": {"question": "why " * 40, "context": "b"}, "parameters": {"max_seq_len": 16}},
            422,
            "no room is left for the context",
        ),
        ("", {"question": "a", "context": "b"}, 422, "input_data"),
    ],
)
def test_route_refusals(server, query, body, status, message):
    got, data = server.post("/v1/explain" + query, body)
    assert got == status and data["status"] == status
    assert message in data["error"], data


def test_route_refuses_bad_json_then_still_answers(server):
    status, data = server.request("POST", "/v1/explain", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not valid JSON" in data["error"]
    status, data = server.post("/v1/explain", {"input_data": SAMPLE})
    assert status == 200 and data["answers"]


def get(server, path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type", ""), resp.read()
    finally:
        conn.close()


def test_page_and_its_files_are_served_and_offline(server):
    status, kind, html = get(server, "/")
    assert status == 200 and kind.startswith("text/html")
    html = html.decode()
    assert 'value="What\'s my name?"' in html and "My name is John and I live in Seattle</textarea>" in html
    linked = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert sorted(linked) == ["/static/page.css", "/static/page.js"]
    kinds = {"/static/page.css": "text/css", "/static/page.js": "text/javascript"}
    for path in linked:
        status, kind, body = get(server, path)
        assert status == 200 and kind.startswith(kinds[path]), (path, kind)
        assert body == (STATIC / path.rsplit("/", 1)[1]).read_bytes()
    assert get(server, "/static/nothing.js")[0] == 404
    # Offline: no file of the page fetches anything from another host.
    for f in STATIC.iterdir():
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{f.name} references another host"
        assert "@import" not in text and "cdn" not in text.lower()


def test_wheel_ships_the_page(tmp_path):
    """A non-editable install gets the page: build a wheel from a copy of the sources, look inside."""
    setuptools = pytest.importorskip("setuptools", reason="building a wheel offline needs setuptools installed")
    version = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
    if version < (70, 1) and importlib.util.find_spec("wheel") is None:  # bdist_wheel moved into setuptools in 70.1
        pytest.skip(f"setuptools {setuptools.__version__} without the wheel package cannot build a wheel offline")
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "npbert", src / "npbert", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("npbert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in STATIC.iterdir():
        assert f"npbert/serve/static/{f.name}" in names
