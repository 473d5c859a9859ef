"""`npbert serve --workers N` on gunicorn (the prefork extra, npbert/serve/prefork.py): the model is loaded
once, in the parent, and the workers are forked from it; they answer as the pipeline does, and SIGTERM,
SIGINT and SIGQUIT each drain the request in flight before the server exits 0; a re-laid weights cache
file truncated under the workers stops the server with one line instead of a loop of workers dying of
SIGBUS. (The fallback without the extra is tested in test_serve.py.)"""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="npbert serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("gunicorn", reason="the prefork extra (gunicorn, uvicorn-worker) is not installed")
pytest.importorskip("uvicorn_worker", reason="the prefork extra (gunicorn, uvicorn-worker) is not installed")

import npbert  # noqa: E402
from npbert import relaid_cache  # noqa: E402
from process_helpers import shared_dirty_mb  # noqa: E402
from serve_helpers import Server  # noqa: E402

PAIRS = [
    ("What's my name?", "My name is John and I live in Seattle"),
    ("Where is the Colosseum?", "The Colosseum is an ancient amphitheatre in the centre of Rome, Italy."),
    ("When was the bridge opened?", "Construction began in 1933 and the bridge was opened to traffic in 1937."),
]
# A context long enough, in short windows, that answering it takes a while even with the tiny model.
LONG = " ".join(f"In {1900 + i % 100} the team from city {i} played a game and won." for i in range(600))
LONG_FLAGS = ["--max-context-chars", str(len(LONG)), "--max-windows", "10000", "--max-request-windows", "100000"]


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


def children(pid: int) -> set[int]:
    return {int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()}


def test_workers_are_forked_from_the_parent_that_loaded_the_model(tiny_checkpoint, tmp_path, qa):
    environ = {k: v for k, v in os.environ.items() if k != "NPBERT_BLAS_THREADS"}
    server = Server(tiny_checkpoint, tmp_path / "server.log", "--workers", "2", env=environ)
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # each worker's share of the cores
    try:
        for _ in range(600):  # the server is ready once its first worker is; the second is forked after it
            if server.output().count("ready on") == 2:
                break
            time.sleep(0.1)
        workers = children(server.proc.pid)
        assert len(workers) == 2
        seen = set()
        for _ in range(200):  # each request goes to whichever worker accepts it first: ask until both answered
            for question, context in PAIRS:
                status, body = server.post("/score", {"input_data": {"question": question, "context": context}})
                assert (status, body) == (200, [qa(question=question, context=context)["answer"]])
            health = server.request("GET", "/health")[1]
            assert health["blas_threads"] == share
            seen.add(health["pid"])
            if seen == workers:
                break
        assert seen == workers
        for pid in workers:
            # the parent's heap (interpreter, numba's kernels, the tokenizer, the app), shared copy-on-write
            assert shared_dirty_mb(pid) > 30, pid
    finally:
        code = server.stop()
    log = server.output()
    assert code == 0, log
    assert log.count("npbert.serve: loaded") == 1 and log.count("warm-up answer") == 1
    assert "forking 2 workers, which share this process's model" in log
    cores = len(os.sched_getaffinity(0))
    plural = "s" if share > 1 else ""
    assert f"workers: {share} BLAS thread{plural} per process (the {cores} cores of the CPU affinity among 2)" in log
    assert sorted(map(int, re.findall(r"Booting worker with pid: (\d+)", log))) == sorted(workers)
    assert "exited on SIGTERM" in log and "Traceback" not in log and "prefork extra" not in log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=lambda s: s.name)
def test_each_stop_signal_drains_the_request_in_flight(tiny_checkpoint, tmp_path, qa, sig):
    server = Server(tiny_checkpoint, tmp_path / "server.log", "--workers", "2", *LONG_FLAGS)
    question, parameters = "Who won the game?", {"max_seq_len": 48, "doc_stride": 24}
    result = {}

    def ask():
        result["reply"] = server.post(
            "/v1/answer", {"input_data": {"question": question, "context": LONG}, "parameters": parameters}
        )

    client = threading.Thread(target=ask)
    try:
        # Both workers serving first: a worker still booting when the stop comes exits without serving (the
        # master says the stop again until it does) and so logs no counters, which the last lines count.
        for _ in range(600):
            if server.output().count("ready on") == 2:
                break
            time.sleep(0.1)
        client.start()
        while True:  # health comes from either worker: wait until the one running the request answers it
            status, health = server.request("GET", "/health")
            assert status == 200 and client.is_alive()
            if health["in_flight"] == 1:
                break
        code = server.stop(sig=sig)
        client.join()
    finally:
        server.stop()
    log = server.output()
    assert code == 0, log
    status, body = result["reply"]
    assert status == 200, body
    want = qa(question=question, context=LONG, **parameters)
    assert (body[0]["answer"], body[0]["start"], body[0]["end"]) == (want["answer"], want["start"], want["end"])
    # gunicorn's master passes SIGINT and SIGQUIT on as SIGQUIT, SIGTERM as SIGTERM
    passed_on = "SIGTERM" if sig == signal.SIGTERM else "SIGQUIT"
    assert f"{passed_on}: draining 1 in-flight request, then exiting" in log
    assert log.count("cut off by the shutdown") == 2 and "1 cut off" not in log  # the two workers' counters
    assert f"exited on {sig.name}" in log and "Traceback" not in log


def test_a_cache_file_truncated_under_the_workers_stops_the_server_with_one_line(tiny_checkpoint, tmp_path, qa):
    cache = tmp_path / "cache"  # this server's own cache folder: the entry it truncates is no one else's
    server = Server(
        tiny_checkpoint, tmp_path / "server.log", "--workers", "2", env=dict(os.environ, NPBERT_CACHE=str(cache))
    )
    question, context = PAIRS[0]
    try:
        for _ in range(600):
            if server.output().count("ready on") == 2:
                break
            time.sleep(0.1)
        status, body = server.post("/score", {"input_data": {"question": question, "context": context}})
        assert (status, body) == (200, [qa(question=question, context=context)["answer"]])
        [entry] = (cache / "relaid").glob("*.bin")
        os.chmod(entry, 0o644)
        os.truncate(entry, relaid_cache.HEADER_BYTES)  # the weights' pages gone from under every mapping
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            try:  # answered (the master may not have looked yet), or cut off: never a wrong answer
                status, body = server.post("/score", {"input_data": {"question": question, "context": context}})
                assert (status, body) == (200, [qa(question=question, context=context)["answer"]])
            except (ConnectionError, http.client.HTTPException, OSError):
                pass
            time.sleep(0.2)
        code = server.proc.poll()
    finally:
        server.stop()
    log = server.output()
    assert code == 1, log
    lines = [line for line in log.splitlines() if "changed after it was checked" in line]
    assert lines and all(entry.name in line and "restart" in line for line in lines), log
    assert lines[-1].startswith("npbert") and "Traceback" not in log
    assert log.count("Booting worker") == 2, log  # no worker forked onto the changed file
