"""npbert.evaluate in process: jobs and their errors, the run's files against the pipeline answering each
question alone and the official-script transcription, resume after a real signal, the partial file."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import textwrap

import pytest

import npbert
from npbert import durable, evaluate, squad
from test_squad import v1_evaluate, v2_main

NAMES = ["John", "Anna", "Maria", "Peter", "Paul", "Clara", "Otto", "Ida", "Hugo", "Lena"]
CITIES = ["Paris", "Rome", "Seattle", "Berlin", "Vienna", "Madrid", "Lisbon", "Oslo", "Prague", "Dublin"]


def make_squad(n_questions: int, version: str = "1.1", seed: int = 0) -> dict:
    """A SQuAD-format file of made-up facts: "NAME was born in CITY in YEAR." Every fourth paragraph is long
    (several windows at max_seq_len 384); with version 2.0 every fifth question asks about someone absent."""
    rng = random.Random(seed)
    paragraphs, qid = [], 0
    while qid < n_questions:
        n_facts = 40 if len(paragraphs) % 4 == 3 else rng.randint(2, 6)
        facts = [
            (rng.choice(NAMES) + f" {chr(65 + i % 26)}.", rng.choice(CITIES), str(rng.randint(1800, 2000)))
            for i in range(n_facts)
        ]
        context = " ".join(f"{name} was born in {city} in {year}." for name, city, year in facts)
        qas = []
        for name, city, year in rng.sample(facts, min(3, len(facts))):
            if qid >= n_questions:
                break
            if version == "2.0" and qid % 5 == 4:
                qas.append({"id": f"q{qid}", "question": "Where was Zed born?", "answers": [], "is_impossible": True})
            else:
                start = context.index(f"{name} was born in {city}") + len(f"{name} was born in ")
                qas.append(
                    {
                        "id": f"q{qid}",
                        "question": f"Where was {name} born?",
                        "answers": [
                            {"text": city, "answer_start": start},
                            {"text": f"in {city}", "answer_start": start - 3},
                        ],
                    }
                )
            qid += 1
        paragraphs.append({"context": context, "qas": qas})
    return {"version": "v2.0" if version == "2.0" else "1.1", "data": [{"title": "Made up", "paragraphs": paragraphs}]}


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


def read_outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# --- jobs ----------------------------------------------------------------------------------------------


def test_make_job_defaults_and_types():
    job = evaluate.make_job({"data": "d.json", "version": 2.0, "parameters": {"top_k": 2, "doc_stride": 0}})
    assert job == evaluate.Job(data="d.json", version="2.0", parameters={"top_k": 2, "doc_stride": 0})
    assert job.model == "distilbert/distilbert-base-cased-distilled-squad" and job.save_every == 32


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"data": "d", "modle": "m"}, r"modle: unknown key 'modle' \(did you mean 'model'\?\)"),
        ({"data": "d", "parameters": {"topk": 3}}, r"parameters.topk: unknown key 'topk' \(did you mean 'top_k'\?\)"),
        ({"data": "d", "parameters": {"zzz": 3}}, r"unknown key 'zzz' \(known: align_to_words, batch_size"),
        ({"data": "d", "limit": "ten"}, "limit: limit must be an integer, found 'ten'"),
        ({"data": "d", "limit": 0}, "limit must be >= 1, found 0"),
        ({"data": "d", "parameters": {"handle_impossible_answer": "yes"}}, "must be true or false, found 'yes'"),
        ({"data": "d", "parameters": [1]}, "parameters must be a mapping"),
        ({"data": "d", "version": "3"}, "version: unknown SQuAD version '3'"),
        ({"model": "m"}, "no data file"),
    ],
)
def test_make_job_errors_name_the_key(settings, message):
    with pytest.raises(evaluate.JobError, match=message):
        evaluate.make_job(settings)


def test_job_file_errors_name_file_line_and_key(tmp_path):
    job = tmp_path / "job.yml"
    job.write_text("model: m\ndata: d.json\nparameters:\n  top_k: 2\n  max_answr_len: 30\n")
    settings, where = evaluate.read_job_file(job)
    with pytest.raises(
        evaluate.JobError,
        match=r"job.yml:5: parameters.max_answr_len: unknown key 'max_answr_len' "
        r"\(did you mean 'max_answer_len'\?\)",
    ):
        evaluate.make_job(settings, where)
    job.write_text("model: m\ndata: [d.json\n")
    with pytest.raises(evaluate.JobError, match=r"job.yml:3:1: unreadable YAML"):
        evaluate.read_job_file(job)
    job.write_text("- model\n- data\n")
    with pytest.raises(evaluate.JobError, match="a job file is a mapping"):
        evaluate.read_job_file(job)
    with pytest.raises(evaluate.JobError, match="nope.yml: job file not found"):
        evaluate.read_job_file(tmp_path / "nope.yml")


# --- the run -------------------------------------------------------------------------------------------


def test_run_answers_like_the_pipeline_and_scores_officially(tmp_path, qa, tiny_checkpoint):
    dataset = make_squad(23)
    data = write_json(tmp_path / "d.json", dataset)
    job = evaluate.make_job(
        {
            "data": str(data),
            "output": str(tmp_path / "out"),
            "save_every": 5,
            "progress": False,
            "model": str(tiny_checkpoint),
            "parameters": {"top_k": 3, "max_seq_len": 128},
        }
    )
    metrics = evaluate.run(job, qa)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    nbest = json.loads((tmp_path / "out" / "nbest_predictions.json").read_text())
    examples = squad.read_dataset(data).examples
    assert list(predictions) == list(nbest) == [e.id for e in examples]
    for e in examples:  # each question alone: the same answers; scores to float32 rounding (other GEMM shapes)
        alone = qa(question=e.question, context=e.context, top_k=3, max_seq_len=128)
        assert [(a["answer"], a["start"], a["end"]) for a in nbest[e.id]] == [
            (a["answer"], a["start"], a["end"]) for a in alone
        ]
        assert [a["score"] for a in nbest[e.id]] == pytest.approx([a["score"] for a in alone], rel=1e-5)
        assert predictions[e.id] == alone[0]["answer"]
    assert evaluate.score_of(metrics) == v1_evaluate(dataset["data"], predictions)
    assert metrics == json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["count"] == 23 and metrics["version"] == "1.1" and metrics["model"] == str(tiny_checkpoint)
    assert metrics["weights_sha256"] == hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert metrics["parameters"] == {"max_seq_len": 128, "top_k": 3}
    assert metrics["questions_per_second"] == 23 / metrics["elapsed_seconds"]
    assert sorted(os.listdir(tmp_path / "out")) == ["metrics.json", "nbest_predictions.json", "predictions.json"]


def test_v2_json_lines_limit_and_no_answer_default(tmp_path, qa, tiny_checkpoint):
    dataset = make_squad(30, "2.0")
    lines = [
        {
            "id": qa_["id"],
            "question": qa_["question"],
            "context": p["context"],
            "answers": [a["text"] for a in qa_["answers"]],
        }
        for p in dataset["data"][0]["paragraphs"]
        for qa_ in p["qas"]
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    job = evaluate.make_job(
        {
            "data": str(data),
            "version": "2.0",
            "limit": 12,
            "output": str(tmp_path / "out"),
            "progress": False,
            "model": str(tiny_checkpoint),
        }
    )
    metrics = evaluate.run(job, qa)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert list(predictions) == [r["id"] for r in lines[:12]]
    for r in lines[:12]:
        assert (
            predictions[r["id"]]
            == qa(question=r["question"], context=r["context"], handle_impossible_answer=True)["answer"]
        )
    assert metrics["parameters"] == {"handle_impossible_answer": True}
    subset = [
        {
            "paragraphs": [
                {"context": r["context"], "qas": [{"id": r["id"], "answers": [{"text": t} for t in r["answers"]]}]}
            ]
        }
        for r in lines[:12]
    ]
    na_probs = json.loads((tmp_path / "out" / "na_probs.json").read_text())
    assert list(na_probs) == list(predictions)
    assert evaluate.score_of(metrics) == v2_main(subset, predictions, na_probs)  # with the na-prob figures
    assert metrics["total"] == 12 and metrics["NoAns_total"] == 2 and "best_f1_thresh" in metrics


class SignalOnCall:
    """The real pipeline; on call number `n` the process sends itself `signum` while the call runs."""

    def __init__(self, qa, n, signum):
        self.qa, self.n, self.signum, self.calls = qa, n, signum, 0

    def __getattr__(self, name):
        return getattr(self.qa, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), self.signum)
        return self.qa(*args, **kwargs)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_chunks_and_resume_gives_the_same_files(tmp_path, qa, tiny_checkpoint, signum):
    data = write_json(tmp_path / "d.json", make_squad(17))
    settings = {
        "data": str(data),
        "save_every": 4,
        "progress": False,
        "model": str(tiny_checkpoint),
        "parameters": {"top_k": 2},
    }
    whole = evaluate.make_job({**settings, "output": str(tmp_path / "whole")})
    evaluate.run(whole, qa)

    job = evaluate.make_job({**settings, "output": str(tmp_path / "cut")})
    with pytest.raises(evaluate.Interrupted) as info:
        evaluate.run(job, SignalOnCall(qa, 3, signum))
    assert (info.value.signum, info.value.done, info.value.total) == (signum, 8, 17)
    partial = tmp_path / "cut" / evaluate.PARTIAL
    assert os.listdir(tmp_path / "cut") == [evaluate.PARTIAL] and len(partial.read_bytes().splitlines()) == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    with pytest.raises(evaluate.JobError, match="an unfinished run is here; pass --resume"):
        evaluate.run(job, qa)
    with open(partial, "ab") as f:
        f.write(b'{"seconds": 0.1, "predictions": [{"id": "q8", "ans')  # died while writing the 3rd chunk
    evaluate.run(job, qa, resume=True)
    whole_files, cut_files = read_outputs(tmp_path / "whole"), read_outputs(tmp_path / "cut")
    assert whole_files.keys() == cut_files.keys() == {"metrics.json", "nbest_predictions.json", "predictions.json"}
    assert whole_files["predictions.json"] == cut_files["predictions.json"]
    assert whole_files["nbest_predictions.json"] == cut_files["nbest_predictions.json"]
    timing = ("elapsed_seconds", "questions_per_second")
    strip = lambda b: {k: v for k, v in json.loads(b).items() if k not in timing}  # noqa: E731
    assert strip(whole_files["metrics.json"]) == strip(cut_files["metrics.json"])


class InterruptInsideNativeCall(SignalOnCall):
    """As a numba dispatcher does when the handler raises inside it: the Interrupted comes out as the
    cause of a SystemError ("returned a result with an exception set")."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except evaluate.Interrupted as e:
            raise SystemError("CPUDispatcher(<function kernel>) returned a result with an exception set") from e


def test_an_interrupt_wrapped_by_a_native_call_is_still_an_interrupt(tmp_path, qa, tiny_checkpoint):
    data = write_json(tmp_path / "d.json", make_squad(9))
    job = evaluate.make_job({"data": str(data), "save_every": 4, "progress": False, "output": str(tmp_path / "o")})
    with pytest.raises(evaluate.Interrupted) as info:
        evaluate.run(job, InterruptInsideNativeCall(qa, 2, signal.SIGTERM))
    assert (info.value.signum, info.value.done, info.value.total) == (signal.SIGTERM, 4, 9)
    with pytest.raises(SystemError, match="something else"):  # any other SystemError stays what it is
        evaluate.run(
            evaluate.make_job({"data": str(data), "progress": False, "output": str(tmp_path / "p")}), FailingCall(qa)
        )


class FailingCall:
    def __init__(self, qa):
        self.qa = qa

    def __getattr__(self, name):
        return getattr(self.qa, name)

    def __call__(self, *args, **kwargs):
        raise SystemError("something else")


def test_resume_refuses_a_different_job(tmp_path, qa, tiny_checkpoint):
    data = write_json(tmp_path / "d.json", make_squad(9))
    settings = {"data": str(data), "save_every": 4, "progress": False, "output": str(tmp_path / "o")}
    with pytest.raises(evaluate.Interrupted):
        evaluate.run(evaluate.make_job(settings), SignalOnCall(qa, 2, signal.SIGINT))
    changed = evaluate.make_job({**settings, "parameters": {"max_answer_len": 5}})
    with pytest.raises(evaluate.JobError, match=r"cannot resume: parameters was \{\}, now \{'max_answer_len': 5\}"):
        evaluate.run(changed, qa, resume=True)
    (tmp_path / "o" / evaluate.PARTIAL).write_text("garbage\n")
    with pytest.raises(evaluate.JobError, match="not an npbert eval partial file"):
        evaluate.run(evaluate.make_job(settings), qa, resume=True)


def test_signals_are_held_while_a_chunk_is_written():
    signals = durable.Signals()
    with signals.installed():
        with pytest.raises(evaluate.Interrupted):
            with signals.critical():
                os.kill(os.getpid(), signal.SIGTERM)
                written = True  # reached: the signal waited for the block to end
        assert written
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_bad_output_folder_and_data(tmp_path, qa):
    (tmp_path / "file").write_text("x")
    data = write_json(tmp_path / "d.json", make_squad(3))
    with pytest.raises(evaluate.JobError, match="output exists and is not a folder"):
        evaluate.run(evaluate.make_job({"data": str(data), "output": str(tmp_path / "file")}), qa)
    bad = tmp_path / "bad.json"
    bad.write_text(textwrap.dedent('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "a"}]}]}]}'))
    with pytest.raises(squad.DataError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: missing key 'answers'"):
        evaluate.run(evaluate.make_job({"data": str(bad), "output": str(tmp_path / "o")}), qa)
