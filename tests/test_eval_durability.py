"""What `npbert eval --resume` does with partial files that a careless user, a full disk or a kill left
behind, and with two runs into one output folder: a file without a complete header is started afresh; a
changed byte in a saved line is found by its checksum, that line and the ones after it are recomputed and
the lines before it kept; a damaged header is refused; the folder is locked while a run writes to it, and
a lock left by a killed run is taken over. Every resumed run must end with the files of an uninterrupted
run, byte for byte (timing fields of metrics.json aside)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

import npbert
from npbert import evaluate
from process_helpers import start_and_wait
from test_evaluate import SignalOnCall, make_squad, read_outputs, write_json

N, SAVE_EVERY = 17, 4  # 5 chunk lines, the last one short
TIMING = ("elapsed_seconds", "questions_per_second")


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, qa, tiny_checkpoint):
    """(settings, the files of an uninterrupted run, the partial file of a run interrupted after 3 chunks)."""
    root = tmp_path_factory.mktemp("durability")
    data = write_json(root / "d.json", make_squad(N))
    settings = {
        "data": str(data),
        "save_every": SAVE_EVERY,
        "progress": False,
        "model": str(tiny_checkpoint),
        "parameters": {"top_k": 2},
    }
    evaluate.run(evaluate.make_job({**settings, "output": str(root / "whole")}), qa)
    with pytest.raises(evaluate.Interrupted):
        evaluate.run(evaluate.make_job({**settings, "output": str(root / "cut")}), SignalOnCall(qa, 4, signal.SIGINT))
    partial = (root / "cut" / evaluate.PARTIAL).read_bytes()
    assert partial.count(b"\n") == 4  # the header and 3 chunks
    return settings, read_outputs(root / "whole"), partial


def strip_timing(files: dict) -> dict:
    return {
        name: {k: v for k, v in json.loads(data).items() if k not in TIMING} if name == "metrics.json" else data
        for name, data in files.items()
    }


class Recording:
    """The pipeline, remembering every question it was asked."""

    def __init__(self, qa):
        self.qa, self.asked = qa, []

    def __getattr__(self, name):
        return getattr(self.qa, name)

    def __call__(self, *, question, context, **kwargs):
        self.asked.extend(question)
        return self.qa(question=question, context=context, **kwargs)


def resume_from(tmp_path, runs, qa, partial: bytes):
    """Resume a run whose partial file holds `partial`; (the folder's files, the questions answered)."""
    settings, _, _ = runs
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / evaluate.PARTIAL).write_bytes(partial)
    recording = Recording(qa)
    evaluate.run(evaluate.make_job({**settings, "output": str(out)}), recording, resume=True)
    return read_outputs(out), recording.asked


def questions(settings) -> list[str]:
    return [e.question for e in npbert.squad.read_dataset(settings["data"]).examples]


# --- partial files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 40, "header-1"], ids=["empty", "1-byte", "40-bytes", "header-without-newline"])
def test_a_partial_file_without_a_complete_header_is_started_afresh(tmp_path, runs, qa, cut):
    settings, whole, partial = runs
    header = partial[: partial.index(b"\n") + 1]
    files, asked = resume_from(tmp_path, runs, qa, header[: len(header) - 1 if cut == "header-1" else cut])
    assert strip_timing(files) == strip_timing(whole)
    assert asked == questions(settings)


def test_a_header_only_file_resumes_from_the_first_question(tmp_path, runs, qa):
    settings, whole, partial = runs
    files, asked = resume_from(tmp_path, runs, qa, partial[: partial.index(b"\n") + 1])
    assert strip_timing(files) == strip_timing(whole) and asked == questions(settings)


def test_a_damaged_line_is_recomputed_and_the_lines_before_it_kept(tmp_path, runs, qa, caplog):
    settings, whole, partial = runs
    lines = partial.split(b"\n")
    # "tradition" -> "tradipion": a changed letter inside an answer of the third line keeps it valid JSON
    i = lines[3].index(b'"answer":"') + len(b'"answer":"')
    lines[3] = lines[3][:i] + bytes([lines[3][i] ^ 0x04]) + lines[3][i + 1 :]
    with caplog.at_level(logging.WARNING, logger="npbert.evaluate"):
        files, asked = resume_from(tmp_path, runs, qa, b"\n".join(lines))
    assert strip_timing(files) == strip_timing(whole)
    assert asked == questions(settings)[SAVE_EVERY * 2 :]  # lines 2 and 3 (chunks 1 and 2) kept
    assert any(
        f"{evaluate.PARTIAL}:4: damaged line (checksum mismatch): keeping the 8 questions" in r.getMessage()
        for r in caplog.records
    )


@given(st.data())
def test_any_changed_byte_is_found(tmp_path_factory, runs, qa, data):
    """A byte changed anywhere: the resumed run ends with the uninterrupted run's files, or (in the header,
    which names the job) is refused. Never a silently different prediction."""
    settings, whole, partial = runs
    at = data.draw(st.integers(0, len(partial) - 1), label="offset")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = partial[:at] + bytes([partial[at] ^ flip]) + partial[at + 1 :]
    header_end = partial.index(b"\n")
    tmp_path = tmp_path_factory.mktemp("flip")
    if at <= header_end:  # the header line, or its newline (the header then runs into the next line)
        with pytest.raises(evaluate.JobError, match=r":1: not an npbert eval partial file, or its header is damaged"):
            resume_from(tmp_path, runs, qa, damaged)
        return
    files, asked = resume_from(tmp_path, runs, qa, damaged)
    assert strip_timing(files) == strip_timing(whole)
    assert asked == questions(settings)[len(questions(settings)) - len(asked) :]  # a suffix: the prefix kept


def test_a_changed_format_digit_in_a_sealed_header_is_damage_not_another_version(tmp_path, runs, qa):
    # found by a random draw of test_any_changed_byte_is_found: the header's own checksum says it changed
    _, _, partial = runs
    at = partial.index(evaluate.FORMAT.encode()) + len(evaluate.FORMAT) - 1
    damaged = partial[:at] + bytes([partial[at] ^ 1]) + partial[at + 1 :]
    with pytest.raises(evaluate.JobError, match=r":1: not an npbert eval partial file, or its header is damaged"):
        resume_from(tmp_path, runs, qa, damaged)


def test_a_partial_file_of_the_old_format_is_refused_naming_it(tmp_path, runs, qa):
    old = json.dumps({"format": "npbert-eval-partial/1", "job": {}}).encode() + b"\n"
    with pytest.raises(evaluate.JobError, match=r"written by another npbert version \(npbert-eval-partial/1\); delete"):
        resume_from(tmp_path, runs, qa, old)


# --- the lock ----------------------------------------------------------------------------------------------


def test_a_folder_in_use_is_refused_naming_its_owner(tmp_path, runs, qa):
    settings, _, _ = runs
    out = tmp_path / "out"
    with evaluate.output_lock(out):
        with pytest.raises(
            evaluate.JobError,
            match=rf"{out}: another npbert eval \(pid {os.getpid()}\) is writing "
            "to this folder; wait for it to finish or choose another",
        ):
            evaluate.run(evaluate.make_job({**settings, "output": str(out)}), qa)
        assert os.listdir(out) == [evaluate.LOCK]
    assert not out.exists()  # made for the lock, left empty: removed
    evaluate.run(evaluate.make_job({**settings, "output": str(out)}), qa)
    assert sorted(os.listdir(out)) == ["metrics.json", "nbest_predictions.json", "predictions.json"]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, runs, qa, caplog):
    settings, whole, _ = runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / evaluate.LOCK).write_text(json.dumps({"pid": dead.pid}) + "\n")
    with caplog.at_level(logging.WARNING, logger="npbert.evaluate"):
        evaluate.run(evaluate.make_job({**settings, "output": str(out)}), qa)
    assert strip_timing(read_outputs(out)) == strip_timing(whole)
    assert any(f"taking over the lock of pid {dead.pid}" in r.getMessage() for r in caplog.records)


# --- the real command ------------------------------------------------------------------------------------

CLI_N = 120


def npbert_eval(*args):
    return [sys.executable, "-m", "npbert", "eval", *map(str, args)]


@pytest.fixture(scope="module")
def cli(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("cli")
    data = write_json(root / "made-up.json", make_squad(CLI_N))
    flags = [
        "--model",
        tiny_checkpoint,
        "--data",
        data,
        "--save-every",
        2,
        "--max-seq-len",
        96,
        "--doc-stride",
        32,
        "--no-progress",
    ]
    reference = root / "reference"
    r = subprocess.run(npbert_eval(*flags, "--out", reference), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    return flags, read_outputs(reference)


def start_and_wait_for_chunks(cmd, partial, chunks: int) -> subprocess.Popen:
    return start_and_wait(cmd, lambda: partial.exists() and partial.read_bytes().count(b"\n") >= chunks + 1)


def test_two_evals_into_one_folder_the_second_is_refused(tmp_path, cli):
    flags, reference = cli
    out = tmp_path / "out"
    first = start_and_wait_for_chunks(npbert_eval(*flags, "--out", out), out / evaluate.PARTIAL, 2)
    try:
        first.send_signal(signal.SIGSTOP)  # still running (and holding the folder) while the others start
        for extra in (["--top-k", 3], ["--resume"]):  # other settings; and a resume of the running job
            r = subprocess.run(npbert_eval(*flags, *extra, "--out", out), capture_output=True, text=True, timeout=900)
            assert r.returncode == 2, r.stderr
            assert r.stderr.strip() == (
                f"npbert eval: error: {out}: another npbert eval (pid {first.pid}) is writing "
                "to this folder; wait for it to finish or choose another output folder"
            )
        first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=900)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert strip_timing(read_outputs(out)) == strip_timing(reference)
    assert stdout.splitlines()[-1] == json.dumps(evaluate.score_of(json.loads(reference["metrics.json"])))


def test_sigkill_leaves_a_stale_lock_and_resume_takes_it_over(tmp_path, cli):
    flags, reference = cli
    out = tmp_path / "out"
    proc = start_and_wait_for_chunks(npbert_eval(*flags, "--out", out), out / evaluate.PARTIAL, 3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert (out / evaluate.LOCK).exists() and json.loads((out / evaluate.LOCK).read_text())["pid"] == proc.pid
    r = subprocess.run(npbert_eval(*flags, "--out", out, "--resume"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock of pid {proc.pid}" in r.stderr
    assert strip_timing(read_outputs(out)) == strip_timing(reference)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux) for a real ENOSPC")
def test_a_full_disk_names_the_file_and_leaves_no_tmp_then_resume_finishes(tmp_path, cli):
    """predictions.json.tmp is a link to /dev/full, whose writes fail with ENOSPC (a full disk, for real):
    one line naming predictions.json, no .tmp left, the answered questions kept for --resume."""
    flags, reference = cli
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json.tmp").symlink_to("/dev/full")
    r = subprocess.run(npbert_eval(*flags, "--out", out), capture_output=True, text=True, timeout=900)
    assert (r.returncode, r.stderr) == (
        2,
        f"npbert eval: error: [Errno 28] cannot write {out / 'predictions.json'}: No space left on device\n",
    )
    assert [p.name for p in out.iterdir()] == [evaluate.PARTIAL]  # the lock is released too
    r = subprocess.run(npbert_eval(*flags, "--out", out, "--resume"), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert strip_timing(read_outputs(out)) == strip_timing(reference)


def test_a_header_whose_seal_key_was_changed_is_damaged(tmp_path):
    """The draw a clone found (offset 356, xor 1): "sha256" -> "rha256" left a header with no seal, which was
    read as an older, unsealed format's and resumed from."""
    path = tmp_path / "predictions.partial.jsonl"
    path.write_bytes(evaluate._sealed_line({"format": evaluate.FORMAT, "job": {}}).replace(b'"sha256"', b'"rha256"'))
    with pytest.raises(evaluate.JobError, match=r":1: not an npbert eval partial file, or its header is damaged"):
        evaluate.read_partial(path, {}, [], 4)
