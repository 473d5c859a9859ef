"""Every feature on every family, without torch: `npbert ask`, `eval`, `trace` + `diff`, `attention`, `audit`,
`serve`'s /v1/answer and /v1/explain, float64 audit mode, both kernel sets. The checkpoints are made here:
a tokenizer in each family's hub layout (tests/tokenizer_helpers.py: WordPiece vocab.txt, byte-level BPE
vocab.json + merges.txt, SentencePiece models trained here) beside random weights under the family's
own key names (the stored transformers fixtures pin those names: tests/test_families.py), so these tests
check that the pieces fit, not the numbers (tests/parity/ does that against transformers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import npbert
import npbert.audit
import npbert.trace
import tokenizer_helpers as th
from npbert.weights import expected_shapes

# (model_type, the tokenizer layout its checkpoints ship, config.json keys beyond the family's defaults)
CASES = {
    "bert": (lambda d: th.wordpiece_folder(d, lowercase=True), {}),
    "roberta": (lambda d: th.roberta_folder(d), {"type_vocab_size": 1, "max_position_embeddings": 514}),
    "xlm-roberta": (
        lambda d: th.sentencepiece_folder(d, "xlmr"),
        {"type_vocab_size": 1, "max_position_embeddings": 514},
    ),
    "electra": (lambda d: th.wordpiece_folder(d, lowercase=True, model_type="electra"), {"embedding_size": 16}),
    "albert": (lambda d: th.sentencepiece_folder(d, "albert"), {"embedding_size": 16, "num_hidden_layers": 2}),
    "deberta-v2": (
        lambda d: th.sentencepiece_folder(d, "deberta"),
        {
            "relative_attention": True,
            "position_buckets": 32,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "share_att_key": False,
            "position_biased_input": False,
        },
    ),  # the layers' own pos_key_proj / pos_query_proj
}
QUESTION, CONTEXT = "Where does John live?", "My name is John and I live in Seattle. " * 30


def write_family(folder: Path, model_type: str) -> Path:
    make_tokenizer, extra = CASES[model_type]
    make_tokenizer(folder)
    tok = npbert.Tokenizer.from_folder(folder, model_type)
    cfg = {
        "model_type": model_type,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "vocab_size": tok.backend.get_vocab_size(),
        "pad_token_id": tok.pad_token_id,
        "max_position_embeddings": 512,
        **extra,
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = expected_shapes(npbert.Config.from_dict(cfg))
    tensors = {
        k: (
            1.0 + 0.1 * rng.standard_normal(s)
            if "LayerNorm.weight" in k or "layer_norm.weight" in k
            else 0.2 * rng.standard_normal(s)
        ).astype(np.float32)
        for k, s in shapes.items()
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module", params=list(CASES))
def family(request, tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the sentencepiece extra is not installed")
    return request.param, write_family(tmp_path_factory.mktemp(request.param) / "qa", request.param)


def npbert_cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "npbert", *map(str, args)], capture_output=True, text=True, timeout=300, input=stdin
    )


def test_pipeline_both_kernel_sets_and_float64_agree(family):
    model_type, folder = family
    answers = [
        npbert.pipeline("question-answering", model=folder, kernels=k, dtype=d)(
            question=QUESTION, context=CONTEXT, top_k=3, max_seq_len=64, doc_stride=16
        )
        for k, d in (("numba", np.float32), ("numpy", np.float32), ("numpy", np.float64))
    ]
    assert [a["answer"] for a in answers[0]] == [a["answer"] for a in answers[1]] == [a["answer"] for a in answers[2]]
    for a, b in zip(answers[0], answers[2]):
        assert a["score"] == pytest.approx(b["score"], rel=1e-4)


def test_ask_cli(family):
    _, folder = family
    proc = npbert_cli(
        "ask", "--model", folder, "-q", QUESTION, "-c", CONTEXT, "--json", "--max-seq-len", "64", "--doc-stride", "16"
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]


def test_trace_diff_and_attention(family, tmp_path):
    model_type, folder = family
    for dtype in ("float32", "float64"):
        proc = npbert_cli(
            "trace",
            "--model",
            folder,
            "-q",
            QUESTION,
            "-c",
            CONTEXT[:200],
            "--dtype",
            dtype,
            "--out",
            tmp_path / f"{dtype}.safetensors",
        )
        assert proc.returncode == 0, proc.stderr
    proc = npbert_cli("diff", tmp_path / "float32.safetensors", tmp_path / "float64.safetensors", "--tol", "1e-3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tensors = npbert.trace.load(tmp_path / "float32.safetensors")[0]
    if model_type == "deberta-v2":  # no token types (v3), the three score terms kept per layer
        assert "token_type_ids" not in tensors and "embeddings.position" not in tensors
        assert {"layer.1.attention.c2c", "layer.1.attention.c2p", "layer.1.attention.p2c"} <= set(tensors)
    else:  # every other family here has a token-type embedding; RoBERTa's single row is always type 0
        assert tensors["token_type_ids"].any() == (model_type in ("bert", "electra", "albert"))
    assert ("embeddings.normalized" in tensors) == (model_type in ("electra", "albert"))
    pytest.importorskip("matplotlib", reason="the viz extra is not installed")
    proc = npbert_cli(
        "attention", "--model", folder, "-q", QUESTION, "-c", CONTEXT[:120], "--layer", "1", "--out", tmp_path / "a.png"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_passes(family):
    _, folder = family
    report = npbert.audit.audit(folder)
    assert report["ok"], [c for c in report["checks"] if c["status"] == "fail"]
    assert report["drift"]["same_start_argmax"] and report["drift"]["max_abs_start_logits"] < 1e-4


def test_eval_on_a_small_squad_file(family, tmp_path):
    _, folder = family
    data = {
        "version": "1.1",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": CONTEXT[:300],
                        "qas": [
                            {"id": "q1", "question": QUESTION, "answers": [{"text": "Seattle", "answer_start": 30}]},
                            {
                                "id": "q2",
                                "question": "What is my name?",
                                "answers": [{"text": "John", "answer_start": 11}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "dev.json").write_text(json.dumps(data))
    proc = npbert_cli("eval", "--model", folder, "--data", tmp_path / "dev.json", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads((tmp_path / "out" / "predictions.json").read_text())) == {"q1", "q2"}


def test_serve_answer_and_explain(family):
    pytest.importorskip("fastapi", reason="npbert serve needs the serve extra")
    from fastapi.testclient import TestClient

    from npbert.serve.app import create_app

    _, folder = family
    qa = npbert.pipeline("question-answering", model=folder)
    with TestClient(create_app(qa=qa)) as client:
        body = {"input_data": {"question": QUESTION, "context": CONTEXT[:300]}}
        r = client.post("/score", json=body)
        assert r.status_code == 200 and isinstance(r.json(), list) and len(r.json()) == 1
        r = client.post("/v1/explain", json=body)
        assert r.status_code == 200, r.text
        data = r.json()
        window = qa.tokenizer.encode_pair(QUESTION, CONTEXT[:300])[data["window"]]
        assert data["windows"][data["window"]]["input_ids"] == window.input_ids.tolist()
        assert len(data["attention_layers"]) == qa.model.config.n_block_runs
