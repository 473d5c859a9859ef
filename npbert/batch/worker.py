"""What runs on the cluster's workers: one cached model per process (loaded once, or inherited from the
preloaded fork server), the probe, and answering one partition, its progress reported to the client.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..evaluate import answer_records
from ..hub import sha256_file
from .common import PROGRESS_TOPIC, SLOWDOWN_VARIABLE

# --- on the workers ------------------------------------------------------------------------------------

_pipelines: dict = {}  # load settings -> (pipeline, identity), one entry per model this process has loaded
_pipelines_lock = threading.Lock()  # a worker running several threads loads each model once all the same
_loads = 0  # models loaded by this process: the tests read it through worker_state()
_preloaded = 0  # models this process was forked with, loaded by the fork server (preload)


def _cached_pipeline(load: dict):
    global _loads
    key = tuple(sorted(load.items()))
    with _pipelines_lock:
        if key not in _pipelines:
            import numpy as np

            from ..pipeline import pipeline

            qa = pipeline(
                "question-answering",
                model=load["model"],
                revision=load["revision"],
                local_files_only=load["local_files_only"],
                dtype=np.dtype(load["dtype"]).type,
                kernels=load["kernels"],
                max_windows=load["max_windows"],
            )
            identity = {"commit": qa.commit, "weights_sha256": sha256_file(Path(qa.folder) / "model.safetensors")}
            _pipelines[key] = (qa, identity)
            _loads += 1
        return _pipelines[key]


@contextlib.contextmanager
def with_environment(name: str, value: str):
    """$name set to `value` inside the block; its previous value (or its absence) restored after."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def preload(load: dict) -> None:
    """Load the model for `load` and answer one question in this process, which will fork workers: run by
    the fork server of a local cluster (npbert/_forkserver_preload.py). Each forked worker then finds the
    model in `_cached_pipeline`'s cache, with numba's kernels loaded, sharing these pages copy-on-write."""
    global _loads, _preloaded
    # The tokenizer's Rust thread pool does not survive fork() (tokenizers turns it off in each child, with a
    # warning); a worker has one thread anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One thread for the warm-up: no kernel worker threads in a process that forks (a child has none of them).
    with with_environment("NPBERT_BLAS_THREADS", "1"):
        qa, _ = _cached_pipeline(load)
        qa(question="Where do I live?", context="My name is John and I live in Seattle. " * 12)
    _loads, _preloaded = _loads - 1, _preloaded + 1  # a forked worker did not load it: it was forked with it
    import gc

    # Everything allocated so far moves to the collector's permanent generation, never scanned: a worker's
    # collections then do not write to these objects' headers, which would un-share the pages they are on.
    gc.freeze()


def _use_blas_threads(threads: int | None) -> None:
    # npbert reads $NPBERT_BLAS_THREADS before every forward. One thread per worker process by default:
    # the cluster runs one worker process per core. A count the worker was started with is the user's say.
    if threads is not None:
        os.environ["NPBERT_BLAS_THREADS"] = str(threads)
    else:
        os.environ.setdefault("NPBERT_BLAS_THREADS", "1")


def worker_state() -> dict:
    """This process's pid, model loads (and models it was forked with), BLAS thread setting and peak RSS in
    MiB (None where the platform does not say); run it on every worker with
    client.run(npbert.batch.worker_state)."""
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)
    except ImportError:  # Windows
        peak = None
    return {
        "pid": os.getpid(),
        "loads": _loads,
        "preloaded": _preloaded,
        "models": [dict(k)["model"] for k in _pipelines],
        "blas_threads": os.environ.get("NPBERT_BLAS_THREADS"),
        "peak_rss_mib": peak,
    }


def probe(load: dict, params: dict, blas_threads: int | None) -> dict:
    """Load the model here and answer a one-word question with `params`. Returns the checkpoint's identity,
    or {"refused": "model" or "parameters", "message"}: an unloadable model (OSError, ValueError) or a
    ValueError from the question (the settings' fault: no row could pass), reported before any partition
    runs. Returned, not raised: a task that raises makes Dask's worker log its traceback on the
    user's terminal before npbert's own one line (docs/distributed.md promises one line)."""
    _use_blas_threads(blas_threads)
    try:
        qa, identity = _cached_pipeline(load)
    except (OSError, ValueError) as e:
        return {"refused": "model", "message": str(e)}
    try:
        qa(question="a", context="a", **params)
    except ValueError as e:
        return {"refused": "parameters", "message": str(e)}
    return identity


def _answer_call(qa, rows: list, params: dict) -> list:
    """(answers (a list per row), null score) or the ValueError refusing it, for rows answered in one
    pipeline call; one call per row only when the batched call refuses one of them. The null score is the
    question's no-answer probability (qa.null_score), what SQuAD v2.0's na_probs.json holds."""
    try:
        null_scores = []
        output = qa(question=[r[2] for r in rows], context=[r[3] for r in rows], **params, null_scores=null_scores)
        return list(zip(answer_records(output, len(rows)), null_scores))
    except ValueError:
        out = []
        for row in rows:
            try:
                null_scores = []
                output = qa(question=row[2], context=row[3], **params, null_scores=null_scores)
                out.append((answer_records(output, 1)[0], null_scores[0]))
            except ValueError as e:
                out.append(e)
        return out


def answer_partition(task: dict) -> dict:
    """A partition's answers: {"partition", "predictions": [{"index", "id", "answers"}], "errors": [{"index",
    "id", "reason"}], "seconds", "worker", "weights_sha256"}. Runs on a worker."""
    _use_blas_threads(task["blas_threads"])
    qa, identity = _cached_pipeline(task["load"])
    slowdown = float(os.environ.get(SLOWDOWN_VARIABLE) or 0)
    t0 = time.perf_counter()
    predictions, errors, rows = [], [], task["rows"]
    for start in range(0, len(rows), task["call_size"]):
        if slowdown:
            time.sleep(slowdown)
        call = rows[start : start + task["call_size"]]
        for (index, qid, _, _), answered in zip(call, _answer_call(qa, call, task["params"])):
            if isinstance(answered, ValueError):
                errors.append({"index": index, "id": qid, "reason": str(answered)})
            else:
                answers, null_score = answered
                predictions.append({"index": index, "id": qid, "answers": answers, "null_score": null_score})
        _report_progress(task["partition"], start + len(call))
    return {
        "partition": task["partition"],
        "predictions": predictions,
        "errors": errors,
        "seconds": time.perf_counter() - t0,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "weights_sha256": identity["weights_sha256"],
    }


def _report_progress(partition: int, done: int) -> None:
    """Tell the client (`_Progress`) that `done` rows of `partition` are answered, through Dask's event log;
    nothing when not running on a Dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(PROGRESS_TOPIC, {"partition": partition, "done": done})
