"""Machine-readable output stays clean (issue 28): the tokenizers library prints its warning about a
vocabulary with holes ("The OrderedVocab you are attempting to save contains holes for indices [...]")
from Rust straight onto stdout, megabytes of it on some checkpoints; npbert sends it to stderr, once per
process, cut to one line. Checked on `npbert ask --json` in a subprocess (its stdout must be the JSON
alone) and in-process with capfd (file-descriptor level, where Rust writes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import npbert

QUESTION, CONTEXT = "Where does John live?", "My name is John and I live in Seattle."
HOLES = range(200, 700)  # ids left without a token: none special (below 105), in the real and the generated vocabulary


def with_holes(tiny_checkpoint, folder, holes: range):
    """The tiny checkpoint with the ids `holes` of its tokenizer.json vocabulary left without a token."""
    shutil.copytree(tiny_checkpoint, folder)
    path = folder / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    data["model"]["vocab"] = {token: i for token, i in vocab.items() if i not in holes}
    assert len(data["model"]["vocab"]) == len(vocab) - len(holes)
    path.write_text(json.dumps(data), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def holes_checkpoint(tiny_checkpoint, tmp_path_factory):
    return with_holes(tiny_checkpoint, tmp_path_factory.mktemp("holes") / "model", HOLES)


def test_ask_json_prints_only_json_and_the_warning_once_on_stderr(holes_checkpoint, capfd):
    qa = npbert.pipeline("question-answering", model=holes_checkpoint)
    expected = qa(question=QUESTION, context=CONTEXT)
    capfd.readouterr()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "npbert",
            "ask",
            "--model",
            str(holes_checkpoint),
            "--question",
            QUESTION,
            "--context",
            CONTEXT,
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == pytest.approx({k: expected[k] for k in ("score", "start", "end", "answer")})
    assert r.stdout.count("\n") == 1 and "OrderedVocab" not in r.stdout
    warnings = [line for line in r.stderr.splitlines() if "OrderedVocab" in line]
    assert warnings == [
        f"warning from the tokenizers library ({holes_checkpoint}): The OrderedVocab you are "
        "attempting to save contains holes for indices [200, 201, 202, ... 698, 699: 500 in all], "
        "your vocabulary could be corrupted!"
    ]


def test_in_process_the_warning_goes_to_stderr_once(tiny_checkpoint, tmp_path, capfd):
    folder = with_holes(tiny_checkpoint, tmp_path / "model", range(300, 305))  # a warning no test showed yet
    qa = npbert.pipeline("question-answering", model=folder)
    for max_seq_len in (64, 48, 64):  # two configured copies of the backend, then a cached one
        print(json.dumps(qa(question=QUESTION, context=CONTEXT, max_seq_len=max_seq_len)["answer"]))
    qa2 = npbert.pipeline("question-answering", model=folder)  # another Tokenizer, the same warning
    print(json.dumps(qa2(question=QUESTION, context=CONTEXT)["answer"]))
    out, err = capfd.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == [qa(question=QUESTION, context=CONTEXT)["answer"]] * 4
    assert err.count("OrderedVocab") == 1
    assert (
        f"warning from the tokenizers library ({folder}): The OrderedVocab you are attempting to save contains "
        "holes for indices [300, 301, 302, 303, 304], your vocabulary could be "
        "corrupted!\n"
    ) in err
