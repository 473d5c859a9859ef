"""The forward's math in plain numpy: every operation the kernels run, written to be read.

Each function is a direct transcription of transformers 4.57.6 (`modeling_distilbert.py`, and
`modeling_deberta_v2.py` for the disentangled attention), and has a twin with the same signature in
ops/numba.py (the kernels the default path runs; `NPBERT_KERNELS=numpy` runs these instead).
tests/test_kernels.py and tests/test_deberta.py check every pair against each other.

The attention functions take an optional `tap` (model.Tap, scoped to the layer's `attention.`): given one,
they leave their intermediates in it (the scores before the mask, the probabilities; DeBERTa's three score
terms), the arrays a trace keeps and a backward pass reads. Without one they keep nothing.

Dimensions: B batch, S sequence, D width, H heads, Dh = D / H, A DeBERTa's span (2A table rows).
"""

from __future__ import annotations

import math

import numpy as np

# --- attention ---------------------------------------------------------------------------------------------
# q, k, v: [B, S, D] with head h in columns h*Dh:(h+1)*Dh (the layout q_lin produces; views of the fused
# qkv output are fine, no copies). keep: [B, S] bool, False for padded keys.
# Returns context [B, S, D] and, if asked, probs [B, H, S, S].


def heads(x, n_heads):  # [B, S, D] -> [B, H, S, Dh], a view
    B, S, D = x.shape
    return x.reshape(B, S, n_heads, D // n_heads).transpose(0, 2, 1, 3)


def attention_numpy(q, k, v, keep, n_heads, return_probs=False, tap=None):
    B, S, D = q.shape
    Dh = D // n_heads
    # transformers 4.57.6 scales q before the product (5.x scales the scores after: same up to rounding).
    qh = heads(q, n_heads) / q.dtype.type(math.sqrt(Dh))
    scores = qh @ heads(k, n_heads).transpose(0, 1, 3, 2)  # [B, H, S, S]
    if tap is not None:
        tap["scores"] = scores
    # Masked keys get the dtype's most negative finite value, not -inf: a row whose keys are all masked
    # then softmaxes to a uniform row instead of NaN, exactly as transformers does.
    scores = np.where(keep[:, None, None, :], scores, np.finfo(q.dtype).min)
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable softmax
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    if tap is not None:
        tap["probs"] = probs
    used = probs if tap is None or tap.dropout is None else tap.dropout(probs, tap, "attention.probs", "probs.dropout")
    context = (used @ heads(v, n_heads)).transpose(0, 2, 1, 3).reshape(B, S, D)
    return context, (probs if return_probs else None)


def merge_heads(x):  # [B, H, S, Dh] -> [B, S, D]: the inverse of heads
    B, H, S, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, H * Dh)


def softmax_backward(d_probs, probs):  # [..., S], [..., S] -> [..., S]: the gradient of the scores
    # probs = softmax(scores): d scores_j = p_j (d p_j - sum_i d p_i p_i).
    return probs * (d_probs - (d_probs * probs).sum(axis=-1, keepdims=True))


def attention_backward_numpy(d_context, q, k, v, probs, keep, n_heads, kept=None):  # -> dq, dk, dv [B, S, D]
    # The backward of attention_numpy, from its forward's probabilities (the tap's "probs") and, after a
    # training forward, the dropout's scaled mask on them (the tap's "probs.dropout"; None: no dropout).
    B, S, D = q.shape
    scale = q.dtype.type(math.sqrt(D // n_heads))
    d_ctx = heads(d_context, n_heads)  # [B, H, S, Dh]
    used = probs if kept is None else probs * kept
    dv = np.swapaxes(used, -1, -2) @ d_ctx  # context = used @ v
    d_used = d_ctx @ np.swapaxes(heads(v, n_heads), -1, -2)  # [B, H, S, S]
    d_scores = softmax_backward(d_used if kept is None else d_used * kept, probs)
    # A masked key's score was replaced by a constant: no gradient reaches it (its probability is 0 anyway).
    d_scores = np.where(keep[:, None, None, :], d_scores, 0)
    dq = (d_scores @ heads(k, n_heads)) / scale  # scores = (q / sqrt(Dh)) k^T
    dk = np.swapaxes(d_scores, -1, -2) @ (heads(q, n_heads) / scale)
    return merge_heads(dq), merge_heads(dk), merge_heads(dv)


# --- DeBERTa's disentangled attention ------------------------------------------------------------------
# q, k, v: [B, S, D] as above; pos_k, pos_q: [2A, D], the relative-position table projected like the keys
# (for c2p) and like the queries (for p2c), None for a term pos_att_type leaves out; c2p_pos, p2c_pos:
# [S, S] table rows (deberta.c2p_index, p2c_index); keep: [B, S]; scale: deberta.attention_scale.
# Scores are c2c + c2p + p2c (deberta.py explains them), masked by the outer product of keep with
# itself. Returns context [B, S, D] and, if asked, probs [B, H, S, S].


def c2c(q, k, scale):  # [..., S, Dh], [..., S, Dh] -> [..., S, S]
    # transformers divides k (not the product) by the scale: the same up to rounding, kept for parity.
    return q @ (np.swapaxes(k, -1, -2) / scale)


def c2p(q, pos_k, index, scale):  # [..., S, Dh], [..., 2A, Dh], [S, S] -> [..., S, S]
    # Every query against every table row ([..., S, 2A], one product), then for each key j the row
    # delta(i, j): a gather along the relative-position axis.
    full = q @ np.swapaxes(pos_k, -1, -2)  # [..., S, 2A]
    return np.take_along_axis(full, np.broadcast_to(index, full.shape[:-1] + index.shape[-1:]), axis=-1) / scale


def p2c(k, pos_q, index, scale):  # [..., S, Dh], [..., 2A, Dh], [S, S] -> [..., S, S]
    # The same with the roles swapped: every key against every row, gathered at delta(j, i), then
    # transposed so that entry [i, j] belongs to query i and key j.
    full = k @ np.swapaxes(pos_q, -1, -2)  # [..., S, 2A]
    gathered = np.take_along_axis(full, np.broadcast_to(index, full.shape[:-1] + index.shape[-1:]), axis=-1)
    return np.swapaxes(gathered, -1, -2) / scale


def score_terms(q, k, pos_k, pos_q, c2p_pos, p2c_pos, scale):
    """The three terms of one layer's attention scores, each already scaled: (c2c, c2p, p2c), every one
    [..., S, S]; c2p (p2c) is None when pos_k (pos_q) is None, i.e. when pos_att_type leaves it out."""
    return (
        c2c(q, k, scale),
        None if pos_k is None else c2p(q, pos_k, c2p_pos, scale),
        None if pos_q is None else p2c(k, pos_q, p2c_pos, scale),
    )


def combined_scores(c2c_term, c2p_term, p2c_term):  # each [..., S, S] (or None) -> [..., S, S]
    # In transformers' order: the position terms summed first (disentangled_attention_bias), then added.
    position = [t for t in (c2p_term, p2c_term) if t is not None]
    if not position:
        return c2c_term
    return c2c_term + (position[0] if len(position) == 1 else position[0] + position[1])


def pair_mask(keep):  # [B, S] bool -> [B, 1, S, S] bool
    # get_attention_mask: the outer product of the padding mask with itself. Query i may look at key j
    # only when both are tokens: a padded query row is masked everywhere, softmaxes to a uniform row
    # (finfo.min in every place), exactly as in transformers.
    return keep[:, None, :, None] & keep[:, None, None, :]


def masked_softmax(scores, keep):  # [B, H, S, S], [B, S] -> [B, H, S, S]
    # masked_fill(~mask, finfo.min), then softmax over keys (DisentangledSelfAttention.forward).
    scores = np.where(pair_mask(keep), scores, np.finfo(scores.dtype).min)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def head_rows(table, n_heads):  # [2A, D] -> [H, 2A, Dh]: a projected table, split into heads
    R, D = table.shape
    return table.reshape(R, n_heads, D // n_heads).transpose(1, 0, 2)


def disentangled_attention_numpy(
    q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, n_heads, scale, return_probs=False, tap=None
):
    B, S, D = q.shape
    rows = lambda t: None if t is None else head_rows(t, n_heads)  # noqa: E731  [H, 2A, Dh]
    terms = score_terms(heads(q, n_heads), heads(k, n_heads), rows(pos_k), rows(pos_q), c2p_pos, p2c_pos, scale)
    scores = combined_scores(*terms)  # [B, H, S, S]
    probs = masked_softmax(scores, keep)
    if tap is not None:
        for name, term in zip(("c2c", "c2p", "p2c"), terms):
            if term is not None:
                tap[name] = term
        tap["scores"], tap["probs"] = scores, probs
    used = probs if tap is None or tap.dropout is None else tap.dropout(probs, tap, "attention.probs", "probs.dropout")
    context = (used @ heads(v, n_heads)).transpose(0, 2, 1, 3).reshape(B, S, D)
    return context, (probs if return_probs else None)


def disentangled_attention_backward_numpy(
    d_context, q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, probs, keep, n_heads, scale, kept=None
):  # -> dq, dk, dv [B, S, D], d_pos_k, d_pos_q [2A, D] (None where pos_k, pos_q are None)
    """The gradients of disentangled_attention_numpy's context with respect to its inputs, given d_context
    [B, S, D] and the forward's probs [B, H, S, S] (its tap's "probs") and, after a training forward, the
    dropout's scaled mask on them (kept: the tap's "probs.dropout"); the other arguments as the forward's."""
    qh, kh, vh = heads(q, n_heads), heads(k, n_heads), heads(v, n_heads)  # [B, H, S, Dh]
    dch = heads(d_context, n_heads)
    dv = (probs if kept is None else probs * kept).swapaxes(-1, -2) @ dch  # context = used probs @ v
    d_probs = dch @ vh.swapaxes(-1, -2)  # [B, H, S, S]
    if kept is not None:
        d_probs = d_probs * kept
    # masked_fill put constants where the pair mask is False (padded keys, and the whole row of a padded
    # query, whose uniform probabilities carry no score): no gradient flows back through them.
    d_scores = np.where(pair_mask(keep), softmax_backward(d_probs, probs), 0)
    d_term = d_scores / scale  # every term was divided by the scale (c2c through k, the others after the gather)
    dq = d_term @ kh  # c2c = q (k / scale)^T
    dk = d_term.swapaxes(-1, -2) @ qh
    d_pos_k = d_pos_q = None
    if pos_k is not None:  # c2p[i, j] = full[i, c2p_pos[i, j]] / scale, full = q pos_k^T  [B, H, S, 2A]
        pkh = head_rows(pos_k, n_heads)  # [H, 2A, Dh]
        d_full = gather_backward(d_term, c2p_pos, pkh.shape[1])
        dq = dq + d_full @ pkh
        d_pos_k = merge_heads((d_full.swapaxes(-1, -2) @ qh).sum(axis=0)[None])[0]  # summed over the batch
    if pos_q is not None:  # p2c[i, j] = full[j, p2c_pos[j, i]] / scale, full = k pos_q^T: keys' rows
        pqh = head_rows(pos_q, n_heads)
        d_full = gather_backward(d_term.swapaxes(-1, -2), p2c_pos, pqh.shape[1])
        dk = dk + d_full @ pqh
        d_pos_q = merge_heads((d_full.swapaxes(-1, -2) @ kh).sum(axis=0)[None])[0]
    return merge_heads(dq), merge_heads(dk), merge_heads(dv), d_pos_k, d_pos_q


def gather_backward(d_gathered, index, n_rows):  # [..., S, S], [S, S] -> [..., S, n_rows]
    # The backward of c2p's (and p2c's) np.take_along_axis(full, index, axis=-1): entry [..., i, j] was
    # read from full[..., i, index[i, j]], so its gradient goes back there. Several keys j of one query i
    # read the same table row (the clamp at both ends of the span, the log buckets far away), so the
    # gradients are added, not assigned: a scatter-add along the relative axis.
    d_full = np.zeros(d_gathered.shape[:-1] + (n_rows,), d_gathered.dtype)
    np.add.at(d_full, (..., np.arange(index.shape[0])[:, None], index), d_gathered)
    return d_full


# --- bias + GELU ---------------------------------------------------------------------------------------
# h: [N, F] (lin1's output before its bias), bias: [F]. Returns gelu(h + bias).
# GELU is the exact erf form 0.5 x (1 + erf(x / sqrt 2)), which DistilBERT's "gelu" means; the tanh
# approximation differs by up to ~1e-3 and would break parity.

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; this is libm's, computed in float64


def bias_gelu_numpy(h, bias):
    x = h + bias
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))).astype(h.dtype)


# --- bias + the other activations a config may name (families.ACTIVATIONS) ---------------------------
# gelu_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), transformers' NewGELUActivation
# ("gelu_new", ALBERT's) and GELUTanh ("gelu_pytorch_tanh"); it is right only where the config names it.

_TANH_SCALE = math.sqrt(2.0 / math.pi)


def bias_gelu_tanh_numpy(h, bias):
    x = h + bias
    return (0.5 * x * (1.0 + np.tanh(_TANH_SCALE * (x + 0.044715 * x**3)))).astype(h.dtype)


def bias_relu_numpy(h, bias):
    return np.maximum(h + bias, 0).astype(h.dtype)


# The activations' backward: d_out [N, F], pre = h + bias (the forward's "ffn.pre_activation") -> d pre.
# The bias's gradient is then d pre summed over rows, and h's is d pre itself.


def bias_gelu_backward_numpy(d_out, pre):
    # d/dx of x Phi(x) = Phi(x) + x phi(x), Phi the normal CDF, phi its density.
    cdf = 0.5 * (1.0 + _erf(pre / math.sqrt(2.0)).astype(pre.dtype))
    pdf = np.exp(-0.5 * pre * pre) / math.sqrt(2.0 * math.pi)
    return (d_out * (cdf + pre * pdf)).astype(d_out.dtype)


def bias_gelu_tanh_backward_numpy(d_out, pre):
    # u = c (x + 0.044715 x^3), gelu = 0.5 x (1 + tanh u): d/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) du/dx.
    t = np.tanh(_TANH_SCALE * (pre + 0.044715 * pre**3))
    du = _TANH_SCALE * (1.0 + 3 * 0.044715 * pre * pre)
    return (d_out * (0.5 * (1.0 + t) + 0.5 * pre * (1.0 - t * t) * du)).astype(d_out.dtype)


def bias_relu_backward_numpy(d_out, pre):
    return np.where(pre > 0, d_out, 0).astype(d_out.dtype)  # torch's: 0 at exactly 0


# --- residual + LayerNorm ------------------------------------------------------------------------------
# x, residual: [N, D]; weight, bias: [D]. Returns LayerNorm(x + residual): the post-LN order of every
# DistilBERT block (normalise after the residual add, not before the sublayer as in pre-LN models).
# eps is 1e-12 in DistilBERT, far below float32 resolution: it matters only for constant rows.


def residual_layernorm_numpy(x, residual, weight, bias, eps):
    y = x + residual
    mean = y.mean(axis=-1, keepdims=True)
    var = ((y - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch.nn.LayerNorm
    return ((y - mean) / np.sqrt(var + y.dtype.type(eps)) * weight + bias).astype(x.dtype)


def residual_layernorm_backward_numpy(d_out, x, residual, weight, eps):  # [N, D] -> d_y [N, D], d_weight, d_bias
    # The backward of residual_layernorm_numpy, from its inputs (the mean and variance are recomputed: cheaper
    # to keep than two more arrays per LayerNorm). d_y is the gradient of y = x + residual: it is x's and
    # residual's alike. With xhat = (y - mean) / std and g = d_out * weight:
    #     d_y = (g - mean(g) - xhat mean(g xhat)) / std      (each mean over the D features of a row)
    y = x + residual
    mean = y.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((y - mean) ** 2).mean(axis=-1, keepdims=True) + y.dtype.type(eps))
    xhat = (y - mean) * rstd
    g = d_out * weight
    d_y = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return d_y.astype(x.dtype), (d_out * xhat).sum(axis=0), d_out.sum(axis=0)


# --- a linear layer's product on weights stored as panels (ops/gemm.py) -------------------------------------


def matmul_panels_numpy(x, panels):  # [M, in] x [out/32, in, 32] -> [M, out]; the reference: x @ W.T
    n_panels, K, width = panels.shape
    return x @ panels.transpose(1, 0, 2).reshape(K, n_panels * width)
