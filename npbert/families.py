"""The model families npbert runs, as data: one small table per family, read by config.py and weights.py.

Every family is the same post-LN encoder (embeddings, then blocks of self-attention and a feed-forward
network, each followed by a residual LayerNorm, then `qa_outputs`). What differs is listed here, once:

| model_type  | transformers 4.57.6 file                  | differs from DistilBERT in                          |
|-------------|-------------------------------------------|-----------------------------------------------------|
| distilbert  | models/distilbert/modeling_distilbert.py  | (the first family: its names are the canonical ones) |
| bert        | models/bert/modeling_bert.py              | token-type embeddings, key names, eps from config    |
| roberta     | models/roberta/modeling_roberta.py        | as bert, positions counted after the padding id      |
| xlm-roberta | models/xlm_roberta/modeling_xlm_roberta.py| as roberta (its own model_type, the same code)       |
| electra     | models/electra/modeling_electra.py        | as bert, embeddings projected when E != D            |
| albert      | models/albert/modeling_albert.py          | E-wide embeddings projected to D, blocks shared by   |
|             |                                           | groups of layers, gelu_new (tanh) by default         |
| deberta-v2  | models/deberta_v2/modeling_deberta_v2.py  | disentangled attention (relative positions, c2p and  |
|             |                                           | p2c terms: deberta.py), no absolute positions unless |
|             |                                           | position_biased_input, padding zeroed, eps 1e-7      |

MiniLM checkpoints are `bert`; DeBERTa-v3 checkpoints are `deberta-v2`. The forward pass (model.py) never
asks which family it runs: it reads the flags these tables set on the Config (`type_vocab_size`,
`position_offset`, `embedding_size`, `num_hidden_groups`, ...), and the loader (weights.py) reads the tensor
names from `layout`.

Canonical tensor names are DistilBERT's (`transformer.layer.{i}.attention.q_lin`, `ffn.lin1`, ...),
grouped by tensor below with each family's checkpoint key beside it, as llama.cpp's tensor_mapping.py
does: a reader goes from any checkpoint key to the canonical tensor, and from that to the line of
model.py that uses it. Each family also names its tokenizer class; TOKENIZERS, at the end, says what
every class brings (files, special-token defaults, model inputs): tokenizer.py reads nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The checkpoint key of each canonical tensor, after the family's prefix (`bert.`, `roberta.`, ...).
# {i}: block index; ALBERT's blocks are {g} (layer group) and {j} (layer within the group).
_DISTILBERT = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.LayerNorm": "embeddings.LayerNorm",
    "layer.attention.q_lin": "transformer.layer.{i}.attention.q_lin",
    "layer.attention.k_lin": "transformer.layer.{i}.attention.k_lin",
    "layer.attention.v_lin": "transformer.layer.{i}.attention.v_lin",
    "layer.attention.out_lin": "transformer.layer.{i}.attention.out_lin",
    "layer.sa_layer_norm": "transformer.layer.{i}.sa_layer_norm",
    "layer.ffn.lin1": "transformer.layer.{i}.ffn.lin1",
    "layer.ffn.lin2": "transformer.layer.{i}.ffn.lin2",
    "layer.output_layer_norm": "transformer.layer.{i}.output_layer_norm",
}
_BERT = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.LayerNorm",
    "embeddings.projection": "embeddings_project",  # ELECTRA, only when embedding_size != hidden_size
    "layer.attention.q_lin": "encoder.layer.{i}.attention.self.query",
    "layer.attention.k_lin": "encoder.layer.{i}.attention.self.key",
    "layer.attention.v_lin": "encoder.layer.{i}.attention.self.value",
    "layer.attention.out_lin": "encoder.layer.{i}.attention.output.dense",
    "layer.sa_layer_norm": "encoder.layer.{i}.attention.output.LayerNorm",
    "layer.ffn.lin1": "encoder.layer.{i}.intermediate.dense",
    "layer.ffn.lin2": "encoder.layer.{i}.output.dense",
    "layer.output_layer_norm": "encoder.layer.{i}.output.LayerNorm",
}
_ALBERT_BLOCK = "encoder.albert_layer_groups.{g}.albert_layers.{j}."
_ALBERT = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.LayerNorm",
    "embeddings.projection": "encoder.embedding_hidden_mapping_in",
    "layer.attention.q_lin": _ALBERT_BLOCK + "attention.query",
    "layer.attention.k_lin": _ALBERT_BLOCK + "attention.key",
    "layer.attention.v_lin": _ALBERT_BLOCK + "attention.value",
    "layer.attention.out_lin": _ALBERT_BLOCK + "attention.dense",
    "layer.sa_layer_norm": _ALBERT_BLOCK + "attention.LayerNorm",
    "layer.ffn.lin1": _ALBERT_BLOCK + "ffn",
    "layer.ffn.lin2": _ALBERT_BLOCK + "ffn_output",
    "layer.output_layer_norm": _ALBERT_BLOCK + "full_layer_layer_norm",
}

# DeBERTa-v2/v3: BERT's block names with `_proj` projections, plus the relative-position table shared by
# every layer (`encoder.rel_embeddings`, normalised by `encoder.LayerNorm` when norm_rel_ebd says
# layer_norm) and, unless share_att_key, each layer's own projections of it (pos_key_proj for c2p,
# pos_query_proj for p2c).
_DEBERTA_SELF = "encoder.layer.{i}.attention.self."
_DEBERTA = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",  # only when position_biased_input
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",  # only when type_vocab_size > 0
    "embeddings.LayerNorm": "embeddings.LayerNorm",
    "transformer.rel_embeddings": "encoder.rel_embeddings",
    "transformer.rel_layer_norm": "encoder.LayerNorm",
    "layer.attention.q_lin": _DEBERTA_SELF + "query_proj",
    "layer.attention.k_lin": _DEBERTA_SELF + "key_proj",
    "layer.attention.v_lin": _DEBERTA_SELF + "value_proj",
    "layer.pos_proj.k_lin": _DEBERTA_SELF + "pos_key_proj",
    "layer.pos_proj.q_lin": _DEBERTA_SELF + "pos_query_proj",
    "layer.attention.out_lin": "encoder.layer.{i}.attention.output.dense",
    "layer.sa_layer_norm": "encoder.layer.{i}.attention.output.LayerNorm",
    "layer.ffn.lin1": "encoder.layer.{i}.intermediate.dense",
    "layer.ffn.lin2": "encoder.layer.{i}.output.dense",
    "layer.output_layer_norm": "encoder.layer.{i}.output.LayerNorm",
}

# config.json key of each Config field, where the family spells it differently from DistilBERT.
_BERT_CONFIG_NAMES = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
}
# Each family's configuration class defaults (configuration_*.py), for keys a config.json leaves out.
_BERT_DEFAULTS = dict(
    vocab_size=30522,
    dim=768,
    n_layers=12,
    n_heads=12,
    hidden_dim=3072,
    activation="gelu",
    max_position_embeddings=512,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    pad_token_id=0,
)


@dataclass(frozen=True)
class Family:
    model_type: str
    follows: str  # the transformers 4.57.6 modeling file this family's tables were read from
    prefix: str  # the base model's attribute in the QA model (`base_model_prefix`): keys start with it
    layout: dict  # canonical tensor name -> checkpoint key after the prefix
    config_names: dict = field(default_factory=dict)  # Config field -> config.json key, where they differ
    defaults: dict = field(default_factory=dict)  # Config field -> the family's default
    # Position ids start after the padding id (fairseq's make_positions): RoBERTa's real tokens are at
    # pad_token_id + 1, pad_token_id + 2, ...; padding itself sits at pad_token_id.
    positions_after_padding: bool = False
    # ALBERT: the checkpoint stores num_hidden_groups x inner_group_num blocks, and every layer runs one
    # group of them (parameter sharing); other families store one block per layer.
    shares_blocks: bool = False
    # Keys a checkpoint may hold that a QA model does not use (transformers drops them too): the pooler,
    # which QA models are built without, and buffers older versions saved.
    unused: tuple = (
        "embeddings.position_ids",
        "embeddings.token_type_ids",
        "pooler.dense.weight",
        "pooler.dense.bias",
        "pooler.weight",
        "pooler.bias",
    )  # pooler.weight: ALBERT's
    # DeBERTa: self-attention with relative-position terms (deberta.py), the 2-D padding mask, padded
    # positions zeroed after the embedding LayerNorm.
    disentangled: bool = False
    # The transformers tokenizer class (without "Fast") for this model_type: TOKENIZERS below says what it
    # brings (models/auto/tokenization_auto.py TOKENIZER_MAPPING_NAMES).
    tokenizer: str = "BertTokenizer"
    # Where training drops (model.Dropout), with the Config rate each site uses: after the embeddings'
    # LayerNorm, on the attention probabilities, on the attention's output and on the FFN's output (each
    # before its residual LayerNorm), before qa_outputs. BERT's modeling file has all but the last.
    dropout_sites: tuple = (
        ("embeddings", "dropout"),
        ("attention.probs", "attention_dropout"),
        ("attention.output", "dropout"),
        ("ffn.output", "dropout"),
    )


FAMILIES = {
    f.model_type: f
    for f in (
        Family(
            "distilbert",
            "models/distilbert/modeling_distilbert.py",
            "distilbert",
            _DISTILBERT,
            defaults=dict(
                vocab_size=30522,
                dim=768,
                n_layers=6,
                n_heads=12,
                hidden_dim=3072,
                activation="gelu",
                max_position_embeddings=512,
                type_vocab_size=0,
                layer_norm_eps=1e-12,
                pad_token_id=0,
            ),
            tokenizer="DistilBertTokenizer",
            # no dropout on the attention's output; qa_dropout before qa_outputs
            dropout_sites=(
                ("embeddings", "dropout"),
                ("attention.probs", "attention_dropout"),
                ("ffn.output", "dropout"),
                ("qa", "qa_dropout"),
            ),
        ),
        Family("bert", "models/bert/modeling_bert.py", "bert", _BERT, _BERT_CONFIG_NAMES, _BERT_DEFAULTS),
        Family(
            "roberta",
            "models/roberta/modeling_roberta.py",
            "roberta",
            _BERT,
            _BERT_CONFIG_NAMES,
            {**_BERT_DEFAULTS, "vocab_size": 50265, "pad_token_id": 1},
            positions_after_padding=True,
            tokenizer="RobertaTokenizer",
        ),
        Family(
            "xlm-roberta",
            "models/xlm_roberta/modeling_xlm_roberta.py",
            "roberta",
            _BERT,
            _BERT_CONFIG_NAMES,
            {**_BERT_DEFAULTS, "pad_token_id": 1},
            positions_after_padding=True,
            tokenizer="XLMRobertaTokenizer",
        ),
        Family(
            "electra",
            "models/electra/modeling_electra.py",
            "electra",
            _BERT,
            _BERT_CONFIG_NAMES,
            {**_BERT_DEFAULTS, "dim": 256, "n_heads": 4, "hidden_dim": 1024, "embedding_size": 128},
            tokenizer="ElectraTokenizer",
        ),
        Family(
            "albert",
            "models/albert/modeling_albert.py",
            "albert",
            _ALBERT,
            _BERT_CONFIG_NAMES,
            {
                **_BERT_DEFAULTS,
                "vocab_size": 30000,
                "dim": 4096,
                "n_heads": 64,
                "hidden_dim": 16384,
                "activation": "gelu_new",
                "embedding_size": 128,
                "num_hidden_groups": 1,
                "inner_group_num": 1,
                "dropout": 0.0,  # AlbertConfig: hidden_dropout_prob 0, attention_probs_dropout_prob 0
                "attention_dropout": 0.0,
            },
            shares_blocks=True,
            tokenizer="AlbertTokenizer",
            # AlbertLayer defines a dropout but never applies it to the FFN's output
            dropout_sites=(
                ("embeddings", "dropout"),
                ("attention.probs", "attention_dropout"),
                ("attention.output", "dropout"),
            ),
        ),
        # configuration_deberta_v2.py's defaults are DeBERTa-v2-xlarge's; relative_attention and the rest of
        # the disentangled attention are config keys (Config's DeBERTa fields), read only for this family.
        Family(
            "deberta-v2",
            "models/deberta_v2/modeling_deberta_v2.py",
            "deberta",
            _DEBERTA,
            _BERT_CONFIG_NAMES,
            {
                **_BERT_DEFAULTS,
                "vocab_size": 128100,
                "dim": 1536,
                "n_layers": 24,
                "n_heads": 24,
                "hidden_dim": 6144,
                "type_vocab_size": 0,
                "layer_norm_eps": 1e-7,
            },
            # DebertaV2PreTrainedModel._keys_to_ignore_on_load_unexpected: a position table that
            # position_biased_input false leaves unused
            unused=Family.unused + ("embeddings.position_embeddings.weight",),
            disentangled=True,
            tokenizer="DebertaV2Tokenizer",
            # and each layer's copy of the relative-position table (pos_dropout, with relative_attention)
            dropout_sites=Family.dropout_sites + (("attention.rel_embeddings", "dropout"),),
        ),
    )
}

# hidden_act / activation values and the function each names (transformers' ACT2CLS): the FFN's
# nonlinearity is looked up here once, at load time.
ACTIVATIONS = {
    "gelu": "gelu",  # exact: 0.5 x (1 + erf(x / sqrt 2))
    "gelu_new": "gelu_tanh",  # 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): GPT-2's, ALBERT's default
    "gelu_pytorch_tanh": "gelu_tanh",  # the same formula, torch's fused form
    "relu": "relu",
}


# --- tokenizers: what each transformers tokenizer class brings (read by tokenizer.py) ------------------------


@dataclass(frozen=True)
class TokenizerClass:
    """What one transformers fast tokenizer class brings: its files, defaults and `__init__` overrides."""

    kind: str  # "wordpiece", "bpe", "xlmr", "albert" or "deberta": how the backend is built without tokenizer.json
    model_input_names: tuple
    defaults: dict  # the class's special-token defaults
    files: tuple  # the slow tokenizer's vocabulary files (read when tokenizer.json is absent)
    mask_fast: dict | None = None  # the fast class wraps a plain mask_token in AddedToken(**mask_fast)
    slow_tokens: dict | None = None  # the slow class's own wrapping (kwargs.update(slow.init_kwargs) wins)


_BERT_TOKENS = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
_ROBERTA_TOKENS = dict(
    bos_token="<s>",
    eos_token="</s>",
    sep_token="</s>",
    cls_token="<s>",
    unk_token="<unk>",
    pad_token="<pad>",
    mask_token="<mask>",
)
_THREE = ("input_ids", "token_type_ids", "attention_mask")  # PreTrainedTokenizerBase.model_input_names
_TWO = ("input_ids", "attention_mask")
_MASK = dict(lstrip=True, rstrip=False, normalized=False)
_WORDPIECE = dict(kind="wordpiece", defaults=_BERT_TOKENS, files=("vocab.txt",))

TOKENIZERS = {  # transformers class name (without "Fast") -> TokenizerClass
    "DistilBertTokenizer": TokenizerClass(model_input_names=_TWO, **_WORDPIECE),
    "BertTokenizer": TokenizerClass(model_input_names=_THREE, **_WORDPIECE),
    "ElectraTokenizer": TokenizerClass(model_input_names=_THREE, **_WORDPIECE),
    "RobertaTokenizer": TokenizerClass(
        "bpe",
        _TWO,
        _ROBERTA_TOKENS,
        ("vocab.json", "merges.txt"),
        mask_fast=_MASK,
        slow_tokens={**{k: dict(lstrip=False, rstrip=False) for k in _ROBERTA_TOKENS}, "mask_token": _MASK},
    ),
    "XLMRobertaTokenizer": TokenizerClass(
        "xlmr",
        _TWO,
        _ROBERTA_TOKENS,
        ("sentencepiece.bpe.model",),
        mask_fast=dict(lstrip=True, rstrip=False),
        slow_tokens={"mask_token": dict(lstrip=True, special=True)},
    ),
    "AlbertTokenizer": TokenizerClass(
        "albert",
        _THREE,
        dict(
            bos_token="[CLS]",
            eos_token="[SEP]",
            unk_token="<unk>",
            sep_token="[SEP]",
            pad_token="<pad>",
            cls_token="[CLS]",
            mask_token="[MASK]",
        ),
        ("spiece.model",),
        mask_fast=_MASK,
        slow_tokens={"mask_token": _MASK},
    ),
    # DebertaV2Tokenizer.__init__ wraps a plain unk_token in AddedToken(normalized=True, special=True); the
    # fast class wraps nothing. model_input_names: the base class's three (DeBERTa-v3's model ignores the types).
    "DebertaV2Tokenizer": TokenizerClass(
        "deberta",
        _THREE,
        dict(
            bos_token="[CLS]",
            eos_token="[SEP]",
            unk_token="[UNK]",
            sep_token="[SEP]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            mask_token="[MASK]",
        ),
        ("spm.model",),
        slow_tokens={"unk_token": dict(normalized=True, special=True)},
    ),
}
# What a folder's files say when neither tokenizer_config.json nor config.json names a class.
TOKENIZER_BY_FILE = (
    ("vocab.txt", "DistilBertTokenizer"),
    ("vocab.json", "RobertaTokenizer"),
    ("sentencepiece.bpe.model", "XLMRobertaTokenizer"),
    ("spiece.model", "AlbertTokenizer"),
    ("spm.model", "DebertaV2Tokenizer"),
)
