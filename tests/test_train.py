"""npbert train without torch: the training features (run_qa.py's labels), the distillation loss's gradient
against finite differences, durability (an interrupted run resumed ends bit-identical to an uninterrupted
one; a damaged state refused; the folder locked), the job's checks and the command's one-line errors.
The step itself is checked against PyTorch in tests/parity/test_train_parity.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from checkpoints import TINY, generated_vocab, write_checkpoint
from npbert import cli, squad, train
from npbert.durable import Interrupted
from npbert.evaluate import JobError
from npbert.tokenizer import Tokenizer

CONTEXT = "My name is John and I live in Seattle . The river is in Paris and the first city is Rome ."
QUESTIONS = [
    ("What's my name?", "John"),
    ("where I live?", "Seattle"),
    ("which city river?", "Paris"),
    ("the first city?", "Rome"),
    ("who live in Seattle?", "John"),
]


def squad_file(path: Path, questions=QUESTIONS, context=CONTEXT, version="1.1", impossible=()) -> Path:
    qas = [
        {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
        for i, (q, a) in enumerate(questions)
    ]
    qas += [{"id": f"x{i}", "question": q, "answers": [], "is_impossible": True} for i, q in enumerate(impossible)]
    data = {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny DistilBERT with dropout 0 (training with dropout is not implemented yet) and its tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-train")
    return write_checkpoint(folder, vocab=generated_vocab(), **TINY, dropout=0.0, attention_dropout=0.0, qa_dropout=0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return squad_file(tmp_path_factory.mktemp("data") / "train.json")


def job(tiny, data, out, **kw) -> train.TrainJob:
    settings = dict(
        model=str(tiny),
        data=str(data),
        out=str(out),
        max_steps=6,
        batch_size=2,
        learning_rate=1e-3,
        warmup_steps=2,
        dropout=False,
        max_seq_len=32,
        doc_stride=8,
        save_steps=2,
        progress=False,
    )
    return train.TrainJob(**{**settings, **kw})


# --- features --------------------------------------------------------------------------------------------


def test_labels_point_at_the_answer_or_at_cls(tiny, tmp_path):
    tokenizer = Tokenizer.from_folder(tiny)
    path = squad_file(tmp_path / "d.json", version="2.0", impossible=["who is Rome?"])
    examples = train.labelled_examples(squad.read_dataset(path))
    features = train.training_features(tokenizer, examples, 24, 6)
    assert features.input_ids.shape[1] == 24  # padded to max_seq_len, as run_qa.py by default
    questions, contexts = [e.question for e in examples], [e.context for e in examples]
    windows = [w for ws in tokenizer.encode_pairs(questions, contexts, 24, 6, "max_length") for w in ws]
    assert len(windows) == len(features.input_ids) > len(examples)  # the context takes several windows
    seen_answer = set()
    for row, window in enumerate(windows):
        example = examples[features.example[row]]
        s, e = features.start_positions[row], features.end_positions[row]
        if (s, e) == (0, 0):  # [CLS]: no answer, or this window does not hold the whole answer
            context_tokens = [i for i, k in enumerate(window.sequence_ids) if k == 1]
            first, last = window.offsets[context_tokens[0]][0], window.offsets[context_tokens[-1]][1]
            answer_end = (example.answer_start or 0) + len(example.answer_text)
            assert example.answer_start is None or not (first <= example.answer_start and answer_end <= last)
            continue
        assert example.context[window.offsets[s][0] : window.offsets[e][1]] == example.answer_text
        seen_answer.add(features.example[row])
    # every answerable question is labelled somewhere; the unanswerable one only at [CLS]
    assert seen_answer == set(range(len(QUESTIONS)))
    impossible = [r for r in range(len(features.input_ids)) if features.example[r] == len(QUESTIONS)]
    assert impossible and all(features.start_positions[r] == features.end_positions[r] == 0 for r in impossible)


def test_an_answer_outside_its_context_is_refused(tmp_path):
    path = tmp_path / "d.json"
    qa = {"id": "1", "question": "q?", "answers": [{"text": "Oslo", "answer_start": 3}]}
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": CONTEXT, "qas": [qa]}]}]}))
    with pytest.raises(squad.DataError, match="'Oslo' is not in the context"):
        train.labelled_examples(squad.read_dataset(path))


# --- the loss --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.5, 4.0))
def test_distillation_gradient_equals_finite_differences(seed, temperature):
    rng = np.random.default_rng(seed)
    student, teacher = rng.standard_normal((3, 7)) * 3, rng.standard_normal((3, 7)) * 3
    loss, grad = train.kl_distillation(student, teacher, temperature)
    assert loss >= -1e-12  # a KL divergence
    direction = rng.standard_normal(student.shape)
    h = 1e-6
    plus, _ = train.kl_distillation(student + h * direction, teacher, temperature)
    minus, _ = train.kl_distillation(student - h * direction, teacher, temperature)
    assert (plus - minus) / (2 * h) == pytest.approx((grad * direction).sum(), rel=1e-6, abs=1e-9)


def test_distillation_against_its_formula():
    rng = np.random.default_rng(0)
    s, t, T = rng.standard_normal((2, 5)), rng.standard_normal((2, 5)), 2.0
    p = np.exp(t / T) / np.exp(t / T).sum(axis=1, keepdims=True)
    log_q = s / T - np.log(np.exp(s / T).sum(axis=1, keepdims=True))
    expected = (p * (np.log(p) - log_q)).sum() / 2 * T * T  # batchmean: over the 2 rows
    assert train.kl_distillation(s, t, T)[0] == pytest.approx(expected, rel=1e-12)


# --- the run ---------------------------------------------------------------------------------------------


def final_weights(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "model.safetensors"))


def test_a_run_writes_a_model_npbert_loads_and_a_log(tiny, data, tmp_path):
    import npbert

    summary = train.train(job(tiny, data, tmp_path / "out"))
    out = tmp_path / "out"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert [r["learning_rate"] for r in log[:3]] == [0.0, 5e-4, 1e-3]  # the warm-up, then the decay
    assert summary["loss"] == log[-1]["loss"] and np.isfinite(summary["loss"])
    assert not (out / train.STATE).exists()  # removed at the end
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(out)
    before = npbert.AutoModelForQuestionAnswering.from_pretrained(tiny)
    ids = np.array([[101, 40, 41, 102]])
    assert not np.allclose(model(ids).start_logits, before(ids).start_logits)  # it has learnt something
    for name in ("tokenizer.json", "config.json", "vocab.txt"):
        assert (out / name).is_file()


def test_interrupted_then_resumed_ends_bit_identical(tiny, data, tmp_path, monkeypatch):
    train.train(job(tiny, data, tmp_path / "whole"))
    calls = {"n": 0}
    real = train.step_gradients

    def stopping(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: steps 1-3 done, the state of step 2 saved, step 3 only logged
            raise Interrupted(signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(train, "step_gradients", stopping)
    with pytest.raises(Interrupted) as stop:
        train.train(job(tiny, data, tmp_path / "cut"))
    assert stop.value.done == 3 and (tmp_path / "cut" / train.STATE).exists()
    monkeypatch.setattr(train, "step_gradients", real)
    with pytest.raises(JobError, match="pass --resume"):
        train.train(job(tiny, data, tmp_path / "cut"))
    train.train(job(tiny, data, tmp_path / "cut"), resume=True)
    whole, cut = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert whole.keys() == cut.keys()
    for name in whole:
        assert whole[name].tobytes() == cut[name].tobytes(), name
    assert (tmp_path / "whole" / "log.jsonl").read_text() == (tmp_path / "cut" / "log.jsonl").read_text()


def stopped_at_step_3(tiny, data, out, monkeypatch) -> None:
    """A run into `out` stopped by SIGINT as its third step starts (the state of step 2 saved), then
    step_gradients given back."""
    real = train.step_gradients

    def stopping(step, *args, **kw):
        if step == 2:
            raise Interrupted(signal.SIGINT)
        return real(step, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(train, "step_gradients", stopping)
        with pytest.raises(Interrupted):
            train.train(job(tiny, data, out))


def test_a_damaged_state_is_refused(tiny, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    stopped_at_step_3(tiny, data, out, monkeypatch)
    state = out / train.STATE
    raw = bytearray(state.read_bytes())
    raw[-5] ^= 0x40  # a changed byte in the last array's data
    state.write_bytes(bytes(raw))
    with pytest.raises(JobError, match="damaged training state"):
        train.train(job(tiny, data, out), resume=True)
    state.write_bytes(bytes(raw[:100]))  # cut short
    with pytest.raises(JobError, match="damaged training state"):
        train.train(job(tiny, data, out), resume=True)


def test_a_state_of_other_settings_is_refused(tiny, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    stopped_at_step_3(tiny, data, out, monkeypatch)
    with pytest.raises(JobError, match="another job"):
        train.train(job(tiny, data, out, learning_rate=2e-3), resume=True)


def test_kill_9_then_resume_ends_bit_identical(tiny, data, tmp_path):
    """A real process killed with SIGKILL after its first saved state; --resume in a new process."""
    args = ["--model", str(tiny), "--data", str(data), "--max-steps", "30", "--batch-size", "2", "--no-dropout"]
    args += [
        "--max-seq-len",
        "32",
        "--doc-stride",
        "8",
        "--save-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--no-progress",
    ]
    command = [sys.executable, "-m", "npbert", "train", *args]
    assert subprocess.run([*command, "--out", str(tmp_path / "whole")], capture_output=True).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / train.STATE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / train.STATE).exists() and not (out / "model.safetensors").exists()
    resumed = subprocess.run([*command, "--out", str(out), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole, killed = final_weights(tmp_path / "whole"), final_weights(out)
    assert all(whole[n].tobytes() == killed[n].tobytes() for n in whole)


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "--batch-size: batch_size must be at least 1, found 0"),
        (["--doc-stride", "40"], "doc_stride must be smaller than max_seq_len"),
        (["--temperature", "0"], "temperature must be above 0"),
        (["--max-steps", "0"], "max_steps must be at least 1"),
    ],
)
def test_bad_settings_are_one_line_exit_2(tiny, data, tmp_path, capsys, extra, message):
    argv = ["train", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o"), "--max-seq-len", "32"]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--learning-rate", "inf"], "learning_rate must be a finite number"),
        (["--learning-rate=-1e-3"], "learning_rate must be at least 0"),
        (["--learning-rate", "5"], "learning_rate must be below 1"),
        (["--max-steps", "3", "--warmup-steps", "10"], "warmup_steps must be at most max_steps (3)"),
        (["--alpha-ce", "nan"], "alpha_ce must be at least 0"),
    ],
)
def test_settings_that_make_no_sense_are_refused(tiny, data, tmp_path, capsys, extra, message):
    argv = ["train", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o")]
    assert cli.main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()  # nothing written


def bad_data(tmp_path, kind) -> Path:
    path = tmp_path / "bad.json"
    if kind == "empty":
        path.write_text(json.dumps({"version": "1.1", "data": []}))
        return path
    qa = {"id": "1", "question": "q?", "answers": [{"text": "John", "answer_start": 10_000 if kind == "offset" else 0}]}
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": CONTEXT, "qas": [qa]}]}]}))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [("empty", "no questions"), ("offset", "is not in the context"), ("moved", "is not in the context")],
)
def test_bad_training_data_is_one_line_and_writes_nothing(tiny, tmp_path, capsys, kind, message):
    argv = ["train", "--model", str(tiny), "--data", str(bad_data(tmp_path, kind)), "--out", str(tmp_path / "o")]
    assert cli.main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_a_teacher_with_another_vocabulary_is_refused(tiny, data, tmp_path, capsys):
    other = write_checkpoint(tmp_path / "teacher", vocab=generated_vocab(400), **TINY)
    argv = ["train", "--model", str(tiny), "--data", str(data), "--out", str(tmp_path / "o"), "--teacher", str(other)]
    assert cli.main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "its tokenizer's vocabulary is not the student's" in err
    assert not (tmp_path / "o").exists()


def test_a_job_file_names_the_line_of_a_bad_key(tiny, data, tmp_path, capsys):
    path = tmp_path / "job.yml"
    path.write_text(f"model: {tiny}\ndata: {data}\nout: {tmp_path / 'o'}\nbatch_sise: 4\n")
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: batch_sise: unknown key 'batch_sise' (did you mean 'batch_size'?)" in err


def test_with_dropout_the_same_seed_gives_the_same_run_and_another_seed_another(tiny, tmp_path, data):
    dropping = write_checkpoint(tmp_path / "m", vocab=generated_vocab(), **TINY, dropout=0.3, attention_dropout=0.2)
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train.train(job(dropping, data, tmp_path / name, dropout=True, seed=seed, max_steps=3))
    log = {n: (tmp_path / n / "log.jsonl").read_text() for n in "abc"}
    assert log["a"] == log["b"] != log["c"]
    train.train(job(dropping, data, tmp_path / "d", dropout=False, seed=1, max_steps=3))
    assert (tmp_path / "d" / "log.jsonl").read_text() != log["a"]


def test_interrupted_with_dropout_resumes_bit_identical(tmp_path, data, monkeypatch):
    dropping = write_checkpoint(tmp_path / "m", vocab=generated_vocab(), **TINY, dropout=0.3, attention_dropout=0.2)
    train.train(job(dropping, data, tmp_path / "whole", dropout=True))
    real = train.step_gradients

    def stopping(step, *args, **kw):
        if step == 3:  # mid-step: its dropout draws are made, then the step is abandoned
            real(step, *args, **kw)
            raise Interrupted(signal.SIGINT)
        return real(step, *args, **kw)

    monkeypatch.setattr(train, "step_gradients", stopping)
    with pytest.raises(Interrupted):
        train.train(job(dropping, data, tmp_path / "cut", dropout=True))
    monkeypatch.setattr(train, "step_gradients", real)
    train.train(job(dropping, data, tmp_path / "cut", dropout=True), resume=True)
    whole, cut = final_weights(tmp_path / "whole"), final_weights(tmp_path / "cut")
    assert all(whole[n].tobytes() == cut[n].tobytes() for n in whole)


def test_a_second_run_into_the_same_folder_is_refused(tiny, data, tmp_path):
    from npbert.evaluate import output_lock

    out = tmp_path / "out"
    with output_lock(out, train.LOCK, "train"):
        # flock is per open file: a second open in the same process conflicts as another process would
        with pytest.raises(JobError, match="another npbert train"):
            train.train(job(tiny, data, out))
