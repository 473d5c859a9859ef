"""Inputs that used to split wrongly or eat memory (issue 28): JSON Lines cut at "\\n" only, a Parquet file
with a repeated column, ids that differ only by Unicode normalisation or surrounding spaces, and a huge
context refused before it is tokenized into windows, with the worker's peak RSS bounded (measured on the
child process through os.wait4's rusage). No cluster: batch.read_inputs and batch.answer_partition (what a
worker runs) are called directly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import unicodedata

import pytest

import npbert
from npbert import batch
from npbert.pipeline import MAX_CHARS_PER_TOKEN
from npbert.tokenizer import TooManyWindows

SEPARATORS = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e\r"  # str.splitlines cuts at every one of them


def test_json_lines_split_at_newlines_only(tmp_path):
    rows = [
        {"id": f"r{i}", "question": f"Where{SEPARATORS[i]}?", "context": f"In Paris{SEPARATORS[i:]}, {i}."}
        for i in range(len(SEPARATORS))
    ]
    data = tmp_path / "seps.jsonl"
    # raw separators inside the strings (valid JSON), and a CRLF line ending on the last line
    data.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:-1])
        + json.dumps(rows[-1], ensure_ascii=False)
        + "\r\n\n",
        encoding="utf-8",
    )
    inputs = batch.read_inputs(data)
    assert (inputs.count, inputs.errors) == (len(rows), [])
    assert inputs.rows == [(i, r["id"], r["question"], r["context"]) for i, r in enumerate(rows)]


def test_parquet_with_a_repeated_column_is_one_line(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "dup.parquet"
    pq.write_table(
        pa.Table.from_arrays(
            [pa.array(["a"]), pa.array(["b"]), pa.array(["q"]), pa.array(["c"])],
            names=["id", "question", "id", "context"],
        ),
        path,
    )
    with pytest.raises(batch.BatchError) as e:
        batch.read_inputs(path)
    assert str(e.value) == f"{path}: 2 columns are named 'id'; keep one"
    # a repeated column the batch does not read is never read
    pq.write_table(
        pa.Table.from_arrays(
            [pa.array(["a"]), pa.array(["q"]), pa.array(["c"]), pa.array([1]), pa.array([2])],
            names=["id", "question", "context", "x", "x"],
        ),
        path,
    )
    assert batch.read_inputs(path).rows == [(0, "a", "q", "c")]
    path.write_bytes(b"not parquet")
    with pytest.raises(batch.BatchError, match=r"^[^\n]*: unreadable Parquet file \([^\n]*\)$"):
        batch.read_inputs(path)


def test_ids_equal_once_normalised_and_stripped_are_duplicates(tmp_path):
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    assert nfc != nfd and unicodedata.normalize("NFC", nfd) == nfc
    ids = [nfc, nfd, "q1", " q1", "q1\t", "Q1", "q2 "]
    data = tmp_path / "ids.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "question": "Who?", "context": "Ann."}) + "\n" for i in ids), encoding="utf-8"
    )
    inputs = batch.read_inputs(data)
    # kept as written: "Q1" (case differs) and "q2 " (no twin) are answered under their own ids
    assert [r[1] for r in inputs.rows] == [nfc, "q1", "Q1", "q2 "]
    assert [(e["index"], e["id"]) for e in inputs.errors] == [(1, nfd), (3, " q1"), (4, "q1\t")]
    assert inputs.errors[0]["reason"] == (
        f"duplicate id {nfd!r}: the same as {nfc!r} (first at {data}:1) once "
        "Unicode-normalised (NFC) and stripped of surrounding spaces"
    )
    assert inputs.errors[1]["reason"].startswith(f"duplicate id ' q1': the same as 'q1' (first at {data}:3)")


# --- a context too long for the window limit ------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=tiny_checkpoint, max_windows=4)


@pytest.mark.parametrize("max_seq_len,doc_stride", [(32, 8), (48, 16), (64, 0), (40, 25)])
def test_the_window_count_is_known_before_the_windows_are_made(limited, max_seq_len, doc_stride, monkeypatch):
    """The count from the untruncated encoding equals the windows the tokenizers library makes (the
    reference), and a pair over the limit is refused without making any."""
    tok = limited.tokenizer
    made = []
    real = type(tok)._window
    monkeypatch.setattr(type(tok), "_window", lambda self, enc: made.append(1) or real(self, enc))
    for words in (1, 5, 20, 37, 60, 100):
        context = " ".join(f"word{i} is here." for i in range(words))
        (windows,) = tok.encode_pairs(["Where is it?"], [context], max_seq_len, doc_stride)
        counted = tok._check_room([("Where is it?", context)], max_seq_len, doc_stride)
        assert counted == [len(windows)]
        made.clear()
        if len(windows) > 4:
            with pytest.raises(TooManyWindows) as e:
                tok.encode_pairs(
                    ["Where?", "Where is it?"], ["Short.", context], max_seq_len, doc_stride, max_windows=4
                )
            assert (e.value.index, e.value.windows, e.value.limit, made) == (1, len(windows), 4, [])
            with pytest.raises(
                ValueError,
                match=rf"^the context makes {len(windows)} windows of max_seq_len "
                rf"{max_seq_len} with doc_stride {doc_stride}, over this "
                "pipeline's limit of 4",
            ):
                limited(question="Where is it?", context=context, max_seq_len=max_seq_len, doc_stride=doc_stride)
            assert made == []


def test_a_context_too_long_in_characters_is_refused_untokenized(limited, monkeypatch):
    most = 4 * 48 * MAX_CHARS_PER_TOKEN
    monkeypatch.setattr(type(limited.tokenizer), "encode_pairs", lambda *a, **k: pytest.fail("tokenized"))
    with pytest.raises(ValueError) as e:
        limited(question=["Who?", "Who?"], context=["Ann.", "a " * (most // 2) + "b"], max_seq_len=48)
    assert str(e.value) == (
        f"context 1 is {most + 1} characters long, over the {most} that this pipeline's limit "
        f"of 4 windows of max_seq_len 48 can hold at most (32 characters a token): use a shorter "
        "context"
    )
    with pytest.raises(ValueError, match=rf"^the question is {48 * 32 + 1} characters long, over the {48 * 32} "):
        limited(question="w" * (48 * 32 + 1), context="Ann.", max_seq_len=48)


WORKER = textwrap.dedent("""
    import json, sys
    from npbert import batch
    load = batch.load_settings(sys.argv[1], None, False, "float32", None, batch.DEFAULT_MAX_WINDOWS)
    size = int(sys.argv[2])
    context = ("The quick brown fox jumps over the lazy dog near Paris. " * (size // 56 + 1))[:size]
    rows = [(0, "big", "Where is the dog?", context), (1, "ok", "Where is the dog?", "Near Paris.")]
    task = {"partition": 0, "rows": rows, "load": load, "params": {}, "call_size": 32, "blas_threads": 1}
    result = batch.answer_partition(task)
    print(json.dumps({"errors": [(e["id"], e["reason"]) for e in result["errors"]],
                      "answered": [p["id"] for p in result["predictions"]]}))
""")


def peak_rss_mib(tiny_checkpoint, chars: int) -> tuple[dict, float]:
    """What a worker process running WORKER printed, and its peak RSS in MiB (its rusage from os.wait4)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tiny_checkpoint), str(chars)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, stderr
    return json.loads(stdout), usage.ru_maxrss / 1024  # KiB on Linux


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB (Linux)")
def test_a_huge_line_is_an_error_row_in_bounded_memory(tiny_checkpoint):
    """A 4 MB context (the issue's was 50 MB) beside a short one: an error row at once, the other row
    answered, and the worker's peak RSS within 64 MiB of a worker answering two short rows. Before the fix
    every window was made first: a peak of 1.34 GiB and 19 s here (10.5 GB at 50 MB)."""
    small, small_peak = peak_rss_mib(tiny_checkpoint, 100)
    big, big_peak = peak_rss_mib(tiny_checkpoint, 4_000_000)
    assert small == {"errors": [], "answered": ["big", "ok"]}
    assert big["answered"] == ["ok"] and [e[0] for e in big["errors"]] == ["big"]
    assert big["errors"][0][1].startswith("the context is 4000000 characters long, over the 786432 that")
    assert big_peak - small_peak < 64, (small_peak, big_peak)
