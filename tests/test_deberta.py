"""DeBERTa's disentangled attention without torch: the numba kernel against its numpy reference
(kernels.disentangled_attention_*, as tests/test_kernels.py does for the other kernels), the relative
position buckets against their definition, the score terms against one dot product each, and the config
keys (pos_att_type spellings, DeBERTa keys ignored elsewhere, the ConvLayer refused). The backward: the
attention's (reference.disentangled_attention_backward_numpy) against float64 central differences and
against torch autograd of transformers' own lines (where torch is installed), its numba twin against it,
and whole tiny models' gradients against central differences (tests/test_gradients.py's, for DeBERTa).
tests/parity/test_deberta_parity.py and test_deberta_gradients.py compare whole models with transformers."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import test_gradients
from npbert import deberta
from npbert.config import Config, ConfigError
from npbert.ops import numba as kernels, reference
from test_kernels import as_in_a_model_call, assert_close, random_keep
from test_walkthrough import ROOT, blocks


def random_inputs(rng, B, S, H, Dh, span, terms, dtype=np.float32, scale=1.0):
    D = H * Dh
    qkv = (scale * rng.standard_normal((B, S, 3 * D))).astype(dtype)  # views of one fused projection, as the model
    table = (scale * rng.standard_normal((2 * span, 2 * D))).astype(dtype)
    pos_k = table[:, :D] if "c2p" in terms else None
    pos_q = table[:, D:] if "p2c" in terms else None
    return qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :], pos_k, pos_q


def run_both(q, k, v, pos_k, pos_q, relative, span, keep, H, scale, tol=1e-6):
    c2p_pos, p2c_pos = deberta.c2p_index(relative, span), deberta.p2c_index(relative, span)
    args = (q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, H, scale)
    ref_ctx, ref_probs = reference.disentangled_attention_numpy(*args, return_probs=True)
    ctx, probs = kernels.disentangled_attention_numba(*args, return_probs=True)
    assert_close(probs, ref_probs, tol)
    assert_close(ctx, ref_ctx, tol)
    assert kernels.disentangled_attention_numba(*args)[1] is None
    return probs


# Shapes and settings of one attention: batch, sequence, heads and their width, bucket settings, terms.
ATTENTION_CASES = dict(
    B=st.integers(1, 3),
    S=st.integers(1, 30),
    H=st.sampled_from([1, 2, 4]),
    Dh=st.sampled_from([1, 4, 16]),
    buckets=st.sampled_from([-1, 4, 8, 16]),
    max_position=st.sampled_from([-1, 12, 40]),
    terms=st.sampled_from([("c2p", "p2c"), ("c2p",), ("p2c",), ()]),
    seed=st.integers(0, 2**32 - 1),
)


@given(**ATTENTION_CASES, scale=st.sampled_from([0.3, 1.0, 3.0]))
def test_disentangled_attention_matches_reference(B, S, H, Dh, buckets, max_position, terms, scale, seed):
    rng = np.random.default_rng(seed)
    max_position = max_position if max_position > 0 else 64
    span = buckets if buckets > 0 else max_position
    q, k, v, pos_k, pos_q = random_inputs(rng, B, S, H, Dh, span, terms, scale=scale)
    keep = random_keep(rng, B, S)
    probs = run_both(
        q,
        k,
        v,
        pos_k,
        pos_q,
        deberta.relative_positions(S, buckets, max_position),
        span,
        keep,
        H,
        deberta.attention_scale(Dh, terms, np.float32),
    )
    for b in range(B):
        # The 2-D mask: a padded query's row is uniform over all S keys; a kept one is 0 at padded keys.
        np.testing.assert_array_equal(probs[b][:, ~keep[b]], np.float32(1.0 / S) * np.ones((H, (~keep[b]).sum(), S)))
        assert not probs[b][:, keep[b]][..., ~keep[b]].any()


def test_disentangled_attention_float64_and_no_relative_terms():
    rng = np.random.default_rng(1)
    q, k, v, pos_k, pos_q = random_inputs(rng, 2, 17, 2, 8, 8, ("c2p", "p2c"), np.float64)
    keep = random_keep(rng, 2, 17)
    run_both(
        q,
        k,
        v,
        pos_k,
        pos_q,
        deberta.relative_positions(17, 8, 32),
        8,
        keep,
        2,
        deberta.attention_scale(8, ("c2p", "p2c"), np.float64),
        tol=1e-12,
    )
    # relative_attention false: no table, no indices; content only, still scaled by sqrt(Dh * 3).
    scale = deberta.attention_scale(8, ("c2p", "p2c"), np.float64)
    ctx, probs = kernels.disentangled_attention_numba(
        q, k, v, None, None, None, None, keep, 2, scale, return_probs=True
    )
    ref_ctx, ref_probs = reference.disentangled_attention_numpy(q, k, v, None, None, None, None, keep, 2, scale, True)
    assert_close(probs, ref_probs, 1e-12)
    assert_close(ctx, ref_ctx, 1e-12)


def test_large_disentangled_attention_is_split_over_threads_and_agrees(monkeypatch):
    used = []
    blas_calls = as_in_a_model_call(monkeypatch, 2)
    kernel = kernels._disentangled_mask_shift_numba
    monkeypatch.setattr(
        kernels, "_disentangled_mask_shift_numba", lambda *a: (used.append(threading.get_ident()), kernel(*a))[1]
    )
    rng = np.random.default_rng(6)
    q, k, v, pos_k, pos_q = random_inputs(rng, 2, 80, 8, 8, 16, ("c2p", "p2c"))
    assert 2 * 8 * 80 * 80 >= kernels._ATTENTION_SERIAL_BELOW
    run_both(
        q,
        k,
        v,
        pos_k,
        pos_q,
        deberta.relative_positions(80, 16, 64),
        16,
        random_keep(rng, 2, 80),
        8,
        deberta.attention_scale(8, ("c2p", "p2c"), np.float32),
    )
    assert blas_calls[:2] == ["one thread", "restored"]
    assert len(used) == 2 * 2 * 8 and len(set(used)) >= 2  # every (row, head) once per call, on both threads


# --- the backward ------------------------------------------------------------------------------------------


def backward_case(rng, B, S, H, Dh, buckets, max_position, terms, dtype=np.float64):
    """Random inputs of one disentangled attention (random padding, fully masked rows included), the
    index arrays of a bucket setting, and a random upstream gradient of the context."""
    max_position = max_position if max_position > 0 else 64
    span = buckets if buckets > 0 else max_position
    q, k, v, pos_k, pos_q = random_inputs(rng, B, S, H, Dh, span, terms, dtype)
    relative = deberta.relative_positions(S, buckets, max_position)
    args = (deberta.c2p_index(relative, span), deberta.p2c_index(relative, span), random_keep(rng, B, S), H)
    scale = deberta.attention_scale(Dh, terms, dtype)
    d_context = rng.standard_normal(q.shape).astype(dtype)
    return [q, k, v, pos_k, pos_q], args, scale, d_context


def backward(inputs, args, scale, d_context):  # -> dq, dk, dv, d_pos_k, d_pos_q
    q, k, v, pos_k, pos_q = inputs
    c2p_pos, p2c_pos, keep, H = args
    _, probs = reference.disentangled_attention_numpy(q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, H, scale, True)
    return reference.disentangled_attention_backward_numpy(
        d_context, q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, probs, keep, H, scale
    )


@given(
    B=st.integers(1, 3),
    S=st.integers(1, 12),
    H=st.sampled_from([1, 2]),
    Dh=st.sampled_from([1, 3]),
    buckets=st.sampled_from([-1, 4, 8]),
    max_position=st.sampled_from([-1, 6, 16]),
    terms=st.sampled_from([("c2p", "p2c"), ("c2p",), ("p2c",), ()]),
    seed=st.integers(0, 2**32 - 1),
)
def test_disentangled_attention_backward_matches_finite_differences(B, S, H, Dh, buckets, max_position, terms, seed):
    # float64 central differences of f = <d_context, context> along a random direction, one input at a
    # time: the gathers' scatter-add, the clamp (rows shared by many keys), the pair mask (padded query
    # rows: their uniform probabilities depend on v only), the scale.
    rng = np.random.default_rng(seed)
    inputs, args, scale, d_context = backward_case(rng, B, S, H, Dh, buckets, max_position, terms)
    grads = backward(inputs, args, scale, d_context)

    def f(xs):
        return np.sum(d_context * reference.disentangled_attention_numpy(*xs[:5], *args[:3], args[3], scale)[0])

    eps = 1e-6
    for n, (x, g) in enumerate(zip(inputs, grads)):
        assert (x is None) == (g is None), f"input {n}"
        if x is None:
            continue
        assert g.shape == x.shape and g.dtype == x.dtype
        direction = rng.standard_normal(x.shape)
        plus, minus = list(inputs), list(inputs)
        plus[n], minus[n] = x + eps * direction, x - eps * direction
        numeric = (f(plus) - f(minus)) / (2 * eps)
        assert np.sum(g * direction) == pytest.approx(numeric, rel=1e-6, abs=1e-8), f"input {n}"


@given(**ATTENTION_CASES, dtype=st.sampled_from([np.float32, np.float64]))
def test_disentangled_attention_backward_kernel_matches_reference(
    B, S, H, Dh, buckets, max_position, terms, dtype, seed
):
    rng = np.random.default_rng(seed)
    inputs, args, scale, d_context = backward_case(rng, B, S, H, Dh, buckets, max_position, terms, dtype)
    c2p_pos, p2c_pos, keep, _ = args
    probs = reference.disentangled_attention_numpy(*inputs, c2p_pos, p2c_pos, keep, H, scale, True)[1]
    call = (d_context, *inputs, c2p_pos, p2c_pos, probs, keep, H, scale)
    tol = 1e-5 if dtype == np.float32 else 1e-12  # a table row sums up to S x B gathered entries
    for got, want in zip(
        kernels.disentangled_attention_backward_numba(*call), backward(inputs, args, scale, d_context)
    ):
        assert (got is None) == (want is None)
        if want is not None:
            assert_close(got, want, tol)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from([np.float32, np.float64]))
def test_disentangled_attention_backward_with_training_dropout(seed, dtype):
    """With a dropout mask on the probabilities (training): the kernel equals the reference, and the reference
    equals central differences of the forward that multiplies its probabilities by that mask."""
    rng = np.random.default_rng(seed)
    inputs, args, scale, d_context = backward_case(rng, 2, 7, 2, 3, 4, 16, ("c2p", "p2c"), dtype)
    c2p_pos, p2c_pos, keep, H = args
    probs = reference.disentangled_attention_numpy(*inputs, c2p_pos, p2c_pos, keep, H, scale, True)[1]
    kept = ((rng.random(probs.shape) >= 0.3) / 0.7).astype(dtype)
    call = (d_context, *inputs, c2p_pos, p2c_pos, probs, keep, H, scale, kept)
    want = reference.disentangled_attention_backward_numpy(*call)
    for got, w in zip(kernels.disentangled_attention_backward_numba(*call), want):
        assert (got is None) == (w is None)
        if w is not None:
            assert_close(got, w, 1e-5 if dtype == np.float32 else 1e-12)
    if dtype == np.float32:
        return

    class Dropping:  # a tap whose dropout multiplies the probabilities by `kept`, as model.Dropout would
        dropout = staticmethod(lambda x, tap, site, key=None: x * kept)

        def __setitem__(self, name, value):
            pass

    def f(xs):
        context = reference.disentangled_attention_numpy(*xs, c2p_pos, p2c_pos, keep, H, scale, tap=Dropping())[0]
        return np.sum(d_context * context)

    for n, g in enumerate(want):
        if g is None:
            continue
        direction = rng.standard_normal(g.shape)
        plus, minus = list(inputs), list(inputs)
        plus[n], minus[n] = inputs[n] + 1e-6 * direction, inputs[n] - 1e-6 * direction
        numeric = (f(plus) - f(minus)) / 2e-6
        assert np.sum(g * direction) == pytest.approx(numeric, rel=1e-6, abs=1e-8), f"input {n}"


def test_large_disentangled_attention_backward_is_split_over_threads_and_agrees(monkeypatch):
    as_in_a_model_call(monkeypatch, 2)
    used = []
    kernel = kernels._pair_softmax_backward_numba
    monkeypatch.setattr(
        kernels, "_pair_softmax_backward_numba", lambda *a: (used.append(threading.get_ident()), kernel(*a))[1]
    )
    rng = np.random.default_rng(8)
    inputs, args, scale, d_context = backward_case(rng, 2, 80, 8, 8, 16, 64, ("c2p", "p2c"), np.float32)
    c2p_pos, p2c_pos, keep, H = args
    probs = reference.disentangled_attention_numpy(*inputs, c2p_pos, p2c_pos, keep, H, scale, True)[1]
    got = kernels.disentangled_attention_backward_numba(d_context, *inputs, c2p_pos, p2c_pos, probs, keep, H, scale)
    for g, want in zip(got, backward(inputs, args, scale, d_context)):
        assert_close(g, want, 1e-5)
    assert len(used) == 2 * 8 and len(set(used)) >= 2  # every (row, head) once, on both threads


def torch_disentangled_attention(torch, q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, H, scale):
    """transformers' DisentangledSelfAttention.forward and disentangled_attention_bias (4.57.6), on
    [B, S, D] tensors and the npbert index arrays: bmm per (batch x head), gather, masked_fill, softmax."""
    B, S, D = q.shape

    def split(x):  # transpose_for_scores: [B, S, D] -> [B*H, S, Dh]
        return x.view(x.shape[0], x.shape[1], H, -1).permute(0, 2, 1, 3).reshape(-1, x.shape[1], D // H)

    ql, kl, vl = split(q), split(k), split(v)
    scores = torch.bmm(ql, kl.transpose(-1, -2) / scale)
    if pos_k is not None:
        pk = split(pos_k[None]).repeat(B, 1, 1)
        c2p = torch.gather(torch.bmm(ql, pk.transpose(-1, -2)), -1, c2p_pos.expand(B * H, S, S))
        scores = scores + c2p / scale
    if pos_q is not None:
        pq = split(pos_q[None]).repeat(B, 1, 1)
        p2c = torch.gather(torch.bmm(kl, pq.transpose(-1, -2)), -1, p2c_pos.expand(B * H, S, S)).transpose(-1, -2)
        scores = scores + p2c / scale
    scores = scores.view(B, H, S, S)
    mask = (keep[:, None, :, None] & keep[:, None, None, :]).expand(B, H, S, S)
    probs = torch.softmax(scores.masked_fill(~mask, torch.finfo(q.dtype).min), dim=-1)
    return torch.bmm(probs.view(-1, S, S), vl).view(B, H, S, -1).permute(0, 2, 1, 3).reshape(B, S, D)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("terms", [("c2p", "p2c"), ("c2p",), ("p2c",), ()], ids=lambda t: "|".join(t) or "none")
@pytest.mark.parametrize("buckets, max_position", [(-1, 6), (4, 16), (8, 40)])
def test_disentangled_attention_backward_equals_torch_autograd(dtype, tol, terms, buckets, max_position):
    torch = pytest.importorskip("torch", reason="torch (the parity extra) is not installed")
    rng = np.random.default_rng(buckets + max_position)
    inputs, args, scale, d_context = backward_case(rng, 3, 23, 2, 4, buckets, max_position, terms, dtype)
    c2p_pos, p2c_pos, keep, H = args
    leaves = [None if x is None else torch.tensor(x, requires_grad=True) for x in inputs]
    context = torch_disentangled_attention(
        torch, *leaves, torch.from_numpy(c2p_pos), torch.from_numpy(p2c_pos), torch.from_numpy(keep), H, float(scale)
    )
    context.backward(torch.from_numpy(d_context))
    for name, leaf, ours in zip(("q", "k", "v", "pos_k", "pos_q"), leaves, backward(inputs, args, scale, d_context)):
        if leaf is None:
            assert ours is None, name
            continue
        theirs = leaf.grad.numpy()
        assert ours.dtype == dtype, name
        err = np.abs(ours.astype(np.float64) - theirs).max() / np.abs(theirs).max()
        assert err <= tol, f"{name}: max |diff| / max |grad| = {err:.2e} > {tol:.0e}"


# --- the backward of a whole model, by finite differences (tests/test_gradients.py's, for DeBERTa) ----------

_TINY = dict(
    test_gradients.FAMILIES["bert"],  # its widths
    model_type="deberta-v2",
    relative_attention=True,
    position_buckets=4,
    max_relative_positions=12,
    pos_att_type="p2c|c2p",
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    position_biased_input=False,
    type_vocab_size=0,
)
DEBERTA_MODELS = {
    "v3": _TINY,
    "own-pos-proj-c2p": dict(_TINY, share_att_key=False, pos_att_type="c2p", norm_rel_ebd="none"),
    "v2-absolute-types-p2c": dict(
        _TINY,
        position_buckets=-1,
        max_relative_positions=-1,
        pos_att_type="p2c",
        share_att_key=False,
        position_biased_input=True,
        type_vocab_size=2,
        hidden_act="gelu_new",
    ),
    "no-relative-attention": dict(_TINY, relative_attention=False, position_biased_input=True, pad_token_id=3),
}


@pytest.mark.parametrize("kind", ["loss", "upstream"])
@pytest.mark.parametrize("name", list(DEBERTA_MODELS))
def test_deberta_gradients_are_the_forwards_derivatives(name, kind):
    # Every weight tensor and the embeddings module's output, along a random direction each, float64 central
    # differences of npbert's own forward: no torch needed.
    config, tensors, inputs = test_gradients.random_model(DEBERTA_MODELS[name], seed=3)
    rng = np.random.default_rng(4)
    f, kw = test_gradients.objective(kind, rng, *inputs["input_ids"].shape)
    model = test_gradients.model_of(config, tensors)
    g = model.gradients(**inputs, **kw)
    assert set(g.weights) == set(tensors)
    for n, t in tensors.items():
        direction = rng.standard_normal(t.shape)
        for frozen, row in test_gradients.frozen_rows(config).items():
            if n == frozen:
                assert not g.weights[n][row].any()  # the padding id's word row: torch's padding_idx
                direction[row] = 0.0
        direction = test_gradients.unit(direction)

        def along(h, n=n, t=t, direction=direction):
            return f(*test_gradients.logits_of(config, {**tensors, n: t + h * direction}, inputs))

        test_gradients.assert_directional(along, float((g.weights[n] * direction).sum()), n)
    embedded, keep = model.embed(**inputs), inputs["attention_mask"].astype(bool)
    direction = test_gradients.unit(rng.standard_normal(embedded.shape))
    along = lambda h: f(*test_gradients.logits_from_embedded(config, tensors, embedded + h * direction, keep))  # noqa: E731
    test_gradients.assert_directional(along, float((g.embeddings * direction).sum()), "embeddings output")


# --- the pure functions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("buckets, max_position", [(4, 16), (8, 40), (16, 64), (256, 512), (64, 128)])
def test_log_buckets(buckets, max_position):
    S = 3 * max_position
    relative = deberta.relative_positions(S, buckets, max_position)
    distance = np.arange(S)[:, None] - np.arange(S)[None, :]
    mid = buckets // 2
    near = np.abs(distance) <= mid
    np.testing.assert_array_equal(relative[near], distance[near])  # near: one bucket per distance
    np.testing.assert_array_equal(relative, -relative.T)  # bucket(-d) = -bucket(d)
    # Far: ceil(log(|d| / mid) / log((max - 1) / mid) * (mid - 1)) + mid, the definition, in float64 here
    # (the float32 of the implementation may differ only where this lands on an integer).
    d = np.abs(distance[~near]).astype(np.float64)
    exact = np.log(d / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    on_integer = np.isclose(exact, np.round(exact), atol=1e-5)
    far = np.abs(relative[~near])
    np.testing.assert_array_equal(far[~on_integer], (np.ceil(exact) + mid)[~on_integer])
    assert (np.diff(relative[-1]) <= 0).all()  # monotone in the distance


def test_relative_positions_without_buckets_are_plain_distances():
    np.testing.assert_array_equal(deberta.relative_positions(5, -1, 512), np.arange(5)[:, None] - np.arange(5))
    span = 3
    rel = deberta.relative_positions(6, -1, 512)
    assert deberta.c2p_index(rel, span).min() == 0 and deberta.c2p_index(rel, span).max() == 2 * span - 1
    np.testing.assert_array_equal(deberta.p2c_index(rel, span), deberta.c2p_index(rel, span).T)


def test_score_terms_are_one_dot_product_each():
    rng = np.random.default_rng(0)
    S, Dh, span = 6, 4, 4
    q, k = rng.standard_normal((S, Dh)), rng.standard_normal((S, Dh))
    pos_k, pos_q = rng.standard_normal((2 * span, Dh)), rng.standard_normal((2 * span, Dh))
    rel = deberta.relative_positions(S, 4, 16)
    c2p_pos, p2c_pos = deberta.c2p_index(rel, span), deberta.p2c_index(rel, span)
    scale = deberta.attention_scale(Dh, ("c2p", "p2c"), np.float64)
    assert scale == np.float32(math.sqrt(12))  # sqrt(Dh x 3), rounded to float32 as transformers
    c2c, c2p, p2c = reference.score_terms(q, k, pos_k, pos_q, c2p_pos, p2c_pos, scale)
    for i in range(S):
        for j in range(S):
            assert c2c[i, j] == pytest.approx(q[i] @ k[j] / scale, abs=1e-14)
            assert c2p[i, j] == pytest.approx(q[i] @ pos_k[c2p_pos[i, j]] / scale, abs=1e-14)
            assert p2c[i, j] == pytest.approx(k[j] @ pos_q[p2c_pos[j, i]] / scale, abs=1e-14)
    assert reference.score_terms(q, k, None, pos_q, c2p_pos, p2c_pos, scale)[1] is None


def test_token_types_are_ignored_without_a_token_type_table():
    # As transformers' DebertaV2Model: the tokenizer's token_type_ids are taken and unused when
    # type_vocab_size is 0 (DeBERTa-v3).
    import npbert

    model = npbert.AutoModelForQuestionAnswering.from_pretrained(
        ROOT / "tests" / "fixtures" / "reference" / "deberta-v2"
    )
    assert model.config.type_vocab_size == 0
    ids = np.array([[1, 12, 7, 2, 9, 30, 2]])
    types = np.array([[0, 0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(model(ids, token_type_ids=types).start_logits, model(ids).start_logits)


# --- the config -----------------------------------------------------------------------------------------------


def _config(**d):
    return Config.from_dict({"model_type": "deberta-v2", "hidden_size": 16, "num_attention_heads": 2, **d})


def test_deberta_config_keys():
    c = _config(relative_attention=True, pos_att_type="P2C|c2p", position_buckets=256, norm_rel_ebd="layer_norm")
    assert c.pos_att_type == ("p2c", "c2p") and c.relative_span == 256 and c.normalises_rel_embeddings
    assert c.layer_norm_eps == 1e-7 and c.type_vocab_size == 0 and c.position_biased_input  # the class defaults
    assert _config(pos_att_type=None).pos_att_type == ()
    assert _config(max_position_embeddings=64).relative_span == 64  # no buckets, no max_relative_positions
    assert _config(max_relative_positions=24).relative_span == 24
    # Another family's config naming a DeBERTa key: not read (a BERT keeps its absolute positions).
    assert Config.from_dict({"model_type": "bert", "position_biased_input": False}).position_biased_input


@pytest.mark.parametrize(
    "d, message",
    [
        (dict(conv_kernel_size=3), "conv_kernel_size 3 .*ConvLayer of DeBERTa-v2 xlarge/xxlarge.* not supported"),
        (dict(embedding_size=8), "embedding_size 8 != hidden_size 16"),
        (dict(pos_att_type=[1]), "pos_att_type must be a list of strings"),
    ],
)
def test_deberta_configs_refused_in_one_line(d, message):
    with pytest.raises(ConfigError, match=message) as e:
        _config(**d)
    assert "\n" not in str(e.value)


# --- docs/deberta.md, executed -----------------------------------------------------------------------------


def test_deberta_page_examples_run(capsys):
    # The page names the real checkpoint; here the tiny DeBERTa-v3-style one of the reference fixture.
    fixture = ROOT / "tests" / "fixtures" / "reference" / "deberta-v2"
    code = blocks("deberta.md", "python")
    assert len(code) >= 5, "docs/deberta.md lost its examples"
    namespace = {"__name__": "deberta_page"}
    for i, block in enumerate(code):
        source = block.replace("deepset/deberta-v3-base-squad2", str(fixture))
        try:
            exec(compile(source, f"docs/deberta.md python block {i + 1}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"docs/deberta.md python block {i + 1} failed: {e!r}\n{block}") from e
    printed = capsys.readouterr().out
    assert "layer.0.attention.c2p" in printed and "a padded query's row" in printed
    assert "{0: 0, 1: 1, 127: 127, 128: 128, 129: 129, 200: 169, 300: 207, 511: 255, 599: 270}" in printed
