"""Every family against transformers 4.57.6 (eager attention): BERT (MiniLM is a BERT), RoBERTa, XLM-R,
ELECTRA (with and without its embedding projection), ALBERT (shared layer groups, inner groups),
DeBERTa-v3 and DistilBERT's other activations. Checkpoints are saved by transformers' own `save_pretrained` from
`AutoConfig.for_model`; inputs are right-padded with the padding id (RoBERTa's positions depend on it)
and carry question/context token types where the model has them. Every hidden state, attention map and
logit is compared at unpadded positions, per tensor, in float32 and float64, with both kernel sets; then
one base-size checkpoint of BERT-base's and of RoBERTa-base's shape.

A failure prints the llm.c-style table of max |diff| per tensor, pointing at the first layer that drifts."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npbert
from parity_helpers import assert_close, compare, family_checkpoint, family_inputs, transformers_outputs

pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")
ROOT = Path(__file__).resolve().parents[2]

COMMON = dict(initializer_range=0.2, max_position_embeddings=40)
# (model_type, config): tiny shapes chosen so that every family difference is exercised.
TINY = [
    ("bert", dict(vocab_size=99, hidden_size=16, num_attention_heads=2, intermediate_size=37, num_hidden_layers=2)),
    (
        "bert",
        dict(
            vocab_size=80,
            hidden_size=24,
            num_attention_heads=4,
            intermediate_size=24,
            num_hidden_layers=1,
            hidden_act="relu",
            type_vocab_size=3,
            layer_norm_eps=1e-6,
        ),
    ),
    (
        "bert",
        dict(
            vocab_size=80,
            hidden_size=12,
            num_attention_heads=3,
            intermediate_size=20,
            num_hidden_layers=2,
            hidden_act="gelu_pytorch_tanh",
        ),
    ),
    (
        "roberta",
        dict(
            vocab_size=120,
            hidden_size=16,
            num_attention_heads=4,
            intermediate_size=33,
            num_hidden_layers=2,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            max_position_embeddings=42,
        ),
    ),
    (
        "xlm-roberta",
        dict(
            vocab_size=130,
            hidden_size=24,
            num_attention_heads=2,
            intermediate_size=40,
            num_hidden_layers=2,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            max_position_embeddings=44,
        ),
    ),
    (
        "electra",
        dict(
            vocab_size=90,
            embedding_size=8,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=30,
            num_hidden_layers=2,
        ),
    ),
    (
        "electra",
        dict(
            vocab_size=90,
            embedding_size=16,
            hidden_size=16,
            num_attention_heads=4,
            intermediate_size=30,
            num_hidden_layers=1,
        ),
    ),
    (
        "albert",
        dict(
            vocab_size=70,
            embedding_size=8,
            hidden_size=24,
            num_attention_heads=3,
            intermediate_size=40,
            num_hidden_layers=4,
            num_hidden_groups=2,
            inner_group_num=2,
        ),
    ),
    (
        "albert",
        dict(
            vocab_size=70,
            embedding_size=12,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=20,
            num_hidden_layers=3,
            num_hidden_groups=1,
            inner_group_num=1,
            hidden_act="gelu",
        ),
    ),
    ("distilbert", dict(vocab_size=60, dim=16, n_heads=2, hidden_dim=30, n_layers=2, activation="relu")),
    # DeBERTa-v3's shape; tests/parity/test_deberta_parity.py covers its other settings and padded positions.
    (
        "deberta-v2",
        dict(
            vocab_size=90,
            hidden_size=16,
            num_attention_heads=2,
            intermediate_size=30,
            num_hidden_layers=2,
            relative_attention=True,
            position_buckets=8,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
        ),
    ),
]
TOLERANCES = {
    np.float32: {"embeddings": 1e-5, "hidden": 1e-5, "attention": 1e-6, "logits": 1e-5},
    np.float64: {"embeddings": 1e-12, "hidden": 1e-12, "attention": 1e-12, "logits": 1e-12},
}


def _name(case):
    model_type, cfg = case
    return f"{model_type}-" + "-".join(
        f"{k[:6]}{v}"
        for k, v in cfg.items()
        if k
        in ("hidden_act", "embedding_size", "num_hidden_groups", "inner_group_num", "activation", "hidden_size", "dim")
    )


@pytest.fixture(scope="module", params=TINY, ids=[_name(c) for c in TINY])
def tiny_family(request, tmp_path_factory):
    model_type, cfg = request.param
    index = TINY.index(request.param)
    return family_checkpoint(tmp_path_factory.mktemp(model_type), model_type, seed=100 + index, **{**COMMON, **cfg})


def _run(model, inputs, **kw):
    return model(
        inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        token_type_ids=inputs.get("token_type_ids"),
        output_hidden_states=True,
        **kw,
    )


def _theirs(torch_model, inputs, attentions=True):
    return transformers_outputs(
        torch_model, inputs["input_ids"], inputs["attention_mask"], attentions, inputs.get("token_type_ids")
    )


def _longest(config):
    return config.max_position_embeddings - (
        config.pad_token_id + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_tiny_family_matches_transformers(tiny_family, kernels, dtype):
    folder, torch_model = tiny_family
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    assert model.config.model_type == config.model_type
    if dtype == np.float64:
        torch_model = copy.deepcopy(torch_model).double()
    rng = np.random.default_rng(7)
    S = _longest(config)
    lengths = [S, 1, int(rng.integers(2, S)), int(rng.integers(1, S))]
    inputs = family_inputs(rng, lengths, config)
    ours = _run(model, inputs, output_attentions=True)
    theirs = _theirs(torch_model, inputs)
    assert len(ours.hidden_states) == len(theirs["hidden_states"]) == config.num_hidden_layers + 1
    assert len(ours.attentions) == len(theirs["attentions"])
    assert ours.start_logits.dtype == dtype
    assert_close(
        compare(ours, theirs, inputs["attention_mask"].astype(bool)),
        TOLERANCES[dtype],
        f"{folder.name} kernels={kernels} dtype={np.dtype(dtype).name} lengths={lengths}",
    )


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_family_random_batches(tiny_family, data):
    folder, torch_model = tiny_family
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    S = data.draw(st.integers(1, _longest(config)), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3), label="lengths")
    inputs = family_inputs(
        np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")), lengths, config, seq_len=S
    )
    rows = compare(
        _run(model, inputs), _theirs(torch_model, inputs, attentions=False), inputs["attention_mask"].astype(bool)
    )
    assert_close(rows, TOLERANCES[np.float32], f"{folder.name} S={S} lengths={lengths}")


def test_tiny_family_trace_equals_forward(tiny_family):
    # trace() spells attention out step by step with the numpy references: same tensors as the forward.
    folder, torch_model = tiny_family
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64, kernels="numpy")
    inputs = family_inputs(np.random.default_rng(3), [9, 4], torch_model.config)
    out = _run(model, inputs, output_attentions=True)
    t = model.trace(**inputs)
    np.testing.assert_allclose(t["embeddings"], out.hidden_states[0], rtol=0, atol=1e-12)
    for i, probs in enumerate(out.attentions):
        np.testing.assert_allclose(t[f"layer.{i}.attention.probs"], probs, rtol=0, atol=1e-12)
    last = len(out.attentions) - 1
    np.testing.assert_allclose(t[f"layer.{last}.output_layer_norm"], out.hidden_states[-1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["start_logits"], out.start_logits, rtol=0, atol=1e-12)


def test_trace_equals_transformers_activations_by_name(tiny_family):
    # tools/export_transformers_activations.py hooks every family's modules under npbert's trace names.
    import importlib.util

    from npbert import trace as T

    spec = importlib.util.spec_from_file_location("export", ROOT / "tools" / "export_transformers_activations.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    folder, torch_model = tiny_family
    inputs = family_inputs(np.random.default_rng(4), [13, 6], torch_model.config)
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    ours = model.trace(**inputs)
    theirs = export.export(
        folder, inputs["input_ids"], inputs["attention_mask"], "float32", inputs.get("token_type_ids")
    )
    c = model.config  # DeBERTa: no absolute positions (v3), the score terms, the relative-position table
    terms = ("c2c", *(t for t in ("c2p", "p2c") if c.relative_attention and t in c.pos_att_type))
    assert list(ours) == T.names(
        len(model.encoder_weights.transformer.layer),
        True,
        "token_type_ids" in ours,
        "embeddings.normalized" in ours,
        c.position_biased_input,
        terms if c.disentangled_attention else (),
        c.disentangled_attention and c.relative_attention,
    )
    assert set(ours) == set(theirs), set(ours) ^ set(theirs)
    keep = inputs["attention_mask"].astype(bool)
    # padded rows hold different values on each side (nothing reads them): compare the unpadded rows
    unpadded = {n: (a[keep] if a.ndim >= 2 and a.shape[:2] == keep.shape else a) for n, a in ours.items()}
    report = T.diff(
        unpadded,
        {n: (b[keep] if b.ndim >= 2 and b.shape[:2] == keep.shape else b) for n, b in theirs.items()},
        tol=1e-5,
    )
    assert report.first_divergence is None, report.first_divergence


def test_family_classes_and_auto_dispatch(tiny_family):
    folder, torch_model = tiny_family
    model_type = torch_model.config.model_type
    classes = {c.model_type: c for c in npbert.AutoModelForQuestionAnswering.__subclasses__()}
    assert set(classes) == set(npbert.SUPPORTED_MODEL_TYPES)
    classes[model_type].from_pretrained(folder)  # the family's own class loads it
    other = classes["bert" if model_type != "bert" else "roberta"]
    with pytest.raises(ValueError, match=f"model_type is '{model_type}'.*AutoModelForQuestionAnswering"):
        other.from_pretrained(folder)


@pytest.mark.parametrize("model_type, cfg", [TINY[0], TINY[3], TINY[5], TINY[7]], ids=lambda x: str(x)[:12])
def test_encoder_only_checkpoints(tmp_path, model_type, cfg):
    folder, torch_encoder = family_checkpoint(
        tmp_path / model_type, model_type, seed=9, encoder_only=True, **{**COMMON, **cfg}
    )
    inputs = family_inputs(np.random.default_rng(0), [30, 11, 4], torch_encoder.config)
    ours = _run(npbert.AutoModel.from_pretrained(folder), inputs, output_attentions=True)
    theirs = _theirs(torch_encoder, inputs)
    assert_close(compare(ours, theirs, inputs["attention_mask"].astype(bool)), TOLERANCES[np.float32], model_type)


# --- base size: BERT-base and RoBERTa-base shapes ---------------------------------------------------------

BASE = {
    "bert": dict(
        vocab_size=28996,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
    ),
    "roberta": dict(
        vocab_size=50265,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
    ),
}
BASE_TOLERANCES = {
    np.float32: {"logits": 1e-4, "hidden": 1e-4, "embeddings": 1e-5, "attention": 1e-5},
    np.float64: {"logits": 1e-9, "hidden": 1e-9, "embeddings": 1e-12, "attention": 1e-12},
}


@pytest.fixture(scope="module", params=list(BASE))
def base_family(request, tmp_path_factory):
    return family_checkpoint(
        tmp_path_factory.mktemp("base_" + request.param), request.param, seed=1, **BASE[request.param]
    )


@pytest.mark.parametrize(
    "kernels, dtype, lengths, S",
    [("numba", np.float32, [512, 389, 77], 512), ("numba", np.float64, [96, 31], 96)],
    ids=["fp32-S512", "fp64-S96"],
)
def test_base_size_matches_transformers(base_family, kernels, dtype, lengths, S):
    folder, torch_model = base_family
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    if dtype == np.float64:
        torch_model = copy.deepcopy(torch_model).double()
    inputs = family_inputs(np.random.default_rng(S), lengths, torch_model.config, seq_len=S)
    attentions = dtype == np.float64  # [B, 12, 512, 512] x 12 layers is 150 MB a side at fp32: fp64 checks them
    ours = _run(model, inputs, output_attentions=attentions)
    theirs = _theirs(torch_model, inputs, attentions)
    assert_close(
        compare(ours, theirs, inputs["attention_mask"].astype(bool)),
        BASE_TOLERANCES[dtype],
        f"base {torch_model.config.model_type} dtype={np.dtype(dtype).name} lengths={lengths}",
    )
