"""A corpus of broken checkpoint folders, made here, kept as permanent cases: loading each (the pipeline, as
`npbert ask` does) must fail with one clear error naming the file and the problem, never a traceback, a
hang or a silently wrong answer; `npbert audit` must fail it too (a failed check or the same clear error),
never report "all checks passed"; a sample goes through the real CLI for the one line and exit status 2."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import checkpoints
import npbert
import npbert.audit

SMALL = dict(dim=16, n_layers=1, n_heads=2, hidden_dim=24, max_position_embeddings=64)


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _raw_file(folder, header_text: bytes, data: bytes = b""):
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header_text)) + header_text + data)


def _edit_tensor(name, value):
    def edit(folder):
        t = _weights(folder)
        t[name].flat[3] = value
        save_file(t, str(folder / "model.safetensors"))

    return edit


def _edit_json(file, **changes):
    def edit(folder):
        d = json.loads((folder / file).read_text())
        d.update(changes)
        (folder / file).write_text(json.dumps(d))

    return edit


def _replace_weights(make):
    def edit(folder):
        (folder / "model.safetensors").unlink()
        make(folder / "model.safetensors")

    return edit


def _append(data: bytes = b"", sparse_to: int | None = None):
    def edit(folder):
        path = folder / "model.safetensors"
        with open(path, "ab") as f:
            f.write(data)
        if sparse_to:
            os.truncate(path, sparse_to)  # a hole: no disk used

    return edit


def _many_tensors(n, name_len):
    def edit(folder):
        header = {f"t{i:0{name_len}d}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
        _raw_file(folder, json.dumps(header).encode())

    return edit


def _deep(n):
    return ("[" * n + "]" * n).encode()


def _drop_head(folder):
    t = _weights(folder)
    del t["qa_outputs.weight"], t["qa_outputs.bias"]
    save_file(t, str(folder / "model.safetensors"))


def _shrink_vocab(folder):  # config and weights agree with each other, not with the tokenizer
    config = json.loads((folder / "config.json").read_text())
    t = _weights(folder)
    rows = config["vocab_size"] - 10
    t["distilbert.embeddings.word_embeddings.weight"] = t["distilbert.embeddings.word_embeddings.weight"][:rows].copy()
    save_file(t, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": rows}))


CASES = {  # name: (how to break a good folder, what the error must say)
    "header nested 200,000 levels": (lambda f: _raw_file(f, b'{"a": ' + _deep(200_000) + b"}"), "nested too deeply"),
    "config nested 200,000 levels": (
        lambda f: (f / "config.json").write_bytes(_deep(200_000)),
        "config.json: not valid JSON (nested too deeply",
    ),
    "shape [2**64]": (
        lambda f: _raw_file(
            f, json.dumps({"x": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}}).encode(), b"\0" * 4
        ),
        "needs 73786976294838206464 bytes",
    ),
    "shape overflowing when multiplied": (
        lambda f: _raw_file(
            f, json.dumps({"x": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}).encode(), b"\0" * 4
        ),
        "its offsets span 4",
    ),
    "5000-digit integer in the header": (
        lambda f: _raw_file(
            f, b'{"x": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}', b"\0" * 4
        ),
        "not valid JSON",
    ),
    "5000-digit integer in config.json": (
        lambda f: (f / "config.json").write_text('{"dim": ' + "7" * 5000 + "}"),
        "config.json: dim is an integer of 5000 digits, too large for any setting",
    ),
    "symlink loop as weights": (
        _replace_weights(lambda p: (os.symlink(p.name + ".b", p), os.symlink(p.name, str(p) + ".b"))),
        "weights file cannot be read",
    ),
    "dangling symlink as weights": (
        _replace_weights(lambda p: os.symlink("/nonexistent/model", p)),
        "a symbolic link to a missing file",
    ),
    "directory as weights": (_replace_weights(lambda p: p.mkdir()), "weights file is a directory"),
    "FIFO as weights": (_replace_weights(lambda p: os.mkfifo(p)), "not a regular file"),
    "/dev/zero as weights": (_replace_weights(lambda p: os.symlink("/dev/zero", p)), "not a regular file"),
    "directory as config.json": (
        lambda f: ((f / "config.json").unlink(), (f / "config.json").mkdir()),
        "config.json is a directory",
    ),
    "NaN in the QA head": (_edit_tensor("qa_outputs.weight", np.nan), "tensor qa_outputs.weight holds 1 NaN"),
    "Inf in the word embeddings": (
        _edit_tensor("distilbert.embeddings.word_embeddings.weight", np.inf),
        "word_embeddings.weight holds 1 NaN or infinite",
    ),
    "4 KB of trailing garbage": (_append(os.urandom(4096)), "4096 bytes after the last tensor"),
    "sparse 16 GB tail": (_append(sparse_to=16 * 2**30), "bytes after the last tensor"),
    "1M empty tensors (55 MB header)": (_many_tensors(1_000_000, 7), "over npbert's limit of 16777216"),
    "60,000 empty tensors": (_many_tensors(60_000, 5), "over npbert's limit of 50000 tensors"),
    "vocabulary larger than the embedding table": (_shrink_vocab, "the tokenizer and the config do not belong"),
    "question-answering folder without its head": (_drop_head, "no question-answering head (qa_outputs.weight"),
    "model_type unknown": (_edit_json("config.json", model_type="xlnet"), "model_type 'xlnet' is not supported"),
    "garbage tokenizer.json": (lambda f: (f / "tokenizer.json").write_bytes(os.urandom(300)), "tokenizer.json"),
    # special_tokens_map.json wins over tokenizer_config.json (as in transformers): break the one that counts
    "cls_token {}": (_edit_json("special_tokens_map.json", cls_token={}), "cls_token must be a token string"),
    "model_max_length 'abc'": (_edit_json("tokenizer_config.json", model_max_length="abc"), "model_max_length"),
}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return checkpoints.write_checkpoint(
        tmp_path_factory.mktemp("good"), seed=5, vocab=checkpoints.generated_vocab(), **SMALL
    )


@pytest.fixture(params=list(CASES))
def broken(request, good, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in good.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    breaking, message = CASES[request.param]
    breaking(folder)
    return request.param, folder, message


def test_the_good_folder_loads_and_audits(good):
    assert npbert.pipeline("question-answering", model=good)(question="Who?", context="John lives here.")
    assert npbert.audit.audit(good)["ok"]


def test_loading_fails_with_one_clear_error(broken):
    name, folder, message = broken
    with pytest.raises((ValueError, OSError, ImportError)) as e:
        npbert.pipeline("question-answering", model=folder)
    text = str(e.value)
    assert message in text and "\n" not in text and len(text) < 600, f"{name}: {text[:300]}"


def test_audit_never_passes_a_broken_folder(broken):
    name, folder, _ = broken
    try:
        report = npbert.audit.audit(folder)
    except (ValueError, OSError) as e:  # a folder audit cannot even read: the same one-line error
        assert "\n" not in str(e), name
        return
    assert not report["ok"], f"{name}: audit passed {[(c['name'], c['status']) for c in report['checks']]}"


@pytest.mark.parametrize(
    "case",
    [
        "header nested 200,000 levels",
        "shape [2**64]",
        "FIFO as weights",
        "NaN in the QA head",
        "sparse 16 GB tail",
        "question-answering folder without its head",
    ],
)
def test_cli_ask_and_audit_say_it_in_one_line(good, tmp_path, case):
    folder = tmp_path / "broken"
    folder.mkdir()
    for f in good.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    CASES[case][0](folder)
    for command in (
        ["ask", "--model", str(folder), "-q", "Who?", "-c", "John lives here."],
        ["audit", "--model", str(folder)],
    ):
        proc = subprocess.run([sys.executable, "-m", "npbert", *command], capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        if command[0] == "ask" or proc.stdout == "":
            assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (command, proc.stderr)
        else:  # audit printed its report, with the failed check
            assert proc.returncode == 1 and "FAILED" in proc.stdout, proc.stdout[-500:]
