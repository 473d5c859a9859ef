"""The traced forward (npbert/trace.py), dumps, `npbert trace` and `npbert diff`.

The trace must never drift from the real forward: its hidden states, attentions and logits are checked
against `model(..., output_hidden_states=True, output_attentions=True)`, and its other intermediates
against independent recomputations from the names' documented meaning. With transformers installed, the
dump is compared with tools/export_transformers_activations.py's (forward hooks) through the real CLI.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npbert
from npbert import trace as T

ROOT = Path(__file__).resolve().parents[1]
QUESTION, CONTEXT = "What's my name?", "My name is John and I live in Seattle"


def npbert_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def batch(tiny_checkpoint):
    # Two rows, the second right-padded: masking must show in probs and nowhere else. The ids come from the
    # checkpoint's own tokenizer, so they fit its vocabulary (the real one, or the small generated one).
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    rows = [tok.encode("When is the world?", "The world is Ohio.").ids, tok.encode("When is", "The world is.").ids]
    S = len(rows[0])
    assert len(rows[1]) <= S - 4  # row 1 ends in padding
    ids = np.array([row + [0] * (S - len(row)) for row in rows])
    return ids, (ids != 0).astype(np.int64)


@pytest.mark.parametrize("kernels, rtol", [("numpy", 1e-6), ("numba", 1e-5)])
def test_trace_equals_the_forward(tiny_checkpoint, batch, kernels, rtol):
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint, kernels=kernels)
    ids, mask = batch
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    t = model.trace(ids, mask)
    assert list(t) == T.names(model.config.n_layers)
    atol = 1e-6
    np.testing.assert_allclose(t["embeddings"], out.hidden_states[0], rtol=rtol, atol=atol)
    for i in range(model.config.n_layers):
        np.testing.assert_allclose(t[f"layer.{i}.output_layer_norm"], out.hidden_states[i + 1], rtol=rtol, atol=atol)
        np.testing.assert_allclose(t[f"layer.{i}.attention.probs"], out.attentions[i], rtol=rtol, atol=atol)
    np.testing.assert_allclose(t["start_logits"], out.start_logits, rtol=rtol, atol=10 * atol)
    np.testing.assert_allclose(t["end_logits"], out.end_logits, rtol=rtol, atol=10 * atol)
    assert all(v.dtype == np.float32 for k, v in t.items() if k not in ("input_ids", "attention_mask"))


def test_intermediates_mean_what_their_names_say(tiny_checkpoint, batch):
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint, dtype=np.float64)
    ids, mask = batch
    t = model.trace(ids, mask)
    c = model.config
    B, S = ids.shape
    kept = int(mask[1].sum())
    assert kept <= S - 4 and (mask[1, :kept] == 1).all()
    H, Dh, D, F = c.n_heads, c.head_dim, c.dim, c.hidden_dim
    w = model.weights.encoder
    assert t["embeddings.word"].shape == (B, S, D) and t["embeddings.position"].shape == (1, S, D)
    np.testing.assert_array_equal(t["embeddings.word"][1, 2], w.embeddings.word_embeddings.weight[ids[1, 2]])

    def layer_norm(y, ln):  # written out here, independently of ops/reference.py
        return (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-12) * ln.weight + ln.bias

    x = t["embeddings"]
    np.testing.assert_allclose(x, layer_norm(t["embeddings.word"] + t["embeddings.position"], w.embeddings.LayerNorm))
    for i, layer in enumerate(w.transformer.layer):
        p = f"layer.{i}."
        q, k, v = (t[p + f"attention.{n}"] for n in "qkv")
        np.testing.assert_allclose(q, x @ layer.attention.q_lin.weight.T + layer.attention.q_lin.bias)
        b, h, qi, kj = 1, H - 1, 2, 5  # one head, one query, one key, by hand
        by_hand = q[b, qi, h * Dh : (h + 1) * Dh] @ k[b, kj, h * Dh : (h + 1) * Dh] / math.sqrt(Dh)
        assert t[p + "attention.scores"].shape == (B, H, S, S)
        assert t[p + "attention.scores"][b, h, qi, kj] == pytest.approx(by_hand, rel=1e-12)
        probs = t[p + "attention.probs"]
        e = np.exp(t[p + "attention.scores"][b, h, qi, :kept])  # row 1 keeps its first `kept` keys
        np.testing.assert_allclose(probs[b, h, qi, :kept], e / e.sum(), rtol=1e-12)
        assert (probs[1, :, :, kept:] == 0).all() and probs[0].min() > 0
        context = t[p + "attention.context"]
        np.testing.assert_allclose(
            context[b, qi, h * Dh : (h + 1) * Dh], probs[b, h, qi] @ v[b, :, h * Dh : (h + 1) * Dh]
        )
        np.testing.assert_allclose(
            t[p + "attention.output"], context @ layer.attention.out_lin.weight.T + layer.attention.out_lin.bias
        )
        np.testing.assert_allclose(
            t[p + "sa_layer_norm"], layer_norm(t[p + "attention.output"] + x, layer.sa_layer_norm)
        )
        pre = t[p + "ffn.pre_activation"]
        assert pre.shape == (B, S, F)
        gelu = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2)))
        np.testing.assert_allclose(t[p + "ffn.activation"], gelu, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(t[p + "ffn.output"], gelu @ layer.ffn.lin2.weight.T + layer.ffn.lin2.bias)
        x = t[p + "output_layer_norm"]
        np.testing.assert_allclose(x, layer_norm(t[p + "ffn.output"] + t[p + "sa_layer_norm"], layer.output_layer_norm))
    logits = x @ model.weights.qa_outputs.weight.T + model.weights.qa_outputs.bias
    np.testing.assert_allclose(t["logits"], logits)
    np.testing.assert_array_equal(t["start_logits"], t["logits"][..., 0])
    assert t["attention_mask"].dtype == np.int64 and t["attention_mask"].sum() == mask.sum()


def test_encoder_trace_has_no_logits(tiny_checkpoint, batch):
    encoder = npbert.DistilBertModel.from_pretrained(tiny_checkpoint)
    t = encoder.trace(*batch)
    assert list(t) == T.names(2, with_qa_head=False)
    np.testing.assert_allclose(t["layer.1.output_layer_norm"], encoder(*batch).last_hidden_state, rtol=1e-5, atol=1e-6)


def test_trace_rejects_bad_input(tiny_checkpoint):
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    with pytest.raises(ValueError, match="attention_mask shape"):
        model.trace([[101, 102]], [[1, 1, 1]])


def test_save_load_round_trip_in_forward_order(tiny_checkpoint, batch, tmp_path):
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    t = model.trace(*batch)
    T.save(t, tmp_path / "t.safetensors", {"tokens": [["[CLS]", "x"]], "question": "q"})
    back, meta = T.load(tmp_path / "t.safetensors")
    assert list(back) == list(t)
    assert all(np.array_equal(back[k], t[k]) for k in t)
    assert meta["tokens"] == [["[CLS]", "x"]] and meta["question"] == "q" and meta["format"] == "npbert-trace"
    with pytest.raises(OSError, match="no such file"):
        T.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        T.load(tmp_path / "bad.safetensors")


def test_diff_finds_the_first_divergence():
    rng = np.random.default_rng(0)
    a = {
        "input_ids": np.arange(4),
        "x": rng.standard_normal((3, 4)).astype(np.float32),
        "y": rng.standard_normal(5) * 100,
        "z": np.ones(2),
    }
    assert T.diff(a, dict(a)).first_divergence is None
    b = {**a, "y": a["y"] * (1 + 1e-6)}  # relative error 1e-6: within 1e-4
    r = T.diff(a, b)
    assert r.first_divergence is None and 0 < r.diffs[2].rel <= 1.0000001e-6
    b = {**a, "y": a["y"] + np.array([0, 0, 0.5, 0, 0]), "z": np.ones(2) * 2}
    r = T.diff(a, b, tol=1e-4)
    assert r.first_divergence.name == "y" and r.diffs[2].max_abs == pytest.approx(0.5)
    assert r.diffs[2].rel == pytest.approx(0.5 / np.abs(b["y"]).max())
    assert [d.name for d in r.diffs if d.diverges] == ["y", "z"]
    assert T.diff(a, {**a, "input_ids": np.arange(4) + np.array([0, 0, 0, 1])}).first_divergence.name == "input_ids"
    assert T.diff(a, {**a, "x": a["x"][:2]}).first_divergence.name == "x"  # shapes must match
    nan = a["x"].copy()
    nan[0, 0] = np.nan
    assert T.diff(a, {**a, "x": nan}).first_divergence.name == "x"
    assert T.diff({"x": nan}, {"x": nan.copy()}).first_divergence is None
    r = T.diff({"p": np.ones(1), "x": a["x"]}, {"x": a["x"], "q": np.ones(1)})
    assert r.only_a == ["p"] and r.only_b == ["q"] and [d.name for d in r.diffs] == ["x"]


def test_trace_and_diff_commands(tiny_checkpoint, tmp_path):
    out = tmp_path / "trace.safetensors"
    r = npbert_cli("trace", "--model", tiny_checkpoint, "--question", QUESTION, "--context", CONTEXT, "--out", out)
    assert r.returncode == 0, r.stderr
    t, meta = T.load(out)
    assert list(t) == T.names(2)
    from tokenizers import Tokenizer

    expected = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json")).encode(QUESTION, CONTEXT)
    assert t["input_ids"].tolist() == [expected.ids] and meta["tokens"] == [expected.tokens]
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint, kernels="numpy")
    np.testing.assert_allclose(t["start_logits"], model([expected.ids]).start_logits, rtol=1e-5, atol=1e-5)

    r = npbert_cli("diff", out, out)
    assert r.returncode == 0 and f"all {len(t)} common tensors agree" in r.stdout, r.stdout + r.stderr
    bad = dict(t)
    bad["layer.1.attention.probs"] = t["layer.1.attention.probs"] * np.float32(1.01)
    bad["logits"] = t["logits"] + 1
    T.save(bad, tmp_path / "bad.safetensors")
    r = npbert_cli("diff", out, tmp_path / "bad.safetensors")
    assert r.returncode == 1
    assert "first divergence: layer.1.attention.probs" in r.stdout and "2 of 32 tensors diverge" in r.stdout
    r = npbert_cli("diff", out, tmp_path / "missing.safetensors")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_trace_command_long_context_has_one_row_per_window(tiny_checkpoint, tmp_path):
    context = " ".join(["My name is John and I live in Seattle."] * 12)
    out = tmp_path / "long.safetensors"
    r = npbert_cli(
        "trace",
        "--model",
        tiny_checkpoint,
        "--question",
        QUESTION,
        "--context",
        context,
        "--max-seq-len",
        48,
        "--doc-stride",
        16,
        "--dtype",
        "float64",
        "--out",
        out,
    )
    assert r.returncode == 0, r.stderr
    t, meta = T.load(out)
    assert t["input_ids"].shape[0] == len(meta["tokens"]) > 1 and t["input_ids"].shape[1] == 48
    assert t["embeddings"].dtype == np.float64
    assert all(row[0] == "[CLS]" for row in meta["tokens"])
    r = npbert_cli("trace", "--model", tiny_checkpoint, "--question", QUESTION, "--context", "", "--out", out)
    assert r.returncode == 2 and "context" in r.stderr and "Traceback" not in r.stderr


def test_trace_command_takes_the_pipelines_window_settings(tiny_checkpoint, tmp_path):
    # One window-settings function (pipeline.window_settings): the trace refuses what the pipeline refuses,
    # with its message, and encodes the windows the pipeline encodes (doc_stride equal to max_seq_len is the
    # pipeline's boundary case: allowed there, so allowed here).
    context = " ".join(["My name is John and I live in Seattle."] * 12)
    common = ["trace", "--model", tiny_checkpoint, "--question", QUESTION, "--context", context]
    r = npbert_cli(*common, "--max-seq-len", 40, "--doc-stride", 41, "--out", tmp_path / "a.safetensors")
    assert r.returncode == 2 and "`doc_stride` (41) is larger than `max_seq_len` (40)" in r.stderr, r.stderr
    r = npbert_cli(*common, "--max-seq-len", 2, "--out", tmp_path / "b.safetensors")
    assert r.returncode == 2 and "max_seq_len must leave room" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "c.safetensors"
    r = npbert_cli(*common, "--max-seq-len", 48, "--out", out)
    assert r.returncode == 0, r.stderr
    t, _ = T.load(out)
    tok = npbert.Tokenizer.from_folder(tiny_checkpoint)
    max_seq_len, doc_stride = 48, min(48 // 2, 128)  # the pipeline's default stride, as transformers'
    assert t["input_ids"].shape[0] == len(tok.encode_pair(QUESTION, context, max_seq_len, doc_stride))


def test_trace_command_estimates_the_size_and_refuses_past_max_mb(tiny_checkpoint, tmp_path):
    """A 3.5 KB context silently made a 603 MB file at full size: the size is now estimated before writing,
    refused past --max-mb (saying the estimate and the flag), written when the flag allows it."""
    import re

    context = " ".join(["My name is John and I live in Seattle."] * 12)
    out = tmp_path / "long.safetensors"
    flags = [
        "trace",
        "--model",
        tiny_checkpoint,
        "--question",
        QUESTION,
        "--context",
        context,
        "--max-seq-len",
        48,
        "--doc-stride",
        16,
        "--out",
        out,
    ]
    r = npbert_cli(*flags, "--max-mb", "0.01")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not out.exists(), r.stderr
    said = re.fullmatch(
        r"npbert trace: error: the trace would be about ([\d.]+) MB \((\d+) window\(s\) x 48 tokens, "
        r"float32\), over --max-mb 0.01: pass --max-mb ([\d.]+) to write it, or a shorter context or "
        r"--max-seq-len\n",
        r.stderr,
    )
    assert said and int(said.group(2)) > 1, r.stderr
    r = npbert_cli(*flags, "--max-mb", said.group(3))
    assert r.returncode == 0, r.stderr
    written = out.stat().st_size / 1e6  # the tensors and a small header
    assert 0.9 * float(said.group(1)) <= written <= float(said.group(3)) + 0.01, (said.group(0), written)
    assert npbert_cli(*flags).returncode == 0  # the default bound is far above this tiny model's trace


def test_trace_matches_transformers_through_the_export_tool(tiny_checkpoint, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    ours, theirs = tmp_path / "npbert.safetensors", tmp_path / "transformers.safetensors"
    context = "My name is John and I live in Seattle. " * 6
    common = ["--question", QUESTION, "--context", context, "--max-seq-len", 40, "--doc-stride", 16]
    assert npbert_cli("trace", "--model", tiny_checkpoint, *common, "--out", ours).returncode == 0
    tool = [sys.executable, str(ROOT / "tools" / "export_transformers_activations.py"), "--model", str(tiny_checkpoint)]
    # transformers' own tokenizer and pipeline-style windows: the ids must agree too.
    r = subprocess.run(tool + [*map(str, common), "--out", str(theirs)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    a, _ = T.load(ours)
    b, _ = T.load(theirs)
    assert list(a) == list(b)  # the same names, in the same order
    assert a["input_ids"].shape[0] > 1  # several windows, the last one padded
    r = npbert_cli("diff", ours, theirs, "--tol", "1e-5")
    assert r.returncode == 0, r.stdout + r.stderr
    report = T.diff(a, b)
    assert max(d.rel for d in report.diffs) < 1e-5
    # The export is not trivially equal: perturbing the weights npbert runs shows up in the diff.
    (tmp_path / "perturbed").mkdir()
    for f in tiny_checkpoint.iterdir():
        (tmp_path / "perturbed" / f.name).write_bytes(f.read_bytes())
    from safetensors.numpy import load_file, save_file

    w = load_file(str(tiny_checkpoint / "model.safetensors"))
    w["distilbert.transformer.layer.1.ffn.lin1.bias"] += np.float32(0.01)
    save_file(w, str(tmp_path / "perturbed" / "model.safetensors"))
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tmp_path / "perturbed")
    report = T.diff(model.trace(a["input_ids"], a["attention_mask"]), b)
    assert report.first_divergence.name == "layer.1.ffn.pre_activation"


def test_trace_command_on_an_encoder_only_checkpoint(tiny_checkpoint, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "encoder"
    shutil.copytree(tiny_checkpoint, folder)
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(
        {k.removeprefix("distilbert."): v for k, v in tensors.items() if not k.startswith("qa_outputs")},
        str(folder / "model.safetensors"),
    )
    out = tmp_path / "encoder.safetensors"
    r = npbert_cli("trace", "--model", folder, "--question", QUESTION, "--context", CONTEXT, "--out", out)
    assert r.returncode == 0, r.stderr
    t, _ = T.load(out)
    assert list(t) == T.names(2, with_qa_head=False)
    encoder = npbert.DistilBertModel.from_pretrained(folder)
    np.testing.assert_allclose(
        t["layer.1.output_layer_norm"], encoder(t["input_ids"]).last_hidden_state, rtol=1e-5, atol=1e-6
    )
