"""`npbert eval` as a user runs it: the real command in a subprocess on a small SQuAD-format file with the
tiny test checkpoint; flags, a YAML job and JSON Lines give the same predictions; SIGINT/SIGTERM then
`--resume` ends with the same files as an uninterrupted run; bad input gets one located line."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys

import pytest

from process_helpers import interrupt_when_ready
from test_evaluate import make_squad
from test_squad import v1_evaluate, v2_main

N = 120  # questions; with --save-every 2 the run makes 60 pipeline calls, time enough to interrupt it
TIMING = ("elapsed_seconds", "questions_per_second")


def npbert(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd
    )


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def without_timing(metrics_bytes):
    return {k: v for k, v in json.loads(metrics_bytes).items() if k not in TIMING}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "made-up.json"
    path.write_text(json.dumps(make_squad(N)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def flags(data, tiny_checkpoint):
    return [
        "--model",
        tiny_checkpoint,
        "--data",
        data,
        "--save-every",
        2,
        "--top-k",
        2,
        "--max-seq-len",
        96,
        "--doc-stride",
        32,
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, flags):
    """An uninterrupted run: (output folder, completed process)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, npbert("eval", *flags, "--out", out, "--progress")


def test_eval_end_to_end(reference, data, tiny_checkpoint):
    out, r = reference
    assert r.returncode == 0, r.stderr
    assert sorted(files(out)) == ["metrics.json", "nbest_predictions.json", "predictions.json"]
    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    nbest = json.loads((out / "nbest_predictions.json").read_text(encoding="utf-8"))
    assert len(predictions) == N and all(predictions[k] == nbest[k][0]["answer"] for k in predictions)
    assert all(len(v) == 2 for v in nbest.values())
    official = v1_evaluate(json.loads(data.read_text())["data"], predictions)
    assert r.stdout.splitlines()[-1] == json.dumps(official)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {k: metrics[k] for k in official} == official
    assert metrics["count"] == N and metrics["version"] == "1.1" and metrics["model"] == str(tiny_checkpoint)
    assert metrics["revision"] is None and metrics["data"] == str(data)
    assert metrics["weights_sha256"] == hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert metrics["parameters"] == {"doc_stride": 32, "max_seq_len": 96, "top_k": 2}
    assert metrics["elapsed_seconds"] > 0 and metrics["questions_per_second"] == N / metrics["elapsed_seconds"]
    assert f"{N}/{N}" in r.stderr and "q/s" in r.stderr  # the progress bar


def test_yaml_job_and_json_lines_give_the_same_predictions(tmp_path, reference, data, tiny_checkpoint):
    ref = json.loads((reference[0] / "predictions.json").read_text())
    job = tmp_path / "job.yml"
    job.write_text(f"""# the reference's flags as a job file
model: {tiny_checkpoint}
data: {data}
version: 1.1
limit: 20
save_every: 2
output: {tmp_path / "yaml"}
parameters:
  top_k: 2
  max_seq_len: 96
  doc_stride: 32
""")
    r = npbert("eval", "--config", job)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "yaml" / "predictions.json").read_text()) == dict(list(ref.items())[:20])
    assert "q/s" in r.stderr

    examples = [
        (qa["id"], qa["question"], p["context"], [a["text"] for a in qa["answers"]])
        for p in json.loads(data.read_text())["data"][0]["paragraphs"]
        for qa in p["qas"]
    ]
    lines = tmp_path / "made-up.jsonl"
    lines.write_text(
        "".join(json.dumps({"id": i, "question": q, "context": c, "answers": a}) + "\n" for i, q, c, a in examples[:20])
    )
    # flags beside a job file override it
    r = npbert("eval", "--config", job, "--data", lines, "--out", tmp_path / "jsonl", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "jsonl" / "predictions.json").read_bytes() == (
        tmp_path / "yaml" / "predictions.json"
    ).read_bytes()
    assert "q/s]" not in r.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_gives_the_same_files(tmp_path, reference, flags, signum):
    out = tmp_path / "out"
    partial = out / "predictions.partial.jsonl"
    cmd = [sys.executable, "-m", "npbert", "eval", *map(str, flags), "--out", str(out)]
    # header + 2 chunks on disk, 56 pipeline calls still to go
    proc, stdout, stderr = interrupt_when_ready(
        cmd, lambda: partial.exists() and partial.read_bytes().count(b"\n") >= 3, signum
    )
    assert proc.returncode == 128 + signum
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"npbert eval: error: interrupted by {signal.Signals(signum).name} after ")
    assert "run the same command with --resume" in last
    saved = partial.read_bytes().count(b"\n") - 1
    assert f"after {2 * saved} of {N} questions" in last and 2 <= saved < N // 2
    assert sorted(files(out)) == ["predictions.partial.jsonl"]

    r = npbert("eval", *flags, "--out", out)
    assert r.returncode == 2 and "an unfinished run is here; pass --resume" in r.stderr
    r = npbert("eval", *flags, "--out", out, "--resume")
    assert r.returncode == 0, r.stderr
    ref, resumed = files(reference[0]), files(out)
    assert ref.keys() == resumed.keys()
    assert ref["predictions.json"] == resumed["predictions.json"]
    assert ref["nbest_predictions.json"] == resumed["nbest_predictions.json"]
    assert without_timing(ref["metrics.json"]) == without_timing(resumed["metrics.json"])
    assert r.stdout == reference[1].stdout


def test_bad_input_gets_one_located_line(tmp_path, data, tiny_checkpoint):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"version": "1.1",\n  "data": [\n}')
    job = tmp_path / "job.yml"
    job.write_text(f"data: {data}\nmodel: {tiny_checkpoint}\nparameters:\n  max_answer_length: 30\n")
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("data: x\n  model: : y\n")
    cases = [
        (["--data", tmp_path / "nope.json"], "nope.json: data file not found"),
        (["--data", bad_json], "bad.json:3:1: malformed JSON"),
        (["--data", data, "--version", "3"], "--version: unknown SQuAD version '3'"),
        (
            ["--config", job],
            "job.yml:4: parameters.max_answer_length: unknown key 'max_answer_length' (did you mean 'max_answer_len'?)",
        ),
        (["--config", bad_yaml], "bad.yml:2:"),
        (["--config", tmp_path / "none.yml"], "none.yml: job file not found"),
        (["--data", data, "--limit", "0"], "--limit: limit must be >= 1, found 0"),
        (["--model", tmp_path / "no-model", "--data", data], "no-model"),
        (
            ["--model", tiny_checkpoint, "--data", data, "--max-seq-len", 8],
            "questions 1-32 (from " + str(data) + ": data[0].paragraphs[0].qas[0]): the question is",
        ),
    ]
    for args, message in cases:
        r = npbert("eval", *args, "--out", tmp_path / "o", "--no-progress")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("npbert eval: error: "), (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
    assert not (tmp_path / "o" / "predictions.partial.jsonl").exists()  # nothing was finished: nothing to resume


def test_eval_on_squad_dev(tmp_path, squad_dev, tiny_checkpoint):
    r = npbert(
        "eval", "--model", tiny_checkpoint, "--data", squad_dev, "--limit", 10, "--out", tmp_path, "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["count"] == 10 and metrics["version"] == "1.1"
    assert len(json.loads((tmp_path / "predictions.json").read_text())) == 10


# --- SQuAD v2.0: na_probs.json and the official evaluate-v2.0.py figures ---------------------------------


def check_v2_run(out, r, dataset, data_path):
    """The run's files against the evaluate-v2.0.py transcription run on them with --na-prob-file, and
    `npbert score --na-prob` on the same files."""
    assert r.returncode == 0, r.stderr
    assert sorted(files(out)) == ["metrics.json", "na_probs.json", "predictions.json"]
    predictions = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    na_probs = json.loads((out / "na_probs.json").read_text(encoding="utf-8"))
    assert list(na_probs) == list(predictions) and all(0 <= p <= 1 for p in na_probs.values())
    official = v2_main(dataset["data"], predictions, na_probs)
    assert {"HasAns_exact", "NoAns_f1", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"} <= set(official)
    assert r.stdout.splitlines()[-1] == json.dumps(official)
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.dumps({k: metrics[k] for k in official}) == json.dumps(official)
    assert metrics["parameters"]["handle_impossible_answer"] is True and metrics["version"] == "2.0"
    scored = npbert(
        "score", data_path, out / "predictions.json", "--version", "2.0", "--na-prob", out / "na_probs.json"
    )
    assert scored.returncode == 0 and scored.stdout.splitlines()[-1] == json.dumps(official)
    return predictions, na_probs, official


def test_eval_v2_writes_na_probs_and_the_official_metrics(tmp_path, tiny_checkpoint):
    from npbert import pipeline

    dataset = make_squad(40, "2.0")
    data = tmp_path / "v2.json"
    data.write_text(json.dumps(dataset), encoding="utf-8")
    out = tmp_path / "out"
    r = npbert("eval", "--model", tiny_checkpoint, "--data", data, "--out", out, "--save-every", 8, "--no-progress")
    predictions, na_probs, _ = check_v2_run(out, r, dataset, data)
    # na_probs are the pipeline's null scores: the empty answer's score with handle_impossible_answer
    qa = pipeline("question-answering", model=tiny_checkpoint)
    examples = [(q["id"], q["question"], p["context"]) for p in dataset["data"][0]["paragraphs"] for q in p["qas"]]
    for qid, question, context in examples[:6]:
        answers = qa(question=question, context=context, handle_impossible_answer=True, top_k=1000)
        assert na_probs[qid] == pytest.approx(
            max(a["score"] for a in answers if (a["start"], a["end"]) == (0, 0)), rel=1e-5
        )
    # the same job as a YAML file (the catalog's job layout): the same files
    job = tmp_path / "job.yml"
    job.write_text(
        f"model: {tiny_checkpoint}\ndata: {data}\nversion: 2.0\noutput: {tmp_path / 'yaml'}\n"
        "save_every: 8\nprogress: false\nparameters:\n  handle_impossible_answer: true\n"
    )
    r = npbert("eval", "--config", job)
    check_v2_run(tmp_path / "yaml", r, dataset, data)
    for name in ("predictions.json", "na_probs.json"):
        assert (tmp_path / "yaml" / name).read_bytes() == (out / name).read_bytes()


def test_eval_v2_on_a_set_built_from_squad_dev(tmp_path, squad_dev, tiny_checkpoint):
    from squad_v2 import counts, from_v1

    articles = json.loads(squad_dev.read_text(encoding="utf-8"))["data"][:2]
    dataset = from_v1(articles, seed=0)
    assert counts(dataset) == (
        sum(len(p["qas"]) for a in articles for p in a["paragraphs"]),
        sum(len(a["paragraphs"]) for a in articles),
    )  # one unanswerable per paragraph
    data = tmp_path / "dev-v2-built.json"
    data.write_text(json.dumps(dataset), encoding="utf-8")
    r = npbert(
        "eval",
        "--model",
        tiny_checkpoint,
        "--data",
        data,
        "--out",
        tmp_path / "out",
        "--no-progress",
        "--max-seq-len",
        256,
    )
    _, _, official = check_v2_run(tmp_path / "out", r, dataset, data)
    assert official["NoAns_total"] == counts(dataset)[1] and official["HasAns_total"] == counts(dataset)[0]


def test_resume_with_nothing_to_resume_and_missing_parents_are_refused(tmp_path, data, tiny_checkpoint):
    r = npbert("eval", "--model", tiny_checkpoint, "--data", data, "--out", tmp_path / "no" / "such" / "out")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"its parent {tmp_path / 'no' / 'such'} does not exist" in r.stderr and not (tmp_path / "no").exists()
    r = npbert("eval", "--model", tiny_checkpoint, "--data", data, "--out", tmp_path / "fresh", "--resume")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--resume: nothing to resume in" in r.stderr
    assert not (tmp_path / "fresh").exists()
    r = npbert(
        "eval", "--model", tiny_checkpoint, "--data", data, "--limit", 4, "--out", tmp_path / "done", "--no-progress"
    )
    assert r.returncode == 0, r.stderr
    r = npbert("eval", "--model", tiny_checkpoint, "--data", data, "--limit", 4, "--out", tmp_path / "done", "--resume")
    assert r.returncode == 2 and "(it holds a finished run)" in r.stderr
