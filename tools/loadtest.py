"""Load test for `npbert serve` on loopback: C concurrent clients for T seconds, then a report.

Each client is a thread with its own keep-alive HTTP connection, sending the same kind of request again
and again until the time is up (the run stops by itself: no request starts after T seconds). Reported:
requests/s (successful answers over the wall time), p50/p99 latency, errors (any non-200 or broken
connection; must be 0), the server's RSS after warm-up and after the run (and its peak), and the
server's batching counters over the run (requests per model call, windows per model call).

    # start a server on a free port, load it, stop it (SIGTERM) and report:
    python tools/loadtest.py --model /tmp/full --concurrency 16 --duration 60 --payload seed
    python tools/loadtest.py --model /tmp/full --concurrency 16 --duration 60 --payload squad --serve-arg=--no-batching
    # or load a server already running on this machine:
    python tools/loadtest.py --url http://127.0.0.1:8000 --pid 1234 --concurrency 4 --duration 10

With `--large-concurrency N`, N more clients send large requests (`--large-questions` questions with
contexts of `--large-context-chars` characters each; by default the largest request the default limits
accept in size, 32 x 20,000 characters) at the same time, and the report gives the measured clients'
latency while they arrive (`large` holds the large requests' own statuses and latencies): a large
request must not starve small ones.

Payloads: `seed` is the model catalog's sample request; `squad` is one SQuAD v1.1 dev context of about
--squad-tokens tokens (../shared/data, tokenized with the model's tokenizer) with its questions in turn;
or a JSON file holding a request body. Only loopback addresses are accepted: this tool loads your own
machine, never someone else's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json"
SEED = {"input_data": {"question": "What's my name?", "context": "My name is John and I live in Seattle"}}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
READY = re.compile(r"ready on http://127\.0\.0\.1:(\d+)")


def squad_bodies(model_folder: Path, tokens: int) -> tuple[list[dict], int]:
    """Requests for the SQuAD dev context whose length is nearest `tokens` (one per question), and its length."""
    from npbert.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(model_folder)
    data = json.loads(SQUAD.read_text(encoding="utf-8"))["data"]
    best = None
    for article in data:
        for para in article["paragraphs"]:
            n = len(tok.tokenize(para["context"]))
            if best is None or abs(n - tokens) < abs(best[0] - tokens):
                best = (n, para)
    n, para = best
    return [{"input_data": {"question": qa["question"], "context": para["context"]}} for qa in para["qas"]], n


def rss_kib(pid: int) -> dict[str, int]:
    """The process's resident set now (VmRSS) and at its peak (VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]), "peak": int(fields["VmHWM"].split()[0])}


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    resp = conn.getresponse()
    return resp.status, resp.read()


def large_body(questions: int, context_chars: int, seed: int = 0) -> dict:
    """A request of `questions` questions, each with its own context of `context_chars` characters of
    made-up sentences (seeded: the same bytes every run)."""
    import random

    rng = random.Random(seed)
    names, cities = ["John", "Anna", "Maria", "Peter", "Clara", "Otto"], ["Paris", "Rome", "Seattle", "Oslo", "Lisbon"]
    contexts = []
    for _ in range(questions):
        words = []
        while sum(len(w) + 1 for w in words) < context_chars:
            words.append(f"{rng.choice(names)} lived in {rng.choice(cities)} in {rng.randint(1800, 2000)}.")
        contexts.append(" ".join(words)[:context_chars])
    return {
        "input_data": {
            "question": [f"Where did {rng.choice(names)} live?" for _ in range(questions)],
            "context": contexts,
        }
    }


def client(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    deadline: float,
    offset: int,
    out: dict,
    count: int | None = None,
    timeout: float = 300,
) -> None:
    """Send requests until `deadline` (monotonic seconds), or `count` of them when given."""
    conn, i = http.client.HTTPConnection(host, port, timeout=timeout), offset
    while (i - offset < count) if count is not None else (time.monotonic() < deadline):
        t0 = time.perf_counter()
        try:
            status, data = request(conn, "POST", path, bodies[i % len(bodies)])
        except (OSError, http.client.HTTPException) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
            continue
        finally:
            i += 1
        out.setdefault("statuses", {}).setdefault(status, 0)
        out["statuses"][status] += 1
        if status == 200:
            out["latencies"].append(time.perf_counter() - t0)
        else:
            out["errors"].append(f"HTTP {status}: {data[:200]!r}")
    conn.close()


def health(host: str, port: int) -> dict:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        return json.loads(request(conn, "GET", "/health")[1])
    finally:
        conn.close()


def summary(results: list[dict], wall: float) -> dict:
    latencies = sorted(x for r in results for x in r["latencies"])
    errors = [e for r in results for e in r["errors"]]
    statuses = {}
    for r in results:
        for status, n in r.get("statuses", {}).items():
            statuses[str(status)] = statuses.get(str(status), 0) + n
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "p50_ms": round(1000 * q[49], 1) if q else None,
        "p99_ms": round(1000 * q[98], 1) if q else None,
        "max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        "errors": len(errors),
        "first_errors": errors[:5],
        "statuses": dict(sorted(statuses.items())),
    }


def load(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    concurrency: int,
    duration: float,
    large: bytes | None = None,
    large_concurrency: int = 0,
) -> dict:
    """C measured clients for `duration` seconds; with `large`, `large_concurrency` more clients sending it
    meanwhile (started first, so the measured requests arrive while large ones are being answered)."""
    results = [{"latencies": [], "errors": []} for _ in range(concurrency)]
    large_results = [{"latencies": [], "errors": []} for _ in range(large_concurrency)]
    deadline = time.monotonic() + duration
    threads = [
        threading.Thread(
            target=client, args=(host, port, path, [large], deadline, k, large_results[k]), kwargs={"timeout": 900}
        )
        for k in range(large_concurrency)
    ]
    threads += [
        threading.Thread(target=client, args=(host, port, path, bodies, deadline, k, results[k]))
        for k in range(concurrency)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
        if large_concurrency:
            time.sleep(0.2)  # the large requests first: the measured ones arrive while they are answered
    for t in threads[large_concurrency:]:
        t.join()
    wall = time.perf_counter() - t0
    report = summary(results, wall)
    if large_concurrency:
        for t in threads[:large_concurrency]:
            t.join()
        report["large"] = summary(large_results, time.perf_counter() - t0)
    return report


def http_vs_in_process(host: str, port: int, path: str, body: dict, model: str, rounds: int) -> dict:
    """The same request answered by `npbert.pipeline` in this process and over HTTP, one after the other
    (order alternating each round): the server's own cost next to the forward, as a ratio of medians."""
    import npbert

    qa = npbert.pipeline("question-answering", model=model)
    question, context = body["input_data"]["question"], body["input_data"]["context"]
    raw = json.dumps(body).encode()

    def over_http():  # a new connection each time: uvicorn closes keep-alive connections idle for 5 s
        conn = http.client.HTTPConnection(host, port, timeout=300)
        try:
            status, data = request(conn, "POST", path, raw)
            if status != 200:
                raise SystemExit(f"HTTP {status}: {data[:300]!r}")
        finally:
            conn.close()

    calls = {
        "in_process": lambda: qa(question=question, context=context, **body.get("parameters", {})),
        "http": over_http,
    }
    times = {name: [] for name in calls}
    for name in calls:  # first calls (compilation, connection) are not measured
        calls[name]()
    for r in range(rounds):
        for name in list(calls) if r % 2 else list(calls)[::-1]:
            t0 = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {
        "rounds": rounds,
        "in_process_median_ms": round(1000 * med["in_process"], 1),
        "http_median_ms": round(1000 * med["http"], 1),
        "ratio": round(med["http"] / med["in_process"], 3),
    }


def start_server(model: str, serve_args: list[str], log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [
        sys.executable,
        "-m",
        "npbert",
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-access-log",
        *serve_args,
    ]
    f = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    while not (m := READY.search(log.read_text(errors="replace"))):
        if proc.poll() is not None:
            raise SystemExit(f"npbert serve exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc, int(m.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        help="checkpoint folder: start `npbert serve` on it (with --url: only the tokenizer for --payload squad)",
    )
    p.add_argument("--serve-arg", action="append", default=[], help="extra flag for `npbert serve` (repeatable)")
    p.add_argument("--url", help="load this running server instead (loopback only)")
    p.add_argument("--pid", type=int, help="the running server's process id, for its RSS")
    p.add_argument("--route", default="/score", choices=["/score", "/v1/answer"])
    p.add_argument("--payload", default="seed", help="seed, squad, or a JSON file holding a request body")
    p.add_argument("--squad-tokens", type=int, default=300)
    p.add_argument("--concurrency", "-c", type=int, default=4)
    p.add_argument("--duration", "-t", type=float, default=10.0, help="seconds of load (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="requests per client before measuring (default: %(default)s)")
    p.add_argument(
        "--in-process-rounds",
        type=int,
        default=0,
        help="after the load, answer the first request N times in this process and over HTTP, "
        "interleaved, and report the ratio (needs --model)",
    )
    p.add_argument(
        "--large-concurrency",
        type=int,
        default=0,
        help="clients sending large requests meanwhile (default: %(default)s)",
    )
    p.add_argument("--large-questions", type=int, default=32, help="questions per large request (default: %(default)s)")
    p.add_argument(
        "--large-context-chars",
        type=int,
        default=20_000,
        help="characters of each large request's contexts (default: %(default)s)",
    )
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--log", type=Path, default=Path("loadtest-server.log"), help="the started server's log")
    args = p.parse_args(argv)
    if not args.model and not args.url:
        p.error("give --model (start a server on it) or --url (load a running one)")

    if args.payload == "seed":
        bodies, info = [SEED], "the catalog's sample"
    elif args.payload == "squad":
        if not args.model or not Path(args.model).is_dir():
            p.error("--payload squad needs --model FOLDER (its tokenizer measures the contexts)")
        if not SQUAD.is_file():
            p.error(f"--payload squad needs {SQUAD}")
        bodies, n = squad_bodies(Path(args.model), args.squad_tokens)
        info = f"a SQuAD dev context of {n} tokens, {len(bodies)} questions in turn"
    else:
        bodies, info = [json.loads(Path(args.payload).read_text(encoding="utf-8"))], args.payload
    raw = [json.dumps(b).encode() for b in bodies]

    proc = None
    if args.url:
        u = urlsplit(args.url)
        if u.hostname not in LOOPBACK:
            p.error(f"{args.url}: only loopback addresses ({', '.join(sorted(LOOPBACK))}) may be loaded")
        host, port, pid = u.hostname, u.port or 80, args.pid
    else:
        proc, port = start_server(args.model, args.serve_arg, args.log)
        host, pid = "127.0.0.1", proc.pid
    try:
        rss_start = rss_kib(pid) if pid else None
        warm = [{"latencies": [], "errors": []} for _ in range(args.concurrency)]
        threads = [
            threading.Thread(target=client, args=(host, port, args.route, raw, 0, k, warm[k], args.warmup))
            for k in range(args.concurrency)
        ]  # warm-up: C clients, `--warmup` requests each, not measured
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(w["errors"] for w in warm):
            raise SystemExit(f"warm-up failed: {[e for w in warm for e in w['errors']][:3]}")
        before, rss_before = health(host, port)["batching"], rss_kib(pid) if pid else None
        machine_load = os.getloadavg()[0]
        large = (
            json.dumps(large_body(args.large_questions, args.large_context_chars)).encode()
            if args.large_concurrency
            else None
        )
        report = load(host, port, args.route, raw, args.concurrency, args.duration, large, args.large_concurrency)
        after, rss_after = health(host, port)["batching"], rss_kib(pid) if pid else None
        # other processes competing for the cores: the 1-minute load average before and after the run
        report["machine_load_1min"] = [round(machine_load, 2), round(os.getloadavg()[0], 2)]
        if args.in_process_rounds:
            report["http_vs_in_process"] = http_vs_in_process(
                host, port, args.route, bodies[0], args.model, args.in_process_rounds
            )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(120)
    calls_key = "forwards" if "forwards" in after else "calls"  # model calls ("calls": pipeline calls, before issue 16)
    calls, reqs = after[calls_key] - before[calls_key], after["requests"] - before["requests"]
    if args.large_concurrency:
        report["large"]["body_bytes"] = len(large)
        report["large"]["shape"] = f"{args.large_questions} x {args.large_context_chars} characters"
    report = {
        "payload": info,
        "route": args.route,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "serve_args": args.serve_arg,
        "batching_enabled": after["enabled"],
        **report,
        "requests_per_pipeline_call": round(reqs / calls, 2) if calls else None,
        "windows_per_forward": (
            round((after["windows"] - before["windows"]) / calls, 2) if calls and "windows" in after else None
        ),
        "rss_start_mib": round(rss_start["rss"] / 1024, 1) if rss_start else None,
        "rss_before_mib": round(rss_before["rss"] / 1024, 1) if rss_before else None,
        "rss_after_mib": round(rss_after["rss"] / 1024, 1) if rss_after else None,
        "rss_peak_mib": round(rss_after["peak"] / 1024, 1) if rss_after else None,
    }
    if proc is not None:
        report["server_exit_code"] = exit_code
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
