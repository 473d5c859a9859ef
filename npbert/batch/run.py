"""`npbert batch`'s run on the client: settings checked and saved, partitions submitted and saved atomically
as they finish, resumable, the progress bar, and the outputs written from the parts at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..durable import Interrupted, Signals, write_atomic
from ..evaluate import effective_parameters, score_of, write_results
from ..hub import DEFAULT_MODEL, sha256_file
from ..limits import DEFAULT_MAX_WINDOWS  # a context making more windows is an error row
from .cluster import completed, connect, load_settings
from .common import (
    DEFAULT_CALL_SIZE,
    DEFAULT_PARTITION_SIZE,
    ERRORS,
    FORMAT,
    MANIFEST,
    PARTS,
    PREDICTIONS,
    PROGRESS_TOPIC,
    SETTINGS,
    BatchError,
    IncompleteError,
    PartitionFailed,
)
from .inputs import read_inputs
from .worker import probe

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
        ok = part.get("format") == FORMAT and (part["partition"], part["first"], part["stop"]) == (
            partition,
            first,
            stop,
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BatchError(
            f"{path}: not this run's part {partition} (inputs {first}-{stop - 1}); delete the output "
            "folder to start over"
        )
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
    for name in keys or sorted((set(flat_before) | set(flat_now)) - set(ignore)):
        if flat_before.get(name) != flat_now.get(name):
            raise BatchError(
                f"{path}: cannot resume: {name} was {flat_before.get(name)!r}, now {flat_now.get(name)!r}; "
                "rerun with the first run's settings, or choose another --out"
            )


def _flatten(settings: dict) -> dict:
    out = {}
    for k, v in settings.items():
        if isinstance(v, dict):
            out.update({f"{k}.{sub}": x for sub, x in v.items()})
        else:
            out[k] = v
    return out


def _line(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def _prediction_line(record: dict, top_k: int) -> dict:
    answers = record["answers"]
    if top_k > 1:
        return {"id": record["id"], "answers": answers}
    best = answers[0] if answers else {"answer": None, "score": None, "start": None, "end": None}
    return {
        "id": record["id"],
        "answer": best["answer"],
        "score": best["score"],
        "start": best["start"],
        "end": best["end"],
    }


def answer(
    data: str | Path,
    out: str | Path,
    model: str | Path = DEFAULT_MODEL,
    revision: str | None = None,
    client=None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    call_size: int = DEFAULT_CALL_SIZE,
    resume: bool = False,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    blas_threads: int | None = None,
    local_files_only: bool = False,
    dtype="float32",
    kernels: str | None = None,
    progress: bool = True,
    progress_file=None,
    **parameters,
) -> dict:
    """Answer every row of `data` on a Dask cluster into the folder `out`; returns the manifest.

    `client`: a dask.distributed.Client; without one, `scheduler` (an address) or a local cluster of
    `workers` processes is used for the call. `parameters`: the pipeline's (top_k, doc_stride,
    max_answer_len, max_seq_len, handle_impossible_answer, align_to_words, padding, batch_size, ...).
    Raises BatchError on a bad setting, data file or folder, Interrupted on SIGINT/SIGTERM (the finished
    partitions are in out/parts; resume=True continues), IncompleteError if the outputs miss an input,
    PartitionFailed if a task fails on the cluster for another reason than its rows."""
    from ..pipeline import check_batch_size, check_parameters

    for name, value, least in (
        ("partition_size", partition_size, 1),
        ("call_size", call_size, 1),
        ("max_windows", max_windows, 1),
        ("blas_threads", blas_threads, 1),
    ):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise BatchError(f"{name} must be a positive integer, found {value!r}")
    batch_size = parameters.pop("batch_size", None)
    try:
        params = {
            **check_parameters(parameters),
            **({"batch_size": check_batch_size(batch_size)} if batch_size else {}),
        }
    except ValueError as e:
        raise BatchError(str(e)) from None
    inputs = read_inputs(data)
    if inputs.count == 0:
        raise BatchError(f"{inputs.path}: no inputs")
    version = None
    if inputs.squad is not None:  # as npbert eval: v2.0 answers "no answer" unless told otherwise
        version = inputs.squad.version or "1.1"
        params = effective_parameters(params, version)
    params = dict(sorted(params.items()))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BatchError(f"{out}: output exists and is not a folder")
    load = load_settings(model, revision, local_files_only, dtype, kernels, max_windows)
    settings = {
        "format": FORMAT,
        "data": str(inputs.path),
        "data_sha256": sha256_file(inputs.path),
        "inputs": inputs.count,
        "model": str(model),
        "revision": revision,
        "dtype": load["dtype"],
        "kernels": kernels,
        "max_windows": max_windows,
        "partition_size": partition_size,
        "call_size": call_size,
        "parameters": params,
    }
    # before starting a cluster, so a refusal is immediate; the weights' sha256 comes from the probe
    _check_settings(out, settings, resume, ignore=["weights_sha256"])
    total = -(-inputs.count // partition_size)
    # Ctrl-C or SIGTERM at any point, the cluster's start included: the local cluster is closed on the way
    # out, the finished partitions stay, and the exception says how many
    with Signals().installed():
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
                return _run(
                    client,
                    out,
                    inputs,
                    load,
                    params,
                    settings,
                    identity,
                    version,
                    blas_threads,
                    progress,
                    progress_file,
                )
        except KeyboardInterrupt as e:
            stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            # counted on disk: the signal may have come between a part's rename and any count kept here
            stop.done, stop.total = sum(_part_path(out, p).exists() for p in range(total)), total
            stop.saved = out / PARTS
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
    tasks = (
        {
            "partition": p,
            "rows": rows_of[p],
            "load": load,
            "params": params,
            "call_size": settings["call_size"],
            "blas_threads": blas_threads,
        }
        for p, _, _ in todo
    )
    keys = (f"npbert-batch-{token}-{p}" for p, _, _ in todo)
    first_stop = {p: (first, stop) for p, first, stop in bounds}
    sizes = {p: stop - first for p, first, stop in todo}
    bar = tqdm(
        total=inputs.count,
        initial=inputs.count - sum(sizes.values()),
        unit="input",
        desc="batch",
        disable=not progress,
        file=progress_file or sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    shown = _Progress(bar, sizes)
    if progress:
        client.subscribe_topic(PROGRESS_TOPIC, shown.event)
    t0, questions = time.perf_counter(), 0
    try:
        for result in completed(client, tasks, keys):
            p = result["partition"]
            if result["weights_sha256"] != identity["weights_sha256"]:
                raise BatchError(
                    f"worker {result['worker']} loaded other weights for {load['model']} (sha256 "
                    f"{result['weights_sha256']}, the probe's {identity['weights_sha256']}): every "
                    "worker must read the same checkpoint"
                )
            part = {
                "format": FORMAT,
                "partition": p,
                "first": first_stop[p][0],
                "stop": first_stop[p][1],
                "seconds": result["seconds"],
                "worker": result["worker"],
                "predictions": result["predictions"],
                "errors": result["errors"],
            }
            write_atomic(_part_path(out, p), json.dumps(part, ensure_ascii=False) + "\n")
            questions += len(rows_of[p])
            shown.saved(p)
    finally:
        if progress:
            client.unsubscribe_topic(PROGRESS_TOPIC)
        bar.close()
    seconds = time.perf_counter() - t0
    return _finish_run(
        out, inputs, bounds, params, settings, identity, version, seconds, questions, len(client.nthreads())
    )


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
                    fe.write(
                        _line(
                            {
                                "id": r["id"],
                                "index": r["index"],
                                "reason": r["reason"],
                                **({"where": r["where"]} if "where" in r else {}),
                            }
                        )
                    )
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
        raise IncompleteError(
            f"{out}: the outputs do not account for every input once: "
            f"{len(missing)} missing{' (' + ', '.join(map(str, ids)) + ')' if ids else ''}, "
            f"{len(duplicates)} duplicated{' (' + ', '.join(map(str, duplicates[:5])) + ')' if duplicates else ''}"
        )
    manifest = {
        "inputs": inputs.count,
        "answered": answered,
        "errors": errors,
        "partitions": len(bounds),
        "seconds": seconds,
        "questions_per_second": questions / seconds if seconds else None,
        "compute_seconds": compute_seconds,
        "workers": workers,
        "model": settings["model"],
        "revision": settings["revision"],
        "commit": identity["commit"],
        "weights_sha256": identity["weights_sha256"],
        "data": settings["data"],
        "data_sha256": settings["data_sha256"],
        "partition_size": settings["partition_size"],
        "call_size": settings["call_size"],
        "max_windows": settings["max_windows"],
        "parameters": params,
    }
    if inputs.squad is not None:
        run_identity = {
            "model": settings["model"],
            "revision": settings["revision"],
            "commit": identity["commit"],
            "weights_sha256": identity["weights_sha256"],
        }
        metrics = write_results(out, inputs.squad, version, records, seconds, run_identity, params)
        manifest["score"] = score_of(metrics)
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


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
