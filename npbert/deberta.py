"""DeBERTa-v2/v3, everything that differs from the other families: embeddings, relative positions, attention.

Follows transformers 4.57.6 `models/deberta_v2/modeling_deberta_v2.py`: `make_log_bucket_position`,
`build_relative_position`, `DisentangledSelfAttention` (`forward`, `disentangled_attention_bias`) and
`DebertaV2Encoder.get_attention_mask`, `DebertaV2Embeddings`. model.py's encoder picks this module's
`embeddings` and `self_attention` where `config.disentangled_attention` says (the one place it asks);
the score terms themselves are plain-numpy operations in ops/reference.py (`c2c`, `c2p`, `p2c`,
`disentangled_attention_numpy`) beside their numba kernel, and docs/deberta.md works one head through by
hand.

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

from typing import NamedTuple

import numpy as np

from .ops.gemm import linear, linear_backward, qkv_projections


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
        log_pos = np.ceil(
            np.log(abs_pos.astype(f32) / f32(mid)) / np.log(f32((max_position - 1) / mid)) * f32(mid - 1)
        ) + f32(mid)
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


# --- the layers ------------------------------------------------------------------------------------------


def embeddings(input_ids, token_type_ids, keep, emb, config, ops, tap=None):  # [B, S] -> [B, S, D]
    # DebertaV2Embeddings: words (+ absolute positions only when position_biased_input; v3 has none)
    # (+ token types when type_vocab_size > 0), LayerNorm, then padded positions multiplied by 0.
    B, S = input_ids.shape
    x = emb.word_embeddings.weight[input_ids]  # [B, S, D]
    types = (
        emb.token_type_embeddings.weight[token_type_ids] if emb.token_type_embeddings is not None else np.zeros_like(x)
    )
    if tap is not None:
        tap["word"] = x
        if emb.token_type_embeddings is not None:
            tap["token_type"] = types
    if emb.position_embeddings is not None:
        if tap is not None:
            tap["position"] = emb.position_embeddings.weight[None, :S]
        x = x + emb.position_embeddings.weight[:S]
    x = ops.residual_layernorm(
        x.reshape(B * S, -1), types.reshape(B * S, -1), emb.LayerNorm.weight, emb.LayerNorm.bias, config.layer_norm_eps
    ).reshape(B, S, -1)
    return x * keep[..., None].astype(x.dtype)


class RelativePositions(NamedTuple):
    """What every layer's attention shares in one forward (DebertaV2Encoder.get_rel_embedding, get_rel_pos)."""

    table: np.ndarray | None  # [2A, D] rel_embeddings, normalised (norm_rel_ebd); None: no relative_attention
    c2p_pos: np.ndarray | None  # [S, S] table row of delta(i, j) (c2p_index)
    p2c_pos: np.ndarray | None  # [S, S] table row of delta(j, i) (p2c_index)
    scale: float  # attention_scale
    pos_att_type: tuple
    share_att_key: bool


def shared_positions(seq_len, transformer, config, dtype, ops, tap=None) -> RelativePositions:
    """The relative positions of a seq_len-long input and the normalised table, for every layer."""
    scale = attention_scale(config.head_dim, config.pos_att_type, dtype)
    if not config.relative_attention:  # content only, but scaled as if the position terms were there
        return RelativePositions(None, None, None, scale, config.pos_att_type, config.share_att_key)
    table = transformer.rel_embeddings.weight
    if transformer.rel_layer_norm is not None:
        ln = transformer.rel_layer_norm
        table = ops.residual_layernorm(table, np.zeros_like(table), ln.weight, ln.bias, config.layer_norm_eps)
    if tap is not None:
        tap["rel_embeddings"] = table
    relative = relative_positions(seq_len, config.position_buckets, config.max_relative_distance)  # [S, S]
    span = config.relative_span
    return RelativePositions(
        table, c2p_index(relative, span), p2c_index(relative, span), scale, config.pos_att_type, config.share_att_key
    )


def projected_table(layer, rel: RelativePositions, table=None):  # -> pos_k [2A, D] | None, pos_q [2A, D] | None
    # The table projected like the keys (c2p) and like the queries (p2c): with the layer's own q/k
    # projections when share_att_key, else with its pos_key_proj / pos_query_proj. `table`: this layer's
    # copy of rel.table where training's dropout dropped some of it (pos_dropout), else rel.table.
    if rel.table is None:
        return None, None
    if table is None:
        if layer.pos_tables is not None:  # computed once at load (layout.with_position_tables)
            return layer.pos_tables
        table = rel.table
    own = layer.attention if rel.share_att_key else layer.pos_proj
    pos_k = linear(table, own.k_lin) if "c2p" in rel.pos_att_type else None
    pos_q = linear(table, own.q_lin) if "p2c" in rel.pos_att_type else None
    return pos_k, pos_q


def self_attention(x, keep, layer, rel, n_heads, ops, return_probs=False, tap=None):  # [B, S, D] -> [B, S, D]
    # As model.self_attention, with the position terms added to the scores (ops' disentangled_attention).
    q, k, v = qkv_projections(x, layer.attention, tap)  # [B, S, D] each
    table = None
    if tap is not None and tap.dropout is not None and rel.table is not None:  # training: each layer drops its own
        table = tap.dropout(rel.table, tap, "attention.rel_embeddings", "rel_embeddings.dropout")
    pos_k, pos_q = projected_table(layer, rel, table)
    context, probs = ops.disentangled_attention(
        q, k, v, pos_k, pos_q, rel.c2p_pos, rel.p2c_pos, keep, n_heads, rel.scale, return_probs, tap
    )  # [B, S, D], [B, H, S, S]
    out = linear(context, layer.attention.out_lin)
    if tap is not None:
        tap["context"], tap["output"] = context, out
    return out, probs


# --- the backward -------------------------------------------------------------------------------------------
# Each function below is the backward of the one of the same name above, with model.py's backward
# signatures (model.family_layers picks them): it reads what the forward's tap kept and the loader's plain
# tree (model.checkpoint_weights), and recomputes the rest (the table, its projections, the indices).
# Gradients are keyed by canonical name (weights.canonical_keys), relative to the layer or the embeddings.
# (The layers' contract keeps this module below model.py: its small helpers for gradient dicts and table
# lookups are not imported here; the two below do the same for DeBERTa's layers.)


def lookup_backward(table, ids, d_rows):  # [rows, D], [B, S] ids, [B*S, D] -> [rows, D], the backward of table[ids]
    grad = np.zeros(table.shape, dtype=d_rows.dtype)
    np.add.at(grad, ids.reshape(-1), d_rows)  # a row looked up several times sums their gradients
    return grad


def add_linear_gradients(grads, prefix, g):  # linear_backward's {"weight", "bias"} (None: weights=False)
    for p, a in (g or {}).items():  # added, not set: share_att_key's k_lin/q_lin serve twice
        key = f"{prefix}.{p}"
        grads[key] = grads[key] + a if key in grads else a


def embeddings_backward(d_embedded, tap, emb, config, ops, input_ids, token_type_ids, keep):
    # [B, S, D] -> {name: grad}: the mask multiply, the LayerNorm, then the tables (words, absolute positions
    # when position_biased_input, token types when type_vocab_size > 0).
    B, S = input_ids.shape
    d_normed = d_embedded * keep[..., None].astype(d_embedded.dtype)  # padded rows were multiplied by 0
    words = tap["word"] if "position" not in tap else tap["word"] + tap["position"]
    types = tap["token_type"] if "token_type" in tap else np.zeros_like(words)
    d_y, d_weight, d_bias = ops.residual_layernorm_backward(
        d_normed.reshape(B * S, -1),
        words.reshape(B * S, -1),
        types.reshape(B * S, -1),
        emb.LayerNorm.weight,
        config.layer_norm_eps,
    )
    grads = {"LayerNorm.weight": d_weight, "LayerNorm.bias": d_bias}
    grads["word_embeddings.weight"] = lookup_backward(emb.word_embeddings.weight, input_ids, d_y)
    grads["word_embeddings.weight"][config.pad_token_id] = 0  # nn.Embedding(padding_idx=pad): no gradient there
    if emb.token_type_embeddings is not None:
        grads["token_type_embeddings.weight"] = lookup_backward(emb.token_type_embeddings.weight, token_type_ids, d_y)
    if emb.position_embeddings is not None:  # positions 0..S-1 in every row, no padding_idx
        d_positions = np.zeros_like(emb.position_embeddings.weight, dtype=d_y.dtype)
        d_positions[:S] = d_y.reshape(B, S, -1).sum(axis=0)
        grads["position_embeddings.weight"] = d_positions
    return grads


def shared_positions_backward(d_table, transformer, config, ops, tap):
    # d_table [2A, D]: the gradient of the (normalised) table, summed over every layer that projected it ->
    # {canonical name: grad} for the table and its LayerNorm. d_table is None without relative_attention: a
    # LayerNorm that norm_rel_ebd builds all the same (weights.canonical_keys) then gets zeros, as torch's
    # parameters that took no part in the loss.
    ln, grads = transformer.rel_layer_norm, {}
    if d_table is not None and ln is None:
        grads["transformer.rel_embeddings.weight"] = d_table
    elif d_table is not None:
        table = transformer.rel_embeddings.weight
        d_table, d_weight, d_bias = ops.residual_layernorm_backward(
            d_table, table, np.zeros_like(table), ln.weight, config.layer_norm_eps
        )
        grads["transformer.rel_embeddings.weight"] = d_table
        grads.update({"transformer.rel_layer_norm.weight": d_weight, "transformer.rel_layer_norm.bias": d_bias})
    elif ln is not None:
        grads.update({f"transformer.rel_layer_norm.{p}": np.zeros_like(getattr(ln, p)) for p in ("weight", "bias")})
    return grads


def self_attention_backward(d_out, x, keep, layer, rel, n_heads, ops, tap, weights=True):
    # [B, S, D] -> d_x [B, S, D], {name: grad}, the gradient of the table rel.table [2A, D] (None when there is
    # none, or weights=False: the table depends on weights only, so an input's gradient never needs it).
    att = layer.attention
    d_context, g = linear_backward(d_out, tap["context"], att.out_lin, weights)
    grads = {}
    add_linear_gradients(grads, "attention.out_lin", g)
    # after a training forward: the masks of its dropout on this layer's table and on the probabilities
    table_mask = tap["rel_embeddings.dropout"] if "rel_embeddings.dropout" in tap else None
    table = rel.table if table_mask is None else rel.table * table_mask
    pos_k, pos_q = projected_table(layer, rel, None if table_mask is None else table)
    dq, dk, dv, d_pos_k, d_pos_q = ops.disentangled_attention_backward(
        d_context,
        tap["q"],
        tap["k"],
        tap["v"],
        pos_k,
        pos_q,
        rel.c2p_pos,
        rel.p2c_pos,
        tap["probs"],
        keep,
        n_heads,
        rel.scale,
        tap["probs.dropout"] if "probs.dropout" in tap else None,
    )
    d_x = 0
    for name, d in (("q_lin", dq), ("k_lin", dk), ("v_lin", dv)):
        d_in, g = linear_backward(d, x, getattr(att, name), weights)
        d_x = d_x + d_in  # x feeds all three projections
        add_linear_gradients(grads, f"attention.{name}", g)
    if not weights or rel.table is None:
        return d_x, grads, None
    # The table's projections: with share_att_key the layer's own k_lin/q_lin (their gradients add to the
    # content's), else its pos_proj. Without position terms (pos_att_type empty) the table is unused: zeros.
    d_table = np.zeros_like(rel.table)
    prefix, own = ("attention", att) if rel.share_att_key else ("pos_proj", layer.pos_proj)
    for name, d in (("k_lin", d_pos_k), ("q_lin", d_pos_q)):
        if d is not None:  # None: a term pos_att_type leaves out
            d_rows, g = linear_backward(d, table, getattr(own, name))
            d_table += d_rows
            add_linear_gradients(grads, f"{prefix}.{name}", g)
    return d_x, grads, (d_table if table_mask is None else d_table * table_mask)
