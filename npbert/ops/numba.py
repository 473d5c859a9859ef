"""The numba kernels: the same operations as ops/reference.py, with the same signatures, made fast.

Each `<name>_numba` here computes what `<name>_numpy` in ops/reference.py computes (tests/test_kernels.py
and tests/test_deberta.py assert that each pair agrees); `ops.select()` picks one set. Matrix products
stay in numpy (OpenBLAS) or ops/gemm.py: the kernels do what surrounds the products (softmax, GELU,
LayerNorm). They are serial and release the GIL; ops/parallel.py spreads them over the worker threads.
Compiled on first use and cached on disk (`cache=True`, in npbert's cache folder: cache_root.py), so later
processes start fast.

Given a `tap`, an attention kernel runs its reference twin instead: the tap asks for the scores before
the mask, which these kernels never form whole (each head's scores are masked and shifted in place).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .parallel import split_over_threads
from .reference import attention_numpy, disentangled_attention_numpy

# Below these sizes a kernel runs on the calling thread alone: handing half the work to another thread
# costs more than the half it takes over (docs/performance.md, "Kernel thresholds"). Attention splits from
# far smaller sizes: each head also does two products.
_ATTENTION_SERIAL_BELOW = 1 << 16  # B * H * S * S
_GELU_SERIAL_BELOW = 1 << 18  # N * F
_LAYERNORM_SERIAL_BELOW = 1 << 19  # N * D


def _split_over_heads(heads, B, n_heads, S):
    """Run heads(tasks) over the (row, head) pairs of an attention forward or backward, each pair whole on
    one thread (its products on one-thread BLAS, its [S, S] scores in that core's cache); serially below
    _ATTENTION_SERIAL_BELOW."""
    pairs = [(b, h) for b in range(B) for h in range(n_heads)]
    split_over_threads(heads, pairs, B * n_heads * S * S >= _ATTENTION_SERIAL_BELOW, uses_blas=True)


# Kernels may reorder float sums (vectorised reductions) and fuse multiply-adds; never the nnan/ninf
# flags: masked scores are finfo.min and -inf by design. numpy's error model: a float division by zero
# gives inf as in numpy instead of raising, which would put a branch in every loop and stop LLVM from
# vectorising it (docs/performance.md has GELU's time with and without the branch).
JIT = dict(cache=True, nogil=True, error_model="numpy")
FAST = {"reassoc", "contract"}


# --- attention -------------------------------------------------------------------------------------------
# As ops/reference.py: q, k, v [B, S, D] (views of the fused qkv output are fine), keep [B, S] bool.


@numba.njit(**JIT, fastmath=FAST)
def _scale_mask_shift_numba(scores, keep, scale):  # in place on one head's [S, S]; keep: [S]
    # Scaling the scores instead of q is bit-identical when scale is a power of two (Dh = 64: 1/8),
    # and otherwise differs at rounding level only (what transformers 5.x does).
    S = scores.shape[0]
    n_kept = 0
    for j in range(S):
        n_kept += keep[j]
    for i in range(S):
        row = scores[i]
        if n_kept == 0:  # every key masked: finfo.min everywhere, exp(0) = 1 -> uniform, as the reference
            row[:] = 0.0
            continue
        m = -np.inf
        for j in range(S):
            if keep[j]:
                m = max(m, row[j] * scale)
        for j in range(S):
            # exp(finfo.min - max) underflows to exactly 0 in the reference; -inf gives the same 0.
            row[j] = row[j] * scale - m if keep[j] else -np.inf
    return scores


@numba.njit(**JIT, fastmath=FAST)
def _normalise_rows_numba(e):  # in place on [N, S]: each row divided by its sum
    for n in range(e.shape[0]):
        total = e.dtype.type(0.0)
        for j in range(e.shape[1]):
            total += e[n, j]
        inv = 1.0 / total
        for j in range(e.shape[1]):
            e[n, j] *= inv
    return e


# float32 exp of x <= 0, vectorisable (numba's math.exp is a scalar libm call per element): Cephes' expf,
# x = n ln2 + r with |r| <= ln2 / 2 and a degree-7 polynomial for e^r; |relative error| < 1e-7 on
# [-87, 0], about 1 ulp, as numpy's float32 exp (tests/test_kernels.py measures both against float64).
# 2^n is returned as its float32 bit pattern, which the caller writes into an int32 array that it reads
# back as float32: numba has no scalar bit cast.
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = hi + lo, hi exact in 9 bits
_EXP_P = tuple(
    np.float32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
)
# Below x = -87.68, 2^n would be below float32's smallest normal: the result is 0 there instead (the exact
# value is below 1.2e-38). The clamp keeps n in int32's range for x = -inf (masked keys), whose
# result is then exactly 0.
_EXP_FLOOR = np.float32(-104.0)


@numba.njit(**JIT, fastmath=FAST, inline="always")
def _exp_nonpositive_f32(x):  # float32 x <= 0 -> (e^r, bits of 2^n or of 0): e^x = e^r * 2^n
    x = max(x, _EXP_FLOOR)
    n = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - n * _LN2_HI - n * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = (((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5) * r * r + r + np.float32(1.0)
    return p, max(np.int32(n) + np.int32(127), np.int32(0)) << np.int32(23)


@numba.njit(**JIT, fastmath=FAST)
def _masked_softmax_f32_numba(scores, keep, scale, normalise, inv_sums):  # in place on one head's [S, S]
    # softmax(scale * scores) over the kept keys, 0 at masked ones, in 5 passes over each row (in L1) and
    # none over the whole [S, S] outside it: scale and mask; the row's max; e^(x - max); its sum; and,
    # where `normalise`, the division by the sum (else 1 / sum goes to inv_sums[i], for the caller to
    # scale the row's context instead: 64 columns, not S). float32 only (the exp above).
    S = scores.shape[0]
    bias = np.empty(S, dtype=np.float32)  # 0 at kept keys, -inf at masked ones
    two_n = np.empty(S, dtype=np.int32)  # the exp's 2^n, as float32 bits
    n_kept = 0
    for j in range(S):
        n_kept += keep[j]
        bias[j] = 0.0 if keep[j] else -np.inf
    two_n_f = two_n.view(np.float32)
    for i in range(S):
        row = scores[i]
        if n_kept == 0:  # every key masked: finfo.min everywhere, exp(0) = 1 -> uniform, as the reference
            row[:] = 1.0 / S if normalise else 1.0
            inv_sums[i] = 1.0 / S
            continue
        for j in range(S):
            row[j] = row[j] * scale + bias[j]
        # The max as int32s: LLVM does not vectorise a float max reduction without nnan, and the float
        # order is the int order once negative floats' other 31 bits are flipped (an involution).
        as_int = row.view(np.int32)
        top = np.int32(-2147483648)
        for j in range(S):
            b = as_int[j]
            top = max(top, b ^ np.int32(0x7FFFFFFF) if b < 0 else b)
        two_n[0] = top ^ np.int32(0x7FFFFFFF) if top < 0 else top
        m = two_n_f[0]  # (two_n is overwritten next)
        for j in range(S):
            row[j], two_n[j] = _exp_nonpositive_f32(row[j] - m)
        total = np.float32(0.0)
        for j in range(S):
            row[j] *= two_n_f[j]  # masked keys (-inf): exactly 0, as in the reference
            total += row[j]
        inv = np.float32(1.0) / total
        inv_sums[i] = inv
        if normalise:
            for j in range(S):
                row[j] *= inv
    return scores


@numba.njit(**JIT, fastmath=FAST)
def _scale_rows_numba(x, factors):  # in place on [S, Dh] (a strided view is fine): row i times factors[i]
    for i in range(x.shape[0]):
        f = factors[i]
        for j in range(x.shape[1]):
            x[i, j] *= f
    return x


def attention_numba(q, k, v, keep, n_heads, return_probs=False, tap=None):
    if tap is not None:
        return attention_numpy(q, k, v, keep, n_heads, return_probs, tap)
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    scale = q.dtype.type(1.0 / math.sqrt(Dh))
    context = np.empty((B, S, D), dtype=q.dtype)
    probs = np.empty((B, n_heads, S, S), dtype=q.dtype) if return_probs else None
    fused = q.dtype == np.float32

    def heads(tasks):  # one thread's share of the (row, head) pairs, each start to finish
        scratch = np.empty((S, S), dtype=q.dtype) if probs is None else None
        inv_sums = np.empty(S, dtype=q.dtype)
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p = scratch if probs is None else probs[b, h]  # [S, S]: 590 kB at S = 384, stays in L2
            np.matmul(q[b, :, cols], k[b, :, cols].T, out=p)  # strided views of the fused qkv: no copies
            if fused:
                _masked_softmax_f32_numba(p, keep[b], scale, probs is not None, inv_sums)
            else:  # float64 (audit mode): numpy's exp, exact to ~1 ulp in float64 too
                _scale_mask_shift_numba(p, keep[b], scale)
                np.exp(p, out=p)
                _normalise_rows_numba(p)
            np.matmul(p, v[b, :, cols], out=context[b, :, cols])  # straight into head h's columns
            if fused and probs is None:  # p was left unnormalised: divide the context's rows instead
                _scale_rows_numba(context[b, :, cols], inv_sums)

    _split_over_heads(heads, B, n_heads, S)
    return context, probs


# --- DeBERTa's disentangled attention (ops/reference.py says what the arguments are) ----------------


_P2C_TILE = 32


@numba.njit(**JIT, fastmath=FAST)
def _gather_p2c_numba(p2c_full, p2c_pos_t, scale, out):  # [S, 2A], [S, S], scalar -> out [S, S]
    # out[i, j] = p2c_full[j, p2c_pos[j, i]] / scale: key j's product at the row of query i. Query i reads
    # a different key row for every j; walked in 32 x 32 tiles, each key row is fetched once per tile
    # instead of once per query (untiled it was mostly cache misses: docs/performance.md).
    S = out.shape[0]
    T = _P2C_TILE
    for i0 in range(0, S, T):
        for j0 in range(0, S, T):
            for j in range(j0, min(j0 + T, S)):
                for i in range(i0, min(i0 + T, S)):
                    out[i, j] = p2c_full[j, p2c_pos_t[i, j]] / scale
    return out


@numba.njit(**JIT, fastmath=FAST)
def _disentangled_mask_shift_numba(scores, c2p_full, p2c_term, c2p_pos, keep, scale, use_c2p, use_p2c):
    # In place on one head's c2c [S, S] (already scaled): add the gathered c2p ([S, 2A] full product, row
    # c2p_pos[i, j], divided by the scale) and the p2c term (_gather_p2c_numba), in the reference's order
    # c2c + (c2p + p2c), mask by keep[i] & keep[j], subtract each row's maximum. Rows of padded queries
    # are masked everywhere: all zeros here, exp -> uniform, as finfo.min everywhere gives in the reference.
    S = scores.shape[0]
    n_kept = 0
    for j in range(S):
        n_kept += keep[j]
    for i in range(S):
        row = scores[i]
        if n_kept == 0 or not keep[i]:
            row[:] = 0.0
            continue
        m = -np.inf
        for j in range(S):
            if keep[j]:
                position = scores.dtype.type(0.0)
                if use_c2p:
                    position = c2p_full[i, c2p_pos[i, j]] / scale
                if use_p2c:
                    position = position + p2c_term[i, j]
                row[j] = row[j] + position
                m = max(m, row[j])
        for j in range(S):
            row[j] = row[j] - m if keep[j] else -np.inf
    return scores


def disentangled_attention_numba(
    q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, n_heads, scale, return_probs=False, tap=None
):
    if tap is not None:
        return disentangled_attention_numpy(
            q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, n_heads, scale, return_probs, tap
        )
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    no_index = np.zeros((1, 1), dtype=np.int64)  # stands for an absent term's [S, S] rows (no relative_attention)
    c2p_pos = no_index if c2p_pos is None else np.ascontiguousarray(c2p_pos, dtype=np.int64)
    p2c_pos_t = no_index if p2c_pos is None else np.ascontiguousarray(np.asarray(p2c_pos, dtype=np.int64).T)
    scale = q.dtype.type(scale)
    context = np.empty((B, S, D), dtype=q.dtype)
    probs = np.empty((B, n_heads, S, S), dtype=q.dtype) if return_probs else None
    unused = np.zeros((1, 1), dtype=q.dtype)  # stands for an absent term's [S, 2A] product

    def heads(tasks):  # one thread's share of the (row, head) pairs, as in attention_numba
        scratch = np.empty((S, S), dtype=q.dtype) if probs is None else None
        c2p_full = np.empty((S, pos_k.shape[0]), dtype=q.dtype) if pos_k is not None else unused
        p2c_full = np.empty((S, pos_q.shape[0]), dtype=q.dtype) if pos_q is not None else unused
        p2c_term = np.empty((S, S), dtype=q.dtype) if pos_q is not None else unused
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p = scratch if probs is None else probs[b, h]  # [S, S]
            np.matmul(q[b, :, cols], (k[b, :, cols] / scale).T, out=p)  # c2c: k scaled first, as the reference
            if pos_k is not None:
                np.matmul(q[b, :, cols], pos_k[:, cols].T, out=c2p_full)  # [S, 2A]: every query against every row
            if pos_q is not None:
                np.matmul(k[b, :, cols], pos_q[:, cols].T, out=p2c_full)  # [S, 2A]: every key against every row
                _gather_p2c_numba(p2c_full, p2c_pos_t, scale, p2c_term)
            _disentangled_mask_shift_numba(
                p, c2p_full, p2c_term, c2p_pos, keep[b], scale, pos_k is not None, pos_q is not None
            )
            np.exp(p, out=p)
            _normalise_rows_numba(p)
            np.matmul(p, v[b, :, cols], out=context[b, :, cols])

    _split_over_heads(heads, B, n_heads, S)
    return context, probs


# --- bias + GELU (exact erf form, as ops/reference.py) ------------------------------------------------------
# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], clamped outside (|erf(4)| = 1 - 1.5e-8): the rational form
# Eigen and XLA use for float32. Evaluated in float64 it is within 6.5e-8 of math.erf everywhere
# (tests/test_kernels.py checks the bound against float64 math.erf on a dense grid), below float32's
# resolution near 1 (6e-8); evaluated in float32 it would lose ~7 ulp. Unlike math.erf (a libm call per
# element) it vectorises (docs/performance.md has the GELU's time either way).
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


@numba.njit(**JIT, fastmath=FAST, inline="always")
def erf_rational(x):  # float64 -> float64, |error| < 6.5e-8, |result| <= 1
    x = min(max(x, -4.0), 4.0)
    x2 = x * x
    p0, p1, p2, p3, p4, p5, p6 = _ERF_P
    q0, q1, q2, q3, q4 = _ERF_Q
    p = (((((p0 * x2 + p1) * x2 + p2) * x2 + p3) * x2 + p4) * x2 + p5) * x2 + p6  # Horner
    q = (((q0 * x2 + q1) * x2 + q2) * x2 + q3) * x2 + q4
    # The rational form overshoots 1 by 4.9e-8 near the clamp: clip, or GELU's far negative tail
    # 0.5 x (1 + erf) would grow like -2.5e-8 x instead of being 0 (as it is in the float32 reference).
    return min(max(x * p / q, -1.0), 1.0)


@numba.njit(**JIT, fastmath=FAST)
def _bias_gelu_f32_numba(h, bias):  # in place
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(h[n, f] + bias[f])  # the sum rounds to float32 first, as in the reference
            h[n, f] = 0.5 * x * (1.0 + erf_rational(x * 0.7071067811865476))
    return h


@numba.njit(**JIT)
def _bias_gelu_f64_numba(h, bias):  # in place; float64 (audit mode) keeps libm's erf: exact, not fast
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = h[n, f] + bias[f]
            h[n, f] = 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    return h


def _over_rows(kernel, h, bias):  # an in-place bias + activation kernel, h's rows split over the threads
    split_over_threads(
        lambda rows: kernel(h[rows.start : rows.stop], bias), range(h.shape[0]), h.size >= _GELU_SERIAL_BELOW
    )
    return h


def bias_gelu_numba(h, bias):
    """Overwrites `h` (lin1's scratch output) with the result: no [N, F] temporary."""
    return _over_rows(_bias_gelu_f64_numba if h.dtype == np.float64 else _bias_gelu_f32_numba, h, bias)


# --- bias + the other activations a config may name (families.ACTIVATIONS) ---------------------------
# gelu_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), transformers' NewGELUActivation
# ("gelu_new", ALBERT's) and GELUTanh ("gelu_pytorch_tanh"); it is right only where the config names it.


@numba.njit(**JIT, fastmath=FAST)
def _bias_gelu_tanh_numba(h, bias):  # in place, float64 inside (float32: the sum rounds first, as the reference)
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(h[n, f] + bias[f])
            h[n, f] = 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return h


def bias_gelu_tanh_numba(h, bias):
    """Overwrites `h` with the result, like bias_gelu_numba."""
    return _over_rows(_bias_gelu_tanh_numba, h, bias)


@numba.njit(**JIT, fastmath=FAST)
def _bias_relu_numba(h, bias):  # in place
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            h[n, f] = max(h[n, f] + bias[f], 0.0)
    return h


def bias_relu_numba(h, bias):
    """Overwrites `h` with the result, like bias_gelu_numba."""
    return _over_rows(_bias_relu_numba, h, bias)


# --- residual + LayerNorm ------------------------------------------------------------------------------
# x, residual: [N, D]; weight, bias: [D]. Returns LayerNorm(x + residual): the post-LN order of every
# DistilBERT block (normalise after the residual add, not before the sublayer as in pre-LN models).
# eps is 1e-12 in DistilBERT, far below float32 resolution: it matters only for constant rows.


@numba.njit(**JIT, fastmath=FAST)
def _residual_layernorm_numba(x, residual, weight, bias, eps, out):
    N, D = x.shape
    for n in range(N):
        # Two passes, accumulated in float64 (one row is only D values): the one-pass E[y^2] - E[y]^2
        # cancels catastrophically when the mean is large against the spread.
        mean = 0.0
        for d in range(D):
            mean += np.float64(x[n, d] + residual[n, d])  # the sum rounds to the dtype first, as the reference
        mean /= D
        var = 0.0
        for d in range(D):
            var += (np.float64(x[n, d] + residual[n, d]) - mean) ** 2
        inv = 1.0 / math.sqrt(var / D + eps)
        for d in range(D):
            out[n, d] = (np.float64(x[n, d] + residual[n, d]) - mean) * inv * weight[d] + bias[d]
    return out


def residual_layernorm_numba(x, residual, weight, bias, eps):
    out = np.empty_like(x)
    split_over_threads(
        lambda rows: _residual_layernorm_numba(
            x[rows.start : rows.stop], residual[rows.start : rows.stop], weight, bias, eps, out[rows.start : rows.stop]
        ),
        range(x.shape[0]),
        x.size >= _LAYERNORM_SERIAL_BELOW,
    )
    return out


# --- the backward ------------------------------------------------------------------------------------------
# The twins of ops/reference.py's backward functions, the same signatures and the same math (reference.py
# derives each). They read what the forward's tap kept: the attention probabilities (the reference
# attention's: a forward with a tap runs it) and, after a training forward, the dropout's scaled mask on
# them (`kept`), the activation's input, the LayerNorm's inputs.


@numba.njit(**JIT, fastmath=FAST)
def _softmax_backward_numba(d, probs, keep, inv_scale):  # in place on one head's [S, S]; probs [S, S], keep [S]
    # d holds d probs on entry and leaves with d scores / sqrt(Dh): p_j (d p_j - sum_i d p_i p_i) for a kept
    # key, 0 for a masked one (its score was replaced by a constant). The 1 / sqrt(Dh) of scores = q k^T /
    # sqrt(Dh) is folded in here, once per score, instead of into both products that follow.
    S = d.shape[0]
    for i in range(S):
        total = 0.0  # float64: S products summed
        for j in range(S):
            total += np.float64(d[i, j]) * probs[i, j]
        for j in range(S):
            d[i, j] = probs[i, j] * (d[i, j] - total) * inv_scale if keep[j] else 0.0
    return d


def attention_backward_numba(d_context, q, k, v, probs, keep, n_heads, kept=None):
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    inv_scale = 1.0 / math.sqrt(Dh)
    dq, dk, dv = (np.empty((B, S, D), dtype=q.dtype) for _ in range(3))

    def heads(tasks):  # one thread's share of the (row, head) pairs, as in attention_numba
        d = np.empty((S, S), dtype=q.dtype)  # d probs, then d scores: one head's [S, S] at a time
        used = np.empty((S, S), dtype=q.dtype) if kept is not None else None
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p, dc = probs[b, h], d_context[b, :, cols]
            if kept is not None:  # training's dropout: context = (probs * kept) @ v
                np.multiply(p, kept[b, h], out=used)
            np.matmul((p if kept is None else used).T, dc, out=dv[b, :, cols])  # context = probs @ v
            np.matmul(dc, v[b, :, cols].T, out=d)
            if kept is not None:
                d *= kept[b, h]
            _softmax_backward_numba(d, p, keep[b], inv_scale)
            np.matmul(d, k[b, :, cols], out=dq[b, :, cols])
            np.matmul(d.T, q[b, :, cols], out=dk[b, :, cols])

    _split_over_heads(heads, B, n_heads, S)
    return dq, dk, dv


@numba.njit(**JIT, fastmath=FAST)
def _pair_softmax_backward_numba(d, probs, keep, inv_scale):  # in place on one head's [S, S]; keep [S]
    # DeBERTa's: as _softmax_backward_numba, under the pair mask keep[i] & keep[j], so a padded query's row
    # (uniform probabilities, every score a constant) is all 0; d leaves as d scores / scale, the gradient
    # of each scaled term.
    S = d.shape[0]
    for i in range(S):
        if not keep[i]:
            d[i, :] = 0.0
            continue
        total = 0.0  # float64: S products summed
        for j in range(S):
            total += np.float64(d[i, j]) * probs[i, j]
        for j in range(S):
            d[i, j] = probs[i, j] * (d[i, j] - total) * inv_scale if keep[j] else 0.0
    return d


@numba.njit(**JIT, fastmath=FAST)
def _gather_backward_numba(d, index, transposed, out):  # [S, S], [S, S] -> out [S, 2A], zeroed here
    # reference.gather_backward on one head: out[i, index[i, j]] += d[i, j] (c2p), or with d read transposed,
    # out[j, index[j, i]] += d[i, j] (p2c: key j's rows).
    out[:] = 0.0
    S = d.shape[0]
    for i in range(S):
        for j in range(S):
            if transposed:
                out[i, index[i, j]] += d[j, i]
            else:
                out[i, index[i, j]] += d[i, j]
    return out


def disentangled_attention_backward_numba(
    d_context, q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, probs, keep, n_heads, scale, kept=None
):
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    inv_scale = 1.0 / float(scale)
    dq, dk, dv = (np.empty((B, S, D), dtype=q.dtype) for _ in range(3))
    # The tables' gradients sum over the batch: one partial per row, summed at the end, so that the threads
    # (each on its own (row, head) pairs) never write the same place.
    part_k = None if pos_k is None else np.zeros((B,) + pos_k.shape, dtype=q.dtype)
    part_q = None if pos_q is None else np.zeros((B,) + pos_q.shape, dtype=q.dtype)
    c2p_pos = None if c2p_pos is None else np.ascontiguousarray(c2p_pos, dtype=np.int64)
    p2c_pos = None if p2c_pos is None else np.ascontiguousarray(p2c_pos, dtype=np.int64)
    n_rows = next((t.shape[0] for t in (pos_k, pos_q) if t is not None), 0)  # 2A: one table, projected twice

    def heads(tasks):  # one thread's share of the (row, head) pairs, as in attention_backward_numba
        d = np.empty((S, S), dtype=q.dtype)  # d probs, then d scores / scale
        d_full = np.empty((S, n_rows), dtype=q.dtype)  # a table's gradient through one head's gather, [S, 2A]
        used = np.empty((S, S), dtype=q.dtype) if kept is not None else None  # training's dropped probs
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p, dc = probs[b, h], d_context[b, :, cols]
            pv = p if kept is None else np.multiply(p, kept[b, h], out=used)
            np.matmul(pv.T, dc, out=dv[b, :, cols])  # context = used probs @ v
            np.matmul(dc, v[b, :, cols].T, out=d)
            if kept is not None:
                d *= kept[b, h]
            _pair_softmax_backward_numba(d, p, keep[b], inv_scale)
            np.matmul(d, k[b, :, cols], out=dq[b, :, cols])  # c2c = q (k / scale)^T
            np.matmul(d.T, q[b, :, cols], out=dk[b, :, cols])
            if pos_k is not None:
                full = _gather_backward_numba(d, c2p_pos, False, d_full)
                dq[b, :, cols] += full @ pos_k[:, cols]
                np.matmul(full.T, q[b, :, cols], out=part_k[b, :, cols])
            if pos_q is not None:
                full = _gather_backward_numba(d, p2c_pos, True, d_full)
                dk[b, :, cols] += full @ pos_q[:, cols]
                np.matmul(full.T, k[b, :, cols], out=part_q[b, :, cols])

    _split_over_heads(heads, B, n_heads, S)
    return dq, dk, dv, None if part_k is None else part_k.sum(axis=0), None if part_q is None else part_q.sum(axis=0)


# The activations' backward: d_out [..., F], pre [..., F] (h + bias) -> d pre, a new array ([..., F]).


@numba.njit(**JIT, fastmath=FAST)
def _gelu_backward_f32_numba(d_out, pre, pdf, out):  # pdf: exp(-pre^2 / 2), numpy's SIMD exp (float32)
    # Phi(x) + x phi(x), Phi from erf_rational in float64 (|error| < 3.3e-8), phi from the float32 exp as in
    # the reference; numba's math.exp would be a scalar libm call per element (no SVML here).
    N, F = d_out.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(pre[n, f])
            cdf = 0.5 * (1.0 + erf_rational(x * 0.7071067811865476))
            out[n, f] = d_out[n, f] * (cdf + x * pdf[n, f] * 0.3989422804014327)  # 1 / sqrt(2 pi)
    return out


@numba.njit(**JIT)
def _gelu_backward_f64_numba(d_out, pre, out):  # float64 (audit mode): libm's erf and exp, exact, not fast
    N, F = d_out.shape
    for n in range(N):
        for f in range(F):
            x = pre[n, f]
            cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
            out[n, f] = d_out[n, f] * (cdf + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi))
    return out


@numba.njit(**JIT, fastmath=FAST)
def _gelu_tanh_backward_numba(d_out, pre, out):  # float64 inside, as _bias_gelu_tanh_numba
    N, F = d_out.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(pre[n, f])
            t = math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
            du = 0.7978845608028654 * (1.0 + 3 * 0.044715 * x * x)
            out[n, f] = d_out[n, f] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
    return out


@numba.njit(**JIT, fastmath=FAST)
def _relu_backward_numba(d_out, pre, out):
    N, F = d_out.shape
    for n in range(N):
        for f in range(F):
            out[n, f] = d_out[n, f] if pre[n, f] > 0 else 0.0  # torch's: 0 at exactly 0
    return out


def _activation_backward(kernel, d_out, pre):  # d_out's and pre's rows split over the threads; -> d pre
    F = d_out.shape[-1]
    g, x = d_out.reshape(-1, F), pre.reshape(-1, F)
    out = np.empty(g.shape, dtype=d_out.dtype)
    split_over_threads(
        lambda rows: kernel(g[rows.start : rows.stop], x[rows.start : rows.stop], out[rows.start : rows.stop]),
        range(g.shape[0]),
        g.size >= _GELU_SERIAL_BELOW,
    )
    return out.reshape(d_out.shape)


def _gelu_backward_f32(d_out, pre, out):
    with np.errstate(over="ignore"):  # |pre| > 1.8e19: the square is inf, its exp(-inf) the right 0
        pdf = np.square(pre)
    pdf *= np.float32(-0.5)
    np.exp(pdf, out=pdf)
    return _gelu_backward_f32_numba(d_out, pre, pdf, out)


def bias_gelu_backward_numba(d_out, pre):
    return _activation_backward(
        _gelu_backward_f64_numba if d_out.dtype == np.float64 else _gelu_backward_f32, d_out, pre
    )


def bias_gelu_tanh_backward_numba(d_out, pre):
    return _activation_backward(_gelu_tanh_backward_numba, d_out, pre)


def bias_relu_backward_numba(d_out, pre):
    return _activation_backward(_relu_backward_numba, d_out, pre)


@numba.njit(**JIT, fastmath=FAST)
def _residual_layernorm_backward_numba(d_out, x, residual, weight, eps, d_y, d_weight, d_bias):
    # As reference.py's, row by row: the statistics and xhat in float64 from the float32 sum (as the forward's
    # kernel), d_y = (g - mean(g) - xhat mean(g xhat)) / std with g = d_out * weight; d_weight and d_bias
    # (float64, this chunk's rows) gain d_out * xhat and d_out.
    N, D = x.shape
    xhat = np.empty(D)
    for n in range(N):
        mean = 0.0
        for d in range(D):
            mean += np.float64(x[n, d] + residual[n, d])
        mean /= D
        var = 0.0
        for d in range(D):
            var += (np.float64(x[n, d] + residual[n, d]) - mean) ** 2
        rstd = 1.0 / math.sqrt(var / D + eps)
        g_mean = 0.0
        gx_mean = 0.0
        for d in range(D):
            xh = (np.float64(x[n, d] + residual[n, d]) - mean) * rstd
            xhat[d] = xh
            g = np.float64(d_out[n, d]) * weight[d]
            g_mean += g
            gx_mean += g * xh
            d_weight[d] += d_out[n, d] * xh
            d_bias[d] += d_out[n, d]
        g_mean /= D
        gx_mean /= D
        for d in range(D):
            d_y[n, d] = rstd * (np.float64(d_out[n, d]) * weight[d] - g_mean - xhat[d] * gx_mean)
    return d_y


def residual_layernorm_backward_numba(d_out, x, residual, weight, eps):
    N, D = x.shape
    d_y = np.empty((N, D), dtype=x.dtype)
    partial = {}  # rows.start -> (d_weight, d_bias) of that chunk, float64

    def rows(chunk):
        s = slice(chunk.start, chunk.stop)
        sums = partial[chunk.start] = (np.zeros(D), np.zeros(D))
        _residual_layernorm_backward_numba(d_out[s], x[s], residual[s], weight, eps, d_y[s], *sums)

    split_over_threads(rows, range(N), x.size >= _LAYERNORM_SERIAL_BELOW)
    d_weight, d_bias = np.zeros(D), np.zeros(D)
    for start in sorted(partial):  # the chunks' sums added in row order: the same figures on the same threads
        d_weight += partial[start][0]
        d_bias += partial[start][1]
    return d_y, d_weight.astype(x.dtype), d_bias.astype(x.dtype)
