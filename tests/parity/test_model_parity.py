"""npbert against transformers 4.57.6 (eager attention) in the same test: checkpoints saved by
transformers' `save_pretrained`, random ids, right-padded masks; every hidden state, every attention map
and the logits, compared at unpadded positions, with both kernel sets and in float64 (audit mode).

A failure prints a table of max |diff| per tensor (embeddings, each layer, logits) so it points at the
layer where the two implementations part."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npbert
from parity_helpers import assert_close, compare, right_padded, transformers_checkpoint, transformers_outputs

pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

KERNELS = ["numba", "numpy"]

# Tiny configs of several shapes: n_heads divides dim; odd FFN widths; one head; 16 heads of width 4;
# learned and sinusoidal position tables; initializer ranges large enough that attention is peaked.
TINY_CONFIGS = [
    dict(
        vocab_size=64,
        dim=8,
        n_heads=1,
        hidden_dim=8,
        n_layers=1,
        max_position_embeddings=16,
        sinusoidal_pos_embds=True,
        initializer_range=0.3,
    ),
    dict(
        vocab_size=99, dim=12, n_heads=3, hidden_dim=37, n_layers=2, max_position_embeddings=40, initializer_range=0.2
    ),
    dict(
        vocab_size=200, dim=48, n_heads=6, hidden_dim=131, n_layers=3, max_position_embeddings=64, initializer_range=0.1
    ),
    dict(
        vocab_size=150,
        dim=64,
        n_heads=16,
        hidden_dim=64,
        n_layers=2,
        max_position_embeddings=128,
        sinusoidal_pos_embds=True,
        initializer_range=0.15,
    ),
]
TINY_TOLERANCES = {
    np.float32: {"embeddings": 1e-5, "hidden": 1e-5, "attention": 1e-6, "logits": 1e-5},
    np.float64: {"embeddings": 1e-12, "hidden": 1e-12, "attention": 1e-12, "logits": 1e-12},
}


def _name(config):
    return f"D{config['dim']}-H{config['n_heads']}-F{config['hidden_dim']}-L{config['n_layers']}"


@pytest.fixture(scope="module", params=TINY_CONFIGS, ids=[_name(c) for c in TINY_CONFIGS])
def tiny_transformers(request, tmp_path_factory):
    index = TINY_CONFIGS.index(request.param)
    return transformers_checkpoint(tmp_path_factory.mktemp("tiny_transformers"), seed=10 + index, **request.param)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", KERNELS)
def test_tiny_configs_match_transformers(tiny_transformers, kernels, dtype):
    folder, torch_model = tiny_transformers
    config = torch_model.config
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    if dtype == np.float64:
        import copy

        torch_model = copy.deepcopy(torch_model).double()
    rng = np.random.default_rng(config.dim)
    S = config.max_position_embeddings
    # Full rows, rows with a single kept token, and everything between, padded to the longest.
    lengths = [S, 1, int(rng.integers(2, S)), int(rng.integers(1, S))]
    ids, mask = right_padded(rng, lengths, config.vocab_size)
    ours = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    theirs = transformers_outputs(torch_model, ids, mask)
    assert ours.start_logits.dtype == dtype and ours.hidden_states[-1].dtype == dtype
    assert len(ours.hidden_states) == config.n_layers + 1 and len(ours.attentions) == config.n_layers
    assert_close(
        compare(ours, theirs, mask.astype(bool)),
        TINY_TOLERANCES[dtype],
        f"tiny {folder.name} kernels={kernels} dtype={np.dtype(dtype).name} lengths={lengths}",
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_random_batches_and_padding(tiny_transformers, data):
    folder, torch_model = tiny_transformers
    config = torch_model.config
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    S = data.draw(st.integers(1, config.max_position_embeddings), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=4), label="lengths")
    ids, mask = right_padded(
        np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed")), lengths, config.vocab_size, seq_len=S
    )
    rows = compare(
        model(ids, attention_mask=mask, output_hidden_states=True),
        transformers_outputs(torch_model, ids, mask, attentions=False),
        mask.astype(bool),
    )
    assert_close(rows, TINY_TOLERANCES[np.float32], f"tiny {folder.name} S={S} lengths={lengths}")


def test_tiny_logits_match_transformers_default_attention(tiny_transformers):
    # What users of transformers get: from_pretrained with its default (sdpa) attention, from the saved folder.
    import transformers

    folder, eager = tiny_transformers
    sdpa = transformers.DistilBertForQuestionAnswering.from_pretrained(folder).eval()
    ids, mask = right_padded(
        np.random.default_rng(7), [eager.config.max_position_embeddings, 3], eager.config.vocab_size
    )
    ours = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)(ids, attention_mask=mask)
    assert_close(
        compare(ours, transformers_outputs(sdpa, ids, mask, attentions=False), mask.astype(bool)),
        {"logits": 1e-5},
        f"tiny {folder.name} vs transformers {sdpa.config._attn_implementation}",
    )


def test_tiny_unbatched_and_list_inputs(tiny_transformers):
    folder, torch_model = tiny_transformers
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    ids = [5, 9, 3, 7, 1]
    theirs = transformers_outputs(torch_model, np.array([ids]), np.ones((1, 5), np.int64), attentions=False)
    out = model(ids)  # a list, no mask: B = 1, every token kept
    assert out.start_logits.shape == (1, 5)
    assert_close(compare(out, theirs, None), {"logits": 1e-5}, "unbatched list input")


def test_encoder_matches_transformers_distilbert_model(tmp_path):
    config = TINY_CONFIGS[1]
    folder, torch_encoder = transformers_checkpoint(tmp_path / "encoder", seed=5, cls_name="DistilBertModel", **config)
    ids, mask = right_padded(np.random.default_rng(0), [30, 11, 4], config["vocab_size"])
    # An encoder-only checkpoint (keys without `distilbert.`), as DistilBertModel.save_pretrained writes it.
    ours = npbert.DistilBertModel.from_pretrained(folder)(
        ids, attention_mask=mask, output_hidden_states=True, output_attentions=True
    )
    theirs = transformers_outputs(torch_encoder, ids, mask)
    assert_close(compare(ours, theirs, mask.astype(bool)), TINY_TOLERANCES[np.float32], "DistilBertModel")


# --- full size: 28996 x 768, 6 layers, 12 heads (the real checkpoint's shape) ------------------------------

FULL_TOLERANCES = {
    np.float32: {"logits": 1e-4, "hidden": 1e-4, "embeddings": 1e-5, "attention": 1e-5},
    np.float64: {"logits": 1e-9, "hidden": 1e-9, "embeddings": 1e-12, "attention": 1e-12},
}

FULL_CASES = [
    # (kernels, dtype, lengths, S, output_attentions): the numpy references only at small shapes (slow).
    ("numba", np.float32, [300], 384, True),
    ("numba", np.float32, [512, 389, 130, 1], 512, False),
    ("numpy", np.float32, [64, 23], 64, True),
    ("numba", np.float64, [128, 77], 128, True),
    ("numpy", np.float64, [40, 1], 48, False),
]


@pytest.mark.parametrize(
    "kernels, dtype, lengths, S, attentions",
    FULL_CASES,
    ids=[f"{k}-{np.dtype(d).name}-B{len(n)}-S{s}" for k, d, n, s, _ in FULL_CASES],
)
def test_full_size_matches_transformers(request, full_transformers, kernels, dtype, lengths, S, attentions):
    folder, torch_model = full_transformers
    if dtype == np.float64:
        torch_model = request.getfixturevalue("full_transformers_float64")
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    ids, mask = right_padded(np.random.default_rng(S + len(lengths)), lengths, 28996, seq_len=S)
    ours = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=attentions)
    theirs = transformers_outputs(torch_model, ids, mask, attentions=attentions)
    assert_close(
        compare(ours, theirs, mask.astype(bool)),
        FULL_TOLERANCES[dtype],
        f"full size kernels={kernels} dtype={np.dtype(dtype).name} B={len(lengths)} S={S} lengths={lengths}",
    )
