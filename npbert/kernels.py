"""The hot loops of the forward pass: numba kernels, each beside a plain-numpy reference.

Every operation exists twice with the same signature: `<name>_numpy` (the reference, a direct
transcription of transformers 4.57.6 `modeling_distilbert.py`) and `<name>_numba` (the kernel).
`select()` returns one set of them as `Ops`; `NPBERT_KERNELS=numpy` or `select("numpy")` picks the
references. tests/test_kernels.py asserts that each pair agrees before anything is timed.

Kernels are compiled on first use and cached on disk (`cache=True`), so later processes start fast.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple

import numba
import numpy as np

# --- attention -----------------------------------------------------------------------------------------
# q, k, v: [B, S, D] with head h in columns h*Dh:(h+1)*Dh (the layout q_lin produces, no transposes).
# keep: [B, S] bool, False for padded keys. Returns context [B, S, D] and, if asked, probs [B, H, S, S].


def attention_numpy(q, k, v, keep, n_heads, return_probs=False):
    B, S, D = q.shape
    Dh = D // n_heads
    heads = lambda x: x.reshape(B, S, n_heads, Dh).transpose(0, 2, 1, 3)  # noqa: E731  [B, H, S, Dh]
    # transformers 4.57.6 scales q before the product (5.x scales the scores after: same up to rounding).
    qh = heads(q) / q.dtype.type(math.sqrt(Dh))
    scores = qh @ heads(k).transpose(0, 1, 3, 2)  # [B, H, S, S]
    # Masked keys get the dtype's most negative finite value, not -inf: a row whose keys are all masked
    # then softmaxes to a uniform row instead of NaN, exactly as transformers does.
    scores = np.where(keep[:, None, None, :], scores, np.finfo(q.dtype).min)
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable softmax
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = (probs @ heads(v)).transpose(0, 2, 1, 3).reshape(B, S, D)
    return context, (probs if return_probs else None)


@numba.njit(parallel=True, cache=True)
def _attention_numba(q, k, v, keep, n_heads, return_probs):
    B, S, D = q.shape
    Dh = D // n_heads
    scale = q.dtype.type(math.sqrt(Dh))
    context = np.empty_like(q)
    probs_out = np.zeros((B, n_heads, S, S) if return_probs else (0, 0, 0, 0), dtype=q.dtype)
    for bh in numba.prange(B * n_heads):
        b, h = bh // n_heads, bh % n_heads
        c0 = h * Dh
        kT = np.ascontiguousarray(k[b, :, c0:c0 + Dh].T)  # [Dh, S]: the inner loops below run along S
        vh = np.ascontiguousarray(v[b, :, c0:c0 + Dh])  # [S, Dh]
        n_kept = 0
        for j in range(S):
            n_kept += keep[b, j]
        row = np.empty(S, dtype=q.dtype)
        ctx = np.empty(Dh, dtype=q.dtype)
        for i in range(S):
            row[:] = 0
            for d in range(Dh):
                qd = q[b, i, c0 + d] / scale
                for j in range(S):
                    row[j] += qd * kT[d, j]
            if n_kept == 0:  # every key masked: finfo.min everywhere softmaxes to uniform
                row[:] = 1.0 / S
            else:
                m = -np.inf
                for j in range(S):
                    if keep[b, j] and row[j] > m:
                        m = row[j]
                total = 0.0
                for j in range(S):
                    # exp(finfo.min - max) underflows to exactly 0 in the reference: skip masked keys.
                    row[j] = math.exp(row[j] - m) if keep[b, j] else 0.0
                    total += row[j]
                inv = 1.0 / total
                for j in range(S):
                    row[j] = row[j] * inv
            ctx[:] = 0
            for j in range(S):
                p = row[j]
                if p != 0.0:
                    for d in range(Dh):
                        ctx[d] += p * vh[j, d]
            context[b, i, c0:c0 + Dh] = ctx
            if return_probs:
                probs_out[b, h, i, :] = row
    return context, probs_out


def attention_numba(q, k, v, keep, n_heads, return_probs=False):
    context, probs = _attention_numba(q, k, v, np.ascontiguousarray(keep, dtype=np.bool_), n_heads, return_probs)
    return context, (probs if return_probs else None)


# --- bias + GELU ---------------------------------------------------------------------------------------
# h: [N, F] (lin1's output before its bias), bias: [F]. Returns gelu(h + bias).
# GELU is the exact erf form 0.5 x (1 + erf(x / sqrt 2)), which DistilBERT's "gelu" means; the tanh
# approximation differs by up to ~1e-3 and would break parity.

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; this is libm's, the one numba's math.erf calls


def bias_gelu_numpy(h, bias):
    x = h + bias
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))).astype(h.dtype)


@numba.njit(parallel=True, cache=True)
def _bias_gelu_numba(h, bias):
    N, F = h.shape
    out = np.empty_like(h)
    inv_sqrt2 = 1.0 / math.sqrt(2.0)
    for n in numba.prange(N):
        for f in range(F):
            x = h[n, f] + bias[f]
            out[n, f] = 0.5 * x * (1.0 + math.erf(x * inv_sqrt2))
    return out


def bias_gelu_numba(h, bias):
    return _bias_gelu_numba(h, bias)


# --- residual + LayerNorm ------------------------------------------------------------------------------
# x, residual: [N, D]; weight, bias: [D]. Returns LayerNorm(x + residual): the post-LN order of every
# DistilBERT block (normalise after the residual add, not before the sublayer as in pre-LN models).
# eps is 1e-12 in DistilBERT, far below float32 resolution: it matters only for constant rows.


def residual_layernorm_numpy(x, residual, weight, bias, eps):
    y = x + residual
    mean = y.mean(axis=-1, keepdims=True)
    var = ((y - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch.nn.LayerNorm
    return ((y - mean) / np.sqrt(var + y.dtype.type(eps)) * weight + bias).astype(x.dtype)


@numba.njit(parallel=True, cache=True)
def _residual_layernorm_numba(x, residual, weight, bias, eps):
    N, D = x.shape
    out = np.empty_like(x)
    for n in numba.prange(N):
        y = x[n] + residual[n]
        mean = 0.0  # accumulate in float64: one row is only D values, and it is free here
        for d in range(D):
            mean += y[d]
        mean /= D
        var = 0.0
        for d in range(D):
            var += (y[d] - mean) ** 2
        var /= D
        inv = 1.0 / math.sqrt(var + eps)
        for d in range(D):
            out[n, d] = (y[d] - mean) * inv * weight[d] + bias[d]
    return out


def residual_layernorm_numba(x, residual, weight, bias, eps):
    return _residual_layernorm_numba(x, residual, weight, bias, eps)


# --- choosing a set ------------------------------------------------------------------------------------


class Ops(NamedTuple):
    name: str
    attention: Callable
    bias_gelu: Callable
    residual_layernorm: Callable


NUMPY = Ops("numpy", attention_numpy, bias_gelu_numpy, residual_layernorm_numpy)
NUMBA = Ops("numba", attention_numba, bias_gelu_numba, residual_layernorm_numba)
CHOICES = {"numpy": NUMPY, "numba": NUMBA}


def select(name: str | None = None) -> Ops:
    """The kernels to run: `name`, else $NPBERT_KERNELS, else numba."""
    name = name or os.environ.get("NPBERT_KERNELS") or "numba"
    if name not in CHOICES:
        raise ValueError(f"unknown kernels {name!r}: choose one of {', '.join(CHOICES)} (NPBERT_KERNELS)")
    return CHOICES[name]
