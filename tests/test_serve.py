"""`npbert serve` as a real process on 127.0.0.1, over HTTP: the catalog's sample, lists, parameters, every
kind of bad input (then a good request), health, OpenAPI, concurrency, graceful SIGTERM. Answers are
checked against `npbert.pipeline` run in this process on the same input. The batcher's coalescing rules
are tested directly, with a recording `infer`, where arrival order is under the test's control."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="npbert serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="npbert serve needs the serve extra (fastapi, uvicorn)")

import numpy as np  # noqa: E402

import npbert  # noqa: E402
from npbert.serve.batcher import Abandoned, Batcher, OverDeadline, Ticket  # noqa: E402
from serve_helpers import LISTENING, Server  # noqa: E402

SAMPLE = {"question": "What's my name?", "context": "My name is John and I live in Seattle"}
PAIRS = [
    ("What's my name?", "My name is John and I live in Seattle"),
    ("Where is the Colosseum?", "The Colosseum is an ancient amphitheatre in the centre of Rome, Italy."),
    ("Who won the game?", "The home team played well, but the visitors won the game by two points in the first half."),
    ("When was the bridge opened?", "Construction began in 1933 and the bridge was opened to traffic in 1937."),
]
LIMITS = [
    "--max-body-bytes",
    "4096",
    "--max-context-chars",
    "2000",
    "--max-question-chars",
    "200",
    "--max-windows",
    "10",
]


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    s = Server(tiny_checkpoint, tmp_path_factory.mktemp("serve") / "server.log", *LIMITS)
    yield s
    assert s.stop() == 0, s.output()


def records(result) -> list[dict]:
    """A pipeline result for one question as plain JSON records (a list when top_k > 1)."""
    plain = lambda r: {  # noqa: E731
        "answer": r["answer"],
        "score": float(r["score"]),
        "start": int(r["start"]),
        "end": int(r["end"]),
    }
    return [plain(r) for r in result] if isinstance(result, list) else plain(result)


def assert_same_records(got, want):
    assert isinstance(got, list) == isinstance(want, list)
    for g, w in zip(got, want) if isinstance(want, list) else [(got, want)]:
        assert (g["answer"], g["start"], g["end"]) == (w["answer"], w["start"], w["end"])
        assert g["score"] == pytest.approx(w["score"], rel=1e-5)
    assert not isinstance(want, list) or len(got) == len(want)


# --- answers --------------------------------------------------------------------------------------------


def test_seed_sample_answers_what_the_pipeline_answers(server, qa):
    status, body = server.post("/score", {"input_data": SAMPLE})
    assert status == 200
    assert body == [qa(**SAMPLE)["answer"]]
    status, body = server.post("/v1/answer", {"input_data": SAMPLE})
    assert status == 200 and len(body) == 1
    assert_same_records(body[0], records(qa(**SAMPLE)))


def test_list_form_answered_in_order(server, qa):
    questions, contexts = [q for q, _ in PAIRS], [c for _, c in PAIRS]
    want = [records(r) for r in qa(question=questions, context=contexts)]
    status, body = server.post("/score", {"input_data": {"question": questions, "context": contexts}})
    assert status == 200
    assert body == [w["answer"] for w in want]
    status, body = server.post("/v1/answer", {"input_data": {"question": questions[::-1], "context": contexts[::-1]}})
    assert status == 200 and len(body) == len(PAIRS)
    for got, w in zip(body, want[::-1]):
        assert_same_records(got, w)


@pytest.mark.parametrize(
    "parameters",
    [
        {"top_k": 3},
        {"top_k": 2, "max_answer_len": 2, "align_to_words": False},
        {"handle_impossible_answer": True, "top_k": 2},
        {"max_seq_len": 24, "doc_stride": 8},
    ],
)
def test_parameters_reach_the_pipeline(server, qa, parameters):
    question, context = PAIRS[2]
    want = records(qa(question=question, context=context, **parameters))
    status, body = server.post(
        "/v1/answer", {"input_data": {"question": question, "context": context}, "parameters": parameters}
    )
    assert status == 200, body
    assert_same_records(body[0], want)
    status, body = server.post(
        "/score", {"input_data": {"question": [question], "context": [context]}, "parameters": parameters}
    )
    assert status == 200
    assert body == [[w["answer"] for w in want] if isinstance(want, list) else want["answer"]]


def test_concurrent_requests_each_get_their_own_answer(server, qa):
    jobs = [(PAIRS[i % len(PAIRS)], {"top_k": 2} if i % 3 == 0 else {}) for i in range(12)]
    want = [records(qa(question=q, context=c, **p)) for (q, c), p in jobs]

    def ask(job):
        (q, c), p = job
        return server.post("/v1/answer", {"input_data": {"question": q, "context": c}, "parameters": p})

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(ask, jobs))
    for (status, body), w in zip(answers, want):
        assert status == 200
        assert_same_records(body[0], w)


# --- bad input ------------------------------------------------------------------------------------------


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _ask(question, context, **parameters) -> bytes:
    body = {"input_data": {"question": question, "context": context}}
    return _json({**body, "parameters": parameters} if parameters else body)


BAD = [  # (what, body, status, a fragment of the error message)
    ("empty body", b"", 400, "request body is empty"),
    ("non-UTF-8 bytes", b'{"input_data": {"question": "\xff\xfe", "context": "x"}}', 400, "not valid UTF-8 (byte 0xff"),
    ("invalid JSON", b'{"input_data": {"question": "a",', 400, "not valid JSON"),
    ("a JSON array", b"[1, 2]", 422, "must be a JSON object"),
    ("missing input_data", _json({"parameters": {}}), 422, "input_data: Field required"),
    ("input_data not an object", _json({"input_data": "What?"}), 422, "input_data: must be an object"),
    ("missing context", _json({"input_data": {"question": "a"}}), 422, "input_data.context: Field required"),
    ("question a number", _ask(3, "x"), 422, "input_data.question: must be a string or a list of strings, got integer"),
    ("context null", _ask("a", None), 422, "input_data.context: must be a string or a list of strings, got null"),
    ("list of numbers", _ask(["a", 2], ["x", "y"]), 422, "input_data.question: item 1 must be a string, got integer"),
    ("empty question", _ask("", "x"), 422, "input_data.question: must not be empty or blank"),
    ("blank context", _ask("a", "  \n"), 422, "input_data.context: must not be empty or blank"),
    ("empty list item", _ask(["a", "b"], ["x", ""]), 422, "input_data.context: item 1 must not be empty"),
    ("empty lists", _ask([], []), 422, "input_data.question: the list must not be empty"),
    ("mismatched lists", _ask(["a", "b"], ["x"]), 422, "question has 2 items but context has 1"),
    ("string and list", _ask("a", ["x"]), 422, "must both be strings or both be lists"),
    ("unpaired surrogate", b'{"input_data": {"question": "\\ud800?", "context": "x"}}', 422, "unpaired surrogate"),
    (
        "unknown key",
        _json({"input_data": {"question": "a", "context": "x", "contxt": "y"}}),
        422,
        "input_data.contxt: Extra inputs are not permitted",
    ),
    (
        "context over the limit",
        _ask("a", "x" * 2001),
        422,
        "input_data.context: has 2001 characters, over the server's limit of 2000",
    ),
    (
        "question over the limit",
        _ask("a" * 201, "x"),
        422,
        "input_data.question: has 201 characters, over the server's limit of 200",
    ),
    ("body over the limit", _ask("a", "word " * 900), 413, "over the server's limit of 4096 bytes"),
    ("top_k a string", _ask("a", "x", top_k="3"), 422, "parameters.top_k: Input should be a valid integer"),
    ("top_k zero", _ask("a", "x", top_k=0), 422, "parameters.top_k: Input should be greater than or equal to 1"),
    ("unknown parameter", _ask("a", "x", batch_size=4), 422, "parameters.batch_size: Extra inputs are not permitted"),
    ("doc_stride too large", _ask("a", "x", max_seq_len=32, doc_stride=40), 422, "doc_stride (40) must be smaller"),
    (
        "max_seq_len past the model",
        _ask("a", "x", max_seq_len=4096),
        422,
        "max_seq_len is 4096, over the model's limit",
    ),
    ("question leaves no room", _ask("why " * 40, "x", max_seq_len=32), 422, "question"),
    (
        "too many windows",
        _ask("a", "word " * 390, max_seq_len=32, doc_stride=26),
        422,
        "windows of max_seq_len 32 with doc_stride 26, over this pipeline's limit of 10",
    ),
]


@pytest.mark.parametrize("what, body, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_json_error_naming_it(server, what, body, status, fragment):
    got, error = server.request("POST", "/score", body, {"Content-Type": "application/json"})
    assert got == status, error
    assert error["status"] == status and fragment in error["error"], error
    assert error["problems"][0] == error["error"]


def test_chunked_body_over_the_limit_is_refused_without_reading_it_all(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/score",
            body=iter([b"{" + b" " * 1000] * 8 + [b"}"]),
            encode_chunked=True,
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 413
        assert "over the server's limit of 4096 bytes" in json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_after_every_bad_input_the_server_still_answers(server, qa):
    for _, body, _, _ in BAD:
        server.request("POST", "/v1/answer", body, {"Content-Type": "application/json"})
    status, body = server.post("/score", {"input_data": SAMPLE})
    assert (status, body) == (200, [qa(**SAMPLE)["answer"]])
    status, health = server.request("GET", "/health")
    assert health["failed"] == 0 and health["refused"] >= len(BAD)
    assert "Traceback" not in server.output()


@pytest.mark.parametrize("method, path, status", [("GET", "/nowhere", 404), ("GET", "/score", 405)])
def test_unknown_routes_get_json_errors(server, method, path, status):
    got, error = server.request(method, path)
    assert got == status and error["status"] == status and path in error["error"]


# --- health, OpenAPI ------------------------------------------------------------------------------------


def test_health_names_the_model_and_its_weights(server, tiny_checkpoint):
    status, health = server.request("GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["model"] == str(tiny_checkpoint) and health["revision"] is None
    assert health["weights_sha256"] == hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert health["limits"]["max_context_chars"] == 2000 and health["limits"]["max_body_bytes"] == 4096
    assert health["batching"]["enabled"] is True
    # one process: every core of its affinity (unless the test run itself set a count)
    assert health["blas_threads"] == int(os.environ.get("NPBERT_BLAS_THREADS") or len(os.sched_getaffinity(0)))


def test_openapi_describes_both_answering_routes(server):
    status, doc = server.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    for path in ("/score", "/v1/answer"):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ScoreRequest"
        }
        assert {"200", "400", "413", "422"} <= set(op["responses"])
    assert set(schemas["ScoreRequest"]["properties"]) == {"input_data", "parameters"}
    assert set(schemas["InputData"]["properties"]) == {"question", "context"}
    assert {"top_k", "max_answer_len", "doc_stride", "handle_impossible_answer"} <= set(
        schemas["Parameters"]["properties"]
    )
    assert set(schemas["AnswerRecord"]["properties"]) == {"answer", "score", "start", "end"}
    # every reference in the document resolves
    refs = {v for v in _walk(doc) if isinstance(v, str) and v.startswith("#/components/schemas/")}
    assert refs and all(r.rsplit("/", 1)[1] in schemas for r in refs)


def _walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from (_walk(v) if isinstance(v, (dict, list)) else [v])
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


# --- the documentation's examples, run as written (the port aside) -------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
README = DOC.parents[1] / "README.md"


def _blocks(language: str, doc: Path = DOC) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)


def _run_client(doc: Path, marker: str, port: int, capsys) -> list[str]:
    client = next(b for b in _blocks("python", doc) if marker in b)
    exec(compile(client.replace("127.0.0.1:8000", f"127.0.0.1:{port}"), str(doc), "exec"), {})
    return capsys.readouterr().out.splitlines()


def test_docs_python_client_runs_as_written(server, qa, capsys):
    lines = _run_client(DOC, "def ask", server.port, capsys)
    assert lines[0] == repr([qa(**SAMPLE)["answer"]])
    assert lines[-1] == "422 input_data.question: must not be empty or blank"


def test_readme_python_client_runs_as_written(server, qa, capsys):
    assert _run_client(README, "8000/score", server.port, capsys) == [repr([qa(**SAMPLE)["answer"]])]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("doc, n", [(DOC, 4), (README, 2)], ids=["serving.md", "README.md"])
def test_docs_curl_calls_run_as_written(server, doc, n):
    calls = [
        c
        for b in _blocks("bash", doc)
        for c in re.split(r"\n(?=curl )", b)
        if c.startswith("curl -s http://127.0.0.1:8000")
    ]
    assert len(calls) == n
    for call in calls:
        command = "\n".join(line for line in call.splitlines() if not line.startswith("#"))
        out = subprocess.run(
            ["bash", "-c", command.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        body = json.loads(out)
        assert isinstance(body, dict) and body["status"] == "ok" if "/health" in call else isinstance(body, list), out


# --- start-up and shutdown ------------------------------------------------------------------------------


def test_an_unloadable_model_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "npbert", "serve", "--model", str(tmp_path / "missing"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("npbert serve: error:") and "missing" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_drains_the_requests_in_flight_and_exits_cleanly(tiny_checkpoint, tmp_path, qa):
    # A context long enough, in short windows, that answering it takes a while even with the tiny model.
    context = " ".join(f"In {1900 + i % 100} the team from city {i} played a game and won." for i in range(600))
    questions, parameters = ["Who won the game?", "When was the game played?"], {"max_seq_len": 48, "doc_stride": 24}
    # Hundreds of windows: over the default --max-windows, which exists to refuse requests this slow.
    server = Server(
        tiny_checkpoint,
        tmp_path / "server.log",
        "--max-context-chars",
        str(len(context)),
        "--max-windows",
        "10000",
        "--max-request-windows",
        "100000",
    )
    results = {}

    def ask(question):
        results[question] = server.post(
            "/v1/answer", {"input_data": {"question": question, "context": context}, "parameters": parameters}
        )

    try:
        clients = [threading.Thread(target=ask, args=(q,)) for q in questions]
        for c in clients:
            c.start()
        while True:  # health is answered while the long forwards run: inference is off the event loop
            status, health = server.request("GET", "/health")
            assert status == 200 and all(c.is_alive() for c in clients)
            if health["in_flight"] == len(clients):
                break
        assert server.stop() == 0, server.output()
        for c in clients:
            c.join()
    finally:
        server.stop()
    for question in questions:
        status, body = results[question]
        assert status == 200
        assert_same_records(body[0], records(qa(question=question, context=context, **parameters)))
    log = server.output()
    assert "SIGTERM: draining 2 in-flight requests" in log and "exited cleanly on SIGTERM" in log
    assert "Traceback" not in log


def test_workers_without_the_prefork_extra_each_load_the_model_and_stop_on_sigterm(tiny_checkpoint, tmp_path, qa):
    # Without gunicorn (a stand-in package that fails to import, first on the path) --workers falls back to
    # uvicorn's own multi-process mode: each worker loads the model, and the log says what would share it.
    shadow = tmp_path / "shadow" / "gunicorn"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no gunicorn here', name='gunicorn')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    server = Server(
        tiny_checkpoint,
        tmp_path / "server.log",
        "--workers",
        "2",
        "--no-batching",
        ready=LISTENING,
        env={**os.environ, "PYTHONPATH": path, "NPBERT_BLAS_THREADS": "3"},  # the user's count: not divided
    )
    try:
        for _ in range(600):  # the parent listens at once; the workers answer once they have loaded the model
            try:
                status, body = server.post("/score", {"input_data": SAMPLE})
                break
            except (ConnectionError, http.client.HTTPException):
                time.sleep(0.2)
        assert (status, body) == (200, [qa(**SAMPLE)["answer"]])
        assert server.request("GET", "/health")[1]["blas_threads"] == 3
    finally:
        code = server.stop()
    log = server.output()
    assert code == 0, log
    assert "workers: 3 BLAS threads per process ($NPBERT_BLAS_THREADS)" in log
    assert "without the prefork extra (gunicorn is missing)" in log and "pip install -e '.[prefork]'" in log
    assert log.count("npbert.serve: loaded") == 2 and "Traceback" not in log


# --- the batcher's rules --------------------------------------------------------------------------------


class RecordingModel:
    """A stand-in model: start logits = the input ids, end logits = their negation, and every call's rows
    (the first id of each row) recorded. `gate`: the first call waits for it (arrival order under control)."""

    def __init__(self, gate: threading.Event | None = None, fail_on: int | None = None):
        self.calls, self.gate, self.fail_on, self.entered = [], gate, fail_on, threading.Event()

    def __call__(self, input_ids, attention_mask=None, **kwargs):
        self.entered.set()
        if self.gate is not None and not self.calls:
            self.gate.wait(60)
        self.calls.append([int(row[0]) for row in input_ids])
        if self.fail_on is not None and self.fail_on in input_ids[:, 0]:
            raise RuntimeError(f"bad row {self.fail_on}")
        ids = np.asarray(input_ids, dtype=np.float32)
        return types.SimpleNamespace(
            start_logits=ids * (attention_mask if attention_mask is not None else 1), end_logits=-ids
        )


def forwards(first_ids: list[int], width: int = 3):
    """A request's work: one forward per id in `first_ids` (a row [id, id+1, ..., id+width-1] each),
    returning the start logits it got back for each."""

    def work(model):
        out = []
        for i in first_ids:
            result = model(np.arange(i, i + width)[None], attention_mask=np.ones((1, width), dtype=np.int64))
            out.append(result.start_logits[0].tolist())
        return out

    return work


def _run(model: "RecordingModel", works, max_batch=4):
    """Run `works` (request work functions) on one batcher, all queued, in this order, while an opening
    request's forward (row 0) holds the model: their forwards then meet in the queue. Their results, in order."""

    async def main():
        batcher = Batcher(model, max_batch=max_batch, wait_s=0)
        await batcher.start()
        try:
            opener = asyncio.ensure_future(batcher.run(forwards([0]), Ticket()))
            while not model.entered.is_set():
                await asyncio.sleep(0.001)
            runs = []
            for w in works:  # one at a time: each request's first forward queued before the next starts
                runs.append(asyncio.ensure_future(batcher.run(w, Ticket())))
                while batcher._queue.qsize() < len(runs):  # (driver threads would otherwise race to the queue)
                    await asyncio.sleep(0.001)
            model.gate.set()
            await opener
            return await asyncio.gather(*runs, return_exceptions=True)
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert model.calls[0] == [0]
    del model.calls[0]
    return results


def test_forwards_of_different_requests_share_calls_and_get_their_own_rows():
    model = RecordingModel(threading.Event())
    results = _run(model, [forwards([10]), forwards([20], width=5), forwards([30]), forwards([40]), forwards([50])])
    assert results == [[[10, 11, 12]], [[20, 21, 22, 23, 24]], [[30, 31, 32]], [[40, 41, 42]], [[50, 51, 52]]]
    assert sorted(model.calls[0]) == [10, 20, 30, 40] and model.calls[1:] == [[50]]  # max_batch 4 rows a call


def test_a_short_forward_is_not_padded_to_a_long_ones_width():
    """Joined, a 3-token window would be padded to 400 tokens: over turn_tokens (512), it runs apart."""
    model = RecordingModel(threading.Event())
    results = _run(model, [forwards([10], width=400), forwards([20]), forwards([30])])
    assert results[1:] == [[[20, 21, 22]], [[30, 31, 32]]] and results[0][0][:3] == [10, 11, 12]
    assert sorted(sorted(call) for call in model.calls) == [[10], [20, 30]]


def _large_then_small(model: "RecordingModel", large, **batcher_settings):
    """Run request work `large` and then a small request (one 3-token forward), the small one arriving while
    the large one's first forward is held in the model by `model.gate`; (large's result, small's)."""

    async def main():
        batcher = Batcher(model, wait_s=0, **batcher_settings)
        await batcher.start()
        try:
            big = asyncio.ensure_future(batcher.run(large, Ticket()))
            while not model.entered.is_set():  # its first forward is in the model, held by the gate
                await asyncio.sleep(0.001)
            small = asyncio.ensure_future(batcher.run(forwards([7]), Ticket()))
            while batcher._queue.qsize() < 1:  # the small request's forward is queued
                await asyncio.sleep(0.001)
            model.gate.set()
            return await asyncio.gather(big, small)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_a_large_request_takes_turns_with_a_small_one():
    """The large request's first forward is running when the small one arrives: the small one's forward is
    the next call, not the large one's remaining nine."""
    model = RecordingModel(threading.Event())
    big, small = _large_then_small(model, forwards(list(range(100, 1100, 100))), max_batch=1)
    assert small == [[7, 8, 9]] and big == [[i, i + 1, i + 2] for i in range(100, 1100, 100)]
    assert [c[0] for c in model.calls] == [100, 7] + list(range(200, 1100, 100))


def test_a_long_forward_is_run_in_turns_of_turn_tokens():
    """One pipeline forward of 6 windows of 300 tokens, with turn_tokens 600: three pieces of 2 windows,
    a small request's forward between the first two; the rows come back whole and in order."""
    model = RecordingModel(threading.Event())
    ids = np.arange(6)[:, None] * 1000 + np.arange(300)[None]
    big, small = _large_then_small(
        model, lambda m: m(ids, attention_mask=np.ones_like(ids)).start_logits, max_batch=8, turn_tokens=600
    )
    assert np.array_equal(big, ids.astype(np.float32)) and small == [[7, 8, 9]]
    assert model.calls == [[0, 1000], [7], [2000, 3000], [4000, 5000]]


def test_an_abandoned_request_runs_no_further_forwards():
    model = RecordingModel()
    ticket = Ticket()

    def work(m):
        forwards([1, 2])(m)
        ticket.abandon()  # the client went away after two forwards
        return forwards([3, 4, 5])(m)

    async def main():
        batcher = Batcher(model, max_batch=4, wait_s=0)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.run(work, ticket), return_exceptions=True)
        finally:
            await batcher.stop()

    (result,) = asyncio.run(main())
    assert isinstance(result, Abandoned)
    assert [c[0] for c in model.calls] == [1, 2]


def test_a_request_over_its_deadline_stops():
    model = RecordingModel()
    ticket = Ticket(timeout=1e-9)

    async def main():
        batcher = Batcher(model, max_batch=4, wait_s=0)
        await batcher.start()
        try:
            return await asyncio.gather(batcher.run(forwards([1]), ticket), return_exceptions=True)
        finally:
            await batcher.stop()

    (result,) = asyncio.run(main())
    assert isinstance(result, OverDeadline) and "request timeout" in str(result) and model.calls == []


def test_one_failing_forward_does_not_fail_the_others_in_its_call():
    model = RecordingModel(threading.Event(), fail_on=20)
    results = _run(model, [forwards([10]), forwards([20]), forwards([30])])
    assert results[0] == [[10, 11, 12]] and results[2] == [[30, 31, 32]]
    assert isinstance(results[1], RuntimeError) and "bad row 20" in str(results[1])
    assert sorted(model.calls[0]) == [10, 20, 30] and sorted(model.calls[1:]) == [[10], [20], [30]]


def test_with_max_batch_1_every_forward_is_its_own_call():
    model = RecordingModel(threading.Event())
    _run(model, [forwards([1]), forwards([2]), forwards([3])], max_batch=1)
    assert sorted(model.calls) == [[1], [2], [3]]


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_a_server_fault_is_a_500_logged_with_its_cause(qa, caplog):
    from fastapi.testclient import TestClient

    from npbert.serve import Settings, create_app

    class FaultyModel:
        """The real model, except that it breaks on windows over 30 tokens: a fault inside the server."""

        def __getattr__(self, name):
            return getattr(qa.model, name)

        def __call__(self, input_ids, **kw):
            if input_ids.shape[1] > 30:
                raise RuntimeError("the worker lost its weights")
            return qa.model(input_ids, **kw)

    faulty = npbert.pipeline("question-answering", model=str(qa.folder))
    faulty.model = FaultyModel()
    with TestClient(create_app(Settings(warmup=False), qa=faulty)) as client:
        resp = client.post("/score", json={"input_data": {"question": "break?", "context": PAIRS[2][1] * 2}})
        assert resp.status_code == 500 and "RuntimeError" in resp.json()["error"]
        assert any(r.exc_info and "the worker lost its weights" in str(r.exc_info[1]) for r in caplog.records)
        resp = client.post("/score", json={"input_data": SAMPLE})
        assert resp.status_code == 200 and resp.json() == [qa(**SAMPLE)["answer"]]
        assert client.get("/health").json()["failed"] == 1


# --- tools/loadtest.py ----------------------------------------------------------------------------------

LOADTEST = Path(__file__).resolve().parents[1] / "tools" / "loadtest.py"


def test_loadtest_stops_by_itself_and_reports(server, tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(LOADTEST),
            "--url",
            f"http://127.0.0.1:{server.port}",
            "--pid",
            str(server.proc.pid),
            "--concurrency",
            "3",
            "--duration",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["requests"] > 0 and report["concurrency"] == 3
    assert 0 < report["p50_ms"] <= report["p99_ms"]
    assert report["requests_per_s"] == pytest.approx(report["requests"] / report["wall_s"], rel=0.01)
    assert report["rss_before_mib"] > 0 and report["rss_after_mib"] > 0


def test_loadtest_refuses_addresses_off_this_machine():
    proc = subprocess.run(
        [sys.executable, str(LOADTEST), "--url", "http://10.1.2.3:8000", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "only loopback addresses" in proc.stderr


def test_loadtest_sends_large_requests_beside_the_measured_ones(server, tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(LOADTEST),
            "--url",
            f"http://127.0.0.1:{server.port}",
            "--concurrency",
            "2",
            "--duration",
            "1",
            "--large-concurrency",
            "1",
            "--large-questions",
            "2",
            "--large-context-chars",
            "300",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["requests"] > 0
    assert report["large"]["requests"] >= 1 and report["large"]["statuses"] == {"200": report["large"]["requests"]}
    assert report["large"]["shape"] == "2 x 300 characters"
