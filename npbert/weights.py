"""Strict loading of a checkpoint's `model.safetensors` into a frozen tree of numpy arrays.

The tree is the same for every family (families.py): its field names are DistilBERT's checkpoint keys,
so `distilbert.transformer.layer.3.ffn.lin1.weight` is `weights.encoder.transformer.layer[3].ffn.lin1.weight`,
and the same field holds BERT's `bert.encoder.layer.3.intermediate.dense.weight` (families.py maps every
family's keys onto these names). Arrays keep PyTorch's [out, in] layout: `linear(x) = x @ W.T + b`. Key
names and shapes follow transformers 4.57.6 `models/*/modeling_*.py` (families.py names the file).

The file format is safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}}, then the raw little-endian bytes.
The header is read and checked here and the data memory-mapped, so float32 weights are used in place,
with no copy. Pickled checkpoints (`pytorch_model.bin`) are never opened: unpickling runs code.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import Config
from .files import regular_file_problem
from .kernels import PANEL_WIDTH


class WeightsError(ValueError):
    """A weights file that cannot be loaded as the config says, naming the file, tensor, expected and found."""


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
    Derived, not stored in checkpoints: it depends on the weights only, so model.with_position_tables
    computes it once at load."""

    pos_k: np.ndarray | None  # [2A, D], projected like the keys, for c2p; None without c2p
    pos_q: np.ndarray | None  # [2A, D], projected like the queries, for p2c; None without p2c


class TransformerBlock(NamedTuple):
    attention: MultiHeadSelfAttention
    sa_layer_norm: LayerNorm
    ffn: FFN
    output_layer_norm: LayerNorm
    pos_proj: PositionProjections | None = None  # DeBERTa, relative attention without share_att_key
    pos_tables: PositionTables | None = None  # DeBERTa: derived at load (model.with_position_tables)


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
    pos_parts = [f"pos_proj.{lin}" for lin, term in (("k_lin", "c2p"), ("q_lin", "p2c"))
                 if relative and not config.share_att_key and term in config.pos_att_type]
    for b in range(config.n_blocks):
        g, j = divmod(b, config.inner_group_num)  # ALBERT's group and layer within it
        for part in ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "sa_layer_norm",
                     "ffn.lin1", "ffn.lin2", "output_layer_norm", *pos_parts):
            key = family.layout["layer." + part].format(i=b, g=g, j=j)
            for p in ("weight", "bias"):
                out[f"transformer.layer.{b}.{part}.{p}"] = f"{prefix}{key}.{p}"
    if with_qa_head:
        out["qa_outputs.weight"], out["qa_outputs.bias"] = "qa_outputs.weight", "qa_outputs.bias"
    return out


def _canonical_shape(name: str, config: Config) -> tuple[int, ...]:
    D, E, F = config.dim, config.embedding_width, config.hidden_dim
    rows = {"word_embeddings": config.vocab_size, "position_embeddings": config.max_position_embeddings,
            "token_type_embeddings": config.type_vocab_size}
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


# --- reading safetensors -----------------------------------------------------------------------------

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
# Bounds checked before any work: the safetensors library allows a 100 MB header, but a real checkpoint's
# is tens of KB (BERT-large: ~400 tensors, 40 KB). A hostile 55 MB header of a million empty tensors took a
# minute and 1.2 GB before these bounds.
_MAX_HEADER_BYTES = 16 * 2**20
_MAX_TENSORS = 50_000


class TensorInfo(NamedTuple):
    dtype: str  # safetensors name: F32, F16, BF16, ...
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse and check a safetensors header: (tensors, metadata, byte offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path}: truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", prefix)
        if n > size - 8:
            raise WeightsError(
                f"{path}: bad header: header length {n} but the file has {size - 8} bytes after it "
                "(truncated, or not a safetensors file)"
            )
        if n > _MAX_HEADER_BYTES:
            raise WeightsError(f"{path}: bad header: {n} bytes of header, over npbert's limit of "
                               f"{_MAX_HEADER_BYTES} (a real checkpoint's is tens of KB)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise WeightsError(f"{path}: bad header: JSON nested too deeply to read; corrupt or not a safetensors "
                           "file") from None
    except (UnicodeDecodeError, ValueError) as e:  # ValueError: bad JSON, or an integer over 4300 digits
        raise WeightsError(f"{path}: bad header: not valid JSON ({e}); corrupt or not a safetensors file") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: bad header: expected a JSON object, found {type(header).__name__}")
    if len(header) > _MAX_TENSORS:
        raise WeightsError(f"{path}: bad header: {len(header)} entries, over npbert's limit of {_MAX_TENSORS} tensors")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + n, size - 8 - n
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise WeightsError(f"{path}: bad header: entry for tensor {name!r} is malformed: {info!r}") from None
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise WeightsError(f"{path}: bad header: tensor {name}: unknown dtype {dtype!r}")
        # JSON true/false are ints to Python: a shape or offset must be a real non-negative integer.
        ints = (*shape, begin, end)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in ints) or begin > end:
            raise WeightsError(f"{path}: bad header: tensor {name} has shape {list(shape)}, offsets {[begin, end]}")
        nbytes = math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize  # Python ints: no overflow at 2**64
        if end - begin != nbytes:
            raise WeightsError(
                f"{path}: bad header: tensor {name} ({dtype} {list(shape)}) needs {nbytes} bytes, "
                f"its offsets span {end - begin}"
            )
        if end > data_size:
            raise WeightsError(
                f"{path}: truncated: tensor {name} ends at byte {end} of the data section, "
                f"which has only {data_size} bytes"
            )
        tensors[name] = TensorInfo(dtype, shape, begin, end)
        spans.append((begin, end, name))
    spans.sort()
    for (_, end_a, a), (begin_b, _, b) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise WeightsError(f"{path}: bad header: tensors {a} and {b} overlap")
        if begin_b > end_a:
            raise WeightsError(f"{path}: bad header: {begin_b - end_a} bytes between tensors {a} and {b} belong to "
                               "no tensor (the safetensors format has no gaps)")
    covered = spans[-1][1] if spans else 0
    if covered != data_size:  # the safetensors library refuses these too ("not fully covered")
        raise WeightsError(f"{path}: {data_size - covered} bytes after the last tensor belong to no tensor (trailing "
                           "data: a corrupt or altered file)")
    return tensors, metadata, data_start


def stored_array(mm: np.ndarray, data_start: int, info: TensorInfo) -> np.ndarray:
    """A tensor's stored values, as a view of the file's bytes `mm` in its stored dtype and shape
    (bfloat16 as uint16: numpy has no bfloat16)."""
    return mm[data_start + info.begin: data_start + info.end].view(_DTYPES[info.dtype]).reshape(info.shape)


def as_float(raw: np.ndarray, source_dtype: str, dtype: np.dtype) -> np.ndarray:
    """Convert a tensor's stored values to the model dtype, copying only when the dtype changes."""
    if source_dtype == "BF16":
        # bfloat16 is the top half of a float32: widening is exact.
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return raw if raw.dtype == dtype else raw.astype(dtype)


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


def load_tensors(path: Path, expected: dict[str, tuple[int, ...]], dtype=np.float32,
                 ignorable: frozenset = frozenset(), header=None) -> dict[str, np.ndarray]:
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
        raise WeightsError(f"{path}: {'; '.join(parts)} (expected {len(expected)} tensors from config.json, found {len(tensors)}: "
                           "do config.json and the weights belong to the same checkpoint?)")
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, shape in expected.items():
        info = tensors[name]
        if info.shape != shape:
            raise WeightsError(
                f"{path}: tensor {name}: expected shape {list(shape)} (from config.json), found {list(info.shape)}"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{path}: tensor {name}: expected a float dtype (F32, F16, BF16, F64), found {info.dtype}")
        raw = stored_array(mm, data_start, info)
        if not raw.flags.aligned:  # safetensors does not promise alignment; numba and BLAS want it
            raw = raw.copy()
        out[name] = as_float(raw, info.dtype, np.dtype(dtype))
        # A NaN or infinity in any weight turns every logit it reaches into NaN, and the pipeline then
        # "answers" with an empty span: refuse the file instead (one pass over the data, ~0.1 s at full size).
        finite = np.isfinite(out[name])
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite)), finite.shape)
            raise WeightsError(f"{path}: tensor {name} holds {int(finite.size - finite.sum())} NaN or infinite "
                               f"value(s), the first at {list(map(int, first))}: a corrupt or diverged checkpoint")
        # The check read every page of the tensor into this process: release them (they stay in the page
        # cache), or the whole file would count in the process's peak RSS at load. Reads fault them back.
        _release_mapped_pages(out[name])
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
        attention = MultiHeadSelfAttention(*(linear(f"{p}.attention.{n}") for n in ("q_lin", "k_lin", "v_lin", "out_lin")))
        ffn = FFN(linear(p + ".ffn.lin1"), linear(p + ".ffn.lin2"))
        pos_proj = PositionProjections(optional_linear(p + ".pos_proj.k_lin"), optional_linear(p + ".pos_proj.q_lin"))
        return TransformerBlock(attention, layer_norm(p + ".sa_layer_norm"), ffn, layer_norm(p + ".output_layer_norm"),
                                pos_proj if any(lin is not None for lin in pos_proj) else None)

    e = "embeddings"
    embeddings = Embeddings(
        Embedding(t[e + ".word_embeddings.weight"]),
        Embedding(t[e + ".position_embeddings.weight"]) if e + ".position_embeddings.weight" in t else None,
        layer_norm(e + ".LayerNorm"),
        Embedding(t[e + ".token_type_embeddings.weight"]) if e + ".token_type_embeddings.weight" in t else None,
        linear(e + ".projection") if e + ".projection.weight" in t else None)
    blocks = [block(f"transformer.layer.{b}") for b in range(config.n_blocks)]
    r = "transformer.rel_"
    encoder = Encoder(embeddings, Transformer(
        tuple(blocks[b] for b in config.block_order()),
        Embedding(t[r + "embeddings.weight"]) if r + "embeddings.weight" in t else None,
        layer_norm(r + "layer_norm") if r + "layer_norm.weight" in t else None))
    return ForQuestionAnswering(encoder, linear("qa_outputs")) if with_qa_head else encoder


def load(folder: Path, config: Config, dtype=np.float32, with_qa_head: bool = True):
    """Load `folder/model.safetensors` strictly into the weight tree for `config`."""
    folder = Path(folder)
    path = folder / "model.safetensors"
    if not path.is_file():
        if (folder / "model.safetensors.index.json").is_file():
            raise WeightsError(f"{folder}: sharded safetensors checkpoints are not supported; merge the shards "
                               "into one model.safetensors")
        others = [n for n in ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
                  if (folder / n).is_file()]
        if others:
            raise WeightsError(
                f"{path}: not found; the folder holds only {', '.join(others)}, and npbert never opens pickled or "
                "framework-specific weights (unpickling runs code). Convert once, where transformers and torch are "
                "installed: python -c \"from transformers import AutoModelForQuestionAnswering as M; "
                f"M.from_pretrained({str(folder)!r}).save_pretrained({str(folder)!r}, safe_serialization=True)\""
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
            raise WeightsError(f"{path}: an encoder-only checkpoint (keys without {prefix!r}, no qa_outputs): "
                               "load it with npbert.AutoModel, or use a question-answering checkpoint")
        keys = {name: key.removeprefix(prefix) for name, key in keys.items()}
    elif not with_qa_head:
        ignorable |= QA_HEAD_KEYS
    elif not QA_HEAD_KEYS & stored:
        raise WeightsError(f"{path}: no question-answering head (qa_outputs.weight, qa_outputs.bias): an encoder "
                           "checkpoint; load it with npbert.AutoModel, or use a question-answering checkpoint")
    by_key = load_tensors(path, {key: _canonical_shape(name, config) for name, key in keys.items()}, dtype, ignorable,
                          header)
    return build_tree({name: by_key[key] for name, key in keys.items()}, config, with_qa_head)


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """The position table transformers builds when `sinusoidal_pos_embds` is set (float64)."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    j = np.arange(dim)
    angle = pos / np.power(10000, 2 * (j // 2) / dim)
    return np.where(j % 2 == 0, np.sin(angle), np.cos(angle))


# --- the one re-layout for speed ------------------------------------------------------------------------


class FusedAttention(NamedTuple):
    """MultiHeadSelfAttention plus `qkv`, the q, k, v linears stacked into one [3D, D] matrix so the
    three projections run as one GEMM. q_lin, k_lin and v_lin stay, as views into `qkv` (no copy)."""

    q_lin: Linear
    k_lin: Linear
    v_lin: Linear
    out_lin: Linear
    qkv: Linear  # [3D, D], rows q then k then v


def relayout_for_speed(tree, weights_file: Path | None = None, panels: bool = False):
    """The weight tree re-laid out for the forward's speed, done once at load time.

    - Each layer's attention gets `qkv`, its q, k, v matrices stacked into one [3D, D] matrix, so the
      three projections are one GEMM; `q_lin`/`k_lin`/`v_lin` stay, as views into it.
    - Every linear layer's matrix (qkv, out_lin, lin1, lin2, the embedding projection, qa_outputs) is stored transposed in memory:
      still the [out, in] array `linear` reads (same shape, same values, `x @ W.T + b` unchanged), but
      column-major, so `W.T` is a C-contiguous [in, out] matrix and `x @ W.T` is BLAS's plain no-transpose
      case. OpenBLAS 0.3.31 runs that case faster than the transposed-B one on the stored layout, most
      at few rows: a layer's four GEMMs at 16 rows took 3.6 ms against 4.5 ms on 2 threads, at 64 rows
      6.1 against 7.9 ms (docs/performance.md).
    - With `panels` (float32 on a CPU with AVX-512: kernels.panels_pay_off), every linear whose output
      width is a multiple of kernels.PANEL_WIDTH (32) is stored instead as panels, an [out / 32, in, 32]
      array: panel p holds W.T's columns 32p..32p+31, row k of the panel their 32 weights for input k, so
      kernels.matmul_panels streams each panel once per product and never repacks it (model.matmul_t
      reads either layout). The q, k, v views are then panel ranges of qkv's panels.

    With `weights_file` (the safetensors file the tree was read from) the re-laid matrices are read-only
    views of a memory-mapped cache file that every process loading the same weights shares
    (relaid_cache.py: keyed by the file's sha256, written once, atomically, checked at every load);
    without it, or when the cache folder cannot be used, they are this process's private copies. Either way the memory-mapped
    originals' pages are released once copied, so RSS counts the layer weights once. Embeddings stay
    mapped (a forward reads only the rows it uses). Idempotent: an already re-laid-out tree comes back
    as is."""
    if weights_file is not None:
        from . import relaid_cache

        planned, dtypes = [], set()  # a dry run: the shapes the re-layout will store, in order

        def plan(linears):
            planned.append(_stored_shape(linears, panels))
            dtypes.add(linears[0].weight.dtype)
            return _as_stored(np.empty(planned[-1], linears[0].weight.dtype), linears, panels)  # touches no page

        _relaid_tree(tree, plan)
        if planned and len(dtypes) == 1:
            def produce(write):  # the private copies, each written to the cache file and dropped at once
                def write_and_drop(linears):
                    stored = _stored_copy(linears, panels)
                    write(stored.reshape(_stored_shape(linears, panels)))
                    return np.empty(stored.shape, stored.dtype)

                _relaid_tree(tree, write_and_drop)

            mapped = relaid_cache.shared_matrices(weights_file, dtypes.pop(), planned, produce)
            if mapped is not None:
                views = iter(mapped)
                return _relaid_tree(tree, lambda linears: _as_stored(next(views), linears, panels))
    return _relaid_tree(tree, lambda linears: _stored_copy(linears, panels))


def _in_panels(linears, panels: bool) -> bool:
    return panels and all(lin.weight.shape[0] % PANEL_WIDTH == 0 for lin in linears)


def _stored_shape(linears, panels: bool) -> tuple[int, int]:
    # The 2-D shape the cache file holds for these linears stacked along out: [in, out], or, in panels,
    # [out / 32 * in, 32] (the [out / 32, in, 32] array's rows).
    d_in, d_out = linears[0].weight.shape[1], sum(lin.weight.shape[0] for lin in linears)
    return (d_out // PANEL_WIDTH * d_in, PANEL_WIDTH) if _in_panels(linears, panels) else (d_in, d_out)


def _as_stored(matrix, linears, panels: bool):  # the cache's 2-D matrix -> the stored array ([in, out] or panels)
    if _in_panels(linears, panels):
        return matrix.reshape(-1, linears[0].weight.shape[1], PANEL_WIDTH)
    return matrix


def _stored_copy(linears, panels: bool):  # the stored array as a private copy: [in, sum(out)] or panels
    weight_t = _column_major_copy(linears)
    if not _in_panels(linears, panels):
        return weight_t
    d_in, d_out = weight_t.shape
    return np.ascontiguousarray(weight_t.reshape(d_in, d_out // PANEL_WIDTH, PANEL_WIDTH).transpose(1, 0, 2))


def _release_mapped_pages(x):
    # Drop the (now copied) pages of the file mapping from this process. They stay in the page cache
    # and would fault back in if read. Only on a read-only file mapping: on an owned array
    # MADV_DONTNEED zeroes the data.
    import mmap

    root = x
    while isinstance(root.base, np.ndarray):
        root = root.base
    if not (isinstance(root.base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")) or x.flags.writeable:
        return
    page, start = mmap.PAGESIZE, x.ctypes.data - np.frombuffer(root.base, np.uint8).ctypes.data
    begin, end = -(-start // page) * page, (start + x.nbytes) // page * page  # whole pages inside x
    if end > begin:
        root.base.madvise(mmap.MADV_DONTNEED, begin, end - begin)


def _column_major_copy(linears):  # stacked along out: the [in, sum(out)] C-contiguous matrix, a private copy
    weight_t = np.empty((linears[0].weight.shape[1], sum(lin.weight.shape[0] for lin in linears)),
                        linears[0].weight.dtype)
    col = 0
    for lin in linears:
        weight_t[:, col:col + lin.weight.shape[0]] = lin.weight.T
        _release_mapped_pages(lin.weight)
        col += lin.weight.shape[0]
    return weight_t


def _relaid_tree(tree, matrix):
    """relayout_for_speed's tree, each stored array ([in, sum(out)], or panels) taken from matrix(linears),
    called once per matrix in a fixed order (the cache file's order)."""
    with_qa_head = hasattr(tree, "qa_outputs")
    encoder = tree.encoder if with_qa_head else tree

    def stored(*linears):  # stacked along out: one [sum(out), in] matrix stored column-major, or its panels
        weight = matrix(linears)
        return Linear(weight if weight.ndim == 3 else weight.T, np.concatenate([lin.bias for lin in linears]))

    def relaid(lin):
        return lin if is_relaid(lin) else stored(lin)

    def fuse(a):
        if isinstance(a, FusedAttention):
            return a
        D = a.q_lin.weight.shape[0]
        qkv = stored(a.q_lin, a.k_lin, a.v_lin)
        step = D // PANEL_WIDTH if qkv.weight.ndim == 3 else D  # panels: D / 32 panels per projection
        views = (Linear(qkv.weight[i * step:(i + 1) * step], qkv.bias[i * D:(i + 1) * D]) for i in range(3))
        return FusedAttention(*views, relaid(a.out_lin), qkv)

    done = {}  # id(block) -> re-laid block: a block ALBERT's layers share is re-laid (and stored) once
    for layer in encoder.transformer.layer:
        if id(layer) not in done:
            done[id(layer)] = layer._replace(attention=fuse(layer.attention),
                                             ffn=FFN(relaid(layer.ffn.lin1), relaid(layer.ffn.lin2)))
    layers = tuple(done[id(layer)] for layer in encoder.transformer.layer)
    embeddings = encoder.embeddings
    if embeddings.projection is not None and not is_relaid(embeddings.projection):
        embeddings = embeddings._replace(projection=relaid(embeddings.projection))
    encoder = encoder._replace(embeddings=embeddings, transformer=encoder.transformer._replace(layer=layers))
    return tree._replace(encoder=encoder, qa_outputs=relaid(tree.qa_outputs)) if with_qa_head else encoder


def is_relaid(lin: Linear) -> bool:
    """True when `lin.weight` is stored as the re-layout stores it: column-major (`W.T` is an [in, out]
    matrix with contiguous rows, BLAS's no-transpose operand; q_lin, k_lin, v_lin: column blocks of qkv's),
    or as panels ([out / 32, in, 32])."""
    return lin.weight.ndim == 3 or lin.weight.shape[0] == 1 or lin.weight.strides[0] == lin.weight.itemsize
