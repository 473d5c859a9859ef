"""`npbert ask`, run as the real command in a subprocess (the installed `npbert` script and
`python -m npbert`), against the pipeline called in-process on the same checkpoint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import npbert

QUESTION = "Where do I live?"
CONTEXT = "My name is John and I live in Seattle. I work in Paris."
NPBERT = Path(sys.executable).parent / "npbert"  # the console script installed beside this interpreter


def run(*args, stdin=None, module=True):
    cmd = [sys.executable, "-m", "npbert"] if module else [str(NPBERT)]
    return subprocess.run(cmd + ["ask", *args], input=stdin, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def expected(tiny_checkpoint):
    qa = npbert.pipeline("question-answering", model=tiny_checkpoint)
    return {k: qa(question=QUESTION, context=CONTEXT, top_k=k) for k in (1, 3)}


@pytest.mark.parametrize("module", [True, False], ids=["python -m npbert", "npbert script"])
def test_json_equals_the_pipeline(tiny_checkpoint, expected, module):
    if not module and not NPBERT.exists():
        pytest.skip(f"no npbert console script beside {sys.executable} (package not installed)")
    r = run("--model", str(tiny_checkpoint), "--question", QUESTION, "--context", CONTEXT, "--json", module=module)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == expected[1]


def test_human_output(tiny_checkpoint, expected):
    r = run("--model", str(tiny_checkpoint), "-q", QUESTION, "-c", CONTEXT)
    assert r.returncode == 0, r.stderr
    best = expected[1]
    span = f"score {best['score']:.4f}  characters {best['start']}-{best['end']}"
    assert r.stdout.splitlines() == [best["answer"], span]
    r = run("--model", str(tiny_checkpoint), "-q", QUESTION, "-c", CONTEXT, "--top-k", "3")
    lines = r.stdout.splitlines()
    assert [lines[0], lines[2], lines[4]] == [f"{i}. {a['answer']}" for i, a in enumerate(expected[3], 1)]


def test_context_from_file_and_stdin(tiny_checkpoint, expected, tmp_path):
    f = tmp_path / "context.txt"
    f.write_text(CONTEXT, encoding="utf-8")
    for args, stdin in ((["--context-file", str(f)], None), (["--context-file", "-"], CONTEXT),
                        (["--context", "-"], CONTEXT)):
        r = run("--model", str(tiny_checkpoint), "-q", QUESTION, *args, "--json", "--top-k", "3", stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == expected[3]


def test_parameters_reach_the_pipeline(tiny_checkpoint):
    qa = npbert.pipeline("question-answering", model=tiny_checkpoint)
    want = qa(question=QUESTION, context=CONTEXT, top_k=4, max_answer_len=2, max_seq_len=24, doc_stride=4,
              handle_impossible_answer=True, align_to_words=False)
    r = run("--model", str(tiny_checkpoint), "-q", QUESTION, "-c", CONTEXT, "--json", "--top-k", "4",
            "--max-answer-len", "2", "--max-seq-len", "24", "--doc-stride", "4", "--handle-impossible-answer",
            "--no-align-to-words")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == want


def test_help_lists_every_flag_with_its_default():
    r = run("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag in ("--question", "--context", "--context-file", "--model", "--revision", "--local-files-only",
                 "--top-k", "--max-answer-len", "--max-seq-len", "--doc-stride", "--handle-impossible-answer",
                 "--no-align-to-words", "--json"):
        assert flag in text
    for default in ("default: distilbert/distilbert-base-cased-distilled-squad", "default: 1)", "default: 15)",
                    "default: min(model_max_length, 384)", "default: min(max_seq_len // 2, 128)", "default: main"):
        assert default in text


@pytest.mark.parametrize("args, message", [
    (["-q", "", "-c", CONTEXT], "--question is empty"),
    (["-q", QUESTION, "-c", ""], "the context is empty"),
    (["-q", QUESTION, "-c", CONTEXT, "--top-k", "0"], r"top_k parameter should be >= 1 \(got 0\)"),
    (["-q", QUESTION, "-c", CONTEXT, "--doc-stride", "300", "--max-seq-len", "100"], r"`doc_stride` \(300\)"),
    (["-q", QUESTION, "--context-file", "/no/such/file.txt"], "No such file or directory"),
    (["-q", QUESTION, "-c", CONTEXT, "--revision", "v2"], "applies only to hub repositories"),
])
def test_bad_input_is_one_line_and_non_zero(tiny_checkpoint, args, message):
    r = run("--model", str(tiny_checkpoint), *args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("npbert ask: error: ") and re.search(message, r.stderr), r.stderr


def test_unloadable_model_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for model in (str(tmp_path), str(tmp_path / "missing")):
        r = run("--model", model, "-q", QUESTION, "-c", CONTEXT)
        assert r.returncode != 0 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("café".encode("latin-1"))
    r = run("--model", str(tmp_path), "-q", QUESTION, "--context-file", str(bad_utf8))
    assert r.returncode == 2 and "not UTF-8" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_missing_required_flags_is_a_usage_error():
    r = run("--context", CONTEXT)
    assert r.returncode == 2 and "--question" in r.stderr
