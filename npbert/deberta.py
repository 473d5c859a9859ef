"""DeBERTa-v2/v3's disentangled attention, one term at a time, in plain numpy.

Follows transformers 4.57.6 `models/deberta_v2/modeling_deberta_v2.py`: `make_log_bucket_position`,
`build_relative_position`, `DisentangledSelfAttention` (`forward`, `disentangled_attention_bias`) and
`DebertaV2Encoder.get_attention_mask`. These are the pieces a reader needs to understand the attention;
model.py calls them (through kernels.py's `disentangled_attention`) where `config.disentangled_attention`
says, trace.py keeps each term, and docs/deberta.md works one head through by hand.

BERT adds a position embedding to every token before the first layer, so content and position are mixed
in one vector. DeBERTa keeps them apart: the input is content only (`position_biased_input` false in v3),
and position enters every layer's attention through a table of *relative* position embeddings, one row
per relative distance, shared by all layers. The attention score of query i and key j then has three
terms (per head, Dh-wide vectors, A = config.relative_span, rel = the relative position table):

    c2c  q_i . k_j                          content of i against content of j (BERT's only term)
    c2p  q_i . pk[delta(i, j)]              content of i against the position of j as seen from i
    p2c  k_j . pq[delta(j, i)]              content of j against the position of i as seen from j

with pk = rel projected like the keys, pq = rel projected like the queries (the same q/k projections when
`share_att_key`, else the layer's own pos_key_proj/pos_query_proj), and delta the bucketed relative
position shifted into the table's rows 0..2A-1. A fourth term, position against position, would carry
nothing about the tokens: DeBERTa drops it.

Dimensions: B batch, H heads, S sequence, Dh head width, A the span (2A table rows).
"""

from __future__ import annotations

import numpy as np


def log_bucket_position(relative, bucket_size, max_position):  # [S, S] int64 -> [S, S] int64
    # A bucket is a row of the relative-position table. Distances shorter than mid = bucket_size / 2 get
    # a row each (exact); longer ones share rows, ever more of them per row, logarithmically, so that
    # distances up to max_position fit in the remaining mid rows on each side: near tokens are told
    # apart, far ones only roughly. Computed in float32 as transformers does (its ceil sees float32
    # logs: float64 would move a few boundaries).
    sign = np.sign(relative)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    f32 = np.float32
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) where abs_pos <= mid: not selected below
        log_pos = np.ceil(np.log(abs_pos.astype(f32) / f32(mid)) / np.log(f32((max_position - 1) / mid))
                          * f32(mid - 1)) + f32(mid)
    return np.where(abs_pos <= mid, relative.astype(f32), log_pos * sign).astype(np.int64)


def relative_positions(seq_len, bucket_size, max_position):  # -> [S, S] int64
    """relative[i, j] = i - j, log-bucketed when bucket_size > 0 (build_relative_position)."""
    ids = np.arange(seq_len, dtype=np.int64)
    relative = ids[:, None] - ids[None, :]
    if bucket_size > 0 and max_position > 0:
        relative = log_bucket_position(relative, bucket_size, max_position)
    return relative


def c2p_index(relative, span):  # [S, S] -> [S, S]: table row of delta(i, j), the key's position from the query
    return np.clip(relative + span, 0, 2 * span - 1)


def p2c_index(relative, span):  # [S, S] -> [S, S]: table row of delta(j, i), the query's position from the key
    # transformers gathers p2c with -relative: entry [j, i] is key j's view of query i.
    return np.clip(-relative + span, 0, 2 * span - 1)


def attention_scale(head_dim, pos_att_type, dtype):
    """sqrt(Dh * (1 + number of position terms)), rounded to float32 (as transformers' scaled_size_sqrt)
    before it is cast to the model dtype.

    Each term is a dot product of two Dh-wide vectors: with unit-variance entries its variance is Dh, which
    is why BERT divides by sqrt(Dh). DeBERTa sums 1 + n such terms (n = 1 or 2 position terms), so the sum
    has variance (1 + n) Dh, and dividing by sqrt(Dh (1 + n)) keeps the softmax's input at BERT's scale."""
    factor = 1 + ("c2p" in pos_att_type) + ("p2c" in pos_att_type)
    return np.dtype(dtype).type(np.sqrt(np.float32(head_dim * factor)))


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
    return (c2c(q, k, scale), None if pos_k is None else c2p(q, pos_k, c2p_pos, scale),
            None if pos_q is None else p2c(k, pos_q, p2c_pos, scale))


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

