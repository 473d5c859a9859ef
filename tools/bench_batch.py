"""Benchmark `npbert batch` on a local Dask cluster against single-process `npbert eval`, in one run.

The same full-size random checkpoint (seeded, the real checkpoint's shapes; tests/checkpoints.py) answers
the first --questions SQuAD v1.1 dev questions (../shared, or --data) three ways, one after another in
each round:
  eval      `npbert eval` in one process on --eval-threads BLAS threads (default 2), a subprocess
  batch-1   `npbert batch` engine (npbert.batch.answer) on a local cluster of 1 one-thread worker
  batch-2   the same on 2 one-thread workers
Figures per run: questions/s (eval: its answering time, model load excluded; batch: from the first
partition submitted to the last written, so a second worker's model load is inside), peak RSS per
process, and for batch-1 the per-partition overhead: wall time minus the worker's compute time, per
partition (one worker, several partitions queued ahead, so the worker is never idle waiting for work:
what is left is task hand-off, result transfer and the client's part write). Also the client-side rates
that bound a many-machine run: reading the data file (rows/s) and writing one part file (ms).

The 1-minute load average is printed before every run: on a shared machine, other processes' load
distorts the figures (it favours whichever run had the quieter minute).

    python tools/bench_batch.py                          # 1000 questions, one round; writes bench_batch.json
    python tools/bench_batch.py --questions 300 --rounds 2 --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a full-size checkpoint folder (default: a seeded random one written to a temp dir)",
    )
    p.add_argument("--data", type=Path, help="a SQuAD JSON file (default: ../shared's v1.1 dev set)")
    p.add_argument("--questions", type=int, default=1000, help="the first N questions (default 1000)")
    p.add_argument("--partition-size", type=int, default=None, help="npbert batch's (default its default)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of the three runs (medians reported)")
    p.add_argument("--eval-threads", type=int, default=2, help="BLAS threads of the single-process eval")
    p.add_argument("--json", type=Path, default=Path("bench_batch.json"), help="where to write the results")
    return p.parse_args(argv)


def squad_subset(source: Path, n: int, path: Path) -> Path:
    """The first n questions of a SQuAD file, as a SQuAD file."""
    from npbert import squad

    dataset = squad.read_dataset(source).head(n)
    path.write_text(json.dumps({"version": dataset.version or "1.1", "data": dataset.articles}), encoding="utf-8")
    return path


def load() -> float:
    return os.getloadavg()[0]


def run_eval(checkpoint: Path, data: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "NPBERT_BLAS_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "npbert",
            "eval",
            "--model",
            str(checkpoint),
            "--data",
            str(data),
            "--out",
            str(out),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"npbert eval failed: {stderr}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "questions_per_second": metrics["questions_per_second"],
        "seconds": metrics["elapsed_seconds"],
        "peak_rss_mib": [usage.ru_maxrss / 1024],
    }


def run_batch(checkpoint: Path, data: Path, out: Path, workers: int, partition_size) -> dict:
    from npbert import batch

    kw = {} if partition_size is None else {"partition_size": partition_size}
    with batch.connect(workers=workers) as client:
        manifest = batch.answer(data, out, model=checkpoint, client=client, progress=False, **kw)
        states = client.run(batch.worker_state)
    result = {
        "questions_per_second": manifest["questions_per_second"],
        "seconds": manifest["seconds"],
        "compute_seconds": manifest["compute_seconds"],
        "partitions": manifest["partitions"],
        "partition_size": manifest["partition_size"],
        "peak_rss_mib": sorted(s["peak_rss_mib"] for s in states.values()),
    }
    # wall minus compute, per partition: meaningful with one worker kept busy (see the module docstring)
    result["overhead_per_partition_s"] = (manifest["seconds"] * workers - manifest["compute_seconds"]) / manifest[
        "partitions"
    ]
    result["compute_per_partition_s"] = manifest["compute_seconds"] / manifest["partitions"]
    return result


def client_rates(data: Path, out: Path) -> dict:
    from npbert import batch
    from npbert.evaluate import write_atomic

    t0 = time.perf_counter()
    inputs = batch.read_inputs(data)
    read_s = time.perf_counter() - t0
    part = sorted((out / "parts").iterdir())[0]
    text = part.read_text()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        write_atomic(out / "part-copy.json", text)
        times.append(time.perf_counter() - t0)
    return {
        "read_rows_per_second": inputs.count / read_s,
        "data_bytes": data.stat().st_size,
        "part_write_ms": 1000 * statistics.median(times),
        "part_bytes": len(text.encode()),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    import checkpoints
    from bench import make_checkpoint  # tools/bench.py, beside this file

    source = args.data or checkpoints.SHARED_SQUAD
    if not Path(source).is_file():
        print(f"no SQuAD file at {source}: pass --data", file=sys.stderr)
        return 2
    results = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "questions": args.questions,
        "rounds": [],
    }
    try:
        results["cpu"] = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    with tempfile.TemporaryDirectory(prefix="npbert-bench-batch-") as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint or make_checkpoint(tmp / "checkpoint")  # tools/bench.py's, seed 0
        data = squad_subset(Path(source), args.questions, tmp / "squad.json")
        for r in range(args.rounds):
            round_ = {}
            for name, call in (
                ("eval", lambda o: run_eval(checkpoint, data, o, args.eval_threads)),
                ("batch-1", lambda o: run_batch(checkpoint, data, o, 1, args.partition_size)),
                ("batch-2", lambda o: run_batch(checkpoint, data, o, 2, args.partition_size)),
            ):
                before = load()
                round_[name] = {**call(tmp / f"{name}-{r}"), "load_before": before, "load_after": load()}
                print(f"round {r + 1} {name}: {json.dumps(round_[name])}", file=sys.stderr, flush=True)
            same = (
                (tmp / f"eval-{r}" / "predictions.json").read_bytes()
                == (tmp / f"batch-2-{r}" / "predictions.json").read_bytes()
                == (tmp / f"batch-1-{r}" / "predictions.json").read_bytes()
            )
            round_["same_predictions"] = same
            results["rounds"].append(round_)
        results["client"] = client_rates(data, tmp / "batch-1-0")

    def median(name, key):
        return statistics.median(r[name][key] for r in results["rounds"])

    qps = {n: median(n, "questions_per_second") for n in ("eval", "batch-1", "batch-2")}
    b1 = results["rounds"][0]["batch-1"]
    summary = {
        "questions_per_second": qps,
        "scaling_2_over_1": qps["batch-2"] / qps["batch-1"],
        "batch_2_over_eval": qps["batch-2"] / qps["eval"],
        "overhead_per_partition_s": median("batch-1", "overhead_per_partition_s"),
        "compute_per_partition_s": median("batch-1", "compute_per_partition_s"),
        "partition_size": b1["partition_size"],
        "seconds_per_question_one_thread": median("batch-1", "compute_per_partition_s")
        * b1["partitions"]
        / args.questions,
    }
    summary["overhead_percent"] = 100 * summary["overhead_per_partition_s"] / summary["compute_per_partition_s"]
    results["summary"] = summary
    args.json.write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"\n{results['cpu']}, {results['cores']} cores; {args.questions} SQuAD v1.1 dev questions, "
        f"full-size random checkpoint, {args.rounds} round(s)\n"
    )
    print("| run | questions/s | peak RSS per process (MiB) | load average before / after |")
    print("|---|---|---|---|")
    for name, label in (
        ("eval", f"`npbert eval`, 1 process, {args.eval_threads} BLAS threads"),
        ("batch-1", "`npbert batch`, 1 worker x 1 thread"),
        ("batch-2", "`npbert batch`, 2 workers x 1 thread"),
    ):
        rss = ", ".join(f"{x:.0f}" for x in results["rounds"][-1][name]["peak_rss_mib"])
        loads = "; ".join(f"{r[name]['load_before']:.1f} / {r[name]['load_after']:.1f}" for r in results["rounds"])
        print(f"| {label} | {qps[name]:.2f} | {rss} | {loads} |")
    print(
        f"\n2 workers / 1 worker: {summary['scaling_2_over_1']:.2f}x; 2 workers / eval: {summary['batch_2_over_eval']:.2f}x"  # noqa: E501
    )
    print(
        f"per-partition overhead (1 worker): {summary['overhead_per_partition_s'] * 1000:.0f} ms against "
        f"{summary['compute_per_partition_s']:.1f} s of compute per {summary['partition_size']}-question partition "
        f"({summary['overhead_percent']:.2f}%)"
    )
    c = results["client"]
    print(
        f"client: reads {c['read_rows_per_second']:.0f} rows/s ({c['data_bytes']} bytes), writes a part "
        f"({c['part_bytes']} bytes) in {c['part_write_ms']:.1f} ms"
    )
    print(f"same predictions.json in every run: {all(r['same_predictions'] for r in results['rounds'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
