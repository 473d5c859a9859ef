"""Total memory of N npbert worker processes on one machine, three ways:

- `batch`: the real `npbert batch --workers N` (a local Dask cluster: its workers are forked from a fork
  server that loaded the model, npbert.batch.local_cluster), measured once every worker has answered a
  partition;
- `serve`: `npbert serve --workers N` (with the prefork extra, gunicorn forks the workers from the parent
  that loaded the model; without it, uvicorn's multi-process mode), measured after requests to every worker;
- `processes`: N plain processes that each load the model and answer once, for comparison (what each
  worker cost before the workers were forked).

Memory is PSS, summed over every process of the command (its whole process tree), from
/proc/<pid>/smaps_rollup: a page shared by k processes counts 1/k in each, so the sum is what the
processes cost the machine together (RSS would count a shared page N times).

    python tools/bench_memory.py                                  # 1, 2, 4 workers, shared cache vs private copies
    python tools/bench_memory.py --checkpoint DIR --workers 2 --modes batch,processes

Each configuration runs twice: with the shared re-laid weights cache (npbert/relaid_cache.py, in a fresh
temp folder that the first process fills) and with private copies (NPBERT_CACHE pointing at a file, so the
cache is unusable and every process re-lays its own copy: the fallback). The default checkpoint is a
seeded random one of DistilBERT's full size (tests/checkpoints.py FULL_SIZE). Linux only (/proc). The
npbert measured is the one `python -m npbert` imports, which looks in the current folder first: to measure
another checkout, run from it (`cd other && PYTHONPATH=$PWD python /path/to/tools/bench_memory.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))

from bench import cpu_model  # noqa: E402
from process_helpers import start_and_wait  # noqa: E402

# A batch worker: load, answer one 128-token input (so the kernels and activations are in memory), report.
WORKER = r"""
import sys, numpy as np, npbert
model = npbert.AutoModelForQuestionAnswering.from_pretrained(sys.argv[1])
model(np.arange(1, 129) % 1000 + 1000)
print("ready", flush=True)
sys.stdin.read()
"""

FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty")


def rollup(pid: int) -> dict[str, float]:  # MB
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        if name in FIELDS:
            out[name] = int(value.split()[0]) / 1024
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            children = (task / "children").read_text().split()
            todo += [int(c) for c in children]
    return found


def total(pids) -> dict[str, float]:
    rows = []
    for p in pids:
        try:
            rows.append(rollup(p))
        except (FileNotFoundError, ProcessLookupError):  # ended since it was listed (a short-lived helper)
            pass
    return {k: round(sum(r.get(k, 0.0) for r in rows), 1) for k in FIELDS} | {"processes": len(rows)}


def processes(checkpoint: Path, n: int, env: dict) -> dict:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(checkpoint)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker failed (exit {p.wait()})")
        return total([p.pid for p in procs])
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()


def batch(checkpoint: Path, n: int, env: dict, tmp: Path) -> dict:
    """`npbert batch --workers n` on 8 n one-row partitions, its workers slowed down (2 s before each call):
    measured once every worker has saved a partition (each has answered once), then interrupted."""
    data, out = tmp / f"batch-{n}.jsonl", Path(tempfile.mkdtemp(dir=tmp)) / "out"
    context = "My name is John and I live in Seattle. " * 12  # ~128 tokens, as the processes mode's forward
    data.write_text(
        "".join(
            json.dumps({"id": str(i), "question": "Where do I live?", "context": context}) + "\n" for i in range(8 * n)
        )
    )

    def workers_answered() -> set:  # the worker processes named in the saved part files
        seen = set()
        for part in (out / "parts").glob("part-*.json") if (out / "parts").is_dir() else []:
            try:
                seen.add(json.loads(part.read_text())["worker"])
            except ValueError:  # being renamed into place
                pass
        return seen

    proc = start_and_wait(
        [
            sys.executable,
            "-m",
            "npbert",
            "batch",
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            str(checkpoint),
            "--workers",
            str(n),
            "--partition-size",
            "1",
            "--no-progress",
        ],
        lambda: len(workers_answered()) >= n,
        env={**env, "NPBERT_BATCH_SLOWDOWN_SECONDS": "2"},
        timeout=600,
    )
    try:
        return total(descendants(proc.pid))
    finally:
        proc.terminate()  # interrupted: its finished partitions stay in out/parts, which nobody reads
        proc.communicate(timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(checkpoint: Path, n: int, env: dict, log: Path) -> dict:
    port = free_port()  # with --workers N, uvicorn's parent would announce --port 0 as port 0
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npbert",
                "serve",
                "--model",
                str(checkpoint),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(n),
                "--no-access-log",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 600
        # every worker loads the model, answers a warm-up question, then says so
        while True:
            text = log.read_text(errors="replace")
            if text.count("Application startup complete") >= n:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"npbert serve did not start:\n{text}")
            time.sleep(0.2)
        body = json.dumps(
            {"input_data": {"question": "Who lives here?", "context": "My name is John and I live in Seattle. " * 12}}
        ).encode()
        for _ in range(4 * n):  # spread over the workers (the kernels and activations in memory)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/score", body, {"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=120).read()
        return total(descendants(proc.pid))
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: a full-size random one in a temp dir)")
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    p.add_argument("--modes", default="batch,serve,processes", help="comma-separated: batch, serve, processes")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = args.checkpoint
        if folder is None:
            import checkpoints

            folder = checkpoints.write_checkpoint(tmp / "full", seed=2, **checkpoints.FULL_SIZE)
        (tmp / "not-a-folder").write_text("")
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
        results = []
        for mode in args.modes.split(","):
            for n in map(int, args.workers.split(",")):
                for label in ("shared cache", "private copies"):
                    cache = tmp / f"cache-{mode}-{n}" if label == "shared cache" else tmp / "not-a-folder"
                    env = {**os.environ, "NPBERT_CACHE": str(cache)}
                    if mode == "processes":
                        r = processes(folder, n, env)
                    elif mode == "batch":
                        r = batch(folder, n, env, tmp)
                    else:
                        r = serve(folder, n, env, tmp / f"serve-{n}.log")
                    results.append({"mode": mode, "workers": n, "weights": label, **r})
                    print(
                        f"{mode:9} {n} worker(s), {label:14}: total PSS {r['Pss']:7.1f} MB "
                        f"(anon {r['Pss_Anon']:6.1f}, file {r['Pss_File']:6.1f}; RSS {r['Rss']:7.1f}) "
                        f"over {r['processes']} processes",
                        flush=True,
                    )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
