"""Products with a linear layer's weights: `linear(x) = x @ W.T + b`, and the panel GEMM behind it.

`linear` and `matmul_t` read a weight in any layout the loader or layout.py leaves: the checkpoint's
[out, in] matrix (weights.py), the same matrix stored column-major (`W.T` C-contiguous, BLAS's plain
case), or, on CPUs with AVX-512 or AVX2 + FMA, [out / 32, in, 32] panels that `matmul_panels_numba` streams without
repacking. The values are the same in every layout: x @ W.T.
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numba
import numba.extending
import numpy as np
from numba.core import cgutils

from .numba import JIT
from .parallel import split_over_threads


def matmul_t(x, weight):  # [..., in] -> [..., out]: x @ W.T, for W [out, in] in any of the layouts above
    if weight.ndim == 3:  # panels (layout.py)
        return matmul_panels_numba(x.reshape(-1, x.shape[-1]), weight).reshape(*x.shape[:-1], -1)
    return x @ weight.T


def linear(x, lin):  # [..., in] -> [..., out]
    # One [B*S, in] GEMM, not B stacked [S, in] ones: numpy runs a 3-D product as one GEMM per batch row,
    # slower at B > 1 (docs/performance.md).
    y = matmul_t(x.reshape(-1, x.shape[-1]), lin.weight)
    y += lin.bias  # in place: no second [..., out] temporary
    return y.reshape(*x.shape[:-1], -1)


def linear_backward(dy, x, lin, weights=True):  # [..., out], [..., in] -> [..., in], {"weight", "bias"} | None
    # The backward of linear for the loader's plain [out, in] matrix (model.checkpoint_weights): y = x W^T + b
    # gives dx = dy W, dW = dy^T x (summed over every row), db = the sum of dy's rows. weights=False skips
    # dW and db (an attribution needs only dx): half the work.
    rows_out, rows_in = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    dx = (rows_out @ lin.weight).reshape(*x.shape)
    if not weights:
        return dx, None
    return dx, {"weight": rows_out.T @ rows_in, "bias": rows_out.sum(axis=0)}


# --- matrix products over weights packed in panels --------------------------------------------------------
# x @ W.T for a linear layer whose [out, in] matrix layout.relayout_for_speed stored as panels: [out / 32, in,
# 32], panel p holding W.T's columns 32p..32p+31, each k's 32 values contiguous, so a product streams each
# panel once, in order, and never repacks it (OpenBLAS copies both operands into its blocked layout on every
# call: at 16 rows that is most of its time). x: [M, in] C-contiguous float32. Returns [M, out].
#
# The micro-kernel is written in LLVM's vector IR (numba's intrinsic API), since numba's loop vectoriser does
# not keep a register tile in registers (plain numba loops over the same panels ran 10x slower than OpenBLAS):
# a register tile of x @ W.T (AVX-512: 8 rows x 32 columns in 16 zmm registers; AVX2: 6 rows x 16 columns in
# 12 ymm registers, half a panel per pass) lives in registers for a block of k; per k it loads the panel row's
# vectors once, broadcasts each row's x[i, k], and does one fused multiply-add per accumulator
# (docs/performance.md compares them with OpenBLAS and each other). gemm_path picks the tile from the CPU's
# features (LLVM's: what numba compiles for), or $NPBERT_GEMM; without AVX2 + FMA layout.py keeps BLAS.

PANEL_WIDTH = 32  # columns of W.T per panel: two 16-float vectors (AVX-512) or four 8-float ones (AVX2) per tile row
# k is walked in blocks: each block's sum starts in registers and is added to the tile in memory, so a
# float32 dot product of length 3072 is rounded as 12 sums of 256 (plus their 12-term sum), not one long
# running sum: max |error| against float64 1.2e-5 instead of 4.0e-5 for lin2 (OpenBLAS: 5e-6). A block of
# the panel (256 x 32 floats, 32 KB) also stays in L1 while every row tile uses it.
_K_BLOCK = 256
_LINE_FLOATS = 16  # floats per 64-byte cache line


class PanelTile(NamedTuple):
    """One register tile of the panel GEMM: `rows` rows of x by `columns` columns of a panel (all 32, or
    half of them per pass), held in rows x columns / lanes vector accumulators of `lanes` floats."""

    name: str  # the NPBERT_GEMM value that forces it
    lanes: int  # floats per vector register: 16 (zmm, AVX-512) or 8 (ymm, AVX2)
    rows: int
    columns: int  # PANEL_WIDTH, or PANEL_WIDTH // 2: the tile covers half a panel per pass


# AVX-512 (32 zmm registers): 8 rows x 2 vectors = 16 accumulators + 2 panel vectors + a broadcast = 19.
# AVX2 (16 ymm registers): a whole-panel row is 4 vectors, so 4 rows would need all 16 for accumulators
# alone; 6 rows x half a panel (2 vectors) = 12 accumulators + 2 panel vectors + a broadcast = 15, the
# shape of the classic Haswell SGEMM kernel (BLIS's 6 x 16). docs/performance.md compares it with 3 x 32.
AVX512_TILE = PanelTile("panels-avx512", 16, 8, PANEL_WIDTH)
AVX2_TILE = PanelTile("panels-avx2", 8, 6, PANEL_WIDTH // 2)
TILES = (AVX512_TILE, AVX2_TILE)


def _tile_intrinsic(tile: PanelTile):
    """The micro-kernel for `tile` as a numba intrinsic: out[i, j] (+)= sum over k < k_count of x[i, k] *
    panel[k, j], for i < tile.rows, j < tile.columns; x and out row-major from flat offsets (elements) and
    row strides, the panel (rows PANEL_WIDTH apart) from its flat offset. Emits LLVM vector IR."""
    rows, lanes, vectors = tile.rows, tile.lanes, tile.columns // tile.lanes

    @numba.extending.intrinsic
    def panel_tile(
        typingctx, x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate
    ):
        sig = numba.types.void(
            x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate
        )

        def codegen(context, builder, signature, args):
            from llvmlite import ir

            x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate = args
            data = lambda i, value: context.make_array(signature.args[i])(context, builder, value).data  # noqa: E731
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(f32, lanes)
            const = lambda v: ir.Constant(i64, v)  # noqa: E731
            x_ptr = builder.gep(data(0, x), [x_at])
            panel_ptr = builder.gep(data(3, panels), [panel_at])
            out_ptr = builder.gep(data(5, out), [out_at])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), f"llvm.fma.v{lanes}f32"
            )
            i8p = ir.IntType(8).as_pointer()
            prefetch = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            zero, undef = ir.Constant(vec, [0.0] * lanes), ir.Constant(vec, ir.Undefined)
            splat_lane0 = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)

            x_rows = [builder.gep(x_ptr, [builder.mul(const(i), x_row_stride)]) for i in range(rows)]  # hoisted
            entry = builder.block
            loop, done = builder.append_basic_block("tile.k"), builder.append_basic_block("tile.out")
            builder.cbranch(builder.icmp_signed(">", k_count, const(0)), loop, done)
            builder.position_at_end(loop)  # one k: the panel row's vectors loaded once, a broadcast per row, FMAs
            k = builder.phi(i64)
            acc = [[builder.phi(vec) for _ in range(vectors)] for _ in range(rows)]
            row = builder.gep(panel_ptr, [builder.mul(k, const(PANEL_WIDTH))])
            w = [
                builder.load(builder.bitcast(builder.gep(row, [const(lanes * j)]), vec.as_pointer()), align=4)
                for j in range(vectors)
            ]
            # The same columns one k-block further on (the next block, or the next panel's first) into L2
            # while this block is computed: the row tiles after the first read this block from the caches,
            # and without the prefetch memory would sit idle meanwhile (docs/performance.md, "Short inputs").
            for line in range(0, tile.columns, _LINE_FLOATS):
                ahead = builder.gep(row, [const(_K_BLOCK * PANEL_WIDTH + line)])
                builder.call(
                    prefetch,
                    [builder.bitcast(ahead, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)],
                )
            summed = []
            for i in range(rows):
                xi = builder.load(builder.gep(x_rows[i], [k]))
                xi = builder.shuffle_vector(builder.insert_element(undef, xi, ir.Constant(i32, 0)), undef, splat_lane0)
                summed.append([builder.call(fma, [xi, w[j], acc[i][j]]) for j in range(vectors)])
            k_next = builder.add(k, const(1))
            k.add_incoming(const(0), entry)
            k.add_incoming(k_next, loop)
            for i in range(rows):
                for j in range(vectors):
                    acc[i][j].add_incoming(zero, entry)
                    acc[i][j].add_incoming(summed[i][j], loop)
            builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

            builder.position_at_end(done)  # store the tile, or add it to what out holds
            final = [[builder.phi(vec) for _ in range(vectors)] for _ in range(rows)]
            for i in range(rows):
                for j in range(vectors):
                    final[i][j].add_incoming(zero, entry)
                    final[i][j].add_incoming(summed[i][j], loop)
            add = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
            for i in range(rows):
                for j in range(vectors):
                    at = builder.bitcast(
                        builder.gep(out_ptr, [builder.add(builder.mul(const(i), out_row_stride), const(lanes * j))]),
                        vec.as_pointer(),
                    )
                    before = builder.select(add, builder.load(at, align=4), zero)
                    builder.store(builder.fadd(before, final[i][j]), at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return panel_tile


_avx512_tile, _avx2_tile = _tile_intrinsic(AVX512_TILE), _tile_intrinsic(AVX2_TILE)
_MAX_ROWS = max(t.rows for t in TILES)


@numba.njit(**JIT)
def _matmul_panels_numba(x, panels, out, first, last, avx512):  # out[:, 32 first:32 last] = x @ W.T's panels
    # first..last-1, with the AVX-512 tile or the AVX2 one. x, panels, out: C-contiguous (the tile addresses
    # them by flat offsets from their first element). Both tiles are compiled in; the branch is once per tile call.
    rows = AVX512_TILE.rows if avx512 else AVX2_TILE.rows
    columns = AVX512_TILE.columns if avx512 else AVX2_TILE.columns
    M, K = x.shape
    N = out.shape[1]
    full = M - M % rows
    # The last M % rows rows go through a zero-padded copy and a tile buffer. Loops, not
    # `padded[:r] = x[full:]`: numba took ~4.5 s to compile that slice copy (1.0 s for all of this).
    padded = np.zeros((_MAX_ROWS, K), np.float32)
    for i in range(M - full):
        for k in range(K):
            padded[i, k] = x[full + i, k]
    tile = np.empty(_MAX_ROWS * PANEL_WIDTH, np.float32)
    for p in range(first, last):
        for k0 in range(0, K, _K_BLOCK):
            k_count = min(_K_BLOCK, K - k0)
            for c in range(0, PANEL_WIDTH, columns):  # AVX2: two passes over the block, one per half panel
                at = p * K * PANEL_WIDTH + k0 * PANEL_WIDTH + c
                for i0 in range(0, full, rows):
                    if avx512:
                        _avx512_tile(
                            x, i0 * K + k0, K, panels, at, out, i0 * N + p * PANEL_WIDTH + c, N, k_count, k0 > 0
                        )
                    else:
                        _avx2_tile(x, i0 * K + k0, K, panels, at, out, i0 * N + p * PANEL_WIDTH + c, N, k_count, k0 > 0)
                if full < M:
                    if avx512:
                        _avx512_tile(padded, k0, K, panels, at, tile, c, PANEL_WIDTH, k_count, k0 > 0)
                    else:
                        _avx2_tile(padded, k0, K, panels, at, tile, c, PANEL_WIDTH, k_count, k0 > 0)
        if full < M:
            for i in range(M - full):
                for j in range(PANEL_WIDTH):
                    out[full + i, p * PANEL_WIDTH + j] = tile[i * PANEL_WIDTH + j]


# Below this many multiply-adds a product runs on the calling thread alone: at one row the product is
# bound by streaming the weights from memory, and a second thread does not help (docs/performance.md,
# "Kernel thresholds"). One row stays serial (qkv at 1 row: 1.8M) and 4 rows split.
_MATMUL_SERIAL_BELOW = 1 << 22

GEMM_ENV = "NPBERT_GEMM"
GEMM_CHOICES = ("panels", "panels-avx512", "panels-avx2", "blas")  # unset: auto


def gemm_path(dtype=np.float32) -> str:
    """The product behind every linear: "panels-avx512" or "panels-avx2" (the panel GEMM with that tile) or
    "blas" (numpy's BLAS on column-major weights). $NPBERT_GEMM decides: a tile name forces that tile, "panels"
    the panels with this CPU's tile, "blas" BLAS; unset, from the CPU's features as numba's LLVM sees them:
    AVX-512F -> the 512-bit tile, AVX2 + FMA -> the 256-bit one, else BLAS. float64 (audit mode) keeps BLAS."""
    choice = os.environ.get(GEMM_ENV, "").strip() or "auto"
    if choice not in ("auto", *GEMM_CHOICES):
        raise ValueError(f"{GEMM_ENV} must be {', '.join(GEMM_CHOICES)} or unset (auto), found {choice!r}")
    if choice == "blas" or np.dtype(dtype) != np.float32:
        return "blas"
    if choice.startswith("panels-"):
        return choice
    features = set(_llvm_cpu_features().split(","))
    if "+avx512f" in features:
        return AVX512_TILE.name
    if choice == "panels" or {"+avx2", "+fma"} <= features:
        return AVX2_TILE.name
    return "blas"


def panels_pay_off(dtype) -> bool:
    """Whether layout.relayout_for_speed should store panels for the numba kernels (gemm_path)."""
    return gemm_path(dtype) != "blas"


@functools.cache
def _host_cpu_features() -> str:
    import llvmlite.binding

    return llvmlite.binding.get_host_cpu_features().flatten()


def _llvm_cpu_features() -> str:
    # What numba compiles for: $NUMBA_CPU_FEATURES when set, else the host's features as LLVM sees them.
    from numba.core import config

    return config.CPU_FEATURES or _host_cpu_features()


def matmul_panels_numba(x, panels, tile: PanelTile | None = None):  # [M, in] x [out/32, in, 32] -> [M, out]
    """x @ W.T over W's panels with `tile` (default: gemm_path's tile; AVX2's where it says blas)."""
    n_panels, K, width = panels.shape
    if width != PANEL_WIDTH or x.dtype != np.float32 or panels.dtype != np.float32 or x.ndim != 2 or x.shape[1] != K:
        raise ValueError(
            f"matmul_panels: x {x.dtype}{list(x.shape)} and panels {panels.dtype}{list(panels.shape)} "
            f"do not fit (float32, [M, in] and [out/{PANEL_WIDTH}, in, {PANEL_WIDTH}])"
        )
    avx512 = (tile or _path_tile(os.environ.get(GEMM_ENV, ""))) is AVX512_TILE
    x, panels = np.ascontiguousarray(x), np.ascontiguousarray(panels)  # no copies for the re-laid weights
    out = np.empty((x.shape[0], n_panels * width), np.float32)
    split_over_threads(
        lambda chunk: _matmul_panels_numba(x, panels, out, chunk.start, chunk.stop, avx512),
        range(n_panels),
        x.shape[0] * K * n_panels * width >= _MATMUL_SERIAL_BELOW,
    )
    return out


@functools.lru_cache(maxsize=8)
def _path_tile(setting: str) -> PanelTile:  # keyed by $NPBERT_GEMM: not re-read from LLVM at every product
    return AVX512_TILE if gemm_path(np.float32) == AVX512_TILE.name else AVX2_TILE


def qkv_projections(x, attention, tap=None):  # [B, S, D] -> q, k, v [B, S, D]
    """An attention's q, k and v: one GEMM on the fused [3D, D] matrix when layout.py made one (the
    three are then views of its output, no copies), else three (the loader's plain tree)."""
    if getattr(attention, "qkv", None) is not None:
        D = x.shape[-1]
        qkv = linear(x, attention.qkv)  # [B, S, 3D]
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    else:
        q, k, v = linear(x, attention.q_lin), linear(x, attention.k_lin), linear(x, attention.v_lin)
    if tap is not None:
        tap["q"], tap["k"], tap["v"] = q, k, v
    return q, k, v
