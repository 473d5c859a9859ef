"""The model configuration, read from a checkpoint's `config.json`, for every family npbert runs.

Follows transformers 4.57.6 `models/*/configuration_*.py`: each family's field names and defaults
(families.py lists them). Field names here are DistilBERT's (`dim`, `n_layers`, `hidden_dim`, ...);
`config.json` keys of other families (`hidden_size`, `num_hidden_layers`, `intermediate_size`, ...) are
mapped onto them by the family's table. Only what the forward pass needs is kept; training-only keys
(dropouts, initializer range) and legacy keys are read past without complaint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .families import ACTIVATIONS, FAMILIES, Family
from .files import regular_file_problem


class ConfigError(ValueError):
    """A config.json that npbert cannot run, with the file and the offending key named."""


@dataclass(frozen=True)
class Config:
    model_type: str = "distilbert"
    vocab_size: int = 30522  # V
    dim: int = 768  # D, the model width (hidden_size)
    n_layers: int = 6  # L (num_hidden_layers)
    n_heads: int = 12  # H
    hidden_dim: int = 3072  # F, the FFN width (intermediate_size)
    max_position_embeddings: int = 512  # P
    sinusoidal_pos_embds: bool = False  # DistilBERT: the stored position table is the sinusoidal one
    activation: str = "gelu"  # the FFN nonlinearity (hidden_act): a key of families.ACTIVATIONS
    pad_token_id: int = 0
    layer_norm_eps: float = 1e-12  # hard-coded in transformers' DistilBERT, not a config key there
    type_vocab_size: int = 0  # T: token-type embedding rows; 0 = no token-type embedding (DistilBERT)
    embedding_size: int = 0  # E: the embeddings' width; 0 = D. E != D adds a projection to D
    num_hidden_groups: int = 1  # ALBERT: the L layers run num_hidden_groups distinct groups of blocks,
    inner_group_num: int = 1  # each group inner_group_num blocks deep
    positions_after_padding: bool = False  # RoBERTa: position ids count from pad_token_id + 1
    shares_blocks: bool = False  # ALBERT: the layers reuse num_hidden_groups x inner_group_num stored blocks
    # DeBERTa-v2/v3 (configuration_deberta_v2.py and the getattr defaults of modeling_deberta_v2.py), read
    # from config.json for that family only (DEBERTA_FIELDS):
    disentangled_attention: bool = False  # the family's flag: attention through deberta.py's terms
    relative_attention: bool = False  # add the c2p / p2c terms of the relative-position table
    pos_att_type: tuple = ()  # which of them: "c2p", "p2c" ("p2c|c2p" in older configs)
    position_buckets: int = -1  # > 0: log-bucketed relative positions, 2 x position_buckets table rows
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    share_att_key: bool = False  # project the table with the content q/k projections, not pos_*_proj
    norm_rel_ebd: str = "none"  # "layer_norm": the table goes through encoder.LayerNorm first
    position_biased_input: bool = True  # add absolute position embeddings to the input (v3: false)
    conv_kernel_size: int = 0  # > 0: the ConvLayer of v2 xlarge/xxlarge (not supported)
    # Training only (model.Dropout; inference never drops): the rates at the family's dropout sites
    # (families.Family.dropout_sites), read with the family's names (BERT: hidden_dropout_prob,
    # attention_probs_dropout_prob).
    dropout: float = 0.1  # the embeddings' output and the sublayers' outputs
    attention_dropout: float = 0.1  # the attention probabilities
    qa_dropout: float = 0.1  # before qa_outputs (DistilBERT's; the other families' QA heads have none)

    @property
    def head_dim(self) -> int:  # Dh
        return self.dim // self.n_heads

    @property
    def embedding_width(self) -> int:  # E
        return self.embedding_size or self.dim

    @property
    def position_offset(self) -> int:
        """The position id of the first token (RoBERTa: pad_token_id + 1, others 0)."""
        return self.pad_token_id + 1 if self.positions_after_padding else 0

    @property
    def max_sequence_length(self) -> int:
        """The longest input the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @property
    def relative_span(self) -> int:
        """A, DeBERTa's attention span: relative positions index rows 0..2A-1 of the (bucketed) table
        (DisentangledSelfAttention.pos_ebd_size)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_distance

    @property
    def max_relative_distance(self) -> int:
        """The largest distance the log buckets reach (max_relative_positions, else max_position_embeddings)."""
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def normalises_rel_embeddings(self) -> bool:
        return "layer_norm" in [x.strip() for x in self.norm_rel_ebd.lower().split("|")]

    @property
    def family(self) -> Family:
        return FAMILIES[self.model_type]

    @property
    def n_blocks(self) -> int:
        """Distinct blocks stored in the checkpoint (ALBERT shares them between layers)."""
        return self.num_hidden_groups * self.inner_group_num if self.shares_blocks else self.n_layers

    @property
    def blocks_per_layer(self) -> int:
        """Blocks run per hidden state: ALBERT's layers run inner_group_num blocks each, others one."""
        return self.inner_group_num if self.shares_blocks else 1

    @property
    def n_block_runs(self) -> int:
        """Blocks the forward runs: one attention map each (n_layers, except ALBERT with inner groups)."""
        return self.n_layers * self.blocks_per_layer

    def block_order(self) -> tuple[int, ...]:
        """The stored block each attention layer runs, in forward order: 0..L-1, except for ALBERT, whose
        layer i runs group int(i / (L / G)), each group `inner_group_num` blocks in a row (AlbertTransformer)."""
        if not self.shares_blocks:
            return tuple(range(self.n_layers))
        L, G, J = self.n_layers, self.num_hidden_groups, self.inner_group_num
        return tuple(int(i / (L / G)) * J + j for i in range(L) for j in range(J))

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "Config":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, found {type(d).__name__}")
        model_type = d.get("model_type", "distilbert")
        if model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported; npbert runs {', '.join(FAMILIES)}"
            )
        family = FAMILIES[model_type]
        if d.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(
                f"{source}: position_embedding_type {d['position_embedding_type']!r} is not supported (only 'absolute')"
            )
        flags = {
            "model_type": model_type,
            "positions_after_padding": family.positions_after_padding,
            "shares_blocks": family.shares_blocks,
            "disentangled_attention": family.disentangled,
        }
        kwargs = {**flags, **family.defaults}
        for name, default in cls.__dataclass_fields__.items():
            key = family.config_names.get(name, name)
            if name in flags or key not in d or (name in ("embedding_size", "pos_att_type") and d[key] is None):
                continue
            if name in DEBERTA_FIELDS and not family.disentangled:
                continue  # another family's config.json naming a DeBERTa key: not read
            if name == "layer_norm_eps" and model_type == "distilbert":
                continue  # DistilBERT's LayerNorms use 1e-12 whatever the config says
            if name in DROPOUT_FIELDS:
                kwargs[name] = _dropout_rate(d[key], key, source)
                continue
            kwargs[name] = _checked(d[key], type(default.default), key, source)
        config = cls(**kwargs)
        config._check(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> "Config":
        path = Path(path)
        if not path.exists() and not path.is_symlink():
            raise ConfigError(f"{path}: config.json not found")
        problem = regular_file_problem(path, "config.json")
        if problem:
            raise ConfigError(f"{path}: {problem}")
        try:
            d = json.loads(path.read_text(encoding="utf-8"), parse_int=_integer)
            huge = _huge_integer(d)
        except RecursionError:
            raise ConfigError(f"{path}: not valid JSON (nested too deeply to read)") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if huge is not None:
            raise ConfigError(f"{path}: {_too_large(*huge)}")
        return cls.from_dict(d, source=str(path))

    def _check(self, source: str) -> None:
        names = self.family.config_names
        for name in (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "hidden_dim",
            "max_position_embeddings",
            "num_hidden_groups",
            "inner_group_num",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{source}: {names.get(name, name)} must be positive, found {getattr(self, name)}")
        for name in ("type_vocab_size", "embedding_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{source}: {name} must not be negative, found {getattr(self, name)}")
        if self.disentangled_attention:
            self._check_deberta(source)
        elif self.model_type != "distilbert" and self.type_vocab_size < 1:
            raise ConfigError(f"{source}: type_vocab_size must be positive, found {self.type_vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"{source}: pad_token_id {self.pad_token_id} is outside the vocabulary [0, {self.vocab_size})"
            )
        if self.max_sequence_length < 1:
            raise ConfigError(
                f"{source}: max_position_embeddings {self.max_position_embeddings} leaves no position "
                f"after the padding id {self.pad_token_id}"
            )
        if self.dim % self.n_heads:
            raise ConfigError(
                f"{source}: {names.get('dim', 'dim')} {self.dim} is not divisible by "
                f"{names.get('n_heads', 'n_heads')} {self.n_heads}"
            )
        if self.num_hidden_groups > self.n_layers:
            raise ConfigError(
                f"{source}: num_hidden_groups {self.num_hidden_groups} exceeds num_hidden_layers {self.n_layers}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"{source}: {names.get('activation', 'activation')} {self.activation!r} is not supported "
                f"(supported: {', '.join(ACTIVATIONS)})"
            )

    def _check_deberta(self, source: str) -> None:
        if self.conv_kernel_size > 0:
            raise ConfigError(
                f"{source}: conv_kernel_size {self.conv_kernel_size} (the ConvLayer of DeBERTa-v2 "
                "xlarge/xxlarge) is not supported"
            )
        if self.embedding_width != self.dim:
            raise ConfigError(
                f"{source}: embedding_size {self.embedding_size} != hidden_size {self.dim} "
                "(DeBERTa's bias-free embed_proj) is not supported"
            )
        if self.relative_attention and self.relative_span < 1:
            raise ConfigError(
                f"{source}: relative_attention needs position_buckets or max_relative_positions "
                "or max_position_embeddings to be positive"
            )


# The DeBERTa keys: read from config.json only for the deberta-v2 family.
DEBERTA_FIELDS = frozenset(
    {
        "relative_attention",
        "pos_att_type",
        "position_buckets",
        "max_relative_positions",
        "share_att_key",
        "norm_rel_ebd",
        "position_biased_input",
        "conv_kernel_size",
    }
)


class _HugeInteger:
    """A JSON integer Python will not convert (over sys.get_int_max_str_digits() digits, 4300 by default)."""

    def __init__(self, digits: int):
        self.digits = digits


def _integer(text: str):
    try:
        return int(text)
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion": named by its key later
        return _HugeInteger(len(text.lstrip("-")))


def _too_large(key: str, digits: int) -> str:
    return f"{key} is an integer of {digits} digits, too large for any setting"


def _huge_integer(value, key: str = "") -> tuple[str, int] | None:
    """(the key, e.g. "a.b[2]", and digits) of the first _HugeInteger in a parsed JSON value, or None."""
    if isinstance(value, _HugeInteger):
        return key or "the file", value.digits
    items = (
        value.items()
        if isinstance(value, dict)
        else ((f"[{i}]", v) for i, v in enumerate(value))
        if isinstance(value, list)
        else ()
    )
    for name, v in items:
        found = _huge_integer(v, f"{key}{name}" if name.startswith("[") else f"{key}.{name}" if key else name)
        if found is not None:
            return found
    return None


DROPOUT_FIELDS = ("dropout", "attention_dropout", "qa_dropout")


def _dropout_rate(value, key: str, source: str) -> float:
    if value is None:  # transformers reads a null rate as no dropout
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{source}: {key} must be a dropout rate in [0, 1), found {value!r}")
    return float(value)


def _checked(value, expected: type, key: str, source: str):
    # JSON true/false are ints to Python: an integer field must be a real integer.
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{source}: {key} must be an integer, found {value!r}")
    if expected is int and abs(value) >= 1 << 63:  # no size or id is: and thousands of digits make no message
        raise ConfigError(f"{source}: {_too_large(key, len(str(abs(value))))}")
    if expected is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigError(f"{source}: {key} must be a positive number, found {value!r}")
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} must be true or false, found {value!r}")
    if expected is str and not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, found {value!r}")
    if expected is tuple:  # DeBERTa's pos_att_type: a list, or the older "p2c|c2p" (lower-cased, as transformers)
        if isinstance(value, str):
            value = [x.strip() for x in value.lower().split("|")]
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ConfigError(f"{source}: {key} must be a list of strings or a '|'-separated string, found {value!r}")
        return tuple(value)
    return float(value) if expected is float else value
