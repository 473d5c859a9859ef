"""The numba kernels against their plain-numpy references (npbert/ops/reference.py against npbert/ops/numba.py
and npbert/ops/gemm.py), the float32 erf against float64 `math.erf`, the kernel switch (`select`,
NPBERT_KERNELS, `kernels=`), and the load-time re-layout (`layout.relayout_for_speed`).

Tolerance: max |kernel - reference| <= 1e-6 in float32 on values of order 1; on larger outputs the bound
is relative (1e-6 x |reference|), since float32 itself resolves only ~6e-8 x |value|. float64 (audit mode)
is compared at 1e-12. The backward's twins: against the reference run in float64, within a first-order
rounding bound (see "the backward" below).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import subprocess
import sys
import threading
import time

import numba
import numpy as np
import pytest
from hypothesis import given, strategies as st

import checkpoints
import npbert
from npbert import layout, ops, threads as npbert_threads, weights as W, workers
from npbert.ops import gemm, numba as kernels, parallel, reference
from process_helpers import in_forked_child

TOL32 = 1e-6


def assert_close(kernel, reference, tol=TOL32):
    assert kernel.shape == reference.shape and kernel.dtype == reference.dtype
    err = np.abs(kernel.astype(np.float64) - reference) / np.maximum(1.0, np.abs(reference.astype(np.float64)))
    assert err.max(initial=0.0) <= tol, f"max scaled |diff| {err.max()} > {tol}"


def random_keep(rng, B, S):
    """Padding masks with the cases that break softmaxes: a single kept key, no kept key at all,
    every key kept, and random (not only right-padded) patterns."""
    keep = rng.random((B, S)) < 0.6
    kinds = rng.integers(0, 4, B)
    for b, kind in enumerate(kinds):
        if kind == 0:
            keep[b] = False
            keep[b, rng.integers(S)] = True  # one kept key: its probability is exactly 1
        elif kind == 1:
            keep[b] = False  # fully masked: transformers softmaxes finfo.min to a uniform row
        elif kind == 2:
            keep[b] = True
    return keep


# --- attention -----------------------------------------------------------------------------------------


def run_attention(q, k, v, keep, H):
    ref_ctx, ref_probs = reference.attention_numpy(q, k, v, keep, H, return_probs=True)
    ctx, probs = kernels.attention_numba(q, k, v, keep, H, return_probs=True)
    assert_close(probs, ref_probs)
    assert_close(ctx, ref_ctx)
    # Without the probabilities the float32 kernel leaves them unnormalised and divides the context instead.
    ctx, no_probs = kernels.attention_numba(q, k, v, keep, H)
    assert no_probs is None
    assert_close(ctx, ref_ctx)
    return probs


# The shapes the attention tests draw (forward and backward alike).
ATTENTION_SHAPES = dict(
    B=st.integers(1, 3),
    S=st.integers(1, 33),
    H=st.sampled_from([1, 2, 4]),
    Dh=st.sampled_from([1, 4, 16, 64]),
    scale=st.sampled_from([0.1, 1.0, 4.0]),
    seed=st.integers(0, 2**32 - 1),
)


def fused_qkv(rng, B, S, H, Dh, scale, dtype=np.float32):
    """q, k, v as the model passes them: column slices of one fused [B, S, 3D] projection (strided views)."""
    qkv = (scale * rng.standard_normal((B, S, 3 * H * Dh))).astype(dtype)
    D = H * Dh
    return qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]


@given(**ATTENTION_SHAPES)
def test_attention_matches_reference(B, S, H, Dh, scale, seed):
    rng = np.random.default_rng(seed)
    q, k, v = fused_qkv(rng, B, S, H, Dh, scale)
    keep = random_keep(rng, B, S)
    probs = run_attention(q, k, v, keep, H)
    for b in range(B):
        kept = keep[b]
        if not kept.any():
            np.testing.assert_array_equal(probs[b], np.float32(1.0 / S))
        else:
            assert (probs[b][..., ~kept] == 0).all()  # masked keys get exactly 0
            if kept.sum() == 1:
                assert (probs[b][..., kept] == 1).all()


def test_attention_extreme_scores_saturate_like_the_reference():
    # Scores of +-1e4: the softmax is one-hot, exp underflows for all but the max; no inf, no NaN.
    rng = np.random.default_rng(0)
    B, S, H, Dh = 2, 24, 2, 8
    q = (300 * rng.standard_normal((B, S, H * Dh))).astype(np.float32)
    k = (300 * rng.standard_normal((B, S, H * Dh))).astype(np.float32)
    v = rng.standard_normal((B, S, H * Dh)).astype(np.float32)
    keep = np.ones((B, S), dtype=bool)
    keep[1, 5:] = False
    probs = run_attention(q, k, v, keep, H)
    assert np.isfinite(probs).all() and (probs.max(axis=-1) > 0.99).mean() > 0.9


def test_attention_full_size_heads_with_padding():
    # The forward's own shape at S=384 (12 heads of 64, a right-padded and a randomly masked row), beyond
    # the property tests' sizes: every row has several 16-lane blocks of the softmax and a tail.
    rng = np.random.default_rng(2)
    q, k, v = fused_qkv(rng, 2, 384, 12, 64, 1.0)
    keep = np.ones((2, 384), dtype=bool)
    keep[0, 300:] = False
    keep[1] = rng.random(384) < 0.5
    probs = run_attention(q, k, v, keep, 12)
    assert (probs[0][..., 300:] == 0).all() and (probs[1][..., ~keep[1]] == 0).all()


def exp_nonpositive_f32(x):
    """The attention kernel's float32 exp over an array, its 2^n applied as the kernel applies it."""

    @numba.njit
    def run(x, out, bits):
        for i in range(x.size):
            out[i], bits[i] = kernels._exp_nonpositive_f32(x[i])
        out *= bits.view(np.float32)

    out = np.empty_like(x)
    run(x, out, np.empty(x.size, np.int32))
    return out


def test_exp_nonpositive_f32_error_bound_against_float64_exp():
    x = np.concatenate([np.linspace(-87, 0, 400_001), -np.logspace(-30, 0, 2001), [0.0, -0.0]]).astype(np.float32)
    exact = np.exp(x.astype(np.float64))
    ours = np.abs(exp_nonpositive_f32(x) - exact) / exact
    numpys = np.abs(np.exp(x) - exact) / exact
    assert ours.max() < 1e-7 and numpys.max() < 2.5e-7  # about 1 ulp, as numpy's own float32 exp
    assert exp_nonpositive_f32(np.float32([0.0]))[0] == 1.0
    # Where 2^n would be below float32's smallest normal (x < -87.68): 0, not a denormal (the exact value is
    # below 1.2e-38); -inf (a masked key): exactly 0.
    assert (exp_nonpositive_f32(np.float32([-87.7, -90, -104, -1e30, -np.inf])) == 0).all()


@given(
    S=st.integers(1, 70),  # 16-lane blocks and every tail length
    scale=st.sampled_from([0.125, 1.0, 4.0]),
    normalise=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_masked_softmax_f32_against_float64(S, scale, normalise, seed):
    rng = np.random.default_rng(seed)
    scores = (4 * rng.standard_normal((S, S))).astype(np.float32)
    keep = random_keep(rng, 1, S)[0]
    # From the scaled scores in float32, as the kernel and the float32 reference have them: their own
    # rounding (relative 6e-8 of scores up to ~60 here) is the input's, not the softmax's error.
    exact = np.where(keep, scores * np.float32(scale), -np.inf).astype(np.float64)
    exact = np.exp(exact - exact.max(axis=-1, keepdims=True)) if keep.any() else np.ones((S, S))
    exact /= exact.sum(axis=-1, keepdims=True)
    inv_sums = np.full(S, np.nan, dtype=np.float32)
    got = kernels._masked_softmax_f32_numba(scores.copy(), keep, np.float32(scale), normalise, inv_sums)
    if not normalise:
        got = got * inv_sums[:, None]
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-6)
    assert (got[:, ~keep] == 0).all() if keep.any() else (got == np.float32(1 / S)).all()


def test_attention_float64():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 9, 12)) for _ in range(3))
    keep = random_keep(rng, 2, 9)
    ref_ctx, ref_probs = reference.attention_numpy(q, k, v, keep, 3, True)
    ctx, probs = kernels.attention_numba(q, k, v, keep, 3, True)
    assert ctx.dtype == np.float64
    np.testing.assert_allclose(ctx, ref_ctx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-12)


# --- GELU and its erf ----------------------------------------------------------------------------------


def test_erf_rational_error_bound_against_float64_erf():
    # The bound the kernel's comment states: |erf_rational - erf| < 6.5e-8 everywhere (dense grid over the
    # whole range where erf is not yet +-1 in float64, plus the tails), and never beyond +-1.
    x = np.concatenate([np.linspace(-7, 7, 200_001), [-1e30, -40.0, -4.0, 0.0, 4.0, 40.0, 1e30, 1e-30]])
    exact = np.array([math.erf(t) for t in x])
    approx = np.array([kernels.erf_rational(t) for t in x])
    assert np.abs(approx - exact).max() < 6.5e-8
    assert np.abs(approx).max() <= 1.0
    assert np.array_equal(np.sign(approx), np.sign(exact))  # odd, exact 0 at 0


def exact_gelu(x64):
    return 0.5 * x64 * (1.0 + np.array([math.erf(t / math.sqrt(2.0)) for t in x64.ravel()]).reshape(x64.shape))


@given(
    N=st.integers(1, 9), F=st.integers(1, 70), scale=st.sampled_from([0.5, 3.0, 30.0]), seed=st.integers(0, 2**32 - 1)
)
def test_bias_gelu_matches_reference(N, F, scale, seed):
    rng = np.random.default_rng(seed)
    h = (scale * rng.standard_normal((N, F))).astype(np.float32)
    bias = rng.standard_normal(F).astype(np.float32)
    ref = reference.bias_gelu_numpy(h, bias)
    out = kernels.bias_gelu_numba(h.copy(), bias)
    assert_close(out, ref)
    # Against the exact GELU in float64 the kernel errs by at most 0.5 |x| 6.5e-8 plus float32 rounding.
    x64 = (h + bias).astype(np.float64)
    assert (np.abs(out - exact_gelu(x64)) <= 0.5 * np.abs(x64) * 6.5e-8 + 6e-8 * np.abs(exact_gelu(x64)) + 1e-45).all()


def test_bias_gelu_extreme_values():
    x = np.array(
        [[-1e30, -1e4, -40, -6, -5.7, -5.6, -4, -1e-3, -1e-30, 0, 1e-30, 1e-3, 4, 5.7, 40, 1e4, 1e30]], dtype=np.float32
    )
    bias = np.zeros(x.shape[1], dtype=np.float32)
    out = kernels.bias_gelu_numba(x.copy(), bias)
    assert_close(out, reference.bias_gelu_numpy(x, bias))
    assert (out[x <= -6] == 0).all() and (out[x >= 6] == x[x >= 6]).all()  # the tails are exact
    assert np.isfinite(out).all()


def test_bias_gelu_overwrites_its_input_and_float64_is_exact():
    rng = np.random.default_rng(2)
    h = rng.standard_normal((5, 40)) * 4
    bias = rng.standard_normal(40)
    ref = reference.bias_gelu_numpy(h, bias)
    scratch = h.copy()
    out = kernels.bias_gelu_numba(scratch, bias)
    assert out is scratch and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=1e-15, atol=1e-300)  # math.erf in both: no approximation


# --- residual + LayerNorm ------------------------------------------------------------------------------


LAYERNORM_ROWS = dict(  # the rows the LayerNorm tests draw (forward and backward alike)
    N=st.integers(1, 9), D=st.integers(1, 80), scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 2**32 - 1)
)


def layernorm_inputs(rng, N, D, scale):  # x, residual [N, D] of that scale, weight [D] near 1 (float32)
    x = (scale * rng.standard_normal((N, D))).astype(np.float32)
    r = (scale * rng.standard_normal((N, D))).astype(np.float32)
    return x, r, (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)


@given(**LAYERNORM_ROWS)
def test_residual_layernorm_matches_reference(N, D, scale, seed):
    rng = np.random.default_rng(seed)
    x, r, weight = layernorm_inputs(rng, N, D, scale)
    bias = (0.1 * rng.standard_normal(D)).astype(np.float32)
    # The reference run in float64 on the float32 sum (the kernel rounds x + r to float32 first, as the
    # model does): the float32 reference itself loses up to ~3e-6 to cancellation on short rows of large
    # values (D = 2 at scale 1e3), which the kernel's float64 statistics do not.
    y, zero = (x + r).astype(np.float64), np.zeros((N, D))
    exact = reference.residual_layernorm_numpy(y, zero, weight.astype(np.float64), bias.astype(np.float64), 1e-12)
    assert_close(kernels.residual_layernorm_numba(x, r, weight, bias, 1e-12), exact.astype(np.float32))


def test_residual_layernorm_constant_rows_and_float64():
    # A constant row has zero variance: the output is the bias, where eps (1e-12) keeps 0/0 away.
    x = np.full((3, 16), 0.5, dtype=np.float32)
    r = np.full((3, 16), 2.0, dtype=np.float32)
    weight, bias = np.full(16, 2.0, np.float32), np.arange(16, dtype=np.float32)
    out = kernels.residual_layernorm_numba(x, r, weight, bias, 1e-12)
    np.testing.assert_array_equal(out, reference.residual_layernorm_numpy(x, r, weight, bias, 1e-12))
    np.testing.assert_array_equal(out, np.broadcast_to(bias, out.shape))
    rng = np.random.default_rng(3)
    x64, r64 = rng.standard_normal((4, 30)), rng.standard_normal((4, 30))
    w64, b64 = rng.standard_normal(30), rng.standard_normal(30)
    np.testing.assert_allclose(
        kernels.residual_layernorm_numba(x64, r64, w64, b64, 1e-12),
        reference.residual_layernorm_numpy(x64, r64, w64, b64, 1e-12),
        rtol=0,
        atol=1e-12,
    )


def as_in_a_model_call(monkeypatch, threads):
    """Make the kernels split over `threads` threads, as inside a model call given that many OpenBLAS
    threads, and record when they put OpenBLAS on one thread (entered / left)."""
    blas_calls = []

    @contextlib.contextmanager
    def single_blas_thread():
        blas_calls.append("one thread")
        try:
            yield
        finally:
            blas_calls.append("restored")

    monkeypatch.setattr(npbert_threads, "_current", threads)
    monkeypatch.setattr(npbert_threads, "controllable", lambda: True)  # as with numpy's OpenBLAS found
    # Every chunk runs on the thread it was handed to: the caller does not take back a chunk its worker has
    # not started yet (on a busy machine it would, and the threads used would vary; tests/test_workers.py).
    monkeypatch.setattr(workers._Worker, "take_back", lambda self, ticket: False)
    monkeypatch.setattr(npbert_threads, "single_blas_thread", single_blas_thread)
    return blas_calls


def record_threads(monkeypatch, *names):
    """Wrap each named kernel of ops/numba.py to record the thread of every call: {name: [thread ids]}."""
    used = {}
    for name in names:
        kernel = getattr(kernels, name)

        def recorded(*a, kernel=kernel, name=name):
            used.setdefault(name, []).append(threading.get_ident())
            return kernel(*a)

        monkeypatch.setattr(kernels, name, recorded)
    return used


@pytest.mark.parametrize("threads", [2, 3])
def test_large_inputs_are_split_over_threads_and_agree(monkeypatch, threads):
    # The property tests' shapes are small: they run on the calling thread. These are above each kernel's
    # threshold, so each kernel splits its rows (or heads) over `threads` threads, as in a forward given
    # that many OpenBLAS threads; attention sets OpenBLAS to one thread meanwhile and restores it.
    blas_calls = as_in_a_model_call(monkeypatch, threads)
    used = record_threads(monkeypatch, "_masked_softmax_f32_numba", "_bias_gelu_f32_numba", "_residual_layernorm_numba")
    rng = np.random.default_rng(6)
    qkv = rng.standard_normal((2, 80, 3 * 64)).astype(np.float32)
    keep = random_keep(rng, 2, 80)
    assert 2 * 8 * 80 * 80 >= kernels._ATTENTION_SERIAL_BELOW
    run_attention(qkv[..., :64], qkv[..., 64:128], qkv[..., 128:], keep, 8)
    assert blas_calls[:2] == ["one thread", "restored"]
    h, bias = (3 * rng.standard_normal((300, 1000))).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    assert h.size >= kernels._GELU_SERIAL_BELOW
    assert_close(kernels.bias_gelu_numba(h.copy(), bias), reference.bias_gelu_numpy(h, bias))
    h = (3 * rng.standard_normal((700, 800))).astype(np.float32)
    w, b = (1 + 0.1 * rng.standard_normal(800)).astype(np.float32), rng.standard_normal(800).astype(np.float32)
    assert h.size >= kernels._LAYERNORM_SERIAL_BELOW
    assert_close(
        kernels.residual_layernorm_numba(h, h[::-1].copy(), w, b, 1e-12),
        reference.residual_layernorm_numpy(h, h[::-1].copy(), w, b, 1e-12),
    )
    # One call per chunk (attention: per head), on more than one thread (a free worker may take two chunks).
    assert len(used) == 3 and len(used["_masked_softmax_f32_numba"]) == 2 * 2 * 8  # run_attention runs it twice
    assert len(used["_bias_gelu_f32_numba"]) == len(used["_residual_layernorm_numba"]) == threads
    assert all(len(set(ids)) >= 2 for ids in used.values())


# --- the backward --------------------------------------------------------------------------------------
# Each twin against its reference run in float64 on the same float32 inputs (the exact gradient of the
# float32 forward, up to float64 rounding): the twin, and the float32 reference too, within a first-order
# rounding bound of it, eps32 x (the accumulation lengths) x the same sums taken over absolute values.
# float64 (audit mode): twin and reference within 1e-12 of those magnitudes.

EPS32 = float(np.finfo(np.float32).eps)


def attention_backward_magnitudes(d_context, q, k, v, probs, H, kept=None):
    """dq, dk, dv's rounding scale: the backward's sums with every term replaced by its absolute value."""
    a = lambda t: np.abs(reference.heads(t.astype(np.float64), H))  # noqa: E731
    p, dc = np.abs(probs.astype(np.float64)), a(d_context)
    m = 1.0 if kept is None else np.abs(kept.astype(np.float64))
    scale = math.sqrt(q.shape[-1] // H)
    dp = (dc @ np.swapaxes(a(v), -1, -2)) * m
    ds = p * (dp + (dp * p).sum(axis=-1, keepdims=True))
    mag = ((ds @ a(k)) / scale, (np.swapaxes(ds, -1, -2) @ a(q)) / scale, np.swapaxes(p * m, -1, -2) @ dc)
    return [reference.merge_heads(m) for m in mag]


def attention_backward_case(rng, B, S, H, Dh, scale, dtype=np.float32):
    q, k, v = fused_qkv(rng, B, S, H, Dh, scale, dtype)
    keep = random_keep(rng, B, S)
    probs = reference.attention_numpy(q, k, v, keep, H, return_probs=True)[1]
    d_context = rng.standard_normal((B, S, H * Dh)).astype(dtype)
    return d_context, q, k, v, probs, keep


def check_attention_backward(d_context, q, k, v, probs, keep, H, kept=None):
    got = kernels.attention_backward_numba(d_context, q, k, v, probs, keep, H, kept)
    up = lambda t: None if t is None else t.astype(np.float64)  # noqa: E731
    exact = reference.attention_backward_numpy(up(d_context), up(q), up(k), up(v), up(probs), keep, H, up(kept))
    ours = reference.attention_backward_numpy(d_context, q, k, v, probs, keep, H, kept)
    mags = attention_backward_magnitudes(d_context, q, k, v, probs, H, kept)
    S, Dh = q.shape[1], q.shape[2] // H
    for name, g, o, e, mag in zip(("dq", "dk", "dv"), got, ours, exact, mags):
        assert g.shape == e.shape and g.dtype == q.dtype, name
        bound = (2 * S + Dh + 8) * EPS32 * mag if q.dtype == np.float32 else 1e-12 * mag
        for label, a in (("numba", g), ("numpy", o)):
            excess = np.abs(a - e) - bound
            assert excess.max(initial=0.0) <= 0, f"{label} {name}: beyond the rounding bound by {excess.max()}"
    for b in range(q.shape[0]):  # masked keys get no gradient, and a row without keys none at all
        assert (got[1][b][~keep[b]] == 0).all()
        if not keep[b].any():
            assert (got[0][b] == 0).all() and (got[1][b] == 0).all()
    return got


@given(**ATTENTION_SHAPES, dropout=st.sampled_from([0.0, 0.1, 0.5]))
def test_attention_backward_matches_reference(B, S, H, Dh, scale, seed, dropout):
    rng = np.random.default_rng(seed)
    d_context, q, k, v, probs, keep = attention_backward_case(rng, B, S, H, Dh, scale)
    # training's dropout on the probabilities: the scaled mask the forward kept (0 or 1 / (1 - p))
    kept = None if dropout == 0 else ((rng.random(probs.shape) >= dropout) / (1 - dropout)).astype(np.float32)
    check_attention_backward(d_context, q, k, v, probs, keep, H, kept)


def test_attention_backward_masked_keys_and_padded_rows():
    # Right-padded rows as a batch has them, one row padded to its first token, one with no key at all
    # (transformers' uniform row: d scores all 0, so dq = dk = 0 while dv gets the uniform mean).
    rng = np.random.default_rng(11)
    d_context, q, k, v, _, _ = attention_backward_case(rng, 4, 24, 2, 8, 1.0)
    keep = np.ones((4, 24), dtype=bool)
    keep[1, 15:], keep[2, 1:], keep[3] = False, False, False
    probs = reference.attention_numpy(q, k, v, keep, 2, return_probs=True)[1]
    dq, dk, dv = check_attention_backward(d_context, q, k, v, probs, keep, 2)
    assert (dq[2] == 0).all()  # one key: its probability is 1 whatever the scores, so they get no gradient
    np.testing.assert_allclose(dv[3], np.broadcast_to(d_context[3].mean(axis=0), dv[3].shape), rtol=1e-5, atol=1e-6)


def test_attention_backward_float64():
    rng = np.random.default_rng(12)
    case = attention_backward_case(rng, 3, 17, 3, 4, 1.0, np.float64)
    check_attention_backward(*case, 3)
    check_attention_backward(*case, 3, kept=(rng.random(case[4].shape) >= 0.2) / 0.8)  # with dropout


def gelu_backward_bound(d_out, x64, exact):
    # erf_rational: |cdf error| < 3.3e-8; the float32 exp (either path's): ~2 ulp, plus x^2 / 2 times the
    # rounding of x^2 in the exponent; the product rounded to float32.
    pdf = np.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    return np.abs(d_out) * (3.3e-8 + np.abs(x64) * pdf * (2.5e-7 + x64 * x64 * EPS32)) + EPS32 * np.abs(exact) + 1e-45


@given(
    N=st.integers(1, 9), F=st.integers(1, 70), scale=st.sampled_from([0.5, 3.0, 30.0]), seed=st.integers(0, 2**32 - 1)
)
def test_activation_backwards_match_reference(N, F, scale, seed):
    rng = np.random.default_rng(seed)
    pre = (scale * rng.standard_normal((N, F))).astype(np.float32)
    pre[0, 0] = 0.0  # ReLU's kink: 0, as torch
    d_out = rng.standard_normal((N, F)).astype(np.float32)
    x64, d64 = pre.astype(np.float64), d_out.astype(np.float64)
    for name in ("gelu", "gelu_tanh", "relu"):
        twin, ref = getattr(kernels, f"bias_{name}_backward_numba"), getattr(reference, f"bias_{name}_backward_numpy")
        got, exact = twin(d_out, pre), ref(d64, x64)
        assert got.shape == (N, F) and got.dtype == np.float32
        if name == "gelu":
            bound = gelu_backward_bound(d_out, x64, exact)
            for label, a in (("numba", got), ("numpy", ref(d_out, pre))):
                excess = np.abs(a - exact) - bound
                assert excess.max(initial=0.0) <= 0, f"{label} gelu backward beyond its bound by {excess.max()}"
        elif name == "gelu_tanh":  # float64 inside, rounded once
            assert (np.abs(got - exact) <= EPS32 * np.abs(exact) + 1e-12 * np.abs(d64)).all()
        else:
            np.testing.assert_array_equal(got, ref(d_out, pre))
    assert kernels.bias_relu_backward_numba(d_out, pre)[0, 0] == 0


def test_activation_backwards_extreme_values_batched_and_float64():
    # The tails (GELU's derivative is exactly 0 / 1 far out), [B, S, F] inputs as the FFN's backward passes.
    x = np.array([-1e30, -1e4, -40, -6, -5.7, -4, -1e-3, -1e-30, 0, 1e-30, 1e-3, 4, 5.7, 40, 1e4, 1e30], np.float32)
    pre = np.broadcast_to(x, (2, 3, x.size)).copy()
    d_out = np.ones_like(pre)
    for name in ("gelu", "gelu_tanh", "relu"):
        got = getattr(kernels, f"bias_{name}_backward_numba")(d_out, pre)
        assert got.shape == pre.shape and np.isfinite(got).all()
        with np.errstate(over="ignore", invalid="ignore"):
            ref = getattr(reference, f"bias_{name}_backward_numpy")(d_out, pre)
        # The float32 tanh reference is nan at |x| = 1e30 (x^3 overflows: 0 x inf), as float32 torch; the
        # kernel works in float64 there.
        finite = np.isfinite(ref)
        assert finite[np.abs(pre) < 1e12].all()
        assert_close(got[finite], ref[finite])
        assert (got[pre <= -40] == 0).all() and (got[pre >= 40] == 1).all()
    rng = np.random.default_rng(13)
    pre64, d64 = 4 * rng.standard_normal((5, 40)), rng.standard_normal((5, 40))
    for name in ("gelu", "gelu_tanh", "relu"):  # float64: libm's erf, exp and tanh in both
        got = getattr(kernels, f"bias_{name}_backward_numba")(d64, pre64)
        assert got.dtype == np.float64
        # relative to d_out: the derivative is O(1), and Phi(x) + x phi(x) cancels for negative x
        diff = np.abs(got - getattr(reference, f"bias_{name}_backward_numpy")(d64, pre64))
        assert (diff <= 1e-14 * np.abs(d64)).all(), (name, diff.max())


@given(**LAYERNORM_ROWS)
def test_residual_layernorm_backward_matches_reference(N, D, scale, seed):
    rng = np.random.default_rng(seed)
    x, r, weight = layernorm_inputs(rng, N, D, scale)
    d_out = rng.standard_normal((N, D)).astype(np.float32)
    got = kernels.residual_layernorm_backward_numba(d_out, x, r, weight, 1e-12)
    # As the forward's test: the reference in float64 on the float32 sum, which the kernel forms first too (the
    # float32 reference loses more than the kernel to cancellation on short rows of large values).
    y, zero = (x + r).astype(np.float64), np.zeros((N, D))
    exact = reference.residual_layernorm_backward_numpy(
        d_out.astype(np.float64), y, zero, weight.astype(np.float64), 1e-12
    )
    for g, e in zip(got, exact):
        assert_close(g, e.astype(np.float32))


def test_residual_layernorm_backward_constant_rows_and_float64():
    # A constant row: xhat = 0, so d_y = (g - mean(g)) / sqrt(eps) and d_weight gets nothing from it.
    x, r = np.full((3, 16), 0.5, np.float32), np.full((3, 16), 2.0, np.float32)
    weight, d_out = np.full(16, 2.0, np.float32), np.ones((3, 16), np.float32)
    d_out[:, 0] = 3.0
    got = kernels.residual_layernorm_backward_numba(d_out, x, r, weight, 1e-12)
    for g, e in zip(got, reference.residual_layernorm_backward_numpy(d_out, x, r, weight, 1e-12)):
        assert_close(g, e, tol=1e-6)
    assert (got[1] == 0).all()
    rng = np.random.default_rng(14)
    x64, r64, w64, d64 = (rng.standard_normal((4, 30)) for _ in range(4))
    for g, e in zip(
        kernels.residual_layernorm_backward_numba(d64, x64, r64, w64[0], 1e-12),
        reference.residual_layernorm_backward_numpy(d64, x64, r64, w64[0], 1e-12),
    ):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-12)


def test_backward_kernels_split_over_threads_and_agree(monkeypatch):
    # Above each threshold, as inside a model call given 2 threads: heads or rows split over both, the
    # LayerNorm's weight gradients summed over the chunks.
    blas_calls = as_in_a_model_call(monkeypatch, 2)
    used = record_threads(
        monkeypatch, "_softmax_backward_numba", "_gelu_backward_f32_numba", "_residual_layernorm_backward_numba"
    )
    rng = np.random.default_rng(15)
    assert 2 * 8 * 80 * 80 >= kernels._ATTENTION_SERIAL_BELOW
    check_attention_backward(*attention_backward_case(rng, 2, 80, 8, 8, 1.0), 8)
    assert blas_calls == ["one thread", "restored"]
    pre = (3 * rng.standard_normal((300, 1000))).astype(np.float32)
    d_out = rng.standard_normal((300, 1000)).astype(np.float32)
    assert pre.size >= kernels._GELU_SERIAL_BELOW
    assert_close(kernels.bias_gelu_backward_numba(d_out, pre), reference.bias_gelu_backward_numpy(d_out, pre))
    h, d = (rng.standard_normal((700, 800)).astype(np.float32) for _ in range(2))
    w = (1 + 0.1 * rng.standard_normal(800)).astype(np.float32)
    assert h.size >= kernels._LAYERNORM_SERIAL_BELOW
    got = kernels.residual_layernorm_backward_numba(d, h, h[::-1].copy(), w, 1e-12)
    up = lambda t: t.astype(np.float64)  # noqa: E731
    y = up(h + h[::-1])  # the float32 sum, as the kernel forms it
    for g, e in zip(got, reference.residual_layernorm_backward_numpy(up(d), y, 0 * y, up(w), 1e-12)):
        assert_close(g, e.astype(np.float32))
    assert len(used["_softmax_backward_numba"]) == 2 * 8
    assert len(used["_gelu_backward_f32_numba"]) == len(used["_residual_layernorm_backward_numba"]) == 2
    assert all(len(set(ids)) == 2 for ids in used.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_both_kernel_paths_give_the_same_gradients(tiny_checkpoint, dtype):
    # The whole backward (every weight's gradient and the embeddings output's) on each kernel set, a right-padded
    # batch: each tensor within 1e-5 (float32) / 1e-12 (float64) of its largest |value| (an absolute floor of the
    # same times the largest of all: some gradients, e.g. every key bias's, are exactly zero but for rounding).
    rng = np.random.default_rng(16)
    ids = rng.integers(0, 1000, (3, 21))
    mask = np.ones_like(ids)
    mask[1, 9:], mask[2, 2:] = 0, 0
    positions = dict(start_positions=np.array([3, 5, 1]), end_positions=np.array([7, 8, 1]))
    got, ref = (
        npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint, dtype=dtype, kernels=k).gradients(
            ids, mask, **positions
        )
        for k in ("numba", "numpy")
    )
    tol = 1e-5 if dtype == np.float32 else 1e-12
    tensors = {
        "embeddings": (got.embeddings, ref.embeddings),
        **{n: (got.weights[n], ref.weights[n]) for n in ref.weights},
    }
    assert got.weights.keys() == ref.weights.keys()
    floor = tol * max(np.abs(r).max() for _, r in tensors.values())
    for name, (g, r) in tensors.items():
        assert g.dtype == dtype, name
        assert np.abs(g - r).max() <= max(tol * np.abs(r).max(), floor), name
    assert abs(got.loss - ref.loss) <= tol * abs(ref.loss)


# --- the switch ----------------------------------------------------------------------------------------


def test_select(monkeypatch):
    monkeypatch.delenv("NPBERT_KERNELS", raising=False)
    assert ops.select() is ops.NUMBA
    assert ops.select("numpy") is ops.NUMPY and ops.select("numba") is ops.NUMBA
    monkeypatch.setenv("NPBERT_KERNELS", "numpy")
    assert ops.select() is ops.NUMPY
    assert ops.select("numba") is ops.NUMBA  # the argument wins over the environment
    with pytest.raises(ValueError, match="unknown kernels 'fortran'.*numpy, numba"):
        ops.select("fortran")
    for chosen in (ops.NUMPY, ops.NUMBA):  # each Ops holds its own variant of every op
        assert all(getattr(chosen, f).__name__.endswith("_" + chosen.name) for f in ops.Ops._fields[1:])


def test_both_kernel_paths_give_the_same_model_outputs(tiny_checkpoint, monkeypatch):
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 1000, (3, 21))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 1:] = 0
    monkeypatch.setenv("NPBERT_KERNELS", "numpy")
    ref_model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    monkeypatch.delenv("NPBERT_KERNELS")
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    assert ref_model.ops is ops.NUMPY and model.ops is ops.NUMBA
    assert npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint, kernels="numpy").ops is ops.NUMPY
    ref = ref_model(ids, mask, output_hidden_states=True, output_attentions=True)
    out = model(ids, mask, output_hidden_states=True, output_attentions=True)
    for a, b in zip(
        (out.start_logits, out.end_logits, *out.hidden_states, *out.attentions),
        (ref.start_logits, ref.end_logits, *ref.hidden_states, *ref.attentions),
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_environment_variable_selects_in_a_new_process(tiny_checkpoint):
    code = "import npbert; m = npbert.DistilBertForQuestionAnswering.from_pretrained(%r); print(m.ops.name)" % str(
        tiny_checkpoint
    )
    for value in ("numpy", "numba"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "NPBERT_KERNELS": value},
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == value


# --- the load-time re-layout ---------------------------------------------------------------------------


def test_relayout_fuses_qkv_and_stores_linears_column_major(tmp_path):
    folder = checkpoints.write_checkpoint(
        tmp_path / "c",
        seed=5,
        vocab=[],
        tokenizer=False,
        vocab_size=30,
        dim=64,
        n_layers=2,
        n_heads=2,
        hidden_dim=1024,
        max_position_embeddings=16,
    )
    config = npbert.Config.from_file(folder / "config.json")
    # float32: the matrices ([64, 64] and [1024, 64]: whole pages) are views of the file mapping whose
    # pages the re-layout releases (they must read back intact); float64: owned copies, left alone.
    for dtype in (np.float64, np.float32):
        tree = W.load(folder, config, dtype)
        fast = layout.relayout_for_speed(tree)
        assert_relaid(tree, fast)
    encoder = layout.relayout_for_speed(tree.encoder)
    assert isinstance(encoder.transformer.layer[0].attention, layout.FusedAttention)
    assert layout.is_relaid(encoder.transformer.layer[1].ffn.lin2)


def assert_same_linear(new, old):  # same [out, in] values, stored so that W.T is C-contiguous
    assert new.weight.shape == old.weight.shape and layout.is_relaid(new) and not layout.is_relaid(old)
    np.testing.assert_array_equal(new.weight, old.weight)
    np.testing.assert_array_equal(new.bias, old.bias)


def assert_relaid(tree, fast):
    for old, new in zip(tree.encoder.transformer.layer, fast.encoder.transformer.layer):
        a, f = old.attention, new.attention
        assert_same_linear(
            f.qkv,
            W.Linear(
                np.concatenate([a.q_lin.weight, a.k_lin.weight, a.v_lin.weight]),
                np.concatenate([a.q_lin.bias, a.k_lin.bias, a.v_lin.bias]),
            ),
        )
        for name in ("q_lin", "k_lin", "v_lin"):  # the old names are views into qkv, equal to the loaded ones
            lin = getattr(f, name)
            assert np.shares_memory(lin.weight, f.qkv.weight) and np.shares_memory(lin.bias, f.qkv.bias)
            assert_same_linear(lin, getattr(a, name))
        for new_lin, old_lin in ((f.out_lin, a.out_lin), (new.ffn.lin1, old.ffn.lin1), (new.ffn.lin2, old.ffn.lin2)):
            assert_same_linear(new_lin, old_lin)
        assert new.sa_layer_norm is old.sa_layer_norm and new.output_layer_norm is old.output_layer_norm
    assert_same_linear(fast.qa_outputs, tree.qa_outputs)
    assert fast.encoder.embeddings is tree.encoder.embeddings  # embeddings stay mapped
    again = layout.relayout_for_speed(fast)  # idempotent: no second copy
    assert again.encoder.transformer.layer[0].attention is fast.encoder.transformer.layer[0].attention
    assert again.encoder.transformer.layer[1].ffn.lin1 is fast.encoder.transformer.layer[1].ffn.lin1
    assert again.qa_outputs is fast.qa_outputs


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_still_splits_its_kernels(monkeypatch):
    # The worker threads do not survive fork(); a child must start its own instead of waiting for them.
    as_in_a_model_call(monkeypatch, 2)
    h, bias = np.ones((300, 1000), np.float32), np.zeros(1000, np.float32)
    expected = reference.bias_gelu_numpy(h, bias)
    kernels.bias_gelu_numba(h.copy(), bias)
    assert workers._workers  # the parent's worker threads exist
    in_forked_child(lambda: np.allclose(kernels.bias_gelu_numba(h.copy(), bias), expected, rtol=0, atol=1e-6))


def test_one_model_called_from_several_threads_at_once(tiny_checkpoint, monkeypatch):
    # A server or a user's thread pool may run forwards concurrently: the kernels' shared worker threads
    # and OpenBLAS's thread count (set per forward, lowered inside attention) must not mix results up.
    monkeypatch.setenv("NPBERT_BLAS_THREADS", "2")  # split, whatever cores this process may use
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(8)
    inputs = [rng.integers(0, 1000, (3, 160)) for _ in range(4)]
    assert 3 * model.config.n_heads * 160 * 160 >= kernels._ATTENTION_SERIAL_BELOW  # attention splits its heads
    expected = [model(ids).start_logits for ids in inputs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda ids: model(ids).start_logits, inputs))
            for g, e in zip(got, expected):
                np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_a_failing_chunk_raises_after_every_chunk_has_finished(monkeypatch):
    # An error in one thread's share must surface, and only once no other share is still running.
    blas_calls, finished = as_in_a_model_call(monkeypatch, 2), []

    def work(chunk):
        if chunk[0] == 0:  # the calling thread's share fails at once
            raise RuntimeError("bad chunk")
        time.sleep(0.2)
        finished.append(list(chunk))

    with pytest.raises(RuntimeError, match="bad chunk"):
        parallel.split_over_threads(work, list(range(4)), True, uses_blas=True)
    assert finished == [[2, 3]] and blas_calls == [
        "one thread",
        "restored",
    ]  # the worker's share done, OpenBLAS restored


# --- matrix products over panels -----------------------------------------------------------------------


def pack_panels(w):  # [out, in] -> [out / 32, in, 32], as layout.relayout_for_speed stores it
    out, d_in = w.shape
    return np.ascontiguousarray(w.T.reshape(d_in, out // gemm.PANEL_WIDTH, gemm.PANEL_WIDTH).transpose(1, 0, 2))


def assert_product_close(got, x, w):
    # A float32 dot product of length k is within ~k * eps * (|x| @ |w|.T) of the exact one; the kernel sums k
    # in blocks of 256, so its bound is (256 + k / 256 + 2) * eps * (|x| @ |w|.T), as tight as BLAS's.
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    k = x.shape[1]
    bound = (min(k, gemm._K_BLOCK) + k / gemm._K_BLOCK + 2) * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w).T)
    assert got.shape == exact.shape and got.dtype == np.float32
    excess = np.abs(got - exact) - bound
    assert excess.max(initial=0.0) <= 0, f"max |diff| beyond the rounding bound: {excess.max()}"


@given(
    M=st.integers(1, 40),
    d_in=st.integers(1, 600),
    n_panels=st.integers(1, 4),
    scale=st.sampled_from([0.01, 1.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
    tile=st.sampled_from(gemm.TILES),
)
def test_matmul_panels_matches_reference(M, d_in, n_panels, scale, seed, tile):
    # Both register tiles (AVX-512's 8 x 32, AVX2's 6 x 16), whatever this CPU has: LLVM lowers the vector IR
    # to what the CPU runs, so the AVX-512 tile runs (slowly) on an AVX2 CPU and the AVX2 tile everywhere.
    rng = np.random.default_rng(seed)
    x = (scale * rng.standard_normal((M, d_in))).astype(np.float32)
    w = rng.standard_normal((n_panels * gemm.PANEL_WIDTH, d_in)).astype(np.float32)
    panels = pack_panels(w)
    got = gemm.matmul_panels_numba(x, panels, tile)
    assert_product_close(got, x, w)
    assert_product_close(reference.matmul_panels_numpy(x, panels), x, w)  # the reference is x @ W.T itself
    # Rows that are not a multiple of the tile (8 or 6), a strided x and strided panels give the same values.
    np.testing.assert_array_equal(gemm.matmul_panels_numba(np.asfortranarray(x), panels, tile), got)
    wider = np.zeros((n_panels, d_in, 2 * gemm.PANEL_WIDTH), np.float32)
    wider[..., 1::2] = panels
    np.testing.assert_array_equal(gemm.matmul_panels_numba(x, wider[..., 1::2], tile), got)


@pytest.mark.parametrize("tile", gemm.TILES, ids=lambda t: t.name)
def test_matmul_panels_at_the_forward_sizes_and_split_over_threads(monkeypatch, tile):
    used = []
    real = gemm._matmul_panels_numba
    monkeypatch.setattr(
        gemm, "_matmul_panels_numba", lambda *a: (used.append((threading.get_ident(), a[3], a[4], a[5])), real(*a))[1]
    )
    monkeypatch.setenv(gemm.GEMM_ENV, tile.name)  # the tile $NPBERT_GEMM names, as in a model call
    as_in_a_model_call(monkeypatch, 2)
    rng = np.random.default_rng(8)
    for M, d_in, d_out in ((16, 768, 2304), (384, 768, 768), (13, 3072, 768)):
        used.clear()
        x = rng.standard_normal((M, d_in)).astype(np.float32)
        w = (0.05 * rng.standard_normal((d_out, d_in))).astype(np.float32)
        assert M * d_in * d_out >= gemm._MATMUL_SERIAL_BELOW
        assert_product_close(gemm.matmul_panels_numba(x, pack_panels(w)), x, w)
        # two chunks of panels, together all of them, on two threads
        assert sorted((a, b) for _, a, b, _ in used) == [(0, d_out // 64), (d_out // 64, d_out // 32)]
        assert len({ident for ident, *_ in used}) == 2
        assert {avx512 for *_, avx512 in used} == {tile is gemm.AVX512_TILE}


def test_matmul_panels_refuses_what_does_not_fit():
    panels = np.zeros((2, 8, gemm.PANEL_WIDTH), np.float32)
    for x, wrong in ((np.zeros((3, 9), np.float32), "9"), (np.zeros((3, 8), np.float64), "float64")):
        with pytest.raises(ValueError, match=f"matmul_panels: x .*{wrong}.* do not fit"):
            gemm.matmul_panels_numba(x, panels)
    with pytest.raises(ValueError, match="do not fit"):
        gemm.matmul_panels_numba(np.zeros((3, 8), np.float32), np.zeros((2, 8, 16), np.float32))


def test_gemm_path(monkeypatch):
    monkeypatch.delenv(gemm.GEMM_ENV, raising=False)
    cpus = {
        "zen4": "+avx2,+fma,+avx512f,+avx512bw",
        "zen3": "+avx2,+fma,-avx512f,-avx512bw",
        "sse": "+sse4.2,-avx2,-fma",
        "avx-no-fma": "+avx2,-fma,-avx512f",
    }
    expected = {  # $NPBERT_GEMM -> the path on each CPU
        "": {"zen4": "panels-avx512", "zen3": "panels-avx2", "sse": "blas", "avx-no-fma": "blas"},
        "panels": {"zen4": "panels-avx512", "zen3": "panels-avx2", "sse": "panels-avx2", "avx-no-fma": "panels-avx2"},
        "panels-avx2": dict.fromkeys(cpus, "panels-avx2"),
        "panels-avx512": dict.fromkeys(cpus, "panels-avx512"),
        "blas": dict.fromkeys(cpus, "blas"),
    }
    for setting, paths in expected.items():
        monkeypatch.setenv(gemm.GEMM_ENV, setting)
        for cpu, path in paths.items():
            monkeypatch.setattr(gemm, "_llvm_cpu_features", lambda features=cpus[cpu]: features)
            assert (gemm.gemm_path(np.float32), gemm.gemm_path(np.float64)) == (path, "blas"), (setting, cpu)
            assert gemm.panels_pay_off(np.float32) == (path != "blas")
    monkeypatch.setenv(gemm.GEMM_ENV, "mkl")
    with pytest.raises(
        ValueError, match="NPBERT_GEMM must be panels, panels-avx512, panels-avx2, blas or unset .auto., found 'mkl'"
    ):
        gemm.gemm_path(np.float32)


def test_relayout_in_panels(tmp_path):
    folder = checkpoints.write_checkpoint(
        tmp_path / "c",
        seed=5,
        vocab=[],
        tokenizer=False,
        vocab_size=30,
        dim=64,
        n_layers=2,
        n_heads=2,
        hidden_dim=96,
        max_position_embeddings=16,
    )
    config = npbert.Config.from_file(folder / "config.json")
    tree = W.load(folder, config, np.float32)
    fast = layout.relayout_for_speed(tree, panels=True)

    def unpacked(lin):
        return lin.weight.transpose(1, 0, 2).reshape(lin.weight.shape[1], -1).T

    for old, new in zip(tree.encoder.transformer.layer, fast.encoder.transformer.layer):
        a, f = old.attention, new.attention
        assert f.qkv.weight.shape == (3 * 64 // 32, 64, 32) and f.qkv.weight.flags.c_contiguous
        np.testing.assert_array_equal(unpacked(f.qkv), np.concatenate([a.q_lin.weight, a.k_lin.weight, a.v_lin.weight]))
        for name in ("q_lin", "k_lin", "v_lin"):  # panel ranges of qkv's panels
            lin = getattr(f, name)
            assert np.shares_memory(lin.weight, f.qkv.weight) and layout.is_relaid(lin)
            np.testing.assert_array_equal(unpacked(lin), getattr(a, name).weight)
            np.testing.assert_array_equal(lin.bias, getattr(a, name).bias)
        for new_lin, old_lin in ((f.out_lin, a.out_lin), (new.ffn.lin1, old.ffn.lin1), (new.ffn.lin2, old.ffn.lin2)):
            assert new_lin.weight.ndim == 3
            np.testing.assert_array_equal(unpacked(new_lin), old_lin.weight)
    assert_same_linear(fast.qa_outputs, tree.qa_outputs)  # 2 outputs: not a multiple of 32, column-major
    again = layout.relayout_for_speed(fast, panels=True)
    assert again.encoder.transformer.layer[0].attention is fast.encoder.transformer.layer[0].attention
    assert again.encoder.transformer.layer[1].ffn.lin1 is fast.encoder.transformer.layer[1].ffn.lin1


@pytest.mark.parametrize("choice", ["panels", "panels-avx512", "panels-avx2", "blas"])
def test_both_gemms_give_the_reference_outputs(tmp_path, monkeypatch, choice):
    # The model with panels (forced, whatever this CPU has; each tile) and with numpy's BLAS against the
    # numpy kernels.
    folder = checkpoints.write_checkpoint(
        tmp_path / "c",
        seed=9,
        vocab=[],
        tokenizer=False,
        vocab_size=50,
        dim=64,
        n_layers=2,
        n_heads=4,
        hidden_dim=128,
        max_position_embeddings=40,
    )
    ids = np.random.default_rng(2).integers(0, 50, (3, 37))
    mask = np.ones_like(ids)
    mask[1, 20:] = 0
    ref = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, kernels="numpy")(
        ids, mask, output_hidden_states=True
    )
    monkeypatch.setenv(gemm.GEMM_ENV, choice)
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    assert (model.weights.encoder.transformer.layer[0].ffn.lin1.weight.ndim == 3) == choice.startswith("panels")
    out = model(ids, mask, output_hidden_states=True)
    for a, b in zip(
        (out.start_logits, out.end_logits, *out.hidden_states), (ref.start_logits, ref.end_logits, *ref.hidden_states)
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
