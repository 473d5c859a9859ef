"""The DistilBERT forward pass in numpy, one pure function per layer.

Follows transformers 4.57.6 `models/distilbert/modeling_distilbert.py` (eager attention, inference:
dropout is the identity). Weights come from `weights.py` as a frozen tree named like the checkpoint
keys; every linear layer stores PyTorch's [out, in] matrix, so

    linear(x) = x @ W.T + b

Dimensions:  B batch, S sequence, D model width (768), H heads (12), Dh = D / H (64),
             F FFN width (3072), V vocabulary (28996), P positions (512).

The hot elementwise work and attention run through `ops` (kernels.py: numba kernels or their numpy
references); everything else is plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# kernels first: it sets the thread pools' wait policy, which OpenBLAS reads when numpy is first imported.
from .kernels import blas_threads, select as select_kernels  # noqa: I001

import numpy as np

from . import hub, weights as W
from .config import Config


# --- layers --------------------------------------------------------------------------------------------


def linear(x, lin):  # [..., in] -> [..., out]
    # weights.relayout_for_speed stores W column-major, so W.T is a C-contiguous [in, out] matrix and this
    # is BLAS's plain case (faster than the transposed one); unrelaid weights give the same values.
    # One [B*S, in] GEMM, not B stacked [S, in] ones: numpy runs a 3-D product as one GEMM per batch row,
    # 15-20% slower at B = 8 (docs/performance.md).
    y = x.reshape(-1, x.shape[-1]) @ lin.weight.T
    y += lin.bias  # in place: no second [..., out] temporary
    return y.reshape(*x.shape[:-1], -1)


def embeddings(input_ids, emb, ops, eps):  # [B, S] -> [B, S, D]
    B, S = input_ids.shape
    words = emb.word_embeddings.weight[input_ids]  # [B, S, D]; touches only the rows used (memory-mapped)
    # Positions are 0..S-1 for every row: right padding leaves real tokens' positions untouched.
    positions = np.broadcast_to(emb.position_embeddings.weight[:S], words.shape)
    x = ops.residual_layernorm(words.reshape(B * S, -1), positions.reshape(B * S, -1),
                               emb.LayerNorm.weight, emb.LayerNorm.bias, eps)
    return x.reshape(words.shape)


def multi_head_self_attention(x, keep, attn, n_heads, ops, return_probs=False):  # [B, S, D] -> [B, S, D]
    D = x.shape[-1]
    # One GEMM for the three projections (weights.relayout_for_speed stacks q, k, v rows at load time).
    qkv = linear(x, attn.qkv)  # [B, S, 3D]
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]  # [B, S, D] views, no copies
    context, probs = ops.attention(q, k, v, keep, n_heads, return_probs)  # [B, S, D], [B, H, S, S]
    return linear(context, attn.out_lin), probs


def ffn(x, f, ops):  # [B, S, D] -> [B, S, D]
    B, S, D = x.shape
    h = x.reshape(B * S, D) @ f.lin1.weight.T  # [B*S, F]; the bias is added inside bias_gelu
    h = ops.bias_gelu(h, f.lin1.bias)  # exact erf GELU, not the tanh approximation
    return linear(h, f.lin2).reshape(B, S, D)


def transformer_block(x, keep, layer, n_heads, ops, eps, return_probs=False):  # [B, S, D] -> [B, S, D]
    B, S, D = x.shape
    rows = lambda a: a.reshape(B * S, D)  # noqa: E731  the kernels see [B*S, D]
    # Post-LN: each sublayer's output is added to its input, then normalised.
    a, probs = multi_head_self_attention(x, keep, layer.attention, n_heads, ops, return_probs)
    ln = layer.sa_layer_norm
    x = ops.residual_layernorm(rows(a), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    f = ffn(x, layer.ffn, ops)
    ln = layer.output_layer_norm
    x = ops.residual_layernorm(rows(f), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    return x, probs


def distilbert(input_ids, keep, w, config, ops, output_hidden_states=False, output_attentions=False):
    # [B, S] -> [B, S, D], hidden states (embeddings + each layer), attentions (each layer)
    blas_threads()  # one OpenBLAS thread on a busy machine (kernels.py says why)
    x = embeddings(input_ids, w.embeddings, ops, config.layer_norm_eps)
    hidden_states, attentions = [x], []
    for layer in w.transformer.layer:
        x, probs = transformer_block(x, keep, layer, config.n_heads, ops, config.layer_norm_eps, output_attentions)
        hidden_states.append(x)
        attentions.append(probs)
    return (x, tuple(hidden_states) if output_hidden_states else None,
            tuple(attentions) if output_attentions else None)


def qa_head(x, qa_outputs):  # [B, S, D] -> [B, S], [B, S]
    logits = linear(x, qa_outputs)  # [B, S, 2]
    return np.ascontiguousarray(logits[..., 0]), np.ascontiguousarray(logits[..., 1])


# --- the model classes: config + weights + a call ------------------------------------------------------


@dataclass(frozen=True)
class BaseModelOutput:
    last_hidden_state: np.ndarray  # [B, S, D]
    hidden_states: tuple | None = None  # n_layers + 1 arrays [B, S, D]
    attentions: tuple | None = None  # n_layers arrays [B, H, S, S]


@dataclass(frozen=True)
class QuestionAnsweringModelOutput:
    start_logits: np.ndarray  # [B, S]
    end_logits: np.ndarray  # [B, S]
    hidden_states: tuple | None = None
    attentions: tuple | None = None


def prepare_inputs(input_ids, attention_mask, config: Config):
    """Check and shape the inputs: ids [B, S] int64, keep [B, S] bool (False = padding)."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape [B, S] or [S] with B, S >= 1, found {list(np.shape(input_ids))}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, found dtype {ids.dtype}")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(f"sequence length {ids.shape[1]} exceeds max_position_embeddings "
                         f"{config.max_position_embeddings}")
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        bad = ids[(ids < 0) | (ids >= config.vocab_size)][0]
        raise ValueError(f"input_ids holds {bad}, outside the vocabulary [0, {config.vocab_size})")
    if attention_mask is None:
        keep = np.ones(ids.shape, dtype=bool)
    else:
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {list(mask.shape)} does not match input_ids {list(ids.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        keep = mask.astype(bool)
    return ids.astype(np.int64, copy=False), keep


class _Pretrained:
    _with_qa_head = True

    def __init__(self, config: Config, weights, dtype=np.float32, kernels: str | None = None, source: str = ""):
        self.config = config
        self.weights = W.relayout_for_speed(weights)  # fused qkv per layer; idempotent
        self.dtype = np.dtype(dtype)
        self.ops = select_kernels(kernels)
        self.source = source

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path = hub.DEFAULT_MODEL, revision: str | None = None,
                        dtype=np.float32, kernels: str | None = None, local_files_only: bool = False):
        """Load from a checkpoint folder, or a hub repository id (downloaded and cached by huggingface-hub)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64 (audit mode), found {dtype}")
        folder = hub.resolve(path_or_repo_id, revision, local_files_only)
        config = Config.from_file(folder / "config.json")
        tree = W.load(folder, config, dtype, with_qa_head=cls._with_qa_head)
        return cls(config, tree, dtype, kernels, source=str(path_or_repo_id))

    def _encode(self, input_ids, attention_mask, output_hidden_states, output_attentions):
        ids, keep = prepare_inputs(input_ids, attention_mask, self.config)
        w = self.weights.distilbert if self._with_qa_head else self.weights
        return distilbert(ids, keep, w, self.config, self.ops, output_hidden_states, output_attentions)

    def trace(self, input_ids, attention_mask=None) -> dict:
        """Every named intermediate of the forward, in order (npbert/trace.py lists the names)."""
        from .trace import trace

        return trace(self, input_ids, attention_mask)


class DistilBertModel(_Pretrained):
    """The encoder alone: input ids -> last hidden state [B, S, D]."""

    _with_qa_head = False

    def __call__(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False):
        return BaseModelOutput(*self._encode(input_ids, attention_mask, output_hidden_states, output_attentions))


class DistilBertForQuestionAnswering(_Pretrained):
    """The encoder plus `qa_outputs`: input ids -> start and end logits [B, S]."""

    def __call__(self, input_ids, attention_mask=None, output_hidden_states=False, output_attentions=False):
        x, hidden_states, attentions = self._encode(input_ids, attention_mask, output_hidden_states, output_attentions)
        start_logits, end_logits = qa_head(x, self.weights.qa_outputs)
        return QuestionAnsweringModelOutput(start_logits, end_logits, hidden_states, attentions)
