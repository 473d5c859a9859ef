"""Batch answering on Dask distributed: a corpus of {id, question, context} rows answered by the
question-answering pipeline on a cluster's workers, partition by partition, resumable, nothing lost when a
worker dies.

    import npbert.batch
    npbert.batch.answer("corpus.jsonl", "out/", model="distilbert/distilbert-base-cased-distilled-squad",
                        client=client, top_k=1)          # client: a dask.distributed.Client (or workers=N)

Follows Dask distributed's own fault model (https://distributed.dask.org/en/stable/resilience.html): a
task whose worker dies is rerun on another worker, so a partition is a pure function of its rows and the
run's settings, and the answers are the single-process pipeline's (the engine changes where the work
runs, never what it computes).

How a run goes:
- The client reads the data file (JSON Lines, SQuAD JSON or Parquet) and checks each row (id present,
  unique and a string; question and context non-empty strings); a bad row becomes an error record, never
  a stopped job. Inputs are cut into partitions of `partition_size` consecutive inputs, by position.
- A probe task loads the model on one worker and tries the parameters on a one-word question, so a bad
  setting is one error, not one per row; it also reports the weights' sha256 for settings.json.
- Each partition is one task: the rows travel in the task (never scattered, so Dask can rerun it), the
  model is loaded once per worker process (`_cached_pipeline`, keyed by model, revision, dtype, kernels)
  and never pickled. A local cluster's workers (`local_cluster`) are forked by multiprocessing's fork
  server, which has loaded the run's model and answered one question first (`preload`, from
  npbert/_forkserver_preload.py): each worker starts with it in `_cached_pipeline`'s cache and shares its
  pages copy-on-write instead of loading its own (docs/performance.md, "Memory"). The worker answers
  `call_size` rows per pipeline call (their windows batched together); only when a call refuses an input
  (a question too long for max_seq_len, too many windows) does it answer that call's rows one by one, so
  the other rows are still answered.
- The client writes each finished partition to `DIR/parts/part-NNNNNN.json` atomically (temporary file,
  fsync, rename): a part is on disk whole or not at all, whatever kills the client. `resume=True` skips
  the parts already there, after checking `DIR/settings.json` against this run's settings.
- At the end the parts, read back from disk in partition order, become `predictions.jsonl` (input order),
  `errors.jsonl`, `manifest.json`, and for a SQuAD file `predictions.json` and `metrics.json`, written by
  `npbert eval`'s own code (evaluate._finish), so they are the files `npbert eval` writes for the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import squad
from .evaluate import Job, _finish, _records, effective_parameters, score_of, write_atomic
from .hub import DEFAULT_MODEL, sha256_file
from .limits import DEFAULT_MAX_WINDOWS  # a context making more windows is an error row

FORMAT = "npbert-batch/1"
PARTS = "parts"
SETTINGS = "settings.json"
MANIFEST = "manifest.json"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"
DEFAULT_PARTITION_SIZE = 128
# Questions per pipeline call: npbert eval's default --save-every, so a SQuAD file is answered in the same
# calls as `npbert eval` answers it (partition boundaries are multiples of it) and gives the same bits.
DEFAULT_CALL_SIZE = 32
# The load settings (JSON) of the model the fork server of a local cluster loads before it forks any worker
# (npbert/_forkserver_preload.py reads it there).
PRELOAD_VARIABLE = "NPBERT_BATCH_PRELOAD"
# The Dask event topic on which workers report rows answered within a partition (the progress bar's counts).
PROGRESS_TOPIC = "npbert-batch-progress"
# Sleep before each pipeline call on the workers, in seconds: lets the tests (and a demonstration) kill a
# worker or interrupt the client mid-run on a checkpoint that answers in milliseconds.
SLOWDOWN_VARIABLE = "NPBERT_BATCH_SLOWDOWN_SECONDS"
# manifest.json fields that differ between an undisturbed run and an interrupted, resumed or disturbed one
RUN_FIELDS = ("seconds", "questions_per_second", "compute_seconds", "workers")
# part file fields that say where and how long, not what
PART_RUN_FIELDS = ("seconds", "worker")


class BatchError(ValueError):
    """A setting, data file or output folder that cannot be used: one line naming it (exit status 2)."""


class IncompleteError(RuntimeError):
    """The outputs do not account for every input exactly once (exit status 1)."""


class PartitionFailed(RuntimeError):
    """A task failed on the cluster for another reason than its rows (a worker killed on every attempt, a
    bug): the run stops, the finished partitions stay saved (exit status 1)."""


class Interrupted(KeyboardInterrupt):
    """The client stopped on SIGINT or SIGTERM (`signum`); `done` of `total` partitions are in `parts`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done, self.total, self.parts = signum, 0, 0, None


# --- reading the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    path: Path
    count: int  # inputs, good and bad
    rows: list  # (index, id, question, context) of the rows to answer, in input order
    errors: list  # {"index", "id", "where", "reason"} of the rows refused on reading
    squad: squad.Dataset | None  # the dataset when the file is SQuAD JSON (scored at the end)


def _check_row(record, index: int, where: str, seen: dict, rows: list, errors: list) -> None:
    def refuse(reason, qid=None):
        errors.append({"index": index, "id": qid, "where": where, "reason": reason})

    if not isinstance(record, dict):
        return refuse(f"each input must be an object with id, question and context, found {type(record).__name__}")
    qid = record.get("id")
    if qid is None:
        return refuse("missing id")
    if not isinstance(qid, str) or not qid:
        return refuse(f"id must be a non-empty string, found {qid!r}")
    # Ids are kept as written (the outputs carry them unchanged), but two that differ only by Unicode
    # normalisation or surrounding spaces look the same to a reader and to tools that normalise or strip
    # before a join: the later one is refused as a duplicate (docs/distributed.md, "Ids").
    key = unicodedata.normalize("NFC", qid).strip()
    if key in seen:
        first, first_where = seen[key]
        if first == qid:
            return refuse(f"duplicate id {qid!r} (first at {first_where})", qid)
        return refuse(f"duplicate id {qid!r}: the same as {first!r} (first at {first_where}) once Unicode-normalised "
                      "(NFC) and stripped of surrounding spaces", qid)
    seen[key] = (qid, where)
    for key in ("question", "context"):
        value = record.get(key)
        if value is None:
            return refuse(f"missing {key}", qid)
        if not isinstance(value, str):
            return refuse(f"{key} must be a string, found {type(value).__name__}", qid)
        if not value.strip():
            return refuse(f"{key} is empty", qid)
    rows.append((index, qid, record["question"], record["context"]))


def read_inputs(path: str | Path) -> Inputs:
    """The rows of a JSON Lines (*.jsonl, *.ndjson), Parquet (*.parquet, *.pq) or SQuAD JSON file.

    A bad row is an error record; a file that cannot be read at all (absent, not UTF-8, a Parquet file
    without the columns, SQuAD JSON that npbert eval would refuse) raises BatchError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise BatchError(f"{path}: data file not found")
    rows, errors, seen = [], [], {}
    if suffix in (".jsonl", ".ndjson"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BatchError(f"{path}: not UTF-8 text (byte {e.start})") from None
        # JSON Lines end at "\n" only (a "\r" before it is JSON whitespace): str.splitlines would also cut at
        # U+2028, U+0085 and the other separators a JSON string may hold raw.
        lines = text.split("\n")
        index = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue  # a blank line is no input
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append({"index": index, "id": None, "where": f"{path}:{n}",
                               "reason": f"malformed JSON at column {e.colno}: {e.msg}"})
            else:
                _check_row(record, index, f"{path}:{n}", seen, rows, errors)
            index += 1
        return Inputs(path, index, rows, errors, None)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        wanted = ["id", "question", "context"]
        try:
            names = pq.read_schema(path).names
        except Exception as e:  # pyarrow raises ArrowInvalid and friends on a file that is not Parquet
            raise BatchError(f"{path}: unreadable Parquet file ({_first_line(e)})") from None
        missing = [c for c in wanted if c not in names]
        if missing:
            raise BatchError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        repeated = next((c for c in wanted if names.count(c) > 1), None)
        if repeated is not None:  # pyarrow's own error for it is a many-line schema dump
            raise BatchError(f"{path}: {names.count(repeated)} columns are named {repeated!r}; keep one")
        try:
            table = pq.read_table(path, columns=wanted)  # the others are never read (nor checked)
        except Exception as e:
            raise BatchError(f"{path}: unreadable Parquet file ({_first_line(e)})") from None
        columns = [table.column(c).to_pylist() for c in ("id", "question", "context")]
        for index, (qid, question, context) in enumerate(zip(*columns)):
            _check_row({"id": qid, "question": question, "context": context}, index, f"{path}: row {index}",
                       seen, rows, errors)
        return Inputs(path, table.num_rows, rows, errors, None)
    try:
        dataset = squad.read_dataset(path)
    except squad.DataError as e:
        raise BatchError(str(e)) from None
    for index, e in enumerate(dataset.examples):
        _check_row({"id": e.id, "question": e.question, "context": e.context}, index, e.location, seen, rows, errors)
    return Inputs(path, len(dataset.examples), rows, errors, dataset)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


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

            from .pipeline import pipeline

            qa = pipeline("question-answering", model=load["model"], revision=load["revision"],
                          local_files_only=load["local_files_only"], dtype=np.dtype(load["dtype"]).type,
                          kernels=load["kernels"], max_windows=load["max_windows"])
            identity = {"commit": qa.commit, "weights_sha256": sha256_file(Path(qa.folder) / "model.safetensors")}
            _pipelines[key] = (qa, identity)
            _loads += 1
        return _pipelines[key]


@contextlib.contextmanager
def _environment(name: str, value: str):
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
    with _environment("NPBERT_BLAS_THREADS", "1"):
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
    return {"pid": os.getpid(), "loads": _loads, "preloaded": _preloaded,
            "models": [dict(k)["model"] for k in _pipelines],
            "blas_threads": os.environ.get("NPBERT_BLAS_THREADS"), "peak_rss_mib": peak}


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
        return list(zip(_records(output, len(rows)), null_scores))
    except ValueError:
        out = []
        for row in rows:
            try:
                null_scores = []
                output = qa(question=row[2], context=row[3], **params, null_scores=null_scores)
                out.append((_records(output, 1)[0], null_scores[0]))
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
        call = rows[start:start + task["call_size"]]
        for (index, qid, _, _), answered in zip(call, _answer_call(qa, call, task["params"])):
            if isinstance(answered, ValueError):
                errors.append({"index": index, "id": qid, "reason": str(answered)})
            else:
                answers, null_score = answered
                predictions.append({"index": index, "id": qid, "answers": answers, "null_score": null_score})
        _report_progress(task["partition"], start + len(call))
    return {"partition": task["partition"], "predictions": predictions, "errors": errors,
            "seconds": time.perf_counter() - t0, "worker": f"{socket.gethostname()}:{os.getpid()}",
            "weights_sha256": identity["weights_sha256"]}


def _report_progress(partition: int, done: int) -> None:
    """Tell the client (`_Progress`) that `done` rows of `partition` are answered, through Dask's event log;
    nothing when not running on a Dask worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(PROGRESS_TOPIC, {"partition": partition, "done": done})


class _Progress:
    """The progress bar, counted in inputs: each partition's rows as its worker reports them answered
    (`_report_progress`, every `call_size` rows), and the whole partition once it is saved. A partition
    rerun elsewhere (its worker died) reports from 0 again: its count never goes back."""

    def __init__(self, bar, sizes: dict[int, int]):
        self.bar, self.sizes, self.shown, self.lock = bar, sizes, {}, threading.Lock()

    def _advance(self, partition: int, done: int) -> None:
        with self.lock:
            before = self.shown.get(partition, 0)
            done = min(max(done, before), self.sizes.get(partition, 0))
            if done > before:
                self.shown[partition] = done
                self.bar.update(done - before)

    def event(self, event) -> None:  # a client.subscribe_topic handler: (timestamp, message)
        self._advance(event[1]["partition"], event[1]["done"])

    def saved(self, partition: int) -> None:
        self._advance(partition, self.sizes[partition])


# --- the cluster ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, preload: dict | None = None):
    """A dask.distributed Client: to the scheduler at `scheduler` (tcp://host:8786), else to a local cluster
    of `workers` processes (default: the core count) of one thread each, closed on exit, forked with the
    model of `preload` (load settings, `_load_settings`) already loaded when given (`local_cluster`)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise BatchError("npbert batch needs Dask distributed: pip install -e '.[distributed]' in an npbert "
                         "checkout") from None
    if scheduler is not None and workers is not None:
        raise BatchError("give --workers N (a local cluster) or --scheduler ADDRESS (a running one), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise BatchError(f"--workers must be a positive integer, found {workers!r}")
    if scheduler is not None:  # remote workers: each loads the model itself, as it always did
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise BatchError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        with client:
            yield client
        return
    import logging

    with local_cluster(workers or os.cpu_count() or 1, preload, silence_logs=logging.ERROR,
                       env={"NPBERT_BLAS_THREADS": os.environ.get("NPBERT_BLAS_THREADS", "1")}) as cluster, \
            Client(cluster) as client:
        yield client


@contextlib.contextmanager
def local_cluster(workers: int, preload: dict | None = None, **kwargs):
    """A Dask LocalCluster of `workers` processes of one thread each (`kwargs`: LocalCluster's). With
    `preload` (load settings), its worker processes are forked by multiprocessing's fork server, started
    here after it has loaded that model (`preload()`), and stopped after the cluster; without (or where no
    fork server can be started for this cluster alone), Dask's default: fresh processes (spawn)."""
    import dask
    from dask.distributed import LocalCluster

    with contextlib.ExitStack() as stack:
        if preload is not None and _start_preloaded_forkserver(preload):
            stack.callback(_stop_forkserver)
            stack.enter_context(dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}))
        # Without a dashboard the scheduler still serves its HTTP routes on port 8787, and warns on stderr
        # when another cluster holds that port; it then takes a free one, which is all a local run needs.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Port \d+ is already in use", UserWarning)
            # One thread per process: the pipeline runs Python between BLAS calls, which threads would
            # serialise on.
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   **kwargs)
        yield stack.enter_context(cluster)


def _forkserver():
    """multiprocessing's fork server of this process (one per process), or None where there is none."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
        return None
    import multiprocessing.forkserver

    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    # _stop and _forkserver_pid are CPython's own (3.8 to 3.13), used by its tests; without them, no preload.
    return server if hasattr(server, "_stop") and hasattr(server, "_forkserver_pid") else None


def _start_preloaded_forkserver(load: dict) -> bool:
    """Start this process's fork server with `load`'s model preloaded; False when it cannot be done here:
    no fork server, or one already running (another cluster's: its workers load their own model)."""
    import dask
    from distributed.utils import get_mp_context

    server = _forkserver()
    if server is None or server._forkserver_pid is not None:
        return False
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        # Dask sets its own preload list on the first call in a process, and only then: call it first.
        context = get_mp_context()
    context.set_forkserver_preload(["distributed", "npbert._forkserver_preload"])
    with _environment(PRELOAD_VARIABLE, json.dumps(load)):  # the server reads it once, as it starts
        server.ensure_running()
    return True


def _stop_forkserver() -> None:
    # After the cluster has closed (its workers are gone): the server holds the model, and the next cluster
    # of this process may want another one.
    _forkserver()._stop()


def _completed(client, tasks, keys):
    """Submit `tasks` (dicts for answer_partition) two per worker thread at a time (so each worker has its
    next partition when it finishes one, and a corpus of millions of rows is never all in the scheduler);
    yield their results as they finish. The count follows workers joining or leaving. A task whose worker
    died is rerun by Dask on another worker, invisibly here."""
    from dask.distributed import as_completed

    pending = zip(tasks, keys)
    running = as_completed()

    def top_up() -> None:
        window = max(4, 2 * sum(client.nthreads().values()))
        while running.count() < window:
            for task, key in pending:
                running.add(client.submit(answer_partition, task, key=key, pure=False))
                break
            else:
                return

    top_up()
    try:
        for future in running:
            try:
                result = future.result()
            except Exception as e:  # KilledWorker after Dask's retries, or the task's own exception
                partition = future.key.rsplit("-", 1)[1]
                raise PartitionFailed(f"partition {partition} failed on the cluster: {type(e).__name__}: {e}; the "
                                      "finished partitions are saved, --resume retries the rest") from e
            future.release()
            top_up()
            yield result
    finally:  # interrupted, or a partition failed: nothing keeps running for this run
        for future in list(running.futures):
            future.cancel()


def _load_settings(model, revision, local_files_only, dtype, kernels, max_windows) -> dict:
    path = Path(str(model)).expanduser()
    # A folder as given may be relative to the client's working directory; the workers' may differ.
    where = str(path.resolve()) if path.is_dir() else str(model)
    import numpy as np

    return {"model": where, "revision": revision, "local_files_only": bool(local_files_only),
            "dtype": np.dtype(dtype).name, "kernels": kernels, "max_windows": max_windows}


def eval_load_settings(model, revision) -> dict:
    """The load settings of `npbert eval --workers`'s tasks (answer_chunks), for connect's preload."""
    return _load_settings(model, revision, False, "float32", None, None)


def answer_chunks(client, chunks: list, params: dict, model: str = DEFAULT_MODEL, revision: str | None = None,
                  blas_threads: int | None = None):
    """`npbert eval --workers`: the pipeline's output for each chunk of squad.Example and the chunk's null
    scores (qa.null_score, for na_probs.json), in chunk order, each
    chunk one task on the cluster (npbert eval's pipeline call); a question the pipeline refuses raises
    its ValueError, as the single-process call would."""
    load = eval_load_settings(model, revision)
    tasks = ({"partition": i, "rows": [(j, e.id, e.question, e.context) for j, e in enumerate(chunk)],
              "load": load, "params": params, "call_size": len(chunk), "blas_threads": blas_threads}
             for i, chunk in enumerate(chunks))
    from dask.base import tokenize

    token = tokenize(load, params, [e.id for c in chunks for e in c])
    keys = (f"npbert-eval-{token}-{i}" for i in range(len(chunks)))
    finished, next_chunk = {}, 0
    for result in _completed(client, tasks, keys):
        finished[result["partition"]] = result
        while next_chunk in finished:
            result = finished.pop(next_chunk)
            if result["errors"]:
                raise ValueError(result["errors"][0]["reason"])
            answers = [p["answers"] for p in result["predictions"]]
            yield answers[0] if len(answers) == 1 else answers, [p["null_score"] for p in result["predictions"]]
            next_chunk += 1


# --- the run -------------------------------------------------------------------------------------------


def _part_path(out: Path, partition: int) -> Path:
    return out / PARTS / f"part-{partition:06d}.json"


def _read_part(path: Path, partition: int, first: int, stop: int) -> dict | None:
    """A part file written by this run's settings (checked by the caller), or None when absent. A part is
    written whole or not at all, so an unreadable one is someone else's file: an error, never ignored."""
    if not path.exists():
        return None
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
        ok = part.get("format") == FORMAT and (part["partition"], part["first"], part["stop"]) == (partition, first, stop)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BatchError(f"{path}: not this run's part {partition} (inputs {first}-{stop - 1}); delete the output "
                         "folder to start over")
    return part


def _check_settings(out: Path, settings: dict, resume: bool, keys=None, ignore=()) -> None:
    """Refuse a folder holding another run, or resuming with different settings (naming the first)."""
    path = out / SETTINGS
    if not path.exists():
        return
    if not resume:
        raise BatchError(f"{path}: a run is here already; pass --resume to continue it, or choose another --out")
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BatchError(f"{path}: unreadable; delete the output folder to start over") from None
    flat_before, flat_now = _flatten(before), _flatten(settings)
    for name in (keys or sorted((set(flat_before) | set(flat_now)) - set(ignore))):
        if flat_before.get(name) != flat_now.get(name):
            raise BatchError(f"{path}: cannot resume: {name} was {flat_before.get(name)!r}, now {flat_now.get(name)!r}; "
                             "rerun with the first run's settings, or choose another --out")


def _flatten(settings: dict) -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            out[k] = v
    return out


def _signals_raise():
    """SIGTERM (and SIGINT) raise Interrupted in the main thread, as Ctrl-C raises KeyboardInterrupt."""
    def handler(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def installed():
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    return installed()


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _prediction_line(record: dict, top_k: int) -> dict:
    answers = record["answers"]
    if top_k > 1:
        return {"id": record["id"], "answers": answers}
    best = answers[0] if answers else {"answer": None, "score": None, "start": None, "end": None}
    return {"id": record["id"], "answer": best["answer"], "score": best["score"], "start": best["start"],
            "end": best["end"]}


def answer(data: str | Path, out: str | Path, model: str | Path = DEFAULT_MODEL, revision: str | None = None,
           client=None, *, workers: int | None = None, scheduler: str | None = None,
           partition_size: int = DEFAULT_PARTITION_SIZE, call_size: int = DEFAULT_CALL_SIZE, resume: bool = False,
           max_windows: int | None = DEFAULT_MAX_WINDOWS, blas_threads: int | None = None,
           local_files_only: bool = False, dtype="float32", kernels: str | None = None, progress: bool = True,
           progress_file=None, **parameters) -> dict:
    """Answer every row of `data` on a Dask cluster into the folder `out`; returns the manifest.

    `client`: a dask.distributed.Client; without one, `scheduler` (an address) or a local cluster of
    `workers` processes is used for the call. `parameters`: the pipeline's (top_k, doc_stride,
    max_answer_len, max_seq_len, handle_impossible_answer, align_to_words, padding, batch_size, ...).
    Raises BatchError on a bad setting, data file or folder, Interrupted on SIGINT/SIGTERM (the finished
    partitions are in out/parts; resume=True continues), IncompleteError if the outputs miss an input,
    PartitionFailed if a task fails on the cluster for another reason than its rows."""
    from .pipeline import _check_batch_size, check_parameters

    for name, value, least in (("partition_size", partition_size, 1), ("call_size", call_size, 1),
                               ("max_windows", max_windows, 1), ("blas_threads", blas_threads, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise BatchError(f"{name} must be a positive integer, found {value!r}")
    batch_size = parameters.pop("batch_size", None)
    try:
        params = {**check_parameters(parameters), **({"batch_size": _check_batch_size(batch_size)} if batch_size else {})}
    except ValueError as e:
        raise BatchError(str(e)) from None
    inputs = read_inputs(data)
    if inputs.count == 0:
        raise BatchError(f"{inputs.path}: no inputs")
    version = None
    if inputs.squad is not None:  # as npbert eval: v2.0 answers "no answer" unless told otherwise
        version = inputs.squad.version or "1.1"
        params = effective_parameters(Job(data=str(data), parameters=params), version)
    params = dict(sorted(params.items()))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: output exists and is not a folder")
    load = _load_settings(model, revision, local_files_only, dtype, kernels, max_windows)
    settings = {"format": FORMAT, "data": str(inputs.path), "data_sha256": sha256_file(inputs.path),
                "inputs": inputs.count, "model": str(model), "revision": revision, "dtype": load["dtype"],
                "kernels": kernels, "max_windows": max_windows, "partition_size": partition_size,
                "call_size": call_size, "parameters": params}
    # before starting a cluster, so a refusal is immediate; the weights' sha256 comes from the probe
    _check_settings(out, settings, resume, ignore=["weights_sha256"])
    total = -(-inputs.count // partition_size)
    # Ctrl-C or SIGTERM at any point, the cluster's start included: the local cluster is closed on the way
    # out, the finished partitions stay, and the exception says how many
    with _signals_raise():
        try:
            with contextlib.ExitStack() as stack:
                if client is None:
                    client = stack.enter_context(connect(workers, scheduler, preload=load))
                identity = _probe(client, load, params, blas_threads)
                settings["weights_sha256"] = identity["weights_sha256"]
                _check_settings(out, settings, resume, keys=["weights_sha256"])
                (out / PARTS).mkdir(parents=True, exist_ok=True)
                if not (out / SETTINGS).exists():
                    write_atomic(out / SETTINGS, json.dumps(settings, indent=2) + "\n")
                return _run(client, out, inputs, load, params, settings, identity, version, blas_threads, progress,
                            progress_file)
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            # counted on disk: the signal may have come between a part's rename and any count kept here
            stop.done, stop.total = sum(_part_path(out, p).exists() for p in range(total)), total
            stop.parts = out / PARTS
            raise stop from None


def _probe(client, load: dict, params: dict, blas_threads) -> dict:
    try:
        identity = client.submit(probe, load, params, blas_threads, pure=False).result()
    except Exception as e:
        raise PartitionFailed(f"loading the model on a worker failed: {type(e).__name__}: {e}") from e
    if identity.get("refused") == "parameters":
        raise BatchError(f"the parameters {params}: {identity['message']}")
    if identity.get("refused") == "model":
        raise BatchError(identity["message"])  # the model cannot be loaded: its own one-line message
    return identity


def _run(client, out, inputs, load, params, settings, identity, version, blas_threads, progress, progress_file):
    from dask.base import tokenize
    from tqdm import tqdm

    size = settings["partition_size"]
    bounds = [(p, first, min(first + size, inputs.count)) for p, first in enumerate(range(0, inputs.count, size))]
    todo = [b for b in bounds if _read_part(_part_path(out, b[0]), *b) is None]
    rows_of = {p: [] for p, _, _ in bounds}
    for row in inputs.rows:
        rows_of[row[0] // size].append(row)
    token = tokenize(settings)
    tasks = ({"partition": p, "rows": rows_of[p], "load": load, "params": params,
              "call_size": settings["call_size"], "blas_threads": blas_threads} for p, _, _ in todo)
    keys = (f"npbert-batch-{token}-{p}" for p, _, _ in todo)
    first_stop = {p: (first, stop) for p, first, stop in bounds}
    sizes = {p: stop - first for p, first, stop in todo}
    bar = tqdm(total=inputs.count, initial=inputs.count - sum(sizes.values()), unit="input", desc="batch",
               disable=not progress, file=progress_file or sys.stderr, dynamic_ncols=True, smoothing=0.1)
    shown = _Progress(bar, sizes)
    if progress:
        client.subscribe_topic(PROGRESS_TOPIC, shown.event)
    t0, questions = time.perf_counter(), 0
    try:
        for result in _completed(client, tasks, keys):
            p = result["partition"]
            if result["weights_sha256"] != identity["weights_sha256"]:
                raise BatchError(f"worker {result['worker']} loaded other weights for {load['model']} (sha256 "
                                 f"{result['weights_sha256']}, the probe's {identity['weights_sha256']}): every "
                                 "worker must read the same checkpoint")
            part = {"format": FORMAT, "partition": p, "first": first_stop[p][0], "stop": first_stop[p][1],
                    "seconds": result["seconds"], "worker": result["worker"],
                    "predictions": result["predictions"], "errors": result["errors"]}
            write_atomic(_part_path(out, p), json.dumps(part, ensure_ascii=False) + "\n")
            questions += len(rows_of[p])
            shown.saved(p)
    finally:
        if progress:
            client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    seconds = time.perf_counter() - t0
    return _finish_run(out, inputs, bounds, params, settings, identity, version, seconds, questions,
                       len(client.nthreads()))


def _finish_run(out, inputs, bounds, params, settings, identity, version, seconds, questions, workers) -> dict:
    """Assemble the final files from the parts on disk and check that every input is accounted for once."""
    reading_errors = {e["index"]: e for e in inputs.errors}
    top_k = params.get("top_k", 1)
    predictions_tmp, errors_tmp = out / (PREDICTIONS + ".tmp"), out / (ERRORS + ".tmp")
    answered = errors = 0
    compute_seconds = 0.0
    records = []  # for the SQuAD files only
    seen_ids, duplicates, missing = set(), [], []
    with open(predictions_tmp, "w", encoding="utf-8") as fp, open(errors_tmp, "w", encoding="utf-8") as fe:
        for p, first, stop in bounds:
            part = _read_part(_part_path(out, p), p, first, stop)
            compute_seconds += part["seconds"]
            # input index -> ("error" | "prediction", record): the reading's errors, then the part's
            by_index = {i: ("error", e) for i, e in reading_errors.items() if first <= i < stop}
            for kind, found in (("error", part["errors"]), ("prediction", part["predictions"])):
                for r in found:
                    if r["index"] in by_index or (kind == "prediction" and r["id"] in seen_ids):
                        duplicates.append(r["id"])
                        continue
                    by_index[r["index"]] = (kind, r)
                    if kind == "prediction":
                        seen_ids.add(r["id"])
            for i in range(first, stop):
                if i not in by_index:
                    missing.append(i)
                    continue
                kind, r = by_index[i]
                if kind == "prediction":
                    fp.write(_line(_prediction_line(r, top_k)))
                    answered += 1
                    if inputs.squad is not None:
                        records.append({"id": r["id"], "answers": r["answers"], "null_score": r["null_score"]})
                else:
                    fe.write(_line({"id": r["id"], "index": r["index"], "reason": r["reason"],
                                    **({"where": r["where"]} if "where" in r else {})}))
                    errors += 1
            misplaced = sorted(set(by_index) - set(range(first, stop)))  # a part holding another's inputs
            duplicates += [by_index[i][1]["id"] for i in misplaced]
        for f in (fp, fe):
            f.flush()
            os.fsync(f.fileno())
    os.replace(predictions_tmp, out / PREDICTIONS)
    os.replace(errors_tmp, out / ERRORS)
    if missing or duplicates:
        id_of = {r[0]: r[1] for r in inputs.rows}
        ids = [id_of.get(i, f"input {i}") for i in missing[:5]]
        raise IncompleteError(f"{out}: the outputs do not account for every input once: "
                              f"{len(missing)} missing{' (' + ', '.join(map(str, ids)) + ')' if ids else ''}, "
                              f"{len(duplicates)} duplicated{' (' + ', '.join(map(str, duplicates[:5])) + ')' if duplicates else ''}")
    manifest = {"inputs": inputs.count, "answered": answered, "errors": errors, "partitions": len(bounds),
                "seconds": seconds, "questions_per_second": questions / seconds if seconds else None,
                "compute_seconds": compute_seconds, "workers": workers,
                "model": settings["model"], "revision": settings["revision"], "commit": identity["commit"],
                "weights_sha256": identity["weights_sha256"], "data": settings["data"],
                "data_sha256": settings["data_sha256"], "partition_size": settings["partition_size"],
                "call_size": settings["call_size"], "max_windows": settings["max_windows"], "parameters": params}
    if inputs.squad is not None:
        run_identity = {"model": settings["model"], "revision": settings["revision"], "commit": identity["commit"],
                        "weights_sha256": identity["weights_sha256"]}
        metrics = _finish(out, inputs.squad, version, records, seconds, run_identity, params)
        manifest["score"] = score_of(metrics)
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
