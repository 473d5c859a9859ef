"""The forward pass with every intermediate kept and named: trace, save, load and diff.

`trace(model, input_ids, attention_mask)` walks the model's weight tree exactly as model.py's
`distilbert` and `qa_head` do, with the plain-numpy reference kernels (kernels.NUMPY), but spells out
attention step by step so the scores, the probabilities and the context of every layer can be kept.
tests/test_trace.py checks that its hidden states, attentions and logits equal the real forward's.

Names (B batch, S sequence, D width, H heads, F FFN width), in forward order:

    input_ids, attention_mask               [B, S] int64
    embeddings.word                         [B, S, D]  word_embeddings[input_ids]
    embeddings.position                     [1, S, D]  position_embeddings[0..S-1]
    embeddings                              [B, S, D]  LayerNorm(word + position)
    layer.{i}.attention.q / .k / .v         [B, S, D]  q_lin, k_lin, v_lin outputs (heads side by side)
    layer.{i}.attention.scores              [B, H, S, S]  (q / sqrt(Dh)) @ k^T, before the padding mask
    layer.{i}.attention.probs               [B, H, S, S]  softmax over keys, padded keys masked out
    layer.{i}.attention.context             [B, S, D]  probs @ v, heads concatenated (out_lin's input)
    layer.{i}.attention.output              [B, S, D]  out_lin(context)
    layer.{i}.sa_layer_norm                 [B, S, D]  LayerNorm(attention.output + block input)
    layer.{i}.ffn.pre_activation            [B, S, F]  lin1 output
    layer.{i}.ffn.activation                [B, S, F]  exact GELU of it (lin2's input)
    layer.{i}.ffn.output                    [B, S, D]  lin2 output
    layer.{i}.output_layer_norm             [B, S, D]  LayerNorm(ffn.output + sa_layer_norm): the block output
    logits                                  [B, S, 2]  qa_outputs(last block output)  (QA models only)
    start_logits, end_logits                [B, S]

tools/export_transformers_activations.py writes the same names from transformers (forward hooks), so
`diff` compares the two dumps directly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .kernels import NUMPY
from .model import linear, prepare_inputs

LAYER_NAMES = ("attention.q", "attention.k", "attention.v", "attention.scores", "attention.probs",
               "attention.context", "attention.output", "sa_layer_norm", "ffn.pre_activation", "ffn.activation",
               "ffn.output", "output_layer_norm")


def names(n_layers: int, with_qa_head: bool = True) -> list[str]:
    """Every name a trace holds, in forward order."""
    out = ["input_ids", "attention_mask", "embeddings.word", "embeddings.position", "embeddings"]
    out += [f"layer.{i}.{n}" for i in range(n_layers) for n in LAYER_NAMES]
    return out + (["logits", "start_logits", "end_logits"] if with_qa_head else [])


# --- the traced forward ------------------------------------------------------------------------------


def _attention(x, keep, attn, n_heads, t, p):  # [B, S, D] -> [B, S, D], recording into t under prefix p
    B, S, D = x.shape
    Dh = D // n_heads
    heads = lambda a: a.reshape(B, S, n_heads, Dh).transpose(0, 2, 1, 3)  # noqa: E731  [B, H, S, Dh]
    q, k, v = t[p + "q"], t[p + "k"], t[p + "v"] = linear(x, attn.q_lin), linear(x, attn.k_lin), linear(x, attn.v_lin)
    scores = t[p + "scores"] = (heads(q) / q.dtype.type(math.sqrt(Dh))) @ heads(k).transpose(0, 1, 3, 2)
    # Padded keys get the dtype's most negative finite value (as transformers): exp underflows to 0.
    masked = np.where(keep[:, None, None, :], scores, np.finfo(scores.dtype).min)
    e = np.exp(masked - masked.max(axis=-1, keepdims=True))
    probs = t[p + "probs"] = e / e.sum(axis=-1, keepdims=True)
    context = t[p + "context"] = (probs @ heads(v)).transpose(0, 2, 1, 3).reshape(B, S, D)
    t[p + "output"] = linear(context, attn.out_lin)
    return t[p + "output"]


def _block(x, keep, layer, n_heads, eps, t, p):  # [B, S, D] -> [B, S, D]
    a = _attention(x, keep, layer.attention, n_heads, t, p + "attention.")
    ln = layer.sa_layer_norm
    x = t[p + "sa_layer_norm"] = NUMPY.residual_layernorm(a, x, ln.weight, ln.bias, eps)
    lin1 = layer.ffn.lin1
    h = x @ lin1.weight.T  # the bias is added inside bias_gelu, as model.ffn does
    t[p + "ffn.pre_activation"] = h + lin1.bias
    h = t[p + "ffn.activation"] = NUMPY.bias_gelu(h, lin1.bias)
    f = t[p + "ffn.output"] = linear(h, layer.ffn.lin2)
    ln = layer.output_layer_norm
    t[p + "output_layer_norm"] = NUMPY.residual_layernorm(f, x, ln.weight, ln.bias, eps)
    return t[p + "output_layer_norm"]


def trace(model, input_ids, attention_mask=None) -> dict[str, np.ndarray]:
    """Run `model` (a DistilBertForQuestionAnswering or DistilBertModel) and return every named
    intermediate (see the module docstring), in forward order, in the model's dtype."""
    config = model.config
    ids, keep = prepare_inputs(input_ids, attention_mask, config)
    with_qa_head = hasattr(model.weights, "qa_outputs")
    w = model.weights.distilbert if with_qa_head else model.weights
    t = {"input_ids": ids, "attention_mask": keep.astype(np.int64)}
    emb = w.embeddings
    words = t["embeddings.word"] = emb.word_embeddings.weight[ids]
    positions = t["embeddings.position"] = emb.position_embeddings.weight[None, : ids.shape[1]]
    x = t["embeddings"] = NUMPY.residual_layernorm(words, np.broadcast_to(positions, words.shape),
                                                  emb.LayerNorm.weight, emb.LayerNorm.bias, config.layer_norm_eps)
    for i, layer in enumerate(w.transformer.layer):
        x = _block(x, keep, layer, config.n_heads, config.layer_norm_eps, t, f"layer.{i}.")
    if with_qa_head:
        logits = t["logits"] = linear(x, model.weights.qa_outputs)
        t["start_logits"], t["end_logits"] = logits[..., 0], logits[..., 1]
    return {name: np.ascontiguousarray(t[name]) for name in names(config.n_layers, with_qa_head)}


def encode(tokenizer, question: str, context: str, max_seq_len: int = 384, doc_stride: int = 128):
    """The question-answering pipeline's encoding (question first, context cut into overlapping windows),
    every window right-padded to the longest: (input_ids [B, S], attention_mask [B, S], tokens per window)."""
    windows = tokenizer.encode_pair(question, context, max_seq_len, doc_stride)
    S = max(len(w) for w in windows)
    pad = lambda a, value: np.pad(a, (0, S - len(a)), constant_values=value)  # noqa: E731
    ids = np.stack([pad(w.input_ids, tokenizer.pad_token_id) for w in windows])
    mask = np.stack([pad(w.attention_mask, 0) for w in windows])
    return ids, mask, [tokenizer.convert_ids_to_tokens(row) for row in ids]


# --- files ---------------------------------------------------------------------------------------------


def save(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict | None = None) -> Path:
    """Write a trace (or any name -> array dict) as safetensors; metadata values are stored as JSON text."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "npbert-trace", **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a dump written by `save` or by tools/export_transformers_activations.py: (tensors, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise OSError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    # safetensors keeps names sorted; put known names back in forward order, unknown ones after.
    order = {n: i for i, n in enumerate(names(_count_layers(tensors)))}
    return dict(sorted(tensors.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))), meta


def _count_layers(tensors) -> int:
    layers = {int(k.split(".")[1]) for k in tensors if k.startswith("layer.") and k.split(".")[1].isdigit()}
    return max(layers) + 1 if layers else 0


# --- comparing two dumps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorDiff:
    name: str
    shape_a: tuple
    shape_b: tuple
    max_abs: float  # max |a - b|
    rel: float  # max |a - b| / max |b|: the error relative to the tensor's scale
    diverges: bool


def compare(name: str, a: np.ndarray, b: np.ndarray, tol: float) -> TensorDiff:
    """One tensor: floats diverge when `rel > tol` (or NaN/inf appear in one and not the other);
    integers (ids, masks) and shapes must match exactly."""
    if a.shape != b.shape:
        return TensorDiff(name, a.shape, b.shape, math.inf, math.inf, True)
    if a.size == 0:
        return TensorDiff(name, a.shape, b.shape, 0.0, 0.0, False)
    exact = not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite_a, finite_b = np.isfinite(a64), np.isfinite(b64)
    if not np.array_equal(finite_a, finite_b) or not np.array_equal(a64[~finite_a], b64[~finite_b], equal_nan=True):
        return TensorDiff(name, a.shape, b.shape, math.inf, math.inf, True)
    d = np.abs(a64[finite_a] - b64[finite_b])
    max_abs = float(d.max()) if d.size else 0.0
    scale = float(np.abs(b64[finite_b]).max()) if d.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return TensorDiff(name, a.shape, b.shape, max_abs, rel, max_abs > 0 if exact else rel > tol)


@dataclass(frozen=True)
class DiffReport:
    diffs: list[TensorDiff]  # the names both dumps hold, in A's order
    only_a: list[str]
    only_b: list[str]

    @property
    def first_divergence(self) -> TensorDiff | None:
        return next((d for d in self.diffs if d.diverges), None)


def diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-4) -> DiffReport:
    """Compare two dumps tensor by tensor, in A's order (forward order for traces)."""
    common = [n for n in a if n in b]
    return DiffReport([compare(n, a[n], b[n], tol) for n in common],
                      [n for n in a if n not in b], [n for n in b if n not in a])
