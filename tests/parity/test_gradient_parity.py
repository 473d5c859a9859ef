"""Gradient parity, llm.c style (test_gpt2.c checks every gradient tensor against PyTorch): npbert's
backward against torch autograd on the same checkpoint, every family but DeBERTa (its own settings are in
tests/parity/test_deberta_gradients.py), issue 24 item 2.

Checkpoints are saved by transformers' `save_pretrained` (test_family_parity.TINY's shapes: BERT with erf,
ReLU and tanh GELU, RoBERTa, XLM-R, ELECTRA with and without its projection, ALBERT with shared groups and
inner groups, DistilBERT with ReLU, and with GELU and a sinusoidal position table). Inputs are right-padded
batches. Two losses: transformers' own, `model(..., start_positions=, end_positions=).loss.backward()` in
eval mode (positions include one past the sequence, clamped and ignored, and one below 0, clamped to 0),
against `model.gradients(..., start_positions=, end_positions=)`; and given upstream gradients of the logits.
Every weight tensor (by checkpoint key) and the gradient of the embeddings module's output must lie within
1e-4 (float32) or 1e-9 (float64) of that tensor's max |torch gradient|; a failure prints the table of every
tensor, the first one over marked. Then transformers' frozen and padding rows, qa_loss alone against
torch's CrossEntropyLoss, and one full-size DistilBERT in float32."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
pytest.importorskip("transformers", reason="transformers (the parity extra) is not installed")

import npbert  # noqa: E402
from npbert.model import qa_loss  # noqa: E402
from npbert.weights import canonical_keys  # noqa: E402
from parity_helpers import (  # noqa: E402
    EMBEDDINGS_OUTPUT,
    GRADIENT_TOLERANCES,
    assert_gradients_close,
    family_checkpoint,
    family_inputs,
    gradient_rows,
    gradient_table,
    right_padded,
    torch_gradients,
)
from test_family_parity import COMMON, TINY  # noqa: E402

DISTILBERT_SINUSOIDAL = (
    "distilbert",
    dict(vocab_size=60, dim=16, n_heads=4, hidden_dim=30, n_layers=2, sinusoidal_pos_embds=True),
)
CASES = [case for case in TINY if case[0] != "deberta-v2"] + [DISTILBERT_SINUSOIDAL]


def case_id(case) -> str:
    model_type, cfg = case
    shown = ("hidden_act", "activation", "embedding_size", "num_hidden_groups", "inner_group_num", "hidden_size", "dim")
    flags = ["sinusoidal"] if cfg.get("sinusoidal_pos_embds") else []
    return "-".join([model_type, *(f"{k.split('_')[0]}{cfg[k]}" for k in shown if k in cfg), *flags])


@pytest.fixture(scope="module", params=CASES, ids=[case_id(c) for c in CASES])
def tiny_family(request, tmp_path_factory):
    model_type, cfg = request.param
    folder, model = family_checkpoint(
        tmp_path_factory.mktemp(model_type), model_type, seed=200 + CASES.index(request.param), **{**COMMON, **cfg}
    )
    return folder, model, copy.deepcopy(model).double()


def batch(rng, config, lengths, seq_len=None):
    """Right-padded inputs, and start/end positions inside each row, but for the first row's start (past
    the sequence: clamped to S, ignored) and the last row's end (below 0: clamped to 0)."""
    inputs = family_inputs(rng, lengths, config, seq_len)
    S = inputs["input_ids"].shape[1]
    start = np.array([rng.integers(0, n) for n in lengths])
    end = np.minimum(start + rng.integers(0, 4, len(lengths)), np.asarray(lengths) - 1)
    start[0], end[-1] = S + 3, -2
    return inputs, start, end


def npbert_gradients(model, inputs, **kw):
    """model.gradients on the inputs, and its gradients keyed as torch_gradients' are (checkpoint keys,
    EMBEDDINGS_OUTPUT)."""
    g = model.gradients(
        inputs["input_ids"], attention_mask=inputs["attention_mask"], token_type_ids=inputs.get("token_type_ids"), **kw
    )
    return g, {**g.named(model.config), EMBEDDINGS_OUTPUT: g.embeddings}


def theirs_by_key(t) -> dict:
    return {**t["weights"], EMBEDDINGS_OUTPUT: t["embeddings"]}


def compared(model) -> dict[str, str]:
    """canonical name -> checkpoint key of every tensor torch differentiates: all but DistilBERT's sinusoidal
    table (transformers builds it with requires_grad False; test_sinusoidal_table_is_frozen checks it)."""
    keys = canonical_keys(model.config)
    if model.config.sinusoidal_pos_embds:
        del keys["embeddings.position_embeddings.weight"]
    return keys


@pytest.mark.parametrize("loss", ["positions", "upstream"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("kernels", ["numba", "numpy"])
def test_tiny_family_gradients_match_torch(tiny_family, kernels, dtype, loss):
    folder, torch32, torch64 = tiny_family
    torch_model = torch64 if dtype == np.float64 else torch32
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=dtype, kernels=kernels)
    rng = np.random.default_rng(11)
    S = torch_model.config.max_position_embeddings - 2 * (torch_model.config.pad_token_id + 1)  # RoBERTa fits
    lengths = [S, int(rng.integers(2, S)), 1, int(rng.integers(1, S))]
    inputs, start, end = batch(rng, torch_model.config, lengths)
    if loss == "positions":
        kw = dict(start_positions=start, end_positions=end)
    else:  # any upstream gradient, padded positions' included (their logits are computed and can be read)
        d_start, d_end = rng.normal(size=(2, len(lengths), S)).astype(dtype)
        kw = dict(d_start_logits=d_start, d_end_logits=d_end)
    theirs = torch_gradients(torch_model, inputs, **kw)
    g, ours = npbert_gradients(model, inputs, **kw)
    assert ours[EMBEDDINGS_OUTPUT].dtype == dtype
    rel = GRADIENT_TOLERANCES[np.dtype(dtype)]
    title = f"{folder.name} kernels={kernels} dtype={np.dtype(dtype).name} loss={loss} lengths={lengths}"
    assert_gradients_close(gradient_rows(ours, theirs_by_key(theirs), compared(model)), rel, title)
    if loss == "positions":
        assert g.loss == pytest.approx(theirs["loss"], rel=10 * rel)
    else:
        assert g.loss is None


def test_padding_rows_get_no_gradient(tiny_family):
    # torch's nn.Embedding(padding_idx=pad) leaves the padding id's row without gradient (word embeddings,
    # and RoBERTa's position table, whose padded positions read row pad), although padded positions feed
    # the logits; npbert gives those rows exactly 0 as well.
    folder, _, torch_model = tiny_family
    config = torch_model.config
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64, kernels="numpy")
    inputs, start, end = batch(np.random.default_rng(5), config, [9, 4, 1])
    g, ours = npbert_gradients(model, inputs, start_positions=start, end_positions=end)
    theirs = torch_gradients(torch_model, inputs, start_positions=start, end_positions=end)["weights"]
    keys = canonical_keys(model.config)
    padded = inputs["attention_mask"] == 0
    assert np.abs(g.embeddings[padded]).max() > 1e-6  # padded positions do receive gradient
    rows = {"embeddings.word_embeddings.weight": config.pad_token_id}
    if config.model_type in ("roberta", "xlm-roberta"):
        rows["embeddings.position_embeddings.weight"] = config.pad_token_id
    for name, row in rows.items():
        assert not theirs[keys[name]][row].any() and not ours[keys[name]][row].any(), name
        assert np.abs(ours[keys[name]]).max() > 0


@pytest.mark.parametrize("sinusoidal", [True, False], ids=["sinusoidal", "learned"])
def test_sinusoidal_table_is_frozen(tmp_path, sinusoidal):
    # transformers' DistilBERT builds its sinusoidal position table with requires_grad False: torch gives it
    # no gradient (p.grad is None), and npbert gives it zeros (what a torch optimiser applies to it: nothing).
    # A learned table gets its gradient (compared in test_tiny_family_gradients_match_torch).
    cfg = {**COMMON, **DISTILBERT_SINUSOIDAL[1], "sinusoidal_pos_embds": sinusoidal}
    folder, torch_model = family_checkpoint(tmp_path, "distilbert", seed=3, **cfg)
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder, dtype=np.float64)
    inputs, start, end = batch(np.random.default_rng(6), torch_model.config, [7, 3])
    _, ours = npbert_gradients(model, inputs, start_positions=start, end_positions=end)
    theirs = torch_gradients(torch_model, inputs, start_positions=start, end_positions=end)["weights"]
    key = canonical_keys(model.config)["embeddings.position_embeddings.weight"]
    if sinusoidal:
        assert key not in theirs and not ours[key].any()
    else:
        assert np.abs(theirs[key]).max() > 0 and key in compared(model).values()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tiny_family_random_batches(tiny_family, data):
    # Short random batches can make a tensor's gradient a near-cancellation (ALBERT's four runs of shared
    # blocks at S 1-3: a query weight's max |grad| 1e-3 of its neighbours'), which float32 does not resolve
    # to 1e-4 of itself: torch's own float32 gradient is then up to 6e-3 of it from float64's. So float32 is
    # held to float64's gradient (the truth, to 1e-15), within 1e-4 of max |grad| or, where that is
    # tighter than float32 allows, within 10 times torch float32's own distance from it.
    folder, torch32, torch64 = tiny_family
    model = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
    S = data.draw(st.integers(1, torch32.config.max_position_embeddings - 4), label="S")
    lengths = data.draw(st.lists(st.integers(1, S), min_size=1, max_size=3), label="lengths")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    inputs, start, end = batch(rng, torch32.config, lengths, seq_len=S)
    kw = dict(start_positions=start, end_positions=end)
    truth = theirs_by_key(torch_gradients(torch64, inputs, **kw))
    _, ours = npbert_gradients(model, inputs, **kw)
    rows = gradient_rows(ours, truth, compared(model))
    torch_rows = gradient_rows(theirs_by_key(torch_gradients(torch32, inputs, **kw)), truth, compared(model))
    rel = GRADIENT_TOLERANCES[np.dtype(np.float32)]
    over = [r[0] for r, t in zip(rows, torch_rows) if not r[2] <= max(rel * r[3], 10 * t[2])]
    title = f"{folder.name} S={S} lengths={lengths}: float32 against torch's float64 gradients; over: {over}"
    assert not over, "\n" + gradient_table(rows, rel, title)


# --- qa_loss alone, against transformers' *ForQuestionAnswering loss on torch ----------------------------


def torch_qa_loss(start_logits, end_logits, start_positions, end_positions):
    """transformers 4.57.6 DistilBertForQuestionAnswering.forward's loss (every family's is the same lines),
    and torch's gradients of it."""
    start, end = (torch.tensor(a, requires_grad=True) for a in (start_logits, end_logits))
    ignored_index = start.size(1)
    start_positions = torch.tensor(start_positions).clamp(0, ignored_index)
    end_positions = torch.tensor(end_positions).clamp(0, ignored_index)
    loss_fct = torch.nn.CrossEntropyLoss(ignore_index=ignored_index)
    total_loss = (loss_fct(start, start_positions) + loss_fct(end, end_positions)) / 2
    total_loss.backward()
    return float(total_loss.detach()), start.grad.numpy(), end.grad.numpy()


@given(
    B=st.integers(1, 4),
    S=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
    outside=st.sampled_from(["none", "some", "all start", "all"]),
)
def test_qa_loss_matches_torch(B, S, seed, dtype, outside):
    rng = np.random.default_rng(seed)
    start_logits, end_logits = (rng.normal(0, 3, (B, S)).astype(dtype) for _ in range(2))
    start, end = rng.integers(-2, S + 3, B), rng.integers(-2, S + 3, B)  # clamped to [0, S]; S is ignored
    if outside == "none":
        start, end = start.clip(0, S - 1), end.clip(0, S - 1)
    if outside in ("all start", "all"):
        start[:] = S + rng.integers(0, 3)  # every start ignored: torch's mean over no rows is nan
    if outside == "all":
        end[:] = S
    loss, d_start, d_end = qa_loss(start_logits, end_logits, start, end)
    t_loss, t_start, t_end = torch_qa_loss(start_logits, end_logits, start, end)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert d_start.dtype == d_end.dtype == dtype and d_start.shape == d_end.shape == (B, S)
    if np.isnan(t_loss):
        assert np.isnan(loss)
    else:
        assert loss == pytest.approx(t_loss, rel=rtol, abs=rtol)
    np.testing.assert_allclose(d_start, t_start, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(d_end, t_end, rtol=rtol, atol=rtol)


# --- full size: DistilBERT 28996 x 768, 6 layers (the real checkpoint's shape), float32 ------------------


def test_full_size_distilbert_gradients(full_transformers):
    folder, torch_model = full_transformers
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, dtype=np.float32)
    lengths, S = [96, 57], 96
    ids, mask = right_padded(np.random.default_rng(24), lengths, 28996, seq_len=S)
    inputs = {"input_ids": ids, "attention_mask": mask}
    start, end = np.array([5, 40]), np.array([9, 44])
    theirs = torch_gradients(torch_model, inputs, start_positions=start, end_positions=end)
    g, ours = npbert_gradients(model, inputs, start_positions=start, end_positions=end)
    rows = gradient_rows(ours, theirs_by_key(theirs), compared(model))
    rel = GRADIENT_TOLERANCES[np.dtype(np.float32)]
    assert_gradients_close(rows, rel, f"full size DistilBERT float32 lengths={lengths}")
    assert g.loss == pytest.approx(theirs["loss"], rel=1e-5)
