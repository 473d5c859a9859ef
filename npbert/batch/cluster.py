"""The Dask cluster: connecting to one or starting a local one (its workers forked from a fork server that
has loaded the model), running tasks with a bounded number in flight, and `npbert eval --workers`' chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

from .. import threads
from ..hub import DEFAULT_MODEL
from .common import PRELOAD_VARIABLE, BatchError, PartitionFailed
from .worker import answer_partition, with_environment

# --- the cluster ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, preload: dict | None = None):
    """A dask.distributed Client: to the scheduler at `scheduler` (tcp://host:8786), else to a local cluster
    of `workers` processes (default: the core count) of one thread each, closed on exit, forked with the
    model of `preload` (load settings, `load_settings`) already loaded when given (`local_cluster`)."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise BatchError(
            "npbert batch needs Dask distributed: pip install -e '.[distributed]' in an npbert checkout"
        ) from None
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

    with (
        local_cluster(
            workers or threads.cores(),  # one worker process per core of the affinity, one thread each
            preload,
            silence_logs=logging.ERROR,
            env={"NPBERT_BLAS_THREADS": os.environ.get("NPBERT_BLAS_THREADS", "1")},
        ) as cluster,
        Client(cluster) as client,
    ):
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
            cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, **kwargs
            )
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
    with with_environment(PRELOAD_VARIABLE, json.dumps(load)):  # the server reads it once, as it starts
        server.ensure_running()
    return True


def _stop_forkserver() -> None:
    # After the cluster has closed (its workers are gone): the server holds the model, and the next cluster
    # of this process may want another one.
    _forkserver()._stop()


def completed(client, tasks, keys):
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
                raise PartitionFailed(
                    f"partition {partition} failed on the cluster: {type(e).__name__}: {e}; the "
                    "finished partitions are saved, --resume retries the rest"
                ) from e
            future.release()
            top_up()
            yield result
    finally:  # interrupted, or a partition failed: nothing keeps running for this run
        for future in list(running.futures):
            future.cancel()


def load_settings(model, revision, local_files_only, dtype, kernels, max_windows) -> dict:
    path = Path(str(model)).expanduser()
    # A folder as given may be relative to the client's working directory; the workers' may differ.
    where = str(path.resolve()) if path.is_dir() else str(model)
    import numpy as np

    return {
        "model": where,
        "revision": revision,
        "local_files_only": bool(local_files_only),
        "dtype": np.dtype(dtype).name,
        "kernels": kernels,
        "max_windows": max_windows,
    }


def eval_load_settings(model, revision) -> dict:
    """The load settings of `npbert eval --workers`'s tasks (answer_chunks), for connect's preload."""
    return load_settings(model, revision, False, "float32", None, None)


def answer_chunks(
    client,
    chunks: list,
    params: dict,
    model: str = DEFAULT_MODEL,
    revision: str | None = None,
    blas_threads: int | None = None,
):
    """`npbert eval --workers`: the pipeline's output for each chunk of squad.Example and the chunk's null
    scores (qa.null_score, for na_probs.json), in chunk order, each
    chunk one task on the cluster (npbert eval's pipeline call); a question the pipeline refuses raises
    its ValueError, as the single-process call would."""
    load = eval_load_settings(model, revision)
    tasks = (
        {
            "partition": i,
            "rows": [(j, e.id, e.question, e.context) for j, e in enumerate(chunk)],
            "load": load,
            "params": params,
            "call_size": len(chunk),
            "blas_threads": blas_threads,
        }
        for i, chunk in enumerate(chunks)
    )
    from dask.base import tokenize

    token = tokenize(load, params, [e.id for c in chunks for e in c])
    keys = (f"npbert-eval-{token}-{i}" for i in range(len(chunks)))
    finished, next_chunk = {}, 0
    for result in completed(client, tasks, keys):
        finished[result["partition"]] = result
        while next_chunk in finished:
            result = finished.pop(next_chunk)
            if result["errors"]:
                raise ValueError(result["errors"][0]["reason"])
            answers = [p["answers"] for p in result["predictions"]]
            yield answers[0] if len(answers) == 1 else answers, [p["null_score"] for p in result["predictions"]]
            next_chunk += 1
