"""Strict loading of a checkpoint's `model.safetensors` into a frozen tree of numpy arrays.

The tree is the same for every family (families.py): its field names are DistilBERT's checkpoint keys,
so `distilbert.transformer.layer.3.ffn.lin1.weight` is `weights.encoder.transformer.layer[3].ffn.lin1.weight`,
and the same field holds BERT's `bert.encoder.layer.3.intermediate.dense.weight` (families.py maps every
family's keys onto these names). Arrays keep PyTorch's [out, in] layout: `linear(x) = x @ W.T + b`. Key
names and shapes follow transformers 4.57.6 `models/*/modeling_*.py` (families.py names the file).

The file is read by safetensors_file.py (its header checked, its data memory-mapped: float32 weights
are used in place). Pickled checkpoints (`pytorch_model.bin`) are never opened: unpickling runs code.
Reading a checkpoint imports no numba: the re-layout for speed (layout.py) is a separate, later step, and
the forward (model.py) runs on this plain tree too.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import Config
from .files import regular_file_problem
from .safetensors_file import FLOAT_DTYPES, WeightsError, as_float, read_header, release_mapped_pages, stored_array

# --- the tree, named like DistilBERT's checkpoint keys -----------------------------------------------


class Linear(NamedTuple):
    weight: np.ndarray  # [out, in]
    bias: np.ndarray  # [out]


class LayerNorm(NamedTuple):
    weight: np.ndarray  # [D]
    bias: np.ndarray  # [D]


class Embedding(NamedTuple):
    weight: np.ndarray  # [rows, E]


class Embeddings(NamedTuple):
    word_embeddings: Embedding  # [V, E]
    position_embeddings: Embedding | None  # [P, E]; None: DeBERTa without position_biased_input
    LayerNorm: LayerNorm  # [E]
    token_type_embeddings: Embedding | None = None  # [T, E]; None: no token types (DistilBERT)
    projection: Linear | None = None  # [D, E] (ELECTRA, ALBERT); None when E == D


class MultiHeadSelfAttention(NamedTuple):
    q_lin: Linear
    k_lin: Linear
    v_lin: Linear
    out_lin: Linear


class FFN(NamedTuple):
    lin1: Linear  # [F, D]
    lin2: Linear  # [D, F]


class PositionProjections(NamedTuple):
    """DeBERTa without share_att_key: a layer's own projections of the relative-position table."""

    k_lin: Linear | None  # [D, D] pos_key_proj, for c2p; None when pos_att_type has no c2p
    q_lin: Linear | None  # [D, D] pos_query_proj, for p2c; None when it has no p2c


class PositionTables(NamedTuple):
    """DeBERTa: the relative-position table (after its LayerNorm) as one layer projects it for c2p and p2c.
    Derived, not stored in checkpoints: it depends on the weights only, so layout.with_position_tables
    computes it once at load."""

    pos_k: np.ndarray | None  # [2A, D], projected like the keys, for c2p; None without c2p
    pos_q: np.ndarray | None  # [2A, D], projected like the queries, for p2c; None without p2c


class TransformerBlock(NamedTuple):
    attention: MultiHeadSelfAttention
    sa_layer_norm: LayerNorm
    ffn: FFN
    output_layer_norm: LayerNorm
    pos_proj: PositionProjections | None = None  # DeBERTa, relative attention without share_att_key
    pos_tables: PositionTables | None = None  # DeBERTa: derived at load (layout.with_position_tables)


class Transformer(NamedTuple):
    # One block per attention layer, in forward order. ALBERT's layers share blocks: the same block
    # object then stands at several places (config.block_order()), its arrays stored once.
    layer: tuple[TransformerBlock, ...]
    # DeBERTa with relative_attention: the relative-position table every layer reads, [2A, D]
    # (A = config.relative_span), and its LayerNorm when norm_rel_ebd is layer_norm.
    rel_embeddings: Embedding | None = None
    rel_layer_norm: LayerNorm | None = None


class Encoder(NamedTuple):
    embeddings: Embeddings
    transformer: Transformer


class ForQuestionAnswering(NamedTuple):
    encoder: Encoder
    qa_outputs: Linear  # [2, D]: row 0 start, row 1 end


# An encoder (npbert.AutoModel) may be loaded from a question-answering checkpoint: the head is unused.
QA_HEAD_KEYS = frozenset({"qa_outputs.weight", "qa_outputs.bias"})


def canonical_keys(config: Config, with_qa_head: bool = True) -> dict[str, str]:
    """Every tensor the model needs: canonical name (the tree's path) -> the family's checkpoint key."""
    family, prefix = config.family, config.family.prefix + "."
    embeddings = ["word_embeddings"] + ["position_embeddings"] * config.position_biased_input + ["LayerNorm"]
    if config.type_vocab_size:
        embeddings.append("token_type_embeddings")
    if config.embedding_width != config.dim:
        embeddings.append("projection")
    out = {}
    for part in embeddings:
        for p in ("weight", "bias") if part in ("LayerNorm", "projection") else ("weight",):
            out[f"embeddings.{part}.{p}"] = f"{prefix}{family.layout['embeddings.' + part]}.{p}"
    relative = config.disentangled_attention and config.relative_attention
    if relative:  # DeBERTa's relative-position table, and its LayerNorm
        out["transformer.rel_embeddings.weight"] = f"{prefix}{family.layout['transformer.rel_embeddings']}.weight"
        if config.normalises_rel_embeddings:
            for p in ("weight", "bias"):
                out[f"transformer.rel_layer_norm.{p}"] = f"{prefix}{family.layout['transformer.rel_layer_norm']}.{p}"
    elif config.disentangled_attention and config.normalises_rel_embeddings:
        # transformers builds encoder.LayerNorm from norm_rel_ebd alone: stored, but there is no table to normalise.
        for p in ("weight", "bias"):
            out[f"transformer.rel_layer_norm.{p}"] = f"{prefix}{family.layout['transformer.rel_layer_norm']}.{p}"
    # DeBERTa without share_att_key projects the table with each layer's own pos_key_proj / pos_query_proj.
    pos_parts = [
        f"pos_proj.{lin}"
        for lin, term in (("k_lin", "c2p"), ("q_lin", "p2c"))
        if relative and not config.share_att_key and term in config.pos_att_type
    ]
    for b in range(config.n_blocks):
        g, j = divmod(b, config.inner_group_num)  # ALBERT's group and layer within it
        for part in (
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "sa_layer_norm",
            "ffn.lin1",
            "ffn.lin2",
            "output_layer_norm",
            *pos_parts,
        ):
            key = family.layout["layer." + part].format(i=b, g=g, j=j)
            for p in ("weight", "bias"):
                out[f"transformer.layer.{b}.{part}.{p}"] = f"{prefix}{key}.{p}"
    if with_qa_head:
        out["qa_outputs.weight"], out["qa_outputs.bias"] = "qa_outputs.weight", "qa_outputs.bias"
    return out


def _canonical_shape(name: str, config: Config) -> tuple[int, ...]:
    D, E, F = config.dim, config.embedding_width, config.hidden_dim
    rows = {
        "word_embeddings": config.vocab_size,
        "position_embeddings": config.max_position_embeddings,
        "token_type_embeddings": config.type_vocab_size,
    }
    parts = name.split(".")
    if parts[0] == "embeddings":
        if parts[1] in rows:
            return (rows[parts[1]], E)
        if parts[1] == "projection":
            return (D, E) if parts[2] == "weight" else (D,)
        return (E,)  # LayerNorm
    if parts[0] == "qa_outputs":
        return (2, D) if parts[1] == "weight" else (2,)
    if parts[1] == "rel_embeddings":
        return (2 * config.relative_span, D)
    if parts[1] == "rel_layer_norm":
        return (D,)
    part, p = ".".join(parts[3:-1]), parts[-1]
    out_in = {"ffn.lin1": (F, D), "ffn.lin2": (D, F)}.get(part, (D, D))
    if part.endswith("norm"):
        return (D,)
    return out_in if p == "weight" else out_in[:1]


def expected_shapes(config: Config, with_qa_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor the model needs, by checkpoint key, with its shape from the config."""
    return {key: _canonical_shape(name, config) for name, key in canonical_keys(config, with_qa_head).items()}


def unused_keys(config: Config) -> frozenset:
    """Keys a checkpoint of this family may carry that the model does not use (families.Family.unused)."""
    prefix = config.family.prefix + "."
    return frozenset(prefix + k for k in config.family.unused) | frozenset(config.family.unused)


def legacy_renames(names) -> dict[str, str]:
    """Old TensorFlow-converted checkpoints (early BERTs) name LayerNorm parameters gamma and beta:
    stored name -> modern name, as transformers 4.57.6 renames them at load
    (`PreTrainedModel._fix_state_dict_key_on_load`)."""
    out = {}
    for name in names:
        if name.endswith("LayerNorm.gamma"):
            out[name] = name.removesuffix("gamma") + "weight"
        elif name.endswith("LayerNorm.beta"):
            out[name] = name.removesuffix("beta") + "bias"
    return out


def load_tensors(
    path: Path, expected: dict[str, tuple[int, ...]], dtype=np.float32, ignorable: frozenset = frozenset(), header=None
) -> dict[str, np.ndarray]:
    """Read exactly the `expected` tensors from a safetensors file, strictly: any other key not in
    `ignorable` is an error. Legacy `LayerNorm.gamma/beta` names count as `weight/bias`.

    Float32 data used as float32 are read-only views of a memory map of the file; any other
    combination (float16 or bfloat16 upcast, float64 audit mode) is converted once here.
    """
    path = Path(path)
    problem = regular_file_problem(path, "weights file")
    if problem:
        raise WeightsError(f"{path}: {problem}")
    tensors, _, data_start = header or read_header(path)  # `header`: read_header's result, when the caller has it
    renames = legacy_renames(tensors)
    tensors = {renames.get(name, name): info for name, info in tensors.items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected) - ignorable)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise WeightsError(
            f"{path}: {'; '.join(parts)} (expected {len(expected)} tensors from config.json, found {len(tensors)}: "
            "do config.json and the weights belong to the same checkpoint?)"
        )
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, shape in expected.items():
        info = tensors[name]
        if info.shape != shape:
            raise WeightsError(
                f"{path}: tensor {name}: expected shape {list(shape)} (from config.json), found {list(info.shape)}"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise WeightsError(
                f"{path}: tensor {name}: expected a float dtype (F32, F16, BF16, F64), found {info.dtype}"
            )
        raw = stored_array(mm, data_start, info)
        if not raw.flags.aligned:  # safetensors does not promise alignment; numba and BLAS want it
            raw = raw.copy()
        out[name] = as_float(raw, info.dtype, np.dtype(dtype))
        # A NaN or infinity in any weight turns every logit it reaches into NaN, and the pipeline then
        # "answers" with an empty span: refuse the file instead (one pass over the data, ~0.1 s at full size).
        finite = np.isfinite(out[name])
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), finite.shape)
            raise WeightsError(
                f"{path}: tensor {name} holds {int(finite.size - finite.sum())} NaN or infinite "
                f"value(s), the first at {list(map(int, first))}: a corrupt or diverged checkpoint"
            )
        # The check read every page of the tensor into this process: release them (they stay in the page
        # cache), or the whole file would count in the process's peak RSS at load. Reads fault them back.
        release_mapped_pages(out[name])
    return out


# --- from flat keys to the tree -----------------------------------------------------------------------


def build_tree(tensors: dict[str, np.ndarray], config: Config, with_qa_head: bool = True):
    """Arrange tensors by canonical name (canonical_keys) into the frozen tree (no copies)."""
    t = tensors

    def linear(p):
        return Linear(t[p + ".weight"], t[p + ".bias"])

    def layer_norm(p):
        return LayerNorm(t[p + ".weight"], t[p + ".bias"])

    def optional_linear(p):
        return linear(p) if p + ".weight" in t else None

    def block(p):
        attention = MultiHeadSelfAttention(
            *(linear(f"{p}.attention.{n}") for n in ("q_lin", "k_lin", "v_lin", "out_lin"))
        )
        ffn = FFN(linear(p + ".ffn.lin1"), linear(p + ".ffn.lin2"))
        pos_proj = PositionProjections(optional_linear(p + ".pos_proj.k_lin"), optional_linear(p + ".pos_proj.q_lin"))
        return TransformerBlock(
            attention,
            layer_norm(p + ".sa_layer_norm"),
            ffn,
            layer_norm(p + ".output_layer_norm"),
            pos_proj if any(lin is not None for lin in pos_proj) else None,
        )

    e = "embeddings"
    embeddings = Embeddings(
        Embedding(t[e + ".word_embeddings.weight"]),
        Embedding(t[e + ".position_embeddings.weight"]) if e + ".position_embeddings.weight" in t else None,
        layer_norm(e + ".LayerNorm"),
        Embedding(t[e + ".token_type_embeddings.weight"]) if e + ".token_type_embeddings.weight" in t else None,
        linear(e + ".projection") if e + ".projection.weight" in t else None,
    )
    blocks = [block(f"transformer.layer.{b}") for b in range(config.n_blocks)]
    r = "transformer.rel_"
    encoder = Encoder(
        embeddings,
        Transformer(
            tuple(blocks[b] for b in config.block_order()),
            Embedding(t[r + "embeddings.weight"]) if r + "embeddings.weight" in t else None,
            layer_norm(r + "layer_norm") if r + "layer_norm.weight" in t else None,
        ),
    )
    return ForQuestionAnswering(encoder, linear("qa_outputs")) if with_qa_head else encoder


def load(folder: Path, config: Config, dtype=np.float32, with_qa_head: bool = True):
    """Load `folder/model.safetensors` strictly into the weight tree for `config`."""
    return build_tree(load_arrays(folder, config, dtype, with_qa_head), config, with_qa_head)


def load_arrays(folder: Path, config: Config, dtype=np.float32, with_qa_head: bool = True) -> dict[str, np.ndarray]:
    """`load`'s arrays by canonical name (canonical_keys' keys), before build_tree arranges them."""
    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        if (folder / "model.safetensors.index.json").is_file():
            raise WeightsError(
                f"{folder}: sharded safetensors checkpoints are not supported; merge the shards "
                "into one model.safetensors"
            )
        others = [
            n
            for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
            if (folder / n).is_file()
        ]
        if others:
            raise WeightsError(
                f"{path}: not found; the folder holds only {', '.join(others)}, and npbert never opens pickled or "
                "framework-specific weights (unpickling runs code). Convert once, where transformers and torch are "
                'installed: python -c "from transformers import AutoModelForQuestionAnswering as M; '
                f'M.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r}, safe_serialization=True)"'
            )
        raise WeightsError(f"{path}: {regular_file_problem(path, 'weights file') or 'weights file not found'}")
    keys = canonical_keys(config, with_qa_head)
    ignorable = unused_keys(config)
    # Encoder-only checkpoints (BertModel.save_pretrained, ...) store their keys without the family prefix.
    prefix = config.family.prefix + "."
    header = read_header(path)
    renames = legacy_renames(header[0])
    stored = {renames.get(k, k) for k in header[0]}
    bare = keys["embeddings.word_embeddings.weight"] not in stored
    if bare and keys["embeddings.word_embeddings.weight"].removeprefix(prefix) in stored:
        if with_qa_head:
            raise WeightsError(
                f"{path}: an encoder-only checkpoint (keys without {prefix!r}, no qa_outputs): "
                "load it with npbert.AutoModel, or use a question-answering checkpoint"
            )
        keys = {name: key.removeprefix(prefix) for name, key in keys.items()}
    elif not with_qa_head:
        ignorable |= QA_HEAD_KEYS
    elif not QA_HEAD_KEYS & stored:
        raise WeightsError(
            f"{path}: no question-answering head (qa_outputs.weight, qa_outputs.bias): an encoder "
            "checkpoint; load it with npbert.AutoModel, or use a question-answering checkpoint"
        )
    by_key = load_tensors(
        path, {key: _canonical_shape(name, config) for name, key in keys.items()}, dtype, ignorable, header
    )
    return {name: by_key[key] for name, key in keys.items()}


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """The position table transformers builds when `sinusoidal_pos_embds` is set (float64)."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
