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

# threads first: it sets OpenBLAS's thread timeout, which OpenBLAS reads when numpy is first imported.
from . import threads

# isort: split

import numpy as np

from . import deberta, hub, layout, weights as W
from .config import Config
from .families import ACTIVATIONS
from .ops import NUMPY, select as select_kernels
from .ops.gemm import linear, matmul_t, panels_pay_off, qkv_projections


class Tap:
    """Where a forward leaves its named intermediates: one dict (`arrays`, in forward order) shared by every
    layer, and the prefix of the layer writing now. A layer writes `tap["probs"]`; the encoder hands it
    `tap.scope("layer.3.attention")`, so the dict holds "layer.3.attention.probs". The arrays are the
    forward's own (no copies): the activations a backward pass reads, by the same names."""

    def __init__(self, arrays: dict | None = None, prefix: str = ""):
        self.arrays = {} if arrays is None else arrays
        self.prefix = prefix

    def scope(self, name: str) -> "Tap":
        return Tap(self.arrays, f"{self.prefix}{name}.")

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.arrays[self.prefix + name] = value

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[self.prefix + name]

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.arrays


def scoped(tap: Tap | None, name: str) -> Tap | None:
    return None if tap is None else tap.scope(name)


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
    if emb.projection is None:
        return x
    # ELECTRA and ALBERT: narrow (E) embeddings, projected to the model width D.
    if tap is not None:
        tap["normalized"] = x
    return linear(x, emb.projection)


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


def no_shared_positions(seq_len, transformer, config, dtype, ops, tap=None):
    return None  # absolute positions are added to the embeddings: the layers share nothing (DeBERTa: deberta.py)


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


def transformer_block(
    x, keep, layer, attention, positions, n_heads, ops, bias_activation, eps, return_probs=False, tap=None
):  # [B, S, D] -> [B, S, D]; attention: self_attention or deberta.self_attention
    B, S, D = x.shape
    rows = lambda a: a.reshape(B * S, D)  # noqa: E731  the kernels see [B*S, D]
    # Post-LN: each sublayer's output is added to its input, then normalised.
    a, probs = attention(x, keep, layer, positions, n_heads, ops, return_probs, scoped(tap, "attention"))
    ln = layer.sa_layer_norm
    x = ops.residual_layernorm(rows(a), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    if tap is not None:
        tap["sa_layer_norm"] = x
    f = ffn(x, layer.ffn, bias_activation, scoped(tap, "ffn"))
    ln = layer.output_layer_norm
    x = ops.residual_layernorm(rows(f), rows(x), ln.weight, ln.bias, eps).reshape(B, S, D)
    if tap is not None:
        tap["output_layer_norm"] = x
    return x, probs


def encoder(
    input_ids, token_type_ids, keep, w, config, ops, output_hidden_states=False, output_attentions=False, tap=None
):
    # [B, S] -> [B, S, D], hidden states (embeddings + each layer), attentions (each block run)
    bias_activation = ops.bias_activation(ACTIVATIONS[config.activation])
    if config.disentangled_attention:  # DeBERTa: its embeddings, relative positions and attention (deberta.py)
        embed, shared_positions, attention = deberta.embeddings, deberta.shared_positions, deberta.self_attention
    else:
        embed, shared_positions, attention = embeddings, no_shared_positions, self_attention
    x = embed(input_ids, token_type_ids, keep, w.embeddings, config, ops, scoped(tap, "embeddings"))
    if tap is not None:
        tap["embeddings"] = x
    positions = shared_positions(input_ids.shape[1], w.transformer, config, x.dtype, ops, tap)
    hidden_states, attentions = [x], []
    for i, layer in enumerate(w.transformer.layer):  # ALBERT: shared blocks, repeated in run order
        x, probs = transformer_block(
            x,
            keep,
            layer,
            attention,
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


def qa_head(x, qa_outputs, tap=None):  # [B, S, D] -> [B, S], [B, S]
    logits = linear(x, qa_outputs)  # [B, S, 2]
    if tap is not None:
        tap["logits"], tap["start_logits"], tap["end_logits"] = logits, logits[..., 0], logits[..., 1]
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

    # The thread policy (threads.py) is applied once per model call, in __call__, scoped and restored: not
    # at load (the machine's load changes over a server's life), not inside the forward (a pure function of
    # its inputs that sets no process-wide state), and around the QA head too (it is a GEMM as well).
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
