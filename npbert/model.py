"""The encoder forward pass in numpy, one pure function per layer, for every family in families.py: the one forward.

Follows transformers 4.57.6 `models/distilbert/modeling_distilbert.py` and the other families' modeling
files (families.py names each; eager attention, inference: dropout is the identity). All of them are
the same post-LN encoder; what differs is data on the Config (token types, where positions start, an
embedding projection, shared blocks, the activation), read where the layer below uses it, and one
switch, `config.disentangled_attention`, read once in `encoder`: DeBERTa's embeddings and attention
(deberta.py) in place of the ones here. Weights come from `weights.py` as a frozen tree named like
DistilBERT's checkpoint keys; every linear layer stores PyTorch's [out, in] matrix, so

    linear(x) = x @ W.T + b

on the tree the loader returns as on the one layout.py re-lays out for speed (the same values, stored
differently; ops/gemm.py reads every layout).

Dimensions:  B batch, S sequence, D model width (768), H heads (12), Dh = D / H (64),
             F FFN width (3072), V vocabulary (28996), P positions (512),
             E embedding width (D, except ELECTRA-small / ALBERT: 128), T token types (2; 0 in DistilBERT).

The elementwise work and attention run through `ops` (ops/reference.py's plain numpy, or the numba
kernels of ops/numba.py); the products through ops/gemm.py.

Every layer takes an optional `tap` (a Tap): given one, it leaves its named intermediates there (the
names of trace.py's table), which is all a trace is (`trace()` below: this forward with the reference
kernels and a tap) and what a backward pass reads. Without one the forward keeps nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

# threads first: it sets OpenBLAS's thread timeout, which OpenBLAS reads when numpy is first imported.
from . import threads

# isort: split

import numpy as np

from . import deberta, hub, layout, weights as W
from .config import Config
from .families import ACTIVATIONS
from .ops import NUMPY, select as select_kernels
from .ops.gemm import linear, linear_backward, matmul_t, panels_pay_off, qkv_projections


class Tap:
    """Where a forward leaves its named intermediates: one dict (`arrays`, in forward order) shared by every
    layer, and the prefix of the layer writing now. A layer writes `tap["probs"]`; the encoder hands it
    `tap.scope("layer.3.attention")`, so the dict holds "layer.3.attention.probs". The arrays are the
    forward's own (no copies): the activations a backward pass reads, by the same names."""

    def __init__(self, arrays: dict | None = None, prefix: str = "", dropout: "Dropout | None" = None):
        self.arrays = {} if arrays is None else arrays
        self.prefix = prefix
        self.dropout = dropout  # training only: the dropout the layers apply, and whose masks they keep here

    def scope(self, name: str) -> "Tap":
        return Tap(self.arrays, f"{self.prefix}{name}.", self.dropout)

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.arrays[self.prefix + name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[self.prefix + name]

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.arrays

    def drop(self) -> None:
        """Forget every array under this tap's prefix (a backward that owns its tap frees a layer's once read)."""
        for name in [n for n in self.arrays if n.startswith(self.prefix)]:
            del self.arrays[name]


def scoped(tap: Tap | None, name: str) -> Tap | None:
    return None if tap is None else tap.scope(name)


class Dropout:
    """Training's dropout, as torch's nn.Dropout in train mode: at each of the family's sites
    (families.Family.dropout_sites) with the config's rate for it, every element kept with probability 1 - p
    and scaled by 1 / (1 - p), a fresh draw from `rng` at every call. It rides on the tap (Tap(dropout=...)),
    so only a training forward drops; each site leaves its scaled mask in the tap as `<key>` (by default
    `<site>.dropout`), which the backward multiplies by."""

    def __init__(self, config, rng: np.random.Generator):
        self.rates = {site: getattr(config, rate) for site, rate in config.family.dropout_sites}
        self.rng = rng

    def __call__(self, x, tap, site, key=None):
        p = self.rates.get(site, 0.0)
        if not p:
            return x
        kept = (self.rng.random(x.shape, dtype=x.dtype) >= p).astype(x.dtype) / x.dtype.type(1 - p)
        tap[key or site + ".dropout"] = kept
        return x * kept


def dropped(x, tap, site):  # the training dropout at `site` where the tap carries one; else x itself
    return x if tap is None or tap.dropout is None else tap.dropout(x, tap, site)


def through_dropout(a, tap, key):  # a times the scaled mask the forward kept at `key`, where it dropped; else a
    # Both directions of a dropout site: its output from its input (what the next layer saw), and the gradient
    # of its input from its output's.
    return a * tap[key] if tap is not None and key in tap else a


# --- layers --------------------------------------------------------------------------------------------


def position_ids_after_padding(input_ids, pad_token_id):  # [B, S] -> [B, S]
    # RoBERTa's positions (fairseq's make_positions): real tokens count up from pad_token_id + 1 and
    # padding stays at pad_token_id, so a right-padded row keeps its real tokens' positions.
    real = input_ids != pad_token_id
    return np.cumsum(real, axis=1) * real + pad_token_id


def embeddings(input_ids, token_type_ids, keep, emb, config, ops, tap=None):  # [B, S] -> [B, S, D]
    # keep: unused here (deberta.embeddings zeroes padded positions); the same signature as DeBERTa's.
    B, S = input_ids.shape
    words = emb.word_embeddings.weight[input_ids]  # [B, S, E]; touches only the rows used (memory-mapped)
    if tap is not None:
        tap["word"] = words
    if emb.token_type_embeddings is not None:  # all but DistilBERT
        types = emb.token_type_embeddings.weight[token_type_ids]
        if tap is not None:
            tap["token_type"] = types
        words = words + types  # added before positions, as transformers
    if config.positions_after_padding:
        positions = emb.position_embeddings.weight[position_ids_after_padding(input_ids, config.pad_token_id)]
        if tap is not None:
            tap["position"] = positions
    else:  # 0..S-1 for every row: right padding leaves real tokens' positions untouched
        if tap is not None:
            tap["position"] = emb.position_embeddings.weight[None, :S]
        positions = np.broadcast_to(emb.position_embeddings.weight[:S], words.shape)
    x = ops.residual_layernorm(
        words.reshape(B * S, -1),
        positions.reshape(B * S, -1),
        emb.LayerNorm.weight,
        emb.LayerNorm.bias,
        config.layer_norm_eps,
    )
    x = x.reshape(B, S, -1)
    if tap is not None and emb.projection is not None:  # ELECTRA and ALBERT: projected in encoder_layers
        tap["normalized"] = x
    return x  # what transformers' embeddings module returns: ELECTRA's and ALBERT's E wide, not yet projected


def embeddings_backward(d_embedded, tap, emb, config, ops, input_ids, token_type_ids, keep):
    # [B, S, E] -> {name: grad} for the embedding tables and the LayerNorm. A table's gradient is the sum of
    # the rows' gradients over every place its row was looked up (np.add.at: repeated ids add up).
    B, S = input_ids.shape
    words = tap["word"] if "token_type" not in tap else tap["word"] + tap["token_type"]
    positions = np.broadcast_to(tap["position"], words.shape)
    d_y, d_weight, d_bias = ops.residual_layernorm_backward(
        d_embedded.reshape(B * S, -1),
        words.reshape(B * S, -1),
        positions.reshape(B * S, -1),
        emb.LayerNorm.weight,
        config.layer_norm_eps,
    )
    grads = {"LayerNorm.weight": d_weight, "LayerNorm.bias": d_bias}
    grads["word_embeddings.weight"] = table_gradient(emb.word_embeddings.weight, input_ids, d_y)
    grads["word_embeddings.weight"][config.pad_token_id] = 0  # torch's padding_idx: that row gets no gradient
    if emb.token_type_embeddings is not None:
        grads["token_type_embeddings.weight"] = table_gradient(emb.token_type_embeddings.weight, token_type_ids, d_y)
    d_positions = np.zeros_like(emb.position_embeddings.weight)
    if config.positions_after_padding:  # RoBERTa: its padding_idx is the padding position
        d_positions = table_gradient(d_positions, position_ids_after_padding(input_ids, config.pad_token_id), d_y)
        d_positions[config.pad_token_id] = 0
    elif not config.sinusoidal_pos_embds:  # DistilBERT's sinusoidal table is frozen (requires_grad False): zeros
        d_positions[:S] = d_y.reshape(B, S, -1).sum(axis=0)
    grads["position_embeddings.weight"] = d_positions
    return grads


def table_gradient(table, ids, d_rows):  # [rows, E], [B, S] ids, [B*S, E] -> [rows, E]
    grad = np.zeros(table.shape, dtype=d_rows.dtype)
    np.add.at(grad, ids.reshape(-1), d_rows.reshape(ids.size, -1))
    return grad


def self_attention(x, keep, layer, positions, n_heads, ops, return_probs=False, tap=None):  # [B, S, D] -> [B, S, D]
    # positions: unused here (DeBERTa's deberta.self_attention reads its relative positions there).
    q, k, v = qkv_projections(x, layer.attention, tap)  # [B, S, D] each
    # softmax(q k^T / sqrt(Dh)) with padded keys at the dtype's most negative value. DistilBERT fills them
    # with it, the other families add it (BERT's extended mask): a score plus finfo.min rounds to finfo.min,
    # so the probabilities are the same.
    context, probs = ops.attention(q, k, v, keep, n_heads, return_probs, tap)  # [B, S, D], [B, H, S, S]
    out = linear(context, layer.attention.out_lin)
    if tap is not None:
        tap["context"], tap["output"] = context, out
    return out, probs


def self_attention_backward(d_out, x, keep, layer, positions, n_heads, ops, tap, weights=True):
    # [B, S, D] -> d_x [B, S, D], {name: grad}, None (DeBERTa's: the relative-position table's gradient)
    att = layer.attention
    d_context, g_out = linear_backward(d_out, tap["context"], att.out_lin, weights)
    kept = tap["probs.dropout"] if "probs.dropout" in tap else None  # training's dropout on the probabilities
    dq, dk, dv = ops.attention_backward(d_context, tap["q"], tap["k"], tap["v"], tap["probs"], keep, n_heads, kept)
    d_x, grads = 0, prefixed("out_lin", g_out)
    for name, d in (("q_lin", dq), ("k_lin", dk), ("v_lin", dv)):
        d_in, g = linear_backward(d, x, getattr(att, name), weights)
        d_x = d_x + d_in  # x feeds all three projections
        grads.update(prefixed(name, g))
    return d_x, prefixed("attention", grads), None


def no_shared_positions(seq_len, transformer, config, dtype, ops, tap=None):
    return None  # absolute positions are added to the embeddings: the layers share nothing (DeBERTa: deberta.py)


def no_shared_positions_backward(d_table, transformer, config, ops, tap):
    return {}


def ffn(x, f, bias_activation, tap=None):  # [B, S, D] -> [B, S, D]
    B, S, D = x.shape
    h = matmul_t(x.reshape(B * S, D), f.lin1.weight)  # [B*S, F]; the bias is added inside the activation kernel
    if tap is not None:
        tap["pre_activation"] = (h + f.lin1.bias).reshape(B, S, -1)
    h = bias_activation(h, f.lin1.bias)  # the config's activation (exact erf GELU for most checkpoints)
    if tap is not None:
        tap["activation"] = h.reshape(B, S, -1)
    out = linear(h, f.lin2).reshape(B, S, D)
    if tap is not None:
        tap["output"] = out
    return out


def ffn_backward(d_out, x, f, activation_backward, tap, weights=True):  # [B, S, D] -> d_x [B, S, D], {name: grad}
    d_h, g2 = linear_backward(d_out, tap["activation"], f.lin2, weights)
    d_pre = activation_backward(d_h, tap["pre_activation"])  # [B, S, F]; lin1's bias gets it too
    d_x, g1 = linear_backward(d_pre, x, f.lin1, weights)
    return d_x, {**prefixed("lin1", g1), **prefixed("lin2", g2)}


def transformer_block(
    x, keep, layer, attention, positions, n_heads, ops, bias_activation, eps, return_probs=False, tap=None
):  # [B, S, D] -> [B, S, D]; attention: self_attention or deberta.self_attention
    B, S, D = x.shape
    rows = lambda a: a.reshape(B * S, D)  # noqa: E731  the kernels see [B*S, D]
    # Post-LN: each sublayer's output is added to its input, then normalised.
    a, probs = attention(x, keep, layer, positions, n_heads, ops, return_probs, scoped(tap, "attention"))
    a = dropped(a, tap, "attention.output")  # training only, as every dropout site
    ln = layer.sa_layer_norm
    x = ops.residual_layernorm(rows(a), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    if tap is not None:
        tap["sa_layer_norm"] = x
    f = dropped(ffn(x, layer.ffn, bias_activation, scoped(tap, "ffn")), tap, "ffn.output")
    ln = layer.output_layer_norm
    x = ops.residual_layernorm(rows(f), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    if tap is not None:
        tap["output_layer_norm"] = x
    return x, probs


def transformer_block_backward(
    d_out, x, keep, layer, attention_backward, positions, n_heads, ops, activation_backward, eps, tap, weights=True
):  # [B, S, D] -> d_x [B, S, D], {name: grad}, DeBERTa's table gradient (None for the others)
    B, S, D = x.shape
    rows = lambda a: a.reshape(B * S, D)  # noqa: E731
    # the sublayers' outputs as the LayerNorms saw them (times training's dropout masks, where it dropped)
    a, f = (through_dropout(tap[k], tap, k + ".dropout") for k in ("attention.output", "ffn.output"))
    h = tap["sa_layer_norm"]
    # out = LN2(f + h) with f = ffn(h): h's gradient comes through the residual and through the FFN.
    d_y, d_w, d_b = ops.residual_layernorm_backward(rows(d_out), rows(f), rows(h), layer.output_layer_norm.weight, eps)
    grads = {"output_layer_norm.weight": d_w, "output_layer_norm.bias": d_b} if weights else {}
    d_f = through_dropout(d_y.reshape(B, S, D), tap, "ffn.output.dropout")
    d_h, g = ffn_backward(d_f, h, layer.ffn, activation_backward, tap.scope("ffn"), weights)
    grads.update(prefixed("ffn", g))
    d_h = d_h + d_y.reshape(B, S, D)
    # h = LN1(a + x) with a = attention(x): the same for x.
    d_y, d_w, d_b = ops.residual_layernorm_backward(rows(d_h), rows(a), rows(x), layer.sa_layer_norm.weight, eps)
    if weights:
        grads.update({"sa_layer_norm.weight": d_w, "sa_layer_norm.bias": d_b})
    d_y = d_y.reshape(B, S, D)
    d_a = through_dropout(d_y, tap, "attention.output.dropout")
    d_x, g, d_table = attention_backward(d_a, x, keep, layer, positions, n_heads, ops, tap.scope("attention"), weights)
    grads.update(g)
    return d_x + d_y, grads, d_table


class FamilyLayers(NamedTuple):
    """The layers where families differ in code, not just data: DeBERTa's (deberta.py) or everyone else's
    (here). `family_layers` is the one place `config.disentangled_attention` is read."""

    embeddings: Callable
    shared_positions: Callable
    self_attention: Callable
    embeddings_backward: Callable
    shared_positions_backward: Callable
    self_attention_backward: Callable


def family_layers(config) -> FamilyLayers:
    if config.disentangled_attention:  # DeBERTa: its embeddings, relative positions and attention (deberta.py)
        return FamilyLayers(
            deberta.embeddings,
            deberta.shared_positions,
            deberta.self_attention,
            deberta.embeddings_backward,
            deberta.shared_positions_backward,
            deberta.self_attention_backward,
        )
    return FamilyLayers(
        embeddings,
        no_shared_positions,
        self_attention,
        embeddings_backward,
        no_shared_positions_backward,
        self_attention_backward,
    )


def encoder(
    input_ids, token_type_ids, keep, w, config, ops, output_hidden_states=False, output_attentions=False, tap=None
):
    # [B, S] -> [B, S, D], hidden states (embeddings + each layer), attentions (each block run)
    embed = family_layers(config).embeddings
    x = embed(input_ids, token_type_ids, keep, w.embeddings, config, ops, scoped(tap, "embeddings"))
    return encoder_layers(x, keep, w, config, ops, output_hidden_states, output_attentions, tap)


def encoder_layers(embedded, keep, w, config, ops, output_hidden_states=False, output_attentions=False, tap=None):
    # [B, S, E] (the embeddings module's output) -> [B, S, D], hidden states, attentions: everything after the
    # embeddings, so that an attribution can start here from an embedding of its own (attributions.py).
    layers = family_layers(config)
    bias_activation = ops.bias_activation(ACTIVATIONS[config.activation])
    embedded = dropped(embedded, tap, "embeddings")  # training only: the embeddings module ends in a dropout
    # ELECTRA and ALBERT: narrow (E) embeddings, projected to the model width D.
    x = embedded if w.embeddings.projection is None else linear(embedded, w.embeddings.projection)
    if tap is not None:
        if w.embeddings.projection is not None:
            # the projection's input, which its backward reads: written here too, because a forward that
            # starts from an embedding of its own (gradients_from_embedded) runs no embeddings() to write it
            tap["embeddings.normalized"] = embedded
        tap["embeddings"] = x
    positions = layers.shared_positions(x.shape[1], w.transformer, config, x.dtype, ops, tap)
    hidden_states, attentions = [x], []
    for i, layer in enumerate(w.transformer.layer):  # ALBERT: shared blocks, repeated in run order
        x, probs = transformer_block(
            x,
            keep,
            layer,
            layers.self_attention,
            positions,
            config.n_heads,
            ops,
            bias_activation,
            config.layer_norm_eps,
            output_attentions,
            scoped(tap, f"layer.{i}"),
        )
        if (i + 1) % config.blocks_per_layer == 0:  # a hidden state per layer (ALBERT: per group of blocks)
            hidden_states.append(x)
        attentions.append(probs)
    return (x, tuple(hidden_states) if output_hidden_states else None, tuple(attentions) if output_attentions else None)


def encoder_layers_backward(d_x, tap, w, config, ops, keep, weights=True, release=False):
    # [B, S, D] -> d_embedded [B, S, E], {name: grad}: encoder_layers backwards, block runs in reverse order,
    # reading the tap its forward filled. w: the plain tree (model.checkpoint_weights' encoder). release: drop
    # each block run's arrays from the tap once its backward has read them (nothing reads them later), so the
    # weight gradients accumulating meanwhile take their place: a lower peak (docs/performance.md, "Backward").
    layers = family_layers(config)
    activation_backward = ops.bias_activation_backward(ACTIVATIONS[config.activation])
    positions = layers.shared_positions(d_x.shape[1], w.transformer, config, d_x.dtype, ops)
    grads, d_table = {}, None
    order = config.block_order()  # ALBERT: run i uses stored block order[i]; its gradient sums over the runs
    for i in reversed(range(len(w.transformer.layer))):
        x = tap["embeddings"] if i == 0 else tap[f"layer.{i - 1}.output_layer_norm"]
        d_x, g, d_t = transformer_block_backward(
            d_x,
            x,
            keep,
            w.transformer.layer[i],
            layers.self_attention_backward,
            positions,
            config.n_heads,
            ops,
            activation_backward,
            config.layer_norm_eps,
            tap.scope(f"layer.{i}"),
            weights,
        )
        accumulate(grads, prefixed(f"transformer.layer.{order[i]}", g))
        if release:
            tap.scope(f"layer.{i}").drop()
        if d_t is not None:
            d_table = d_t if d_table is None else d_table + d_t
    if weights:  # DeBERTa: d_table None without relative_attention (a stored rel LayerNorm then gets zeros)
        accumulate(grads, layers.shared_positions_backward(d_table, w.transformer, config, ops, tap))
    if w.embeddings.projection is not None:
        d_x, g = linear_backward(d_x, tap["embeddings.normalized"], w.embeddings.projection, weights)
        accumulate(grads, prefixed("embeddings.projection", g))
    return through_dropout(d_x, tap, "embeddings.dropout"), grads


def prefixed(prefix, grads):  # {name: grad} | None -> {prefix.name: grad}
    return {} if grads is None else {f"{prefix}.{name}": g for name, g in grads.items()}


def accumulate(total, grads):  # adds grads into total, in place (a weight used more than once sums its gradients)
    for name, g in grads.items():
        total[name] = total[name] + g if name in total else g


def qa_head(x, qa_outputs, tap=None):  # [B, S, D] -> [B, S], [B, S]
    logits = linear(dropped(x, tap, "qa"), qa_outputs)  # [B, S, 2]; DistilBERT's qa_dropout in training
    if tap is not None:
        tap["logits"], tap["start_logits"], tap["end_logits"] = logits, logits[..., 0], logits[..., 1]
    return np.ascontiguousarray(logits[..., 0]), np.ascontiguousarray(logits[..., 1])


def qa_head_backward(d_start, d_end, x, qa_outputs, tap=None, weights=True):  # [B, S] x2, [B, S, D] -> [B, S, D], {}
    x = through_dropout(x, tap, "qa.dropout")  # x as qa_outputs saw it
    d_x, g = linear_backward(np.stack([d_start, d_end], axis=-1), x, qa_outputs, weights)
    return through_dropout(d_x, tap, "qa.dropout"), prefixed("qa_outputs", g)


def qa_loss(start_logits, end_logits, start_positions, end_positions):  # [B, S] x2, [B] x2 -> loss, [B, S] x2
    """The loss transformers' *ForQuestionAnswering.forward computes, and its gradient wrt the logits: positions
    clamped to [0, S], position S ignored (CrossEntropyLoss(ignore_index=S)), the cross-entropy averaged over
    the rows not ignored, start and end averaged. Every row ignored gives nan, as in torch (0 / 0)."""
    S = start_logits.shape[1]
    total, grads = 0.0, []
    for logits, positions in ((start_logits, start_positions), (end_logits, end_positions)):
        positions = np.clip(np.asarray(positions, dtype=np.int64).reshape(-1), 0, S)
        counted = positions != S
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        rows = np.flatnonzero(counted)
        n = logits.dtype.type(len(rows))
        with np.errstate(invalid="ignore", divide="ignore"):
            total = total + -log_probs[rows, positions[rows]].sum() / n
            d = np.exp(log_probs)  # softmax; minus the one-hot target, over n, only where counted
            d[rows, positions[rows]] -= 1
            d = np.where(counted[:, None], d / n, 0) / 2
        grads.append(d.astype(logits.dtype))
    return logits.dtype.type(total / 2), grads[0], grads[1]


# --- the model classes: config + weights + a call ------------------------------------------------------


@dataclass(frozen=True)
class BaseModelOutput:
    last_hidden_state: np.ndarray  # [B, S, D]
    hidden_states: tuple | None = None  # n_layers + 1 arrays [B, S, D]
    attentions: tuple | None = None  # n_layers arrays [B, H, S, S] (ALBERT: one per block run)


class Gradients(NamedTuple):
    """What `gradients` returns: the loss (None when upstream gradients were given), the forward's logits, the
    gradient of the embeddings module's output, and every weight's gradient (None when not asked for)."""

    loss: float | None
    start_logits: np.ndarray  # [B, S]
    end_logits: np.ndarray  # [B, S]
    embeddings: np.ndarray  # [B, S, E]: d of what transformers' embeddings module returns (before a projection)
    weights: dict | None  # canonical name (weights.canonical_keys) -> gradient, shaped like the weight

    def tree(self, config: Config):
        """The weight gradients as the tree the loader builds (weights.py's NamedTuples, the same field names)."""
        return W.build_tree(self.weights, config)

    def named(self, config: Config) -> dict:
        """The weight gradients by checkpoint key (e.g. "distilbert.transformer.layer.0.attention.q_lin.weight")."""
        keys = W.canonical_keys(config)
        return {keys[name]: g for name, g in self.weights.items()}


@dataclass(frozen=True)
class QuestionAnsweringModelOutput:
    start_logits: np.ndarray  # [B, S]
    end_logits: np.ndarray  # [B, S]
    hidden_states: tuple | None = None
    attentions: tuple | None = None


def _as_2d(a):
    a = np.asarray(a)
    return a[None, :] if a.ndim == 1 else a


def prepare_inputs(input_ids, attention_mask, config: Config, token_type_ids=None):
    """Check and shape the inputs: ids [B, S] int64, keep [B, S] bool (False = padding), and token type
    ids [B, S] int64 (zeros when not given, as transformers; None for a model without token types)."""
    ids = _as_2d(input_ids)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape [B, S] or [S] with B, S >= 1, found {list(np.shape(input_ids))}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, found dtype {ids.dtype}")
    if ids.shape[1] > config.max_sequence_length:
        raise ValueError(
            f"sequence length {ids.shape[1]} exceeds the {config.max_sequence_length} positions of "
            f"the model (max_position_embeddings {config.max_position_embeddings})"
        )
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        bad = ids[(ids < 0) | (ids >= config.vocab_size)][0]
        raise ValueError(f"input_ids holds {bad}, outside the vocabulary [0, {config.vocab_size})")
    if attention_mask is None:
        keep = np.ones(ids.shape, dtype=bool)
    else:
        mask = _as_2d(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {list(mask.shape)} does not match input_ids {list(ids.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        keep = mask.astype(bool)
    types = None
    if config.type_vocab_size == 0:
        # DeBERTa-v3's tokenizer returns token types (model_input_names) and transformers' DeBERTa takes and
        # ignores them when type_vocab_size is 0; DistilBERT's forward takes none.
        if token_type_ids is not None and not config.disentangled_attention:
            raise ValueError(f"a {config.model_type} model has no token type embeddings: pass token_type_ids=None")
    elif token_type_ids is None:
        types = np.zeros(ids.shape, dtype=np.int64)
    else:
        types = _as_2d(token_type_ids)
        if types.shape != ids.shape:
            raise ValueError(f"token_type_ids shape {list(types.shape)} does not match input_ids {list(ids.shape)}")
        if not np.issubdtype(types.dtype, np.integer) or types.min() < 0 or types.max() >= config.type_vocab_size:
            raise ValueError(f"token_type_ids must be integers in [0, {config.type_vocab_size})")
        types = types.astype(np.int64, copy=False)
    return ids.astype(np.int64, copy=False), keep, types


# --- forward then backward: what model.gradients runs, and a training step (train.py) ------------------------


def forward_backward(ids, types, keep, fast, plain, config, ops, upstream, weights=True, dropout=None) -> "Gradients":
    """The forward on `fast` (the re-laid tree, or the plain one), with a tap, then the backward on `plain` (the
    loader's tree). upstream(start_logits, end_logits) -> (loss or None, d_start_logits, d_end_logits).
    dropout: a Dropout for a training step (train.py), else none."""
    tap, layers = Tap(dropout=dropout), family_layers(config)
    embedded = layers.embeddings(ids, types, keep, fast.encoder.embeddings, config, ops, tap.scope("embeddings"))
    result = backward_from_embedded(embedded, keep, fast, plain, config, ops, tap, upstream, weights)
    if weights:
        g = layers.embeddings_backward(
            result.embeddings, tap.scope("embeddings"), plain.encoder.embeddings, config, ops, ids, types, keep
        )
        accumulate(result.weights, prefixed("embeddings", g))
    return result


def backward_from_embedded(embedded, keep, fast, plain, config, ops, tap, upstream, weights=True) -> "Gradients":
    """forward_backward from the embeddings module's output [B, S, E] on (every weight's gradient but the
    embedding tables' and their LayerNorm's)."""
    x, _, _ = encoder_layers(embedded, keep, fast.encoder, config, ops, tap=tap)
    start_logits, end_logits = qa_head(x, fast.qa_outputs, tap)
    loss, d_start, d_end = upstream(start_logits, end_logits)
    d_start, d_end = (np.asarray(d, dtype=start_logits.dtype) for d in (d_start, d_end))
    d_x, grads = qa_head_backward(d_start, d_end, x, plain.qa_outputs, tap, weights)
    # release: the tap is this backward's own (forward_backward's, gradients_from_embedded's)
    d_embedded, g = encoder_layers_backward(d_x, tap, plain.encoder, config, ops, keep, weights, release=True)
    accumulate(grads, g)
    return Gradients(loss, start_logits, end_logits, d_embedded, grads if weights else None)


def upstream_gradients(shape, start_positions, end_positions, d_start, d_end):
    """What a backward starts from, checked: both positions ([B] integers: qa_loss and its gradient) or both
    upstream logit gradients ([B, S] each), not a mix. Returns forward_backward's `upstream`."""
    check_upstream(shape, start_positions, end_positions, d_start, d_end)
    if start_positions is not None:
        return lambda start, end: qa_loss(start, end, start_positions, end_positions)
    return lambda start, end: (None, d_start, d_end)


def check_upstream(shape, start_positions, end_positions, d_start, d_end) -> None:
    """Both positions ([B] integers, for the loss) or both upstream logit gradients ([B, S] each), not a mix."""
    if (start_positions is None) != (end_positions is None) or (d_start is None) != (d_end is None):
        raise ValueError("give both start_positions and end_positions, or both d_start_logits and d_end_logits")
    if (start_positions is None) == (d_start is None):
        raise ValueError("give either start/end positions (the loss's gradient) or d_start/d_end_logits, not both")
    for name, a, want in (
        ("start_positions", start_positions, shape[:1]),
        ("end_positions", end_positions, shape[:1]),
        ("d_start_logits", d_start, shape),
        ("d_end_logits", d_end, shape),
    ):
        if a is not None and np.shape(a) != tuple(want):
            raise ValueError(f"{name} must have shape {list(want)}, found {list(np.shape(a))}")
        if a is not None and name.endswith("positions") and not np.issubdtype(np.asarray(a).dtype, np.integer):
            raise ValueError(f"{name} must be integers, found dtype {np.asarray(a).dtype}")


def check_environment(dtype=np.float32) -> None:
    """Read what loading a model and calling it take from the environment ($NPBERT_KERNELS, $NPBERT_GEMM,
    $NPBERT_BLAS_THREADS) and raise the ValueError a bad value gives: for a command that loads the model in
    other processes (`npbert serve --workers N`), so a bad value is one line, once, before they start."""
    select_kernels()
    panels_pay_off(dtype)
    threads.policy()


class _Pretrained:
    _with_qa_head = True
    model_type: str | None = None  # a family-specific class loads that family only; None: any (Auto*)

    def __init__(
        self,
        config: Config,
        weights,
        dtype=np.float32,
        kernels: str | None = None,
        source: str = "",
        weights_file: Path | None = None,
    ):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.ops = select_kernels(kernels)
        # The same weights stored for speed (fused qkv, column-major or panels, DeBERTa's tables): layout.py.
        self.weights = layout.prepare(weights, config, self.ops, self.dtype, weights_file)
        # The backward reads plain [out, in] matrices, which the re-laid tree may hold as panels: it reads the
        # loader's tree (`checkpoint_weights`), loaded again when first needed so that a model that is never
        # differentiated does not keep it (float64 or a half-precision file: a converted copy).
        self._checkpoint_weights = weights if weights_file is None else None
        self._weights_file = weights_file
        self.source = source

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path = hub.DEFAULT_MODEL,
        revision: str | None = None,
        dtype=np.float32,
        kernels: str | None = None,
        local_files_only: bool = False,
    ):
        """Load from a checkpoint folder, or a hub repository id (downloaded and cached by huggingface-hub)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64 (audit mode), found {dtype}")
        folder = hub.resolve(path_or_repo_id, revision, local_files_only)
        config = Config.from_file(folder / "config.json")
        if cls.model_type is None:  # Auto*: the family's own class where there is one (same code underneath)
            cls = next((c for c in cls.__subclasses__() if c.model_type == config.model_type), cls)
        elif config.model_type != cls.model_type:
            auto = "AutoModelForQuestionAnswering" if cls._with_qa_head else "AutoModel"
            raise ValueError(
                f"{folder}: model_type is {config.model_type!r}, not {cls.model_type!r}: load it with npbert.{auto}"
            )
        tree = W.load(folder, config, dtype, with_qa_head=cls._with_qa_head)
        return cls(config, tree, dtype, kernels, source=str(path_or_repo_id), weights_file=folder / "model.safetensors")

    @property
    def encoder_weights(self):
        return self.weights.encoder if self._with_qa_head else self.weights

    # The thread count (threads.py) is applied once per model call, in __call__, scoped and restored: not
    # at load (a server's CPU affinity or $NPBERT_BLAS_THREADS may change over its life), not inside the
    # forward (a pure function of its inputs that sets no process-wide state), and around the QA head too
    # (it is a GEMM as well).
    def _encode(self, input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions):
        ids, keep, types = prepare_inputs(input_ids, attention_mask, self.config, token_type_ids)
        return encoder(
            ids, types, keep, self.encoder_weights, self.config, self.ops, output_hidden_states, output_attentions
        )

    def trace(self, input_ids, attention_mask=None, token_type_ids=None) -> dict:
        """Every named intermediate of the forward, in forward order, in the model's dtype (npbert/trace.py
        lists the names): the forward with the reference kernels (ops/reference.py) and a tap."""
        ids, keep, types = prepare_inputs(input_ids, attention_mask, self.config, token_type_ids)
        tap = Tap({"input_ids": ids, "attention_mask": keep.astype(np.int64)})
        if types is not None:
            tap["token_type_ids"] = types
        x, _, _ = encoder(ids, types, keep, self.encoder_weights, self.config, NUMPY, tap=tap)
        if self._with_qa_head:
            qa_head(x, self.weights.qa_outputs, tap)
        return {name: np.ascontiguousarray(a) for name, a in tap.arrays.items()}

    @property
    def checkpoint_weights(self):
        """The weights as the loader builds them (weights.py's tree, plain [out, in] matrices): what the
        backward reads. Memory-mapped from model.safetensors where its dtype is the model's."""
        if self._checkpoint_weights is None:
            self._checkpoint_weights = W.load(
                self._weights_file.parent, self.config, self.dtype, with_qa_head=self._with_qa_head
            )
        return self._checkpoint_weights

    @property
    def _checkpoint_encoder(self):
        return self.checkpoint_weights.encoder if self._with_qa_head else self.checkpoint_weights

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """What transformers' embeddings module returns for these inputs, [B, S, E] (ELECTRA and ALBERT: before
        the projection to D; DeBERTa: padded positions zeroed): the layer an attribution starts from."""
        ids, keep, types = prepare_inputs(input_ids, attention_mask, self.config, token_type_ids)
        with threads.for_model_call():
            embed = family_layers(self.config).embeddings
            return embed(ids, types, keep, self.encoder_weights.embeddings, self.config, self.ops)


class AutoModel(_Pretrained):
    """The encoder alone, any family: input ids -> last hidden state [B, S, D]."""

    _with_qa_head = False

    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False, output_attentions=False
    ):
        with threads.for_model_call():
            return BaseModelOutput(
                *self._encode(input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions)
            )


class AutoModelForQuestionAnswering(_Pretrained):
    """The encoder plus `qa_outputs`, any family: input ids -> start and end logits [B, S]."""

    def __call__(
        self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False, output_attentions=False
    ):
        with threads.for_model_call():
            x, hidden_states, attentions = self._encode(
                input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions
            )
            start_logits, end_logits = qa_head(x, self.weights.qa_outputs)
        return QuestionAnsweringModelOutput(start_logits, end_logits, hidden_states, attentions)

    def gradients(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        *,
        start_positions=None,
        end_positions=None,
        d_start_logits=None,
        d_end_logits=None,
        weights: bool = True,
    ) -> Gradients:
        """The forward, then the backward: the gradient of the loss (given start_positions and end_positions,
        as transformers' forward computes it: `qa_loss`) or of sum(d_start_logits * start_logits +
        d_end_logits * end_logits) (given those upstream gradients, [B, S] each), wrt every weight (unless
        weights=False) and wrt the embeddings module's output."""
        ids, keep, types = prepare_inputs(input_ids, attention_mask, self.config, token_type_ids)
        upstream = upstream_gradients(keep.shape, start_positions, end_positions, d_start_logits, d_end_logits)
        with threads.for_model_call():
            return forward_backward(
                ids, types, keep, self.weights, self.checkpoint_weights, self.config, self.ops, upstream, weights
            )

    def gradients_from_embedded(
        self, embedded, attention_mask=None, d_start_logits=None, d_end_logits=None, weights: bool = False
    ) -> Gradients:
        """As `gradients` with upstream logit gradients, but the forward starts from `embedded` [B, S, E], an
        output of the embeddings module (`embed`) or any point between two of them: what Captum's
        LayerIntegratedGradients substitutes for that layer's output. With weights=True, every weight's
        gradient but the embedding tables' and their LayerNorm's."""
        embedded = np.asarray(embedded, dtype=self.dtype)
        if embedded.ndim != 3 or embedded.shape[2] != self.config.embedding_width:
            raise ValueError(
                f"embedded must have shape [B, S, {self.config.embedding_width}], found {list(embedded.shape)}"
            )
        ids = np.zeros(embedded.shape[:2], dtype=np.int64)  # checks the mask's shape; the ids are not used
        _, keep, _ = prepare_inputs(ids, attention_mask, self.config)
        upstream = upstream_gradients(keep.shape, None, None, d_start_logits, d_end_logits)
        with threads.for_model_call():
            return backward_from_embedded(
                embedded, keep, self.weights, self.checkpoint_weights, self.config, self.ops, Tap(), upstream, weights
            )


# The transformers class names, each loading its own family only (the same code underneath).
class DistilBertModel(AutoModel):
    model_type = "distilbert"


class DistilBertForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "distilbert"


class BertForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "bert"


class RobertaForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "roberta"


class XLMRobertaForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "xlm-roberta"


class ElectraForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "electra"


class AlbertForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "albert"


class DebertaV2ForQuestionAnswering(AutoModelForQuestionAnswering):
    model_type = "deberta-v2"
