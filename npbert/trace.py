"""The forward pass with every intermediate kept and named: trace, save, load and diff.

`trace(model, input_ids, attention_mask, token_type_ids)` is model.py's forward itself, run with the
plain-numpy reference kernels (ops/reference.py) and a tap (model.Tap) that keeps every named
intermediate: this module holds no layer math, only the names, the files and the comparison.
tests/test_trace.py checks that its hidden states, attentions and logits equal the real forward's.

Names (B batch, S sequence, D width, H heads, F FFN width, E embedding width), in forward order:

    input_ids, attention_mask               [B, S] int64
    token_type_ids                          [B, S] int64  (models with token types: all but DistilBERT)
    embeddings.word                         [B, S, E]  word_embeddings[input_ids]
    embeddings.token_type                   [B, S, E]  token_type_embeddings[token_type_ids]  (likewise)
    embeddings.position                     [1, S, E]  position_embeddings[0..S-1]
                                            ([B, S, E] for RoBERTa/XLM-R: positions counted after padding)
    embeddings.normalized                   [B, S, E]  LayerNorm(word (+ token_type) + position)
                                            (only where a projection follows: ELECTRA with E != D, ALBERT)
    embeddings                              [B, S, D]  LayerNorm(word (+ token_type) + position), projected
                                            (DeBERTa: LayerNorm(word (+ position) (+ token_type)) x mask;
                                            embeddings.position only with position_biased_input)
    rel_embeddings                          [2A, D]  DeBERTa with relative_attention: the relative-position
                                            table every layer reads, after its LayerNorm (norm_rel_ebd)
    layer.{i}.attention.q / .k / .v         [B, S, D]  q_lin, k_lin, v_lin outputs (heads side by side)
    layer.{i}.attention.c2c / .c2p / .p2c   [B, H, S, S]  DeBERTa only: the three score terms, each scaled
                                            (npbert/deberta.py; c2p, p2c as pos_att_type says)
    layer.{i}.attention.scores              [B, H, S, S]  (q / sqrt(Dh)) @ k^T, before the padding mask
                                            (DeBERTa: c2c + c2p + p2c)
    layer.{i}.attention.probs               [B, H, S, S]  softmax over keys, padded keys masked out
                                            (DeBERTa: padded queries too, their rows uniform)
    layer.{i}.attention.context             [B, S, D]  probs @ v, heads concatenated (out_lin's input)
    layer.{i}.attention.output              [B, S, D]  out_lin(context)
    layer.{i}.sa_layer_norm                 [B, S, D]  LayerNorm(attention.output + block input)
    layer.{i}.ffn.pre_activation            [B, S, F]  lin1 output
    layer.{i}.ffn.activation                [B, S, F]  the config's activation of it (lin2's input)
    layer.{i}.ffn.output                    [B, S, D]  lin2 output
    layer.{i}.output_layer_norm             [B, S, D]  LayerNorm(ffn.output + sa_layer_norm): the block output
    logits                                  [B, S, 2]  qa_outputs(last block output)  (QA models only)
    start_logits, end_logits                [B, S]

tools/export_transformers_activations.py writes the same names from transformers (forward hooks), so
`diff` compares the two dumps directly. `layer.{i}` counts block runs: ALBERT's shared blocks appear
once per run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pipeline import model_inputs

LAYER_NAMES = (
    "attention.q",
    "attention.k",
    "attention.v",
    "attention.scores",
    "attention.probs",
    "attention.context",
    "attention.output",
    "sa_layer_norm",
    "ffn.pre_activation",
    "ffn.activation",
    "ffn.output",
    "output_layer_norm",
)


def names(
    n_layers: int,
    with_qa_head: bool = True,
    token_types: bool = False,
    projection: bool = False,
    positions: bool = True,
    terms: tuple = (),
    rel_embeddings: bool = False,
) -> list[str]:
    """Every name a trace holds, in forward order (n_layers: block runs; positions, terms, rel_embeddings:
    DeBERTa's absolute positions, score terms ("c2c", "c2p", "p2c") and relative-position table)."""
    out = ["input_ids", "attention_mask"] + ["token_type_ids"] * token_types + ["embeddings.word"]
    out += ["embeddings.token_type"] * token_types + ["embeddings.position"] * positions
    out += ["embeddings.normalized"] * projection + ["embeddings"] + ["rel_embeddings"] * rel_embeddings
    layer_names = [
        *LAYER_NAMES[:3],
        *(f"attention.{term}" for term in ("c2c", "c2p", "p2c") if term in terms),
        *LAYER_NAMES[3:],
    ]  # q, k, v, the DeBERTa terms, then scores onwards
    out += [f"layer.{i}.{n}" for i in range(n_layers) for n in layer_names]
    return out + (["logits", "start_logits", "end_logits"] if with_qa_head else [])


# --- the traced forward ------------------------------------------------------------------------------


def trace(model, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
    """Run `model` (any npbert model: a question-answering one or an encoder) and return every named
    intermediate (see the module docstring), in forward order, in the model's dtype: model.py's forward
    with the reference kernels and a tap (`model.trace`)."""
    return model.trace(input_ids, attention_mask, token_type_ids)


def encode(tokenizer, question: str, context: str, max_seq_len: int = 384, doc_stride: int = 128):
    """The question-answering pipeline's encoding (question first, context cut into overlapping windows),
    every window right-padded to the longest: (model inputs {input_ids, attention_mask[, token_type_ids]}
    each [B, S], tokens per window)."""
    inputs = model_inputs(tokenizer.encode_pair(question, context, max_seq_len, doc_stride), tokenizer)
    return inputs, [tokenizer.convert_ids_to_tokens(row) for row in inputs["input_ids"]]


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
    terms = tuple(term for term in ("c2c", "c2p", "p2c") if f"layer.0.attention.{term}" in tensors)
    order = {
        n: i
        for i, n in enumerate(
            names(
                _count_layers(tensors),
                True,
                "token_type_ids" in tensors,
                "embeddings.normalized" in tensors,
                "embeddings.position" in tensors,
                terms,
                "rel_embeddings" in tensors,
            )
        )
    }
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
    return DiffReport(
        [compare(n, a[n], b[n], tol) for n in common], [n for n in a if n not in b], [n for n in b if n not in a]
    )
