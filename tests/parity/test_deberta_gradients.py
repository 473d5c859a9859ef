"""DeBERTa-v2/v3 gradients against torch autograd, llm.c style (issue 24 item 2, DeBERTa's rows; every other
family is in test_gradient_parity.py, whose helpers and tolerances this file shares): transformers 4.57.6
`DebertaV2ForQuestionAnswering` (eager attention), `outputs.loss.backward()` with start/end positions,
against npbert's `model.gradients` with the same positions (qa_loss), and given upstream gradients of the
logits.

The tiny checkpoints are test_deberta_parity.py's (every setting of the attention and the embeddings:
relative_attention on and off, share_att_key on and off, pos_att_type c2p, p2c, both and none,
position_biased_input, token types, norm_rel_ebd layer_norm or none, log buckets on and off), plus one whose
norm_rel_ebd LayerNorm is stored without relative_attention (parameters the loss never reaches: torch leaves
their .grad None, npbert gives zeros, what an optimiser applies either way). Inputs are right-padded batches,
one kept token being the padding id. Every weight's gradient and the gradient of the embeddings module's
output (after DeBERTa's mask multiply) lie within 1e-4 (float32) or 1e-9 (float64) of that tensor's max
|torch gradient|; a failure prints the table of every tensor, the first one over marked."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

import npbert  # noqa: E402
from npbert.weights import canonical_keys  # noqa: E402
from parity_helpers import (  # noqa: E402
    EMBEDDINGS_OUTPUT,
    GRADIENT_TOLERANCES,
    assert_gradients_close,
    family_checkpoint,
    gradient_rows,
    torch_gradients,
)
from test_deberta_parity import TINY  # noqa: E402
from test_gradient_parity import batch, npbert_gradients  # noqa: E402

CONFIGS = {
    **TINY,
    "rel-layer-norm-unused": dict(TINY["no-relative-attention"], norm_rel_ebd="layer_norm", share_att_key=False),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def tiny_deberta(request, tmp_path_factory):
    folder, model = family_checkpoint(
        tmp_path_factory.mktemp(request.param),
        "deberta-v2",
        seed=700 + list(CONFIGS).index(request.param),
        **CONFIGS[request.param],
    )
    return folder, model, copy.deepcopy(model).double()


def deberta_batch(rng, config, lengths, seq_len=None):
    """test_gradient_parity's batch (positions past the sequence and below 0 included), with one kept token
    the padding id: nn.Embedding(padding_idx=pad) gives its row no gradient even there (padded positions
    give it none anyway: DeBERTa multiplies their embeddings by 0)."""
    inputs, start, end = batch(rng, config, lengths, seq_len)
    inputs["input_ids"][0, lengths[0] // 2] = config.pad_token_id
    return inputs, start, end


def theirs_by_key(torch_model, t) -> dict:
    """torch's gradients by checkpoint key, EMBEDDINGS_OUTPUT included; zeros for a parameter the loss does
    not reach (.grad None)."""
    unreached = {name: np.zeros(tuple(p.shape)) for name, p in torch_model.named_parameters()}
    return {**unreached, **t["weights"], EMBEDDINGS_OUTPUT: t["embeddings"]}


def rows_against_torch(model, torch_model, inputs, **kw):
    g, ours = npbert_gradients(model, inputs, **kw)
    t = torch_gradients(torch_model, inputs, **kw)
    keys = canonical_keys(model.config)
    assert sorted(keys.values()) == sorted(name for name, _ in torch_model.named_parameters())
    return gradient_rows(ours, theirs_by_key(torch_model, t), keys), g, t


@pytest.mark.parametrize("loss", ["positions", "upstream"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_tiny_deberta_gradients_match_torch(tiny_deberta, kernels, dtype, loss):
    folder, torch32, torch64 = tiny_deberta
    torch_model = torch64 if dtype == np.float64 else torch32
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    rng = np.random.default_rng(5)
    S = torch_model.config.max_position_embeddings
    lengths = [S, int(rng.integers(2, S)), 1, int(rng.integers(1, S))]
    inputs, start, end = deberta_batch(rng, torch_model.config, lengths)
    if loss == "positions":
        kw = dict(start_positions=start, end_positions=end)
    else:  # any upstream gradient, padded positions' included (their logits are computed and can be read)
        d_start, d_end = rng.normal(size=(2, len(lengths), S)).astype(dtype)
        kw = dict(d_start_logits=d_start, d_end_logits=d_end)
    rows, g, theirs = rows_against_torch(model, torch_model, inputs, **kw)
    rel = GRADIENT_TOLERANCES[np.dtype(dtype)]
    assert_gradients_close(rows, rel, f"{folder.name} kernels={kernels} dtype={np.dtype(dtype).name} loss={loss}")
    assert g.embeddings.dtype == dtype
    if loss == "positions":
        assert g.loss == pytest.approx(theirs["loss"], rel=10 * rel)
    # weights=False: the same gradient of the embeddings output, and no weights'.
    inputs_only = model.gradients(**inputs, **kw, weights=False)
    assert inputs_only.weights is None
    np.testing.assert_array_equal(inputs_only.embeddings, g.embeddings)
    # The padding id's word row gets no gradient (nn.Embedding(padding_idx=pad)), exactly, though it stands at
    # a kept position; DeBERTa's absolute position table has no padding_idx: every position's row gets one.
    # Padded positions' embeddings output does receive gradient (their logits are read: upstream, or the
    # loss's softmax over every position).
    assert not g.weights["embeddings.word_embeddings.weight"][torch_model.config.pad_token_id].any()
    assert np.abs(g.embeddings[inputs["attention_mask"] == 0]).max() > 1e-6
    if torch_model.config.position_biased_input:
        assert g.weights["embeddings.position_embeddings.weight"][:S].any(axis=1).all()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_deberta_random_batches(tiny_deberta, data):
    folder, _, torch_model = tiny_deberta
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64)
    S = data.draw(st.integers(1, torch_model.config.max_position_embeddings), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3), label="lengths")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs, start, end = deberta_batch(rng, torch_model.config, lengths, seq_len=S)
    rows, _, _ = rows_against_torch(model, torch_model, inputs, start_positions=start, end_positions=end)
    assert_gradients_close(rows, GRADIENT_TOLERANCES[np.dtype(np.float64)], f"{folder.name} S={S} lengths={lengths}")
