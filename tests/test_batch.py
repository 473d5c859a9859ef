"""npbert.batch on a real Dask LocalCluster (2 worker processes of one thread): the answers are the
single-process pipeline's, called on the same rows (JSON Lines, SQuAD JSON and Parquet input, tiny and
full-size checkpoints); SQuAD runs give `npbert eval`'s files and the official script's score; a worker
SIGKILLed mid-run changes nothing; an interrupted `npbert batch` resumes to the same files and refuses
other settings; bad rows land in errors.jsonl with their reasons; each worker loads the model once.

One cluster for the module (clusters start slowly); its workers sleep 0.2 s before each pipeline call
(npbert.batch.SLOWDOWN_VARIABLE) so that a run lasts long enough to be disturbed on a checkpoint that
answers in milliseconds. Nothing asserts on time."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="npbert batch needs the distributed extra (dask, distributed)")
pytest.importorskip("pyarrow", reason="Parquet input needs the distributed extra (pyarrow)")

import checkpoints  # noqa: E402
import npbert  # noqa: E402
from npbert import batch, evaluate, squad  # noqa: E402
from process_helpers import interrupt_when_ready, shared_dirty_mb  # noqa: E402
from test_evaluate import make_squad  # noqa: E402
from test_squad import v1_evaluate  # noqa: E402

N = 96  # questions
SLOWDOWN = "0.2"
TIMING = ("elapsed_seconds", "questions_per_second")  # metrics.json's fields that differ between runs
OUTPUTS = (
    "predictions.jsonl",
    "errors.jsonl",
    "manifest.json",
    "settings.json",
    "predictions.json",
    "metrics.json",
    "nbest_predictions.json",
)


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    from dask.distributed import Client

    # as `npbert batch --workers 2` starts its cluster: the workers forked with the tiny model loaded
    with (
        batch.local_cluster(
            2, preload=preload_of(tiny_checkpoint), silence_logs=logging.ERROR, env={batch.SLOWDOWN_VARIABLE: SLOWDOWN}
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def preload_of(model):
    """The load settings batch.answer gives its tasks for `model` with the default max_windows."""
    return batch.load_settings(model, None, False, "float32", None, batch.DEFAULT_MAX_WINDOWS)


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=tiny_checkpoint)


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory):
    """The first N SQuAD v1.1 dev questions when ../shared is present, else N made-up ones."""
    if checkpoints.SHARED_SQUAD.is_file():
        dev = squad.read_dataset(checkpoints.SHARED_SQUAD).head(N)
        data = {"version": dev.version, "data": dev.articles}
    else:
        data = make_squad(N)
    path = tmp_path_factory.mktemp("data") / "squad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def squad_rows(path):
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    return [
        {"id": qa["id"], "question": qa["question"], "context": p["context"]}
        for a in data
        for p in a["paragraphs"]
        for qa in p["qas"]
    ]


@pytest.fixture(scope="module")
def jsonl_file(squad_file):
    path = squad_file.with_name("rows.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in squad_rows(squad_file)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def parquet_file(squad_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = squad_file.with_name("rows.parquet")
    rows = squad_rows(squad_file)
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in ("id", "question", "context")}), path, row_group_size=40)
    return path


def expected_lines(qa, rows, partition_size, call_size=batch.DEFAULT_CALL_SIZE, **params):
    """predictions.jsonl as the single-process pipeline gives it, called as documented: each partition's rows
    `call_size` at a time, a call that refuses a row redone one row per call. rows: [(index, id, q, c)]."""
    top_k = params.get("top_k", 1)
    lines = []
    for first in range(0, max(r[0] for r in rows) + 1, partition_size):
        part = [r for r in rows if first <= r[0] < first + partition_size]
        for s in range(0, len(part), call_size):
            call = part[s : s + call_size]
            try:
                out = qa(question=[r[2] for r in call], context=[r[3] for r in call], **params)
                outs = [out] if len(call) == 1 else out
            except ValueError:
                outs = []
                for r in call:
                    try:
                        outs.append(qa(question=r[2], context=r[3], **params))
                    except ValueError:
                        outs.append(None)
            for r, o in zip(call, outs):
                if o is not None:
                    lines.append({"id": r[1], "answers": o} if top_k > 1 else {"id": r[1], **o})
    return [json.dumps(line, sort_keys=True) for line in lines]


def read_lines(path):
    return [json.dumps(json.loads(line), sort_keys=True) for line in path.read_text(encoding="utf-8").splitlines()]


def outputs(folder):
    """The run's files, without the fields that say how long and where (manifest, metrics, parts)."""
    found = {}
    for name in OUTPUTS:
        if (folder / name).exists():
            found[name] = (folder / name).read_bytes()
    for name, fields in (("manifest.json", batch.RUN_FIELDS), ("metrics.json", TIMING)):
        if name in found:
            found[name] = {k: v for k, v in json.loads(found[name]).items() if k not in fields}
    for part in sorted((folder / "parts").iterdir()):
        found[f"parts/{part.name}"] = {
            k: v for k, v in json.loads(part.read_text()).items() if k not in batch.PART_RUN_FIELDS
        }
    return found


def saved_parts(out):
    return len(list((out / "parts").glob("part-*.json"))) if (out / "parts").is_dir() else 0


def run(data, out, client, model, **kw):
    return batch.answer(data, out, model=model, client=client, progress=False, **kw)


def npbert_cli(*args, env=None, **kw):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        **kw,
    )


# --- the answers ----------------------------------------------------------------------------------------


def test_same_answers_as_the_pipeline_for_jsonl_squad_and_parquet(
    client, qa, tiny_checkpoint, tmp_path, squad_file, jsonl_file, parquet_file
):
    rows = [(i, r["id"], r["question"], r["context"]) for i, r in enumerate(squad_rows(squad_file))]
    expected = expected_lines(qa, rows, 32)
    results = {}
    for name, data in (("jsonl", jsonl_file), ("squad", squad_file), ("parquet", parquet_file)):
        manifest = run(data, tmp_path / name, client, tiny_checkpoint, partition_size=32)
        assert read_lines(tmp_path / name / "predictions.jsonl") == expected, name
        assert (tmp_path / name / "errors.jsonl").read_text() == ""
        assert sorted(p.name for p in (tmp_path / name / "parts").iterdir()) == [
            f"part-00000{i}.json" for i in range(3)
        ]
        assert {k: manifest[k] for k in ("inputs", "answered", "errors", "partitions", "workers")} == {
            "inputs": N,
            "answered": N,
            "errors": 0,
            "partitions": 3,
            "workers": 2,
        }
        assert json.loads((tmp_path / name / "manifest.json").read_text()) == manifest
        results[name] = (tmp_path / name / "predictions.jsonl").read_bytes()
    assert results["jsonl"] == results["squad"] == results["parquet"]

    # A SQuAD file also gets npbert eval's predictions.json and metrics.json, the official script's score.
    job = evaluate.Job(data=str(squad_file), model=str(tiny_checkpoint), output=str(tmp_path / "eval"), progress=False)
    eval_metrics = evaluate.run(job, qa=qa)
    squad_out = tmp_path / "squad"
    assert (squad_out / "predictions.json").read_bytes() == (tmp_path / "eval" / "predictions.json").read_bytes()
    batch_metrics = json.loads((squad_out / "metrics.json").read_text())
    assert {k: v for k, v in batch_metrics.items() if k not in TIMING} == {
        k: v for k, v in eval_metrics.items() if k not in TIMING
    }
    predictions = json.loads((squad_out / "predictions.json").read_text())
    official = v1_evaluate(json.loads(squad_file.read_text())["data"], predictions)
    assert (
        evaluate.score_of(batch_metrics) == official == json.loads((squad_out / "manifest.json").read_text())["score"]
    )


def test_full_size_checkpoint_same_answers(client, full_checkpoint, squad_file, tmp_path):
    rows = squad_rows(squad_file)[:8]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    run(data, tmp_path / "out", client, full_checkpoint, partition_size=4, call_size=2, top_k=2)
    qa = npbert.pipeline("question-answering", model=full_checkpoint)
    expected = expected_lines(
        qa, [(i, r["id"], r["question"], r["context"]) for i, r in enumerate(rows)], 4, call_size=2, top_k=2
    )
    assert read_lines(tmp_path / "out" / "predictions.jsonl") == expected


def test_model_loaded_once_per_worker(client, tiny_checkpoint, jsonl_file, tmp_path):
    before = client.run(batch.worker_state)
    manifest = run(jsonl_file, tmp_path / "out", client, tiny_checkpoint, partition_size=8)
    after = client.run(batch.worker_state)
    assert manifest["partitions"] == 12 and set(after) == set(before)
    loads = {w: after[w]["loads"] - before[w]["loads"] for w in after}
    assert all(n <= 1 for n in loads.values()), loads  # 12 partitions, at most one load per worker process
    assert all(str(tiny_checkpoint) in s["models"] for s in after.values())
    assert all(s["blas_threads"] == "1" for s in after.values())
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "out" / "parts").iterdir()}
    assert {w.rsplit(":", 1)[1] for w in workers} <= {str(s["pid"]) for s in after.values()}


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads /proc (Linux)")
def test_workers_are_forked_with_the_model_loaded(client, tiny_checkpoint, jsonl_file, tmp_path):
    states = client.run(batch.worker_state)
    # loaded once, by the fork server (neither this process nor a worker), and every worker forked from it;
    # (other tests of the module may have had a worker load another model since)
    assert all(s["preloaded"] == 1 and s["models"][0] == str(tiny_checkpoint) for s in states.values()), states
    parents = set(client.run(os.getppid).values())
    assert len(parents) == 1 and os.getpid() not in parents
    assert all(shared_dirty_mb(s["pid"]) > 30 for s in states.values()), states  # interpreter, numba, the model
    run(jsonl_file, tmp_path / "out", client, tiny_checkpoint, partition_size=48)
    after = client.run(batch.worker_state)
    assert {w: s["loads"] for w, s in after.items()} == {w: s["loads"] for w, s in states.items()}  # reused
    # a worker that dies is forked again from the same server, the model loaded
    victim = next(iter(states.values()))["pid"]
    os.kill(victim, signal.SIGKILL)
    for _ in range(1200):
        states = client.run(batch.worker_state, on_error="ignore")  # the dead one, until the scheduler knows
        if len(states) == 2 and victim not in {s["pid"] for s in states.values()}:
            break
        time.sleep(0.1)
    new = [s for s in states.values() if s["pid"] not in {a["pid"] for a in after.values()}]
    assert len(states) == 2 and len(new) == 1, states
    assert (new[0]["loads"], new[0]["preloaded"], new[0]["models"]) == (0, 1, [str(tiny_checkpoint)])
    assert set(client.run(os.getppid).values()) == parents


# --- faults ---------------------------------------------------------------------------------------------


def test_worker_sigkilled_mid_run_changes_nothing(client, tiny_checkpoint, jsonl_file, tmp_path):
    settings = dict(partition_size=8, top_k=2)
    run(jsonl_file, tmp_path / "undisturbed", client, tiny_checkpoint, **settings)

    out = tmp_path / "disturbed"
    failure = []

    def disturbed():
        try:
            run(jsonl_file, out, client, tiny_checkpoint, **settings)
        except BaseException as e:  # reported by the assertion below
            failure.append(e)

    thread = threading.Thread(target=disturbed)
    thread.start()
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:  # a worker in the middle of a partition, after one partition is saved
        assert thread.is_alive() and time.monotonic() < deadline, "the run ended before a worker was killed"
        if saved_parts(out):
            busy = {w: keys for w, keys in client.processing().items() if any("npbert-batch" in k for k in keys)}
            if busy:
                victim, keys = next(iter(busy.items()))
        time.sleep(0.02)
    pid = client.run(os.getpid, workers=[victim])[victim]
    running_partition = int([k for k in keys if "npbert-batch" in k][0].rsplit("-", 1)[1])
    os.kill(pid, signal.SIGKILL)
    saved_at_kill = saved_parts(out)
    thread.join(timeout=300)
    assert not thread.is_alive() and not failure, failure
    assert saved_at_kill < 12  # the run was mid-way when the worker died
    assert outputs(out) == outputs(tmp_path / "undisturbed")
    redone = json.loads((out / "parts" / f"part-{running_partition:06d}.json").read_text())["worker"]
    assert not redone.endswith(f":{pid}")  # the killed worker's partition was computed again elsewhere
    client.wait_for_workers(2, timeout=120)  # and it was replaced
    assert pid not in {s["pid"] for s in client.run(batch.worker_state).values()}


@pytest.fixture(scope="module")
def interrupt_reference(client, tiny_checkpoint, squad_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    run(squad_file, out, client, tiny_checkpoint, partition_size=8, top_k=2)
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_gives_the_same_files(interrupt_reference, tiny_checkpoint, squad_file, tmp_path, signum):
    out = tmp_path / "out"
    args = [
        "batch",
        "--data",
        squad_file,
        "--out",
        out,
        "--model",
        tiny_checkpoint,
        "--workers",
        2,
        "--partition-size",
        8,
        "--top-k",
        2,
    ]
    env = {**os.environ, batch.SLOWDOWN_VARIABLE: SLOWDOWN}
    proc, stdout, stderr = interrupt_when_ready(
        [sys.executable, "-m", "npbert", *map(str, args)], lambda: saved_parts(out) >= 2, signum, env
    )
    saved = saved_parts(out)
    assert proc.returncode == 128 + signum, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (
        f"npbert batch: error: interrupted by {signal.Signals(signum).name} after {saved} of 12 "
        f"partitions, which are saved in {out / 'parts'}; run the same command with --resume to continue"
    )
    assert 2 <= saved < 12 and not (out / "predictions.jsonl").exists() and stdout == ""

    r = npbert_cli(*args)
    assert r.returncode == 2 and r.stderr == (
        f"npbert batch: error: {out / 'settings.json'}: a run is here already; "
        "pass --resume to continue it, or choose another --out\n"
    )
    r = npbert_cli(*args[:-1], 3, "--resume")
    assert r.returncode == 2 and r.stderr == (
        f"npbert batch: error: {out / 'settings.json'}: cannot resume: "
        "parameters.top_k was 2, now 3; rerun with the first run's settings, "
        "or choose another --out\n"
    )
    r = npbert_cli(*args, "--resume", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert outputs(out) == outputs(interrupt_reference)
    summary = json.loads(r.stdout.splitlines()[-1])
    assert summary["inputs"] == summary["answered"] == N and summary["partitions"] == 12
    assert summary["score"] == evaluate.score_of(json.loads((out / "metrics.json").read_text()))


def test_bad_rows_land_in_errors_with_their_reasons(qa, tiny_checkpoint, tmp_path):
    good = [
        {
            "id": f"g{i}",
            "question": f"Where was person {i} born?",
            "context": f"Person {i} was born in Paris in 19{i}0.",
        }
        for i in range(6)
    ]
    long_context = " ".join(f"Person {i} was born in Rome." for i in range(60))
    lines = [
        json.dumps(good[0]),
        json.dumps({"question": "Who?", "context": "Someone."}),  # 1 missing id
        json.dumps({**good[1], "id": "g0"}),  # 2 duplicate id
        json.dumps(good[2]),
        json.dumps({"id": "n", "question": 123, "context": "Numbers."}),  # 4 not a string
        json.dumps({"id": "e", "question": "Who?", "context": ""}),  # 5 empty context
        json.dumps({"id": "long-q", "question": "why " * 60, "context": "Because."}),  # 6 over-long question
        json.dumps(good[3]),
        json.dumps(
            {"id": "windows", "question": "Who was born in Rome?", "context": long_context}
        ),  # 8 too many windows
        "{not json",  # 9 malformed
        json.dumps(good[4]),
        json.dumps({"id": "c", "question": "Who?"}),  # 11 missing context
        json.dumps(good[5]),
    ]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    r = npbert_cli(
        "batch",
        "--data",
        data,
        "--out",
        out,
        "--model",
        tiny_checkpoint,
        "--workers",
        2,
        "--partition-size",
        4,
        "--max-seq-len",
        48,
        "--doc-stride",
        16,
        "--max-windows",
        3,
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.splitlines()[-1])
    assert {k: summary[k] for k in ("inputs", "answered", "errors", "partitions")} == {
        "inputs": 13,
        "answered": 5,
        "errors": 8,
        "partitions": 4,
    }
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    reasons = {e["index"]: (e["id"], e["reason"]) for e in errors}
    assert sorted(reasons) == [1, 2, 4, 5, 6, 8, 9, 11]  # input order
    assert reasons[1] == (None, "missing id")
    assert reasons[2] == ("g0", f"duplicate id 'g0' (first at {data}:1)")
    assert reasons[4] == ("n", "question must be a string, found int")
    assert reasons[5] == ("e", "context is empty")
    assert reasons[6][0] == "long-q" and reasons[6][1].startswith("the question is ")
    assert "tokens long: with max_seq_len 48 no room is left for the context" in reasons[6][1]
    assert (
        reasons[8][0] == "windows"
        and "windows of max_seq_len 48 with doc_stride 16, over this pipeline's limit of 3" in reasons[8][1]
    )
    assert reasons[9][0] is None and reasons[9][1].startswith("malformed JSON at column 2")
    assert reasons[11] == ("c", "missing context")
    assert all(e["where"] == f"{data}:{e['index'] + 1}" for e in errors if "where" in e)
    # every other row answered, as the single-process pipeline answers it (the good rows that shared a call
    # with the over-long question and the long context one by one)
    rows = [
        (i, r["id"], r["question"], r["context"])
        for i, r in zip(
            (0, 3, 6, 7, 8, 10, 12),
            (
                good[0],
                good[2],
                {"id": "long-q", "question": "why " * 60, "context": "Because."},
                good[3],
                {"id": "windows", "question": "Who was born in Rome?", "context": long_context},
                good[4],
                good[5],
            ),
        )
    ]
    wq = npbert.pipeline("question-answering", model=tiny_checkpoint, max_windows=3)
    expected = expected_lines(wq, rows, 4, max_seq_len=48, doc_stride=16)
    assert read_lines(out / "predictions.jsonl") == expected and len(expected) == 5


def test_outputs_missing_an_input_are_refused(client, tiny_checkpoint, jsonl_file, tmp_path):
    out = tmp_path / "out"
    run(jsonl_file, out, client, tiny_checkpoint, partition_size=32)
    path = out / "parts" / "part-000001.json"
    part = json.loads(path.read_text())
    lost = part["predictions"].pop(5)
    path.write_text(json.dumps(part))
    with pytest.raises(batch.IncompleteError, match=rf"1 missing \({lost['id']}\), 0 duplicated"):
        run(jsonl_file, out, client, tiny_checkpoint, partition_size=32, resume=True)


def test_bad_settings_and_files_get_one_line(client, tiny_checkpoint, jsonl_file, tmp_path):
    with pytest.raises(batch.BatchError, match="partition_size must be a positive integer, found 0"):
        run(jsonl_file, tmp_path / "a", None, tiny_checkpoint, partition_size=0)
    with pytest.raises(batch.BatchError, match="top_k parameter should be >= 1"):
        run(jsonl_file, tmp_path / "a", None, tiny_checkpoint, top_k=0)
    with pytest.raises(batch.BatchError, match="nope.jsonl: data file not found"):
        run(tmp_path / "nope.jsonl", tmp_path / "a", None, tiny_checkpoint)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a"], "question": ["q"]}), tmp_path / "two.parquet")
    with pytest.raises(batch.BatchError, match=r"two.parquet: no column 'context' \(columns: id, question\)"):
        run(tmp_path / "two.parquet", tmp_path / "a", None, tiny_checkpoint)
    # found by the probe on a worker, before any partition: one error, not one per row
    with pytest.raises(batch.BatchError, match=r"`doc_stride` \(200\) is larger than `max_seq_len` \(100\)"):
        run(jsonl_file, tmp_path / "b", client, tiny_checkpoint, max_seq_len=100, doc_stride=200)
    assert not (tmp_path / "b" / "parts").exists()
    r = npbert_cli("batch", "--data", jsonl_file, "--out", tmp_path / "c", "--model", tiny_checkpoint, "--workers", 0)
    assert (r.returncode, r.stderr) == (2, "npbert batch: error: --workers must be a positive integer, found 0\n")


def test_an_unloadable_model_is_one_line_without_dasks_traceback(tiny_checkpoint, jsonl_file, tmp_path):
    """The probe's failure used to reach the user as Dask's worker log ("Compute Failed", the traceback)
    above npbert's line, and as "the parameters {}: ..." (a weights error is a ValueError)."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((tiny_checkpoint / "config.json").read_bytes())
    r = npbert_cli(
        "batch", "--data", jsonl_file, "--out", tmp_path / "c", "--model", broken, "--workers", 1, "--no-progress"
    )
    assert (r.returncode, r.stderr) == (
        2,
        f"npbert batch: error: {broken / 'model.safetensors'}: weights file not found\n",
    ), r.stderr
    assert r.stdout == ""


def test_progress_counts_inputs_as_calls_finish(client, tiny_checkpoint, jsonl_file, tmp_path):
    """One partition of all N inputs, answered 8 per call: the bar counts inputs (N in all) and moves after
    each call (the worker sleeps SLOWDOWN seconds before each, longer than tqdm's 0.1 s between redraws),
    not once per partition."""
    import io

    bar = io.StringIO()
    batch.answer(
        jsonl_file,
        tmp_path / "p",
        model=tiny_checkpoint,
        client=client,
        partition_size=N,
        call_size=8,
        progress_file=bar,
    )
    counts = [int(m) for m in re.findall(rf"(\d+)/{N} \[", bar.getvalue())]
    assert counts[0] == 0 and counts[-1] == N and counts == sorted(counts), bar.getvalue()
    assert any(0 < c < N and c % 8 == 0 for c in counts), bar.getvalue()
    assert "input/s" in bar.getvalue()


# --- npbert eval on the cluster ---------------------------------------------------------------------------


def test_eval_with_workers_gives_the_same_files(qa, tiny_checkpoint, squad_file, tmp_path):
    job = evaluate.Job(
        data=str(squad_file),
        model=str(tiny_checkpoint),
        output=str(tmp_path / "here"),
        progress=False,
        parameters={"top_k": 2},
    )
    here = evaluate.run(job, qa=qa)
    r = npbert_cli(
        "eval",
        "--data",
        squad_file,
        "--model",
        tiny_checkpoint,
        "--top-k",
        2,
        "--workers",
        2,
        "--out",
        tmp_path / "there",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    for name in ("predictions.json", "nbest_predictions.json"):
        assert (tmp_path / "there" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    there = json.loads((tmp_path / "there" / "metrics.json").read_text())
    assert {k: v for k, v in there.items() if k not in TIMING} == {k: v for k, v in here.items() if k not in TIMING}
    assert r.stdout.splitlines()[-1] == json.dumps(evaluate.score_of(here))


def test_a_partition_failing_on_the_cluster_stops_the_run_naming_it(client):
    # a task that fails for another reason than its rows (here a task missing its settings; in life a
    # worker killed on every attempt, KilledWorker): one line naming the partition, not a traceback
    tasks = [{"partition": 3, "rows": [], "blas_threads": None}]
    with pytest.raises(
        batch.PartitionFailed,
        match=r"^partition 3 failed on the cluster: KeyError: 'load'; "
        "the finished partitions are saved, --resume retries the rest$",
    ):
        list(batch.completed(client, tasks, ["npbert-batch-test-3"]))
