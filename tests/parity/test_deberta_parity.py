"""DeBERTa-v2/v3 against transformers 4.57.6 `DebertaV2ForQuestionAnswering` (eager attention).

Tiny random checkpoints saved by transformers' own `save_pretrained` cover the disentangled attention's
settings: log buckets on and off (`position_buckets`, `max_relative_positions`), `share_att_key` on and
off (the layers' own pos_key_proj / pos_query_proj), `pos_att_type` p2c|c2p, c2p, p2c and none,
`relative_attention` off, `norm_rel_ebd` layer_norm or none, absolute positions
(`position_biased_input`) and token types (`type_vocab_size` 0 and 2). Inputs are right-padded batches;
unlike the other families' tests, every position is compared, padded ones included: DeBERTa zeroes
padded embeddings and gives padded queries a uniform attention row (the 2-D mask), and npbert
reproduces both. Then one base-size checkpoint of deberta-v3-base's shape.

A failure prints the llm.c-style table of max |diff| per tensor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npbert
from parity_helpers import assert_close, compare, family_checkpoint, family_inputs
from test_family_parity import (
    _run,
    _theirs,
    test_trace_equals_transformers_activations_by_name as _trace_against_export,
)

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

COMMON = dict(
    vocab_size=97,
    hidden_size=16,
    num_attention_heads=2,
    intermediate_size=37,
    num_hidden_layers=2,
    max_position_embeddings=40,
    initializer_range=0.2,
    relative_attention=True,
    type_vocab_size=0,
)
V3 = dict(
    COMMON,
    position_buckets=8,
    max_relative_positions=40,
    pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
)
TINY = {  # name -> config: every setting of the attention and the embeddings at least once
    "v3": V3,
    "v3-own-pos-proj": dict(V3, share_att_key=False),
    "buckets4-max16": dict(V3, position_buckets=4, max_relative_positions=16, num_attention_heads=4),
    "buckets16-max-unset": dict(
        V3, position_buckets=16, max_relative_positions=-1, hidden_size=24, num_attention_heads=3
    ),
    "no-buckets-max12": dict(V3, position_buckets=-1, max_relative_positions=12, share_att_key=False),
    "no-buckets-max-unset": dict(V3, position_buckets=-1, max_relative_positions=-1),
    "c2p-only": dict(V3, pos_att_type=["c2p"], share_att_key=False),
    "p2c-only-string": dict(V3, pos_att_type="p2c", norm_rel_ebd="none"),
    "no-position-terms": dict(V3, pos_att_type=[]),
    "v2-style": dict(
        COMMON,
        position_buckets=-1,
        max_relative_positions=-1,
        pos_att_type="c2p|p2c",
        position_biased_input=True,
        type_vocab_size=2,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
    ),
    "no-relative-attention": dict(
        COMMON,
        relative_attention=False,
        pos_att_type=["c2p", "p2c"],
        position_biased_input=True,
        type_vocab_size=2,
        pad_token_id=3,
    ),
}
TOLERANCES = {
    np.float32: {"embeddings": 1e-5, "hidden": 1e-5, "attention": 1e-6, "logits": 1e-5},
    np.float64: {"embeddings": 1e-12, "hidden": 1e-12, "attention": 1e-12, "logits": 1e-12},
}


@pytest.fixture(scope="module", params=list(TINY))
def tiny_deberta(request, tmp_path_factory):
    return family_checkpoint(
        tmp_path_factory.mktemp(request.param),
        "deberta-v2",
        seed=300 + list(TINY).index(request.param),
        **TINY[request.param],
    )


def _every_position(inputs):
    return np.ones(inputs["attention_mask"].shape, dtype=bool)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_tiny_deberta_matches_transformers_everywhere(tiny_deberta, kernels, dtype):
    folder, torch_model = tiny_deberta
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    assert isinstance(model, npbert.DebertaV2ForQuestionAnswering)
    if dtype == np.float64:
        torch_model = copy.deepcopy(torch_model).double()
    rng = np.random.default_rng(11)
    S = config.max_position_embeddings
    lengths = [S, 1, int(rng.integers(2, S)), int(rng.integers(1, S))]
    inputs = family_inputs(rng, lengths, config)
    ours = _run(model, inputs, output_attentions=True)
    theirs = _theirs(torch_model, inputs)
    assert len(ours.hidden_states) == len(theirs["hidden_states"]) == config.num_hidden_layers + 1
    assert ours.start_logits.dtype == dtype
    assert_close(
        compare(ours, theirs, _every_position(inputs)),
        TOLERANCES[dtype],
        f"{folder.name} kernels={kernels} dtype={np.dtype(dtype).name} lengths={lengths}",
    )
    # The 2-D mask: a padded query attends uniformly to every key; padded embeddings are zero.
    padded = ~inputs["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours.attentions[0].transpose(0, 2, 1, 3)[padded], 1.0 / S, rtol=1e-6)
    assert not ours.hidden_states[0][padded].any()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_deberta_random_batches(tiny_deberta, data):
    folder, torch_model = tiny_deberta
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    S = data.draw(st.integers(1, config.max_position_embeddings), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3), label="lengths")
    inputs = family_inputs(
        np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")), lengths, config, seq_len=S
    )
    rows = compare(_run(model, inputs), _theirs(torch_model, inputs, attentions=False), _every_position(inputs))
    assert_close(rows, TOLERANCES[np.float32], f"{folder.name} S={S} lengths={lengths}")


def test_tiny_deberta_trace_terms_add_up_to_the_forward(tiny_deberta):
    folder, torch_model = tiny_deberta
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64, kernels="numpy")
    inputs = family_inputs(np.random.default_rng(3), [9, 4], config)
    out = _run(model, inputs, output_attentions=True)
    t = model.trace(**inputs)
    terms = [n for n in ("c2c", "c2p", "p2c") if f"layer.0.attention.{n}" in t]
    expected = ["c2c"] + ([n for n in ("c2p", "p2c") if n in config.pos_att_type] if config.relative_attention else [])
    assert sorted(terms) == sorted(expected)
    for i, probs in enumerate(out.attentions):
        total = sum(t[f"layer.{i}.attention.{n}"] for n in terms)
        np.testing.assert_allclose(t[f"layer.{i}.attention.scores"], total, rtol=0, atol=1e-12)
        np.testing.assert_allclose(t[f"layer.{i}.attention.probs"], probs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["embeddings"], out.hidden_states[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(t["start_logits"], out.start_logits, rtol=0, atol=1e-12)
    assert ("embeddings.position" in t) == config.position_biased_input
    assert ("rel_embeddings" in t) == config.relative_attention


def test_tiny_deberta_trace_equals_transformers_activations(tiny_deberta):
    # tools/export_transformers_activations.py takes c2c, c2p, p2c inside transformers' attention: every
    # term of every setting, name by name.
    _trace_against_export(tiny_deberta)


def test_encoder_only_deberta(tmp_path):
    folder, torch_encoder = family_checkpoint(tmp_path / "enc", "deberta-v2", seed=9, encoder_only=True, **V3)
    inputs = family_inputs(np.random.default_rng(0), [30, 11, 4], torch_encoder.config)
    ours = _run(npbert.AutoModel.from_pretrained(folder), inputs, output_attentions=True)
    assert_close(
        compare(ours, _theirs(torch_encoder, inputs), _every_position(inputs)),
        TOLERANCES[np.float32],
        "deberta encoder",
    )


def test_relative_positions_match_transformers_buckets():
    # Every bucket setting below, every relative distance up to 600: the same table rows as transformers.
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    from npbert.deberta import relative_positions

    x = torch.zeros(1, 600, 1)
    for buckets in (-1, 4, 8, 16, 64, 256):
        for max_position in (16, 40, 128, 512):
            if buckets > 0 and max_position - 1 <= buckets // 2:
                continue
            theirs = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0].numpy()
            np.testing.assert_array_equal(
                relative_positions(600, buckets, max_position), theirs, err_msg=f"buckets={buckets} max={max_position}"
            )


def test_conv_layer_configs_are_refused(tmp_path):
    folder, _ = family_checkpoint(tmp_path / "conv", "deberta-v2", seed=1, **dict(V3, conv_kernel_size=3))
    with pytest.raises(npbert.config.ConfigError, match="conv_kernel_size 3 .*ConvLayer.*not supported"):
        npbert.AutoModelForQuestionAnswering.from_pretrained(folder)


# --- base size: deberta-v3-base's shape --------------------------------------------------------------------

BASE = dict(
    vocab_size=128100,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    relative_attention=True,
    position_buckets=256,
    pos_att_type=["p2c", "c2p"],
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
    max_relative_positions=-1,
    layer_norm_eps=1e-7,
    hidden_act="gelu",
)
BASE_TOLERANCES = {
    np.float32: {"logits": 1e-4, "hidden": 1e-4, "embeddings": 1e-5, "attention": 1e-5},
    np.float64: {"logits": 1e-9, "hidden": 1e-9, "embeddings": 1e-12, "attention": 1e-12},
}


@pytest.fixture(scope="module")
def base_deberta(tmp_path_factory):
    return family_checkpoint(tmp_path_factory.mktemp("base_deberta"), "deberta-v2", seed=1, **BASE)


@pytest.mark.parametrize(
    "dtype, lengths, S", [(np.float32, [384, 201], 384), (np.float64, [96, 31], 96)], ids=["fp32-S384", "fp64-S96"]
)
def test_base_size_deberta_matches_transformers(base_deberta, dtype, lengths, S):
    folder, torch_model = base_deberta
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype)
    if dtype == np.float64:
        torch_model = copy.deepcopy(torch_model).double()
    inputs = family_inputs(np.random.default_rng(S), lengths, torch_model.config, seq_len=S)
    attentions = dtype == np.float64  # 12 x [2, 12, 384, 384] a side at fp32 is big: fp64 checks them
    ours = _run(model, inputs, output_attentions=attentions)
    theirs = _theirs(torch_model, inputs, attentions)
    assert_close(
        compare(ours, theirs, _every_position(inputs)),
        BASE_TOLERANCES[dtype],
        f"base deberta-v2 dtype={np.dtype(dtype).name} lengths={lengths}",
    )
