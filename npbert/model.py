"""The encoder forward pass in numpy, one pure function per layer, for every family in families.py.

Follows transformers 4.57.6 `models/distilbert/modeling_distilbert.py` and the other families' modeling
files (families.py names each; eager attention, inference: dropout is the identity). All of them are
the same post-LN encoder; what differs is data on the Config (token types, where positions start, an
embedding projection, shared blocks, the activation), read where the layer below uses it. Weights come
from `weights.py` as a frozen tree named like DistilBERT's checkpoint keys; every linear layer stores
PyTorch's [out, in] matrix, so

    linear(x) = x @ W.T + b

Dimensions:  B batch, S sequence, D model width (768), H heads (12), Dh = D / H (64),
             F FFN width (3072), V vocabulary (28996), P positions (512),
             E embedding width (D, except ELECTRA-small / ALBERT: 128), T token types (2; 0 in DistilBERT).

The hot elementwise work and attention run through `ops` (kernels.py: numba kernels or their numpy
references); everything else is plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

# threads first: it sets OpenBLAS's thread timeout, which OpenBLAS reads when numpy is first imported.
from . import threads  # noqa: I001
from .kernels import matmul_panels_numba as matmul_panels, panels_pay_off, select as select_kernels

import numpy as np

from . import deberta, hub, weights as W
from .config import Config
from .families import ACTIVATIONS


# --- layers --------------------------------------------------------------------------------------------


def matmul_t(x, weight):  # [..., in] -> [..., out]: x @ W.T, for W [out, in] as weights.py stores it
    # weights.relayout_for_speed stores W column-major, so W.T is a C-contiguous [in, out] matrix and this
    # is BLAS's plain case (faster than the transposed one); unrelaid weights give the same values. Or, on
    # AVX-512 CPUs, as [out / 32, in, 32] panels, which kernels.matmul_panels streams without repacking.
    if weight.ndim == 3:
        return matmul_panels(x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], -1)
    return x @ weight.T


def linear(x, lin):  # [..., in] -> [..., out]
    # One [B*S, in] GEMM, not B stacked [S, in] ones: numpy runs a 3-D product as one GEMM per batch row,
    # 15-20% slower at B = 8 (docs/performance.md).
    y = matmul_t(x.reshape(-1, x.shape[-1]), lin.weight)
    y += lin.bias  # in place: no second [..., out] temporary
    return y.reshape(*x.shape[:-1], -1)


def position_ids_after_padding(input_ids, pad_token_id):  # [B, S] -> [B, S]
    # RoBERTa's positions (fairseq's make_positions): real tokens count up from pad_token_id + 1 and
    # padding stays at pad_token_id, so a right-padded row keeps its real tokens' positions.
    real = input_ids != pad_token_id
    return np.cumsum(real, axis=1) * real + pad_token_id


def embeddings(input_ids, token_type_ids, emb, config, ops):  # [B, S] -> [B, S, D]
    B, S = input_ids.shape
    words = emb.word_embeddings.weight[input_ids]  # [B, S, E]; touches only the rows used (memory-mapped)
    if emb.token_type_embeddings is not None:  # all but DistilBERT
        words = words + emb.token_type_embeddings.weight[token_type_ids]  # added before positions, as transformers
    if config.positions_after_padding:
        positions = emb.position_embeddings.weight[position_ids_after_padding(input_ids, config.pad_token_id)]
    else:  # 0..S-1 for every row: right padding leaves real tokens' positions untouched
        positions = np.broadcast_to(emb.position_embeddings.weight[:S], words.shape)
    x = ops.residual_layernorm(words.reshape(B * S, -1), positions.reshape(B * S, -1),
                               emb.LayerNorm.weight, emb.LayerNorm.bias, config.layer_norm_eps)
    x = x.reshape(B, S, -1)
    # ELECTRA and ALBERT: narrow (E) embeddings, projected to the model width D.
    return x if emb.projection is None else linear(x, emb.projection)


def multi_head_self_attention(x, keep, attn, n_heads, ops, return_probs=False):  # [B, S, D] -> [B, S, D]
    D = x.shape[-1]
    # One GEMM for the three projections (weights.relayout_for_speed stacks q, k, v rows at load time).
    qkv = linear(x, attn.qkv)  # [B, S, 3D]
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]  # [B, S, D] views, no copies
    # softmax(q k^T / sqrt(Dh)) with padded keys at the dtype's most negative value. DistilBERT fills them
    # with it, the other families add it (BERT's extended mask): a score plus finfo.min rounds to finfo.min,
    # so the probabilities are the same.
    context, probs = ops.attention(q, k, v, keep, n_heads, return_probs)  # [B, S, D], [B, H, S, S]
    return linear(context, attn.out_lin), probs


# --- DeBERTa-v2/v3 (config.disentangled_attention): its embeddings and attention; deberta.py has the terms ---


def deberta_embeddings(input_ids, token_type_ids, keep, emb, config, ops):  # [B, S] -> [B, S, D]
    # DebertaV2Embeddings: words (+ absolute positions only when position_biased_input; v3 has none)
    # (+ token types when type_vocab_size > 0), LayerNorm, then padded positions multiplied by 0.
    B, S = input_ids.shape
    x = emb.word_embeddings.weight[input_ids]  # [B, S, D]
    if emb.position_embeddings is not None:
        x = x + emb.position_embeddings.weight[:S]
    types = (emb.token_type_embeddings.weight[token_type_ids] if emb.token_type_embeddings is not None
             else np.zeros_like(x))
    x = ops.residual_layernorm(x.reshape(B * S, -1), types.reshape(B * S, -1), emb.LayerNorm.weight,
                               emb.LayerNorm.bias, config.layer_norm_eps).reshape(B, S, -1)
    return x * keep[..., None].astype(x.dtype)


class RelativePositions(NamedTuple):
    """What every DeBERTa layer's attention shares in one forward (DebertaV2Encoder.get_rel_embedding,
    get_rel_pos)."""

    table: np.ndarray | None  # [2A, D] rel_embeddings, normalised (norm_rel_ebd); None: no relative_attention
    c2p_pos: np.ndarray | None  # [S, S] table row of delta(i, j) (deberta.c2p_index)
    p2c_pos: np.ndarray | None  # [S, S] table row of delta(j, i) (deberta.p2c_index)
    scale: float  # deberta.attention_scale
    pos_att_type: tuple
    share_att_key: bool


def relative_positions(seq_len, transformer, config, dtype, ops) -> RelativePositions:
    scale = deberta.attention_scale(config.head_dim, config.pos_att_type, dtype)
    if not config.relative_attention:  # content only, but scaled as if the position terms were there
        return RelativePositions(None, None, None, scale, config.pos_att_type, config.share_att_key)
    table = transformer.rel_embeddings.weight
    if transformer.rel_layer_norm is not None:
        ln = transformer.rel_layer_norm
        table = ops.residual_layernorm(table, np.zeros_like(table), ln.weight, ln.bias, config.layer_norm_eps)
    relative = deberta.relative_positions(seq_len, config.position_buckets, config.max_relative_distance)  # [S, S]
    span = config.relative_span
    return RelativePositions(table, deberta.c2p_index(relative, span), deberta.p2c_index(relative, span), scale,
                             config.pos_att_type, config.share_att_key)


def projected_table(layer, rel: RelativePositions):  # -> pos_k [2A, D] | None, pos_q [2A, D] | None
    # The table projected like the keys (c2p) and like the queries (p2c): with the layer's own q/k
    # projections when share_att_key, else with its pos_key_proj / pos_query_proj.
    if rel.table is None:
        return None, None
    if layer.pos_tables is not None:  # computed once at load (with_position_tables)
        return layer.pos_tables
    own = layer.attention if rel.share_att_key else layer.pos_proj
    pos_k = linear(rel.table, own.k_lin) if "c2p" in rel.pos_att_type else None
    pos_q = linear(rel.table, own.q_lin) if "p2c" in rel.pos_att_type else None
    return pos_k, pos_q


def with_position_tables(tree, config, ops):
    """The tree with every layer's projections of the relative-position table stored on the layer
    (TransformerBlock.pos_tables). They depend on the weights only, so they are computed once here rather
    than in every forward as transformers does: two [2A, D] x [D, D] products per layer, some 20% of a
    base-size forward at S 384. The forward reads them where it would compute them: the same values."""
    encoder = tree.encoder if hasattr(tree, "qa_outputs") else tree
    rel = relative_positions(1, encoder.transformer, config, encoder.embeddings.word_embeddings.weight.dtype, ops)
    layers = tuple(layer._replace(pos_tables=W.PositionTables(*projected_table(layer._replace(pos_tables=None), rel)))
                   for layer in encoder.transformer.layer)
    encoder = encoder._replace(transformer=encoder.transformer._replace(layer=layers))
    return tree._replace(encoder=encoder) if hasattr(tree, "qa_outputs") else encoder


def disentangled_self_attention(x, keep, layer, rel, n_heads, ops, return_probs=False):  # [B, S, D] -> [B, S, D]
    D = x.shape[-1]
    qkv = linear(x, layer.attention.qkv)  # [B, S, 3D], as multi_head_self_attention
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    pos_k, pos_q = projected_table(layer, rel)
    context, probs = ops.disentangled_attention(q, k, v, pos_k, pos_q, rel.c2p_pos, rel.p2c_pos, keep, n_heads,
                                                rel.scale, return_probs)  # [B, S, D], [B, H, S, S]
    return linear(context, layer.attention.out_lin), probs


def ffn(x, f, bias_activation):  # [B, S, D] -> [B, S, D]
    B, S, D = x.shape
    h = matmul_t(x.reshape(B * S, D), f.lin1.weight)  # [B*S, F]; the bias is added inside the activation kernel
    h = bias_activation(h, f.lin1.bias)  # the config's activation (exact erf GELU for most checkpoints)
    return linear(h, f.lin2).reshape(B, S, D)


def transformer_block(x, keep, layer, n_heads, ops, bias_activation, eps, return_probs=False, relative=None):
    # [B, S, D] -> [B, S, D]; relative: DeBERTa's RelativePositions
    B, S, D = x.shape
    rows = lambda a: a.reshape(B * S, D)  # noqa: E731  the kernels see [B*S, D]
    # Post-LN: each sublayer's output is added to its input, then normalised.
    if relative is not None:
        a, probs = disentangled_self_attention(x, keep, layer, relative, n_heads, ops, return_probs)
    else:
        a, probs = multi_head_self_attention(x, keep, layer.attention, n_heads, ops, return_probs)
    ln = layer.sa_layer_norm
    x = ops.residual_layernorm(rows(a), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    f = ffn(x, layer.ffn, bias_activation)
    ln = layer.output_layer_norm
    x = ops.residual_layernorm(rows(f), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    return x, probs


def encoder(input_ids, token_type_ids, keep, w, config, ops, output_hidden_states=False, output_attentions=False):
    # [B, S] -> [B, S, D], hidden states (embeddings + each layer), attentions (each block run)
    bias_activation = ops.bias_activation(ACTIVATIONS[config.activation])
    relative = None
    if config.disentangled_attention:  # DeBERTa
        x = deberta_embeddings(input_ids, token_type_ids, keep, w.embeddings, config, ops)
        relative = relative_positions(input_ids.shape[1], w.transformer, config, x.dtype, ops)
    else:
        x = embeddings(input_ids, token_type_ids, w.embeddings, config, ops)
    hidden_states, attentions = [x], []
    for n, layer in enumerate(w.transformer.layer, 1):  # ALBERT: shared blocks, repeated in run order
        x, probs = transformer_block(x, keep, layer, config.n_heads, ops, bias_activation, config.layer_norm_eps,
                                     output_attentions, relative)
        if n % config.blocks_per_layer == 0:  # a hidden state per layer (ALBERT: per group of blocks)
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
    attentions: tuple | None = None  # n_layers arrays [B, H, S, S] (ALBERT: one per block run)


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
        raise ValueError(f"sequence length {ids.shape[1]} exceeds the {config.max_sequence_length} positions of "
                         f"the model (max_position_embeddings {config.max_position_embeddings})")
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

    def __init__(self, config: Config, weights, dtype=np.float32, kernels: str | None = None, source: str = "",
                 weights_file: Path | None = None):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.ops = select_kernels(kernels)
        # fused qkv per layer, column-major linears (or panels, for the numba kernels on an AVX-512 CPU);
        # idempotent. With the file the weights came from, the re-laid matrices are a memory-mapped cache
        # file every process shares (relaid_cache.py).
        self.weights = W.relayout_for_speed(weights, weights_file, panels=self.ops.name == "numba"
                                            and panels_pay_off(self.dtype))
        if config.disentangled_attention and config.relative_attention:  # DeBERTa: input-independent tables
            self.weights = with_position_tables(self.weights, config, self.ops)
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
        if cls.model_type is None:  # Auto*: the family's own class where there is one (same code underneath)
            cls = next((c for c in cls.__subclasses__() if c.model_type == config.model_type), cls)
        elif config.model_type != cls.model_type:
            auto = "AutoModelForQuestionAnswering" if cls._with_qa_head else "AutoModel"
            raise ValueError(f"{folder}: model_type is {config.model_type!r}, not {cls.model_type!r}: load it with "
                             f"npbert.{auto}")
        tree = W.load(folder, config, dtype, with_qa_head=cls._with_qa_head)
        return cls(config, tree, dtype, kernels, source=str(path_or_repo_id), weights_file=folder / "model.safetensors")

    @property
    def encoder_weights(self):
        return self.weights.encoder if self._with_qa_head else self.weights

    # The thread policy (threads.py) is applied once per model call, in __call__, scoped and restored: not
    # at load (the machine's load changes over a server's life), not inside the forward (a pure function of
    # its inputs that sets no process-wide state), and around the QA head too (it is a GEMM as well).
    def _encode(self, input_ids, attention_mask, token_type_ids, output_hidden_states, output_attentions):
        ids, keep, types = prepare_inputs(input_ids, attention_mask, self.config, token_type_ids)
        return encoder(ids, types, keep, self.encoder_weights, self.config, self.ops, output_hidden_states,
                       output_attentions)

    def trace(self, input_ids, attention_mask=None, token_type_ids=None) -> dict:
        """Every named intermediate of the forward, in order (npbert/trace.py lists the names)."""
        from .trace import trace

        return trace(self, input_ids, attention_mask, token_type_ids)


class AutoModel(_Pretrained):
    """The encoder alone, any family: input ids -> last hidden state [B, S, D]."""

    _with_qa_head = False

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                 output_attentions=False):
        with threads.for_model_call():
            return BaseModelOutput(*self._encode(input_ids, attention_mask, token_type_ids, output_hidden_states,
                                                 output_attentions))


class AutoModelForQuestionAnswering(_Pretrained):
    """The encoder plus `qa_outputs`, any family: input ids -> start and end logits [B, S]."""

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
                 output_attentions=False):
        with threads.for_model_call():
            x, hidden_states, attentions = self._encode(input_ids, attention_mask, token_type_ids,
                                                        output_hidden_states, output_attentions)
            start_logits, end_logits = qa_head(x, self.weights.qa_outputs)
        return QuestionAnsweringModelOutput(start_logits, end_logits, hidden_states, attentions)


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

