"""The load-time re-layout of the weight tree for speed: the same values, stored the way the kernels run fastest.

The forward (model.py) runs on the tree weights.py loads as well as on the one this module returns; what
changes is only how the matrices are stored and what is computed once instead of in every forward:

- each layer's q, k, v stacked into one fused matrix (`FusedAttention.qkv`: one GEMM instead of three);
- every linear's [out, in] matrix stored column-major, or as panels for the panel GEMM (ops/gemm.py: AVX-512
  or AVX2);
- DeBERTa's relative-position table projected by every layer (`with_position_tables`);
- the re-laid matrices shared between processes through one memory-mapped cache file (relaid_cache.py).

`prepare(tree, config, ops, dtype, weights_file)` does all of it; the model classes call it once at load.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import deberta, relaid_cache
from .ops.gemm import PANEL_WIDTH, panels_pay_off
from .safetensors_file import release_mapped_pages
from .weights import FFN, Linear, PositionTables


def prepare(tree, config, ops, dtype, weights_file: Path | None = None):
    """The tree as the forward runs it fastest with `ops`: re-laid out (panels only for the numba kernels
    on a CPU where they pay off), DeBERTa's position tables computed. Idempotent. With the file the
    weights came from, the re-laid matrices are a memory-mapped cache file every process shares."""
    tree = relayout_for_speed(tree, weights_file, panels=ops.name == "numba" and panels_pay_off(dtype))
    if config.disentangled_attention and config.relative_attention:  # DeBERTa: input-independent tables
        tree = with_position_tables(tree, config, ops)
    return tree


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
    - Every linear layer's matrix (qkv, out_lin, lin1, lin2, the embedding projection, qa_outputs) is stored
      transposed in memory: still the [out, in] array `linear` reads (same shape, same values, `x @ W.T + b`
      unchanged), but column-major, so `W.T` is a C-contiguous [in, out] matrix and `x @ W.T` is BLAS's plain
      no-transpose case. OpenBLAS runs that case faster than the transposed-B one on the stored layout, most
      at few rows (docs/performance.md, "Column-major weights").
    - With `panels` (float32 on a CPU with AVX-512 or AVX2 + FMA: ops.gemm.panels_pay_off), every linear whose output
      width is a multiple of ops.gemm.PANEL_WIDTH (32) is stored instead as panels, an [out / 32, in, 32]
      array: panel p holds W.T's columns 32p..32p+31, row k of the panel their 32 weights for input k, so
      ops.gemm.matmul_panels_numba streams each panel once per product and never repacks it (ops.gemm.matmul_t
      reads either layout). The q, k, v views are then panel ranges of qkv's panels.

    With `weights_file` (the safetensors file the tree was read from) the re-laid matrices are read-only
    views of a memory-mapped cache file that every process loading the same weights shares
    (relaid_cache.py: keyed by the file's sha256, written once, atomically, checked at every load);
    without it, or when the cache folder cannot be used, they are this process's private copies. Either way
    the memory-mapped originals' pages are released once copied, so RSS counts the layer weights once. Embeddings stay
    mapped (a forward reads only the rows it uses). Idempotent: an already re-laid-out tree comes back
    as is."""
    if weights_file is not None:
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


def _column_major_copy(linears):  # stacked along out: the [in, sum(out)] C-contiguous matrix, a private copy
    weight_t = np.empty(
        (linears[0].weight.shape[1], sum(lin.weight.shape[0] for lin in linears)), linears[0].weight.dtype
    )
    col = 0
    for lin in linears:
        weight_t[:, col : col + lin.weight.shape[0]] = lin.weight.T
        release_mapped_pages(lin.weight)
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
        views = (Linear(qkv.weight[i * step : (i + 1) * step], qkv.bias[i * D : (i + 1) * D]) for i in range(3))
        return FusedAttention(*views, relaid(a.out_lin), qkv)

    done = {}  # id(block) -> re-laid block: a block ALBERT's layers share is re-laid (and stored) once
    for layer in encoder.transformer.layer:
        if id(layer) not in done:
            done[id(layer)] = layer._replace(
                attention=fuse(layer.attention), ffn=FFN(relaid(layer.ffn.lin1), relaid(layer.ffn.lin2))
            )
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


def with_position_tables(tree, config, ops):
    """The tree with every layer's projections of the relative-position table stored on the layer
    (TransformerBlock.pos_tables). They depend on the weights only, so they are computed once here rather
    than in every forward as transformers does: two [2A, D] x [D, D] products per layer (docs/performance.md
    has their share of a forward). The forward reads them where it would compute them: the same values."""
    encoder = tree.encoder if hasattr(tree, "qa_outputs") else tree
    rel = deberta.shared_positions(1, encoder.transformer, config, encoder.embeddings.word_embeddings.weight.dtype, ops)
    layers = tuple(
        layer._replace(pos_tables=PositionTables(*deberta.projected_table(layer._replace(pos_tables=None), rel)))
        for layer in encoder.transformer.layer
    )
    encoder = encoder._replace(transformer=encoder.transformer._replace(layer=layers))
    return tree._replace(encoder=encoder) if hasattr(tree, "qa_outputs") else encoder
