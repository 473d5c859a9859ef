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
    for args, stdin in (
        (["--context-file", str(f)], None),
        (["--context-file", "-"], CONTEXT),
        (["--context", "-"], CONTEXT),
    ):
        r = run("--model", str(tiny_checkpoint), "-q", QUESTION, *args, "--json", "--top-k", "3", stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == expected[3]


def test_parameters_reach_the_pipeline(tiny_checkpoint):
    qa = npbert.pipeline("question-answering", model=tiny_checkpoint)
    want = qa(
        question=QUESTION,
        context=CONTEXT,
        top_k=4,
        max_answer_len=2,
        max_seq_len=24,
        doc_stride=4,
        handle_impossible_answer=True,
        align_to_words=False,
    )
    r = run(
        "--model",
        str(tiny_checkpoint),
        "-q",
        QUESTION,
        "-c",
        CONTEXT,
        "--json",
        "--top-k",
        "4",
        "--max-answer-len",
        "2",
        "--max-seq-len",
        "24",
        "--doc-stride",
        "4",
        "--handle-impossible-answer",
        "--no-align-to-words",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == want


def test_help_lists_every_flag_with_its_default():
    r = run("--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for flag in (
        "--question",
        "--context",
        "--context-file",
        "--model",
        "--revision",
        "--local-files-only",
        "--top-k",
        "--max-answer-len",
        "--max-seq-len",
        "--doc-stride",
        "--handle-impossible-answer",
        "--no-align-to-words",
        "--json",
    ):
        assert flag in text
    for default in (
        "default: distilbert/distilbert-base-cased-distilled-squad",
        "default: 1)",
        "default: 15)",
        "default: min(model_max_length, 384)",
        "default: min(max_seq_len // 2, 128)",
        "default: main",
    ):
        assert default in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["-q", "", "-c", CONTEXT], "--question is empty"),
        (["-q", QUESTION, "-c", ""], "the context is empty"),
        (["-q", "  \t ", "-c", CONTEXT], "--question is empty or blank"),  # as the server's 422
        (["-q", QUESTION, "-c", "\n  "], "the context is empty or blank"),
        (["-q", QUESTION, "-c", CONTEXT, "--top-k", "0"], r"top_k parameter should be >= 1 \(got 0\)"),
        (["-q", QUESTION, "-c", CONTEXT, "--doc-stride", "300", "--max-seq-len", "100"], r"`doc_stride` \(300\)"),
        (["-q", QUESTION, "--context-file", "/no/such/file.txt"], "No such file or directory"),
        (["-q", QUESTION, "-c", CONTEXT, "--revision", "v2"], "applies only to hub repositories"),
    ],
)
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


def run_bytes(*args, stdin=b"", cwd=None, env=None):
    """The command with raw bytes on the command line and stdin (no text decoding on our side)."""
    cmd = [sys.executable, "-m", "npbert", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("command", ["ask", "trace"])
def test_non_utf8_input_is_one_line(tiny_checkpoint, tmp_path, command):
    out = ["--out", str(tmp_path / "t.safetensors")] if command == "trace" else []
    model = ["--model", str(tiny_checkpoint)]
    for args, stdin, where in (
        ([b"-q", b"Who\xff?", b"-c", b"a b"], b"", "--question"),
        ([b"-q", b"Who?", b"-c", b"a \xe9 b"], b"", "--context"),
        ([b"-q", b"Who?", b"-c", b"-"], b"a \xff b", "stdin"),
        ([b"-q", b"Who?", b"--context-file", b"-"], b"\xc3(", "stdin"),
    ):
        r = run_bytes(command, *model, *args, *out, stdin=stdin)
        err = r.stderr.decode()
        assert r.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"npbert {command}: error: {where}: not UTF-8 text (byte "), err


def test_top_k_as_large_as_the_window_answers(tiny_checkpoint):
    """top_k whose candidates are all of the window's S * S spans (transformers' argpartition raises there):
    with the real vocabulary `-q Who -c "a b"` is 6 tokens, 36 = 13 * 2 + 10 candidates, the issue's case."""
    qa = npbert.pipeline("question-answering", model=tiny_checkpoint)
    S = len(qa.tokenizer.encode_pair("Who", "a b")[0])
    cases = [["--top-k", str(S * S), "--no-align-to-words"]]
    if S % 2 == 0:
        cases.append(["--top-k", str((S * S - 10) // 2)])  # aligned to words: 2 * top_k + 10 candidates
    for flags in cases:
        r = run("--model", str(tiny_checkpoint), "-q", "Who", "-c", "a b", *flags, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == qa(
            question="Who", context="a b", top_k=int(flags[1]), align_to_words=len(flags) == 2
        )


def test_mistyped_flags_and_commands_get_did_you_mean(tiny_checkpoint):
    r = run("--model", str(tiny_checkpoint), "-q", "Who", "-c", "a b", "--top-kk", "3")
    assert r.returncode == 2 and "unrecognized arguments: --top-kk 3 (--top-kk: did you mean --top-k?)" in r.stderr
    r = run("-q", "Who", "-c", "a b", "--max-seq-length=64")
    assert r.returncode == 2 and "did you mean --max-seq-len?" in r.stderr
    r = subprocess.run([sys.executable, "-m", "npbert", "evall"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "invalid choice: 'evall'" in r.stderr and "(did you mean 'eval'?)" in r.stderr


def test_a_context_making_too_many_windows_is_one_line_and_the_bound_can_be_raised(tiny_checkpoint):
    """ask is bounded as batch and serve are (npbert.limits.DEFAULT_MAX_WINDOWS): a 200 KB context used to
    run for minutes. Past the bound: one line naming the count and the flag, before any window is answered."""
    from npbert.limits import DEFAULT_MAX_WINDOWS

    # 4 windows with the real vocabulary, 40 with the generated one (no ../shared): both under the default
    long = " ".join(f"In {1900 + i} the river {i} was renamed." for i in range(8))
    flags = [
        "--model",
        str(tiny_checkpoint),
        "-q",
        "Which river was renamed in 1903?",
        "-c",
        long,
        "--max-seq-len",
        "32",
        "--doc-stride",
        "8",
    ]
    windows = len(
        npbert.pipeline("question-answering", model=tiny_checkpoint).tokenizer.encode_pairs(
            ["Which river was renamed in 1903?"], [long], 32, 8
        )[0]
    )
    assert 2 < windows < DEFAULT_MAX_WINDOWS
    r = run(*flags, "--max-windows", "2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert (
        r.stderr.startswith(
            f"npbert ask: error: the context makes {windows} windows of max_seq_len 32 with "
            "doc_stride 8, over this pipeline's limit of 2"
        )
        and "--max-windows" in r.stderr
    )
    r = run(*flags, "--max-windows", str(windows), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == npbert.pipeline("question-answering", model=tiny_checkpoint)(
        question="Which river was renamed in 1903?", context=long, max_seq_len=32, doc_stride=8
    )
    assert (
        run(*flags, "--max-windows", "0").stderr
        == "npbert ask: error: --max-windows must be a positive integer, found 0\n"
    )
    assert f"(default: {DEFAULT_MAX_WINDOWS})" in " ".join(run("--help").stdout.split())


def _commands() -> list[str]:
    import argparse

    from npbert.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(action.choices)


@pytest.mark.parametrize("command", _commands())
def test_a_mistyped_flag_gets_the_sub_commands_usage_and_is_named(command, capsys):
    """Every sub-command, with and without its required flags given: the usage printed is the sub-command's
    (it used to be the top-level `usage: npbert [-h] [--version] COMMAND ...`) and the error names the flag."""
    from npbert.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--bogus-flag", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"usage: npbert {command} "), err
    assert err.splitlines()[-1].startswith(f"npbert {command}: error: ") and "--bogus-flag" in err.splitlines()[-1], err


def test_a_mistyped_ask_flag_names_it_and_the_flag_meant(capsys):
    from npbert.cli import main

    with pytest.raises(SystemExit):
        main(["ask", "-q", "Who?", "-c", "a b", "--top_k", "3"])
    err = capsys.readouterr().err
    assert err.startswith("usage: npbert ask ")
    assert (
        err.splitlines()[-1] == "npbert ask: error: unrecognized arguments: --top_k 3 (--top_k: did you mean --top-k?)"
    )
    with pytest.raises(SystemExit):
        main(["ask", "-q", "Who?", "--contxt", "a b"])  # the required context seems missing: say why
    assert capsys.readouterr().err.splitlines()[-1] == (
        "npbert ask: error: one of the arguments --context/-c --context-file is required; unrecognized arguments: "
        "--contxt (--contxt: did you mean --context?)"
    )


def test_trace_and_attention_take_the_same_inputs_as_ask(tiny_checkpoint, tmp_path):
    context = tmp_path / "context.txt"
    context.write_text(CONTEXT, encoding="utf-8")
    from safetensors import safe_open

    outs = []
    for i, args in enumerate(
        (
            ["--question", QUESTION, "--context", CONTEXT],
            ["-q", QUESTION, "-c", CONTEXT],
            ["-q", QUESTION, "--context-file", str(context)],
        )
    ):
        out = tmp_path / f"t{i}.safetensors"
        r = subprocess.run(
            [sys.executable, "-m", "npbert", "trace", "--model", str(tiny_checkpoint), *args, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        with safe_open(str(out), "np") as f:
            meta = {k: json.loads(v) for k, v in f.metadata().items() if k != "format"}
            outs.append((meta["question"], meta["context"], f.get_tensor("start_logits").tolist()))
    assert outs[0] == outs[1] == outs[2] and outs[0][:2] == (QUESTION, CONTEXT)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "npbert",
            "trace",
            "--model",
            str(tiny_checkpoint),
            "-q",
            " ",
            "-c",
            CONTEXT,
            "--out",
            str(tmp_path / "x.safetensors"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "--question is empty or blank" in r.stderr


def test_attention_without_matplotlib_says_so_before_loading_the_model(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None; from npbert.cli import main; "
        "raise SystemExit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "attention",
            "--model",
            str(tmp_path / "no-model"),
            "-q",
            "Who?",
            "-c",
            "a b",
            "--out",
            str(tmp_path / "a.png"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "attention pictures need matplotlib (the viz extra): pip install -e '.[viz]'" in r.stderr  # not "no-model"


def test_python_m_npbert_from_the_folder_holding_the_clone(tmp_path):
    """`python -m npbert` where ./npbert is the clone (no __init__.py: a namespace package that shadowed the
    installed one). The installed package must be this tree (CI's `pip install -e .`)."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [sys.executable, "-c", "import npbert; print(npbert.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    ).stdout.strip()
    if Path(where).resolve().parent != Path(npbert.__file__).resolve().parent:
        pytest.skip(f"the installed npbert is another tree's ({where or 'none'}), not this one")
    (tmp_path / "npbert").mkdir()
    (tmp_path / "npbert" / "README.md").write_text("a clone's root")
    r = run_bytes("--version", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.decode().strip() == f"npbert {npbert.__version__}", r.stderr.decode()
