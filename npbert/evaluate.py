"""The SQuAD evaluation run: questions in chunks through the question-answering pipeline, each chunk's
predictions saved durably before the next, a progress bar, resumable, then the official scores.

Files in the output folder:
- `predictions.partial.jsonl` while running: a header line (the job's fingerprint), then one line per
  finished chunk, appended and fsync'ed; every line ends with the sha256 of its own content. An
  interrupted run (Ctrl-C, SIGTERM, a crash, a kill) leaves it behind; `resume=True` checks the
  fingerprint, drops a half-written last line, and goes on from the next chunk. A line whose checksum
  does not match (a changed byte) is never trusted: it and every line after it are recomputed, the
  lines before it kept; a damaged header is refused. A file holding no complete header (killed before
  the first line was written) has nothing to lose and is started afresh. Chunk boundaries never move,
  so the pipeline sees exactly the same batches as in an uninterrupted run and the final files are
  byte-identical (timing fields of metrics.json aside).
- `.npbert-eval.lock` while running: the lock of the folder (an advisory `flock`, with the owner's pid
  inside). A second run into the same folder is refused, naming that pid; a lock file left by a process
  that died (SIGKILL) is not held by anyone and is taken over.
- at the end, each written atomically (temporary file + rename): `predictions.json` ({id: answer text},
  the official format; no-answer is ""), `nbest_predictions.json` when top_k > 1 ({id: [answer, ...]}),
  for SQuAD v2.0 `na_probs.json` ({id: no-answer probability}, the official script's --na-prob-file: the
  pipeline's null score, `qa.null_score`: min over the question's windows of p_start[CLS] * p_end[CLS]),
  and `metrics.json` (the official score, for v2.0 with the na-prob figures best_exact/best_f1 and their
  thresholds, plus count, timing, model, revision, weights sha256). The partial file is removed last.

The run's settings come as a `Job`, built from a mapping (CLI flags or a YAML job file) by `make_job`,
which names the offending key and its place on any bad value.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from . import squad
from .durable import Interrupted, Signals, interrupt_behind, write_atomic
from .hub import DEFAULT_MODEL, sha256_file

PARTIAL = "predictions.partial.jsonl"
LOCK = ".npbert-eval.lock"
PREDICTIONS = "predictions.json"
NBEST = "nbest_predictions.json"
NA_PROBS = "na_probs.json"
METRICS = "metrics.json"
FORMAT = "npbert-eval-partial/2"  # /2: every line carries the sha256 of its content (/1 had none)

# The pipeline parameters a job may set (transformers 4.57.6 QuestionAnsweringPipeline's), with their types.
PIPELINE_PARAMETERS = {
    "top_k": int,
    "doc_stride": int,
    "max_answer_len": int,
    "max_seq_len": int,
    "max_question_len": int,
    "handle_impossible_answer": bool,
    "align_to_words": bool,
    "padding": str,
    "batch_size": int,
}
JOB_KEYS = {
    "model": str,
    "revision": str,
    "data": str,
    "version": str,
    "output": str,
    "limit": int,
    "save_every": int,
    "progress": bool,
    "parameters": dict,
}
DEFAULT_OUTPUT = "npbert-eval"
# metrics.json = the official score's keys + these; elapsed_seconds and questions_per_second are the only
# ones that differ between an uninterrupted and a resumed run
RUN_FIELDS = {
    "version",
    "count",
    "elapsed_seconds",
    "questions_per_second",
    "model",
    "revision",
    "commit",
    "weights_sha256",
    "data",
    "parameters",
}
log = logging.getLogger("npbert.evaluate")


@dataclasses.dataclass(frozen=True)
class Job:
    data: str
    model: str = DEFAULT_MODEL
    revision: str | None = None
    version: str | None = None  # None: the data file's own, else 1.1
    output: str = DEFAULT_OUTPUT
    limit: int | None = None  # the first N questions only
    save_every: int = 32  # questions per pipeline call and per durable chunk
    progress: bool = True
    parameters: dict = dataclasses.field(default_factory=dict)  # pipeline parameters


class JobError(ValueError):
    """A job setting that cannot be used, naming the key and where it came from."""


# --- the job -------------------------------------------------------------------------------------------


def _check(key: str, value, kind, where: str):
    if value is None and key in ("revision", "version", "limit", "parameters"):
        return None
    if key == "version" and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # YAML reads `version: 1.1` as a number
    names = {str: "a string", int: "an integer", bool: "true or false", dict: "a mapping"}
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise JobError(f"{where}: {key} must be {names[kind]}, found {value!r}")
    if kind is int and value < (0 if key == "doc_stride" else 1):
        raise JobError(f"{where}: {key} must be {'>= 0' if key == 'doc_stride' else '>= 1'}, found {value}")
    if key == "version":
        try:
            return squad.check_version(value)
        except ValueError as e:
            raise JobError(f"{where}: {e}") from None
    return value


def _unknown(key: str, known, where: str) -> JobError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))
    return JobError(f"{where}: unknown key {key!r} ({hint})")


def make_job(settings: dict, where=lambda key: key) -> Job:
    """A Job from a mapping of the JOB_KEYS (pipeline parameters under "parameters"). `where(key)` names
    a key's place for messages, e.g. "job.yml:4" or "--limit"."""
    values = {}
    for key, value in settings.items():
        if key not in JOB_KEYS:
            raise _unknown(key, JOB_KEYS, where(key))
        values[key] = _check(key, value, JOB_KEYS[key], where(key))
    params = {}
    for key, value in (values.pop("parameters", None) or {}).items():
        place = where(f"parameters.{key}")
        if key not in PIPELINE_PARAMETERS:
            raise _unknown(key, PIPELINE_PARAMETERS, place)
        params[key] = _check(key, value, PIPELINE_PARAMETERS[key], place)
    if "data" not in values:
        raise JobError("no data file: give --data FILE or `data:` in the job file")
    return Job(**values, parameters=params)


def read_job_file(path: str | Path) -> tuple[dict, callable]:
    """A YAML job file's mapping, and a function naming the file and line of each key for messages."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"{path}: job file not found") from None
    except UnicodeDecodeError as e:
        raise JobError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        settings = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise JobError(f"{path}{at}: unreadable YAML: {problem}") from None
    if not isinstance(settings, dict):
        raise JobError(
            f"{path}: a job file is a mapping (model:, data:, version:, parameters:, output:, ...), "
            f"found {type(settings).__name__}"
        )
    lines = {}
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub, _ in value_node.value:
                lines[f"{key_node.value}.{sub.value}"] = sub.start_mark.line + 1
    return settings, lambda key: f"{path}:{lines.get(key, lines.get(key.split('.')[0], 1))}: {key}"


# --- files ---------------------------------------------------------------------------------------------


def _dumps_line(obj) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _sealed_line(obj: dict) -> bytes:
    """`obj` as one JSON line with "sha256" added last: the digest of `obj`'s own line."""
    return _dumps_line({**obj, "sha256": hashlib.sha256(_dumps_line(obj)).hexdigest()})


def _unsealed(line: bytes) -> dict | None:
    """The object of a `_sealed_line`, or None when the line is not JSON or its digest does not match.
    The digest is of the line re-serialized from the parsed object: a byte changed anywhere in the line
    changes the object, the digest, or stops the line from parsing."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # JSONDecodeError, and UnicodeDecodeError for a broken UTF-8 byte
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("sha256"), str):
        return None
    digest = obj.pop("sha256")
    return obj if hashlib.sha256(_dumps_line(obj)).hexdigest() == digest else None


def read_partial(path: Path, fingerprint: dict, examples: list, save_every: int) -> tuple[list[dict], float, int]:
    """The finished chunks of an interrupted run: (records in question order, seconds spent, byte length
    of the lines kept). A half-written last line (the process died while writing it) is ignored; a line
    that fails its checksum, or does not hold the questions its place says, is dropped with every line
    after it (logged): the run recomputes them. A file without a complete header line is nothing saved."""
    raw = path.read_bytes()
    lines = raw[: raw.rfind(b"\n") + 1].split(b"\n")[:-1]  # split on b"\n" only: offsets stay exact
    if not lines:
        return [], 0.0, 0  # killed before the header was written whole: start afresh
    header = _unsealed(lines[0])
    if header is None:  # a sealed header that fails its checksum is damaged; only format 1 had no seal
        try:
            unsealed = json.loads(lines[0])
        except (ValueError, RecursionError):
            unsealed = None
        # An unsealed header is read only for an older format's name (the message below); one naming this
        # format was sealed when written, so it has lost its seal (a changed byte in the key): damaged.
        unsealed_old = isinstance(unsealed, dict) and "sha256" not in unsealed and unsealed.get("format") != FORMAT
        header = unsealed if unsealed_old else {}
    old = header.get("format")
    if old != FORMAT:
        if isinstance(old, str) and old.startswith("npbert-eval-partial/"):
            raise JobError(f"{path}:1: written by another npbert version ({old}); delete it to start over")
        raise JobError(
            f"{path}:1: not an npbert eval partial file, or its header is damaged; delete it or choose "
            "another output folder"
        )
    before = header.get("job", {})
    changed = [k for k in fingerprint if before.get(k) != fingerprint[k]]
    if changed:
        k = changed[0]
        raise JobError(
            f"{path}: cannot resume: {k} was {before.get(k)!r}, now {fingerprint[k]!r}; rerun with the "
            "same settings, or delete the partial file to start over"
        )
    records, seconds, kept = [], 0.0, len(lines[0]) + 1
    for n, line in enumerate(lines[1:], 2):
        chunk = _unsealed(line)
        want = [e.id for e in examples[len(records) : len(records) + save_every]]
        if not _is_chunk(chunk, want):
            log.warning(
                "%s:%d: damaged line (%s): keeping the %d questions saved before it, answering the rest again",
                path,
                n,
                "checksum mismatch" if chunk is None else "not the questions expected there",
                len(records),
            )
            break
        records.extend(chunk["predictions"])
        seconds += chunk["seconds"]
        kept += len(line) + 1
    return records, seconds, kept


def _is_chunk(chunk: dict | None, ids: list) -> bool:
    """A verified chunk line holding the questions `ids`, in order."""
    if chunk is None or not isinstance(chunk.get("predictions"), list) or not isinstance(chunk.get("seconds"), float):
        return False
    return [r.get("id") if isinstance(r, dict) else None for r in chunk["predictions"]] == ids


# --- the output folder's lock --------------------------------------------------------------------------


def _read_owner(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        owner = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


@contextmanager
def output_lock(out: Path, lock: str = LOCK, command: str = "eval"):
    """Hold `out`/`lock` (creating `out`): an exclusive, non-blocking `flock` on a file naming the owner. The
    kernel drops the lock when its process dies, so a lock file left by a killed run is free and taken
    over; a held one is refused with a JobError naming its owner's pid. A folder made here and left
    empty is removed again. `npbert train` holds its own (train.py)."""
    if out.exists() and not out.is_dir():
        raise JobError(f"{out}: output exists and is not a folder")
    try:
        import fcntl  # POSIX
    except ImportError:  # Windows: no flock; the run goes on unlocked rather than not at all
        log.warning("%s: not locked (no flock on this platform): do not run two %ss into it at once", out, command)
        yield
        return
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held
            pid = _read_owner(fd).get("pid", "unknown")
            os.close(fd)
            raise JobError(
                f"{out}: another npbert {command} (pid {pid}) is writing to this folder; wait for it to finish "
                "or choose another output folder"
            ) from None
        try:  # the file we locked must still be the one at `path`: a finishing owner unlinks it, then unlocks
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _read_owner(fd).get("pid")
    if stale is not None:
        log.warning("%s: taking over the lock of pid %s, which ended without releasing it", path, stale)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, _dumps_line({"pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    try:
        yield
    finally:
        os.unlink(path)  # before unlocking: whoever locks the old file next sees it is gone and retries
        os.close(fd)
        if created and not any(out.iterdir()):
            out.rmdir()


def _holding_output_lock(run):
    """`run`, holding the lock of its job's output folder throughout."""

    @functools.wraps(run)
    def locked(job, *args, **kwargs):
        with output_lock(Path(job.output)):
            return run(job, *args, **kwargs)

    return locked


# --- signals -------------------------------------------------------------------------------------------


# --- the run -------------------------------------------------------------------------------------------


def answer_records(output, n: int) -> list[list[dict]]:
    """The pipeline's answers as one list of {score, start, end, answer} per question. Like transformers, it
    returns a dict (top_k 1) or a list (top_k > 1) per question, and unwraps a batch of one."""
    per_question = [output] if n == 1 else list(output)
    if len(per_question) != n:
        raise RuntimeError(f"the pipeline answered {len(per_question)} of {n} questions")
    return [
        [
            {"score": float(a["score"]), "start": int(a["start"]), "end": int(a["end"]), "answer": a["answer"]}
            for a in ([out] if isinstance(out, dict) else out)
        ]
        for out in per_question
    ]


def effective_parameters(parameters: dict, version: str) -> dict:
    """The pipeline parameters a run on a SQuAD `version` file uses (`npbert eval` and `npbert batch`): v2.0
    answers "no answer" unless told otherwise."""
    params = dict(parameters)
    if version == "2.0":
        params.setdefault("handle_impossible_answer", True)
    return dict(sorted(params.items()))


def model_identity(qa) -> dict:
    """Model id, revision (as asked, and the hub commit it resolved to) and weights sha256 of the pipeline's
    checkpoint."""
    return {
        "model": qa.model_id,
        "revision": qa.revision,
        "commit": qa.commit,
        "weights_sha256": sha256_file(Path(qa.folder) / "model.safetensors"),
    }


def load_pipeline(job: Job):
    from .pipeline import pipeline

    return pipeline("question-answering", model=job.model, revision=job.revision)


@_holding_output_lock
def run(job: Job, qa=None, resume: bool = False, progress_file=None, answer_chunks=None) -> dict:
    """Run the evaluation job; returns the metrics (also written to `<output>/metrics.json`).

    `qa` is a question-answering pipeline (loaded from job.model when None). Raises `Interrupted` on
    SIGINT/SIGTERM with the finished chunks on disk; `resume=True` continues from them.
    `answer_chunks(chunks, params)`, when given, answers the chunks elsewhere (npbert.batch.answer_chunks on
    a Dask cluster): an iterator of the pipeline's output for each chunk, in order."""
    data = squad.read_dataset(job.data, job.version)
    version = job.version or data.version or "1.1"
    data = data.head(job.limit)
    examples = data.examples
    params = effective_parameters(job.parameters, version)
    out = Path(job.output)
    if out.exists() and not out.is_dir():
        raise JobError(f"{out}: output exists and is not a folder")
    partial = out / PARTIAL
    if partial.exists() and not resume:
        raise JobError(f"{partial}: an unfinished run is here; pass --resume to continue it, or delete the file")

    qa = qa if qa is not None else load_pipeline(job)
    identity = model_identity(qa)
    fingerprint = {
        **identity,
        "data_sha256": sha256_file(data.path),
        "version": version,
        "questions": len(examples),
        "save_every": job.save_every,
        "parameters": params,
    }
    records, seconds, keep_bytes = [], 0.0, 0
    if resume and partial.exists():
        records, seconds, keep_bytes = read_partial(partial, fingerprint, examples, job.save_every)
    out.mkdir(parents=True, exist_ok=True)

    signals = Signals()
    with signals.installed(), open(partial, "ab" if keep_bytes else "wb") as f:
        if keep_bytes:
            f.truncate(keep_bytes)  # drop a half-written last line
        else:
            f.write(_sealed_line({"format": FORMAT, "job": fingerprint}))
        try:
            seconds = _answer_all(qa, examples, records, seconds, params, job, f, signals, progress_file, answer_chunks)
            with signals.critical():
                metrics = write_results(out, data, version, records, seconds, identity, params)
        except (Interrupted, SystemError) as e:
            interrupt = e if isinstance(e, Interrupted) else interrupt_behind(e)
            if interrupt is None:
                raise
            interrupt.done, interrupt.total, interrupt.saved = len(records), len(examples), partial
            raise interrupt from None
        finally:
            if not records:  # nothing finished (e.g. a parameter the pipeline refused): nothing to resume
                f.close()
                partial.unlink(missing_ok=True)
    partial.unlink(missing_ok=True)
    return metrics


def _answer_all(
    qa, examples, records: list, seconds, params, job, f, signals, progress_file, answer_chunks=None
) -> float:
    """Answer the questions after `records` chunk by chunk, appending each chunk to the partial file `f`
    and to `records`; returns the seconds spent answering, in all sessions."""
    from tqdm import tqdm

    starts = range(len(records), len(examples), job.save_every)
    elsewhere = answer_chunks([examples[s : s + job.save_every] for s in starts], params) if answer_chunks else None

    bar = tqdm(
        total=len(examples),
        initial=len(records),
        unit="q",
        desc="eval",
        disable=not job.progress,
        file=progress_file or sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        for start in starts:
            chunk = examples[start : start + job.save_every]
            t0 = time.perf_counter()
            try:
                null_scores = []  # each question's no-answer probability, for na_probs.json
                if elsewhere is None:
                    output = qa(
                        question=[e.question for e in chunk],
                        context=[e.context for e in chunk],
                        **params,
                        null_scores=null_scores,
                    )
                else:
                    output, null_scores = next(elsewhere)
            except ValueError as e:  # a parameter, or a question the pipeline refuses: say which questions
                raise ValueError(
                    f"questions {start + 1}-{start + len(chunk)} (from {chunk[0].location}): {e}"
                ) from None
            answers = answer_records(output, len(chunk))
            elapsed = time.perf_counter() - t0
            done = [{"id": e.id, "answers": a, "null_score": n} for e, a, n in zip(chunk, answers, null_scores)]
            with signals.critical():
                f.write(_sealed_line({"seconds": elapsed, "predictions": done}))
                f.flush()
                os.fsync(f.fileno())
                records.extend(done)  # here, so that a held signal reports this chunk as saved
            seconds += elapsed
            bar.update(len(chunk))
    finally:
        bar.close()
    return seconds


def write_results(out: Path, data, version, records, seconds, identity, params) -> dict:
    """A finished run's files in `out` (predictions.json, nbest/na_probs when they apply, metrics.json), each
    written atomically; returns the metrics. `npbert batch` writes its SQuAD runs' files with it too."""
    predictions = {r["id"]: r["answers"][0]["answer"] if r["answers"] else "" for r in records}
    write_atomic(out / PREDICTIONS, json.dumps(predictions, ensure_ascii=False, indent=2) + "\n")
    if params.get("top_k", 1) > 1:
        nbest = {r["id"]: r["answers"] for r in records}
        write_atomic(out / NBEST, json.dumps(nbest, ensure_ascii=False, indent=2) + "\n")
    elif (out / NBEST).exists():
        (out / NBEST).unlink()  # an earlier run's, which this one's predictions would contradict
    run_fields = {
        "version": version,
        "count": len(records),
        "elapsed_seconds": seconds,
        "questions_per_second": len(records) / seconds if seconds else None,
        **identity,
        "data": str(data.path),
        "parameters": params,
    }
    assert set(run_fields) <= RUN_FIELDS
    na_probs = None
    if version == "2.0":  # the official script's --na-prob-file: the pipeline's null score per question
        if any("null_score" not in r for r in records):
            raise JobError(
                f"{out / PARTIAL}: written by an npbert without no-answer probabilities; delete it and run again"
            )
        na_probs = {r["id"]: r["null_score"] for r in records}
        write_atomic(out / NA_PROBS, json.dumps(na_probs, indent=2) + "\n")
    elif (out / NA_PROBS).exists():
        (out / NA_PROBS).unlink()  # an earlier v2.0 run's
    metrics = {**squad.evaluate(data, predictions, version, na_probs), **run_fields}
    write_atomic(out / METRICS, json.dumps(metrics, indent=2) + "\n")
    return metrics


def score_of(metrics: dict) -> dict:
    """The official score JSON inside a metrics.json."""
    return {k: v for k, v in metrics.items() if k not in RUN_FIELDS}
