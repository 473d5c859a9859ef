"""`npbert explain`, run in-process through npbert.cli.main: its JSON is the library's `attributions.explain`
for the same checkpoint and flags, its table shows every word (or token) with the targets marked, bad input
is one line and exit status 2, and --out draws a PNG."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

import npbert
from checkpoints import LONG_CONTEXT
from npbert.attributions import explain
from npbert.cli import main

QUESTION = "Where do I live?"
CONTEXT = "My name is John and I live in Seattle. I work in Paris."


@pytest.fixture(scope="module")
def qa(tiny_checkpoint):
    return npbert.pipeline("question-answering", model=str(tiny_checkpoint))


def run(capsys, *args):
    status = main(["explain", *args])
    out, err = capsys.readouterr()
    return status, out, err


def ask(capsys, checkpoint, *flags):
    """`npbert explain` on the sample question and context, with `flags`."""
    return run(capsys, "--model", str(checkpoint), "-q", QUESTION, "-c", CONTEXT, *flags)


@pytest.mark.parametrize(
    "flags, kwargs",
    [
        ([], {}),
        (["--method", "grad-x-input"], {"method": "grad-x-input"}),
        (
            ["--method", "smoothgrad", "--samples", "3", "--seed", "2"],
            {"method": "smoothgrad", "samples": 3, "seed": 2},
        ),
        (["--method", "rollout"], {"method": "rollout"}),
        (
            ["--n-steps", "7", "--approximation", "riemann_middle"],
            {"n_steps": 7, "approximation_method": "riemann_middle"},
        ),
    ],
    ids=["ig", "grad-x-input", "smoothgrad", "rollout", "riemann"],
)
def test_json_is_the_librarys(capsys, tiny_checkpoint, qa, flags, kwargs):
    status, out, err = ask(capsys, tiny_checkpoint, "--json", *flags)
    assert status == 0, err
    got = json.loads(out)
    assert got == json.loads(json.dumps(explain(qa, QUESTION, CONTEXT, **kwargs)))
    assert {"answer", "tokens", "start", "end"} <= set(got)
    assert ("delta_start" in got) == (kwargs.get("method", "ig") == "ig")


def test_several_windows_are_a_list(capsys, tiny_checkpoint):
    flags = ["--method", "rollout", "--max-seq-len", "48", "--doc-stride", "16", "--max-windows", "30"]
    status, out, err = run(capsys, "--model", str(tiny_checkpoint), "-q", "Who?", "-c", LONG_CONTEXT, "--json", *flags)
    assert status == 0, err
    got = json.loads(out)
    assert len(got["windows"]) > 1 and "tokens" not in got
    assert all(len(w["start"]) == len(w["tokens"]) for w in got["windows"])


def test_table(capsys, tiny_checkpoint, qa):
    expected = explain(qa, QUESTION, CONTEXT, "grad-x-input")
    status, out, _ = ask(capsys, tiny_checkpoint, "--method", "grad-x-input")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"answer: {expected['answer']!r}")
    rows = [line for line in lines if line[:4].strip().isdigit()]
    assert len(rows) == len(expected["words"])
    t = expected["target"]
    start_word = next(n for n, w in enumerate(expected["words"]) if t["start"] in w["tokens"])
    assert "<- start" in rows[start_word] and f"{expected['words'][start_word]['start']:.4f}" in rows[start_word]
    status, out, _ = ask(capsys, tiny_checkpoint, "--method", "grad-x-input", "--by", "token")
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert [r.split()[1] for r in rows] == expected["tokens"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--method", "lime"], "--method 'lime' is not one of ig, grad-x-input, smoothgrad, rollout"),
        (["--n-steps", "0"], "--n-steps must be >= 1, found 0"),
        (["--approximation", "simpson"], "unknown approximation 'simpson'"),
        (["--span", "5:99"], "the span 5-99 is outside the context's 55 characters"),
        (["--span", "1:5"], "is not on token boundaries"),
        (["--span", "x"], "--span must be START:END"),
        (["-c", LONG_CONTEXT, "--max-seq-len", "48", "--doc-stride", "16"], "over this pipeline's limit of 4"),
        (["--method", "smoothgrad", "--samples", "0"], "samples must be an integer >= 1"),
    ],
    ids=["method", "n-steps", "approximation", "span-outside", "span-boundary", "span-format", "windows", "samples"],
)
def test_bad_input_is_one_line_exit_2(capsys, tiny_checkpoint, flags, message):
    status, out, err = ask(capsys, tiny_checkpoint, *flags)
    assert status == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("npbert explain: error: ") and message in err, err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="--out needs the viz extra (matplotlib)")
def test_out_draws_a_png(capsys, tiny_checkpoint, tmp_path):
    path = tmp_path / "why.png"
    status, out, err = ask(capsys, tiny_checkpoint, "--out", str(path))
    assert status == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.splitlines()[-1] == f"picture -> {path}"


@pytest.mark.parametrize("doc", ["README.md", "docs/attributions.md"])
def test_the_docs_command_lines_run(capsys, tiny_checkpoint, doc):
    text = (Path(__file__).resolve().parents[1] / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    (command,) = [b.replace("\\\n", " ") for b in blocks if b.startswith("npbert explain")]
    args = shlex.split(command)[2:]
    args[args.index("--model") + 1] = str(tiny_checkpoint)
    status, out, err = run(capsys, *args)
    assert status == 0 and out.startswith("answer: "), err
