"""The hot loops of the forward pass: numba kernels, each beside a plain-numpy reference.

Every operation exists twice with the same signature: `<name>_numpy` (the reference, a direct
transcription of transformers 4.57.6 `modeling_distilbert.py`) and `<name>_numba` (the kernel).
`select()` returns one set of them as `Ops`; `NPBERT_KERNELS=numpy` or `select("numpy")` picks the
references. tests/test_kernels.py asserts that each pair agrees before anything is timed.

Matrix products stay in numpy (OpenBLAS): calling BLAS from numba needs SciPy, and OpenBLAS is faster
than loops we could write. The kernels do what surrounds the products: softmax, GELU, LayerNorm.

Kernels are compiled on first use and cached on disk (`cache=True`, in npbert's cache folder:
cache_root.py), so later processes start fast. They
are serial and release the GIL; `_split_over_threads` spreads them over the cores.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, NamedTuple

from . import threads  # noqa: I001  before numpy: it sets OpenBLAS's thread timeout (threads.py says why)

from . import cache_root  # noqa: I001  before the first kernel is decorated: numba picks its cache folder then

cache_root.use_for_numba()

import numba
import numba.extending
import numpy as np
from numba.core import cgutils

from . import deberta, workers

# Below these sizes a kernel runs on the calling thread alone: handing half the work to another thread
# costs ~0.1 ms here (far more on a busy machine), more than the half it takes over. Measured on 2 cores:
# LayerNorm of 384 x 768 took 0.18 ms alone and 0.28 ms split (768 rows: 0.42 vs 0.34 ms); GELU of
# 384 x 3072 1.26 vs 0.81 ms. Attention splits from far smaller sizes: each head also does two products.
_ATTENTION_SERIAL_BELOW = 1 << 16  # B * H * S * S
_GELU_SERIAL_BELOW = 1 << 18  # N * F
_LAYERNORM_SERIAL_BELOW = 1 << 19  # N * D


# The kernels' own threads (workers.py): as many as the model call gave OpenBLAS (threads.current()), each
# running a serial nogil kernel on its share of the rows (GELU, LayerNorm), of the panels (products) or of the
# heads (attention, with OpenBLAS set to one thread meanwhile, so a head's [S, S] products run whole on its
# thread and its scores stay in that core's cache: 4.7-5.0 ms a layer at S = 384 against 8.5 ms on one
# thread). Not numba's parallel pool: its OpenMP workers share libgomp with any PyTorch in the process, whose
# spin-waiting they then inherit (B=1 S=128 took 181 ms beside PyTorch on the OpenMP pool, 111 ms without
# it), and numba's other pools are not safe to call from several threads at once.


def _split_over_threads(work, tasks, worth_splitting, uses_blas=False):
    """Run work(chunk) over contiguous chunks of `tasks` (a list or range), one chunk per OpenBLAS thread
    the model call was given (threads.current()), the first on the calling thread; serially when not worth
    splitting or when OpenBLAS's thread count cannot be set (its threads would then compete with these).
    uses_blas: work calls numpy's BLAS, which is then held to one thread (each chunk's products run whole).
    Serially too while other model calls are running (threads sharing a model): the cores are theirs as well,
    and holding OpenBLAS to one thread would change the count under their products (threads.for_model_call)."""
    alone = threads.calls_running() <= 1
    n = min(threads.current(), len(tasks)) if threads.controllable() and worth_splitting and alone else 1
    if n == 1:
        return work(tasks)
    chunks = [tasks[i * len(tasks) // n:(i + 1) * len(tasks) // n] for i in range(n)]
    with threads.single_blas_thread() if uses_blas else contextlib.nullcontext():
        workers.run(work, chunks)


# Kernels may reorder float sums (vectorised reductions) and fuse multiply-adds; never the nnan/ninf
# flags: masked scores are finfo.min and -inf by design. numpy's error model: a float division by zero
# gives inf as in numpy instead of raising, which would put a branch in every loop and stop LLVM from
# vectorising it (GELU's x * p / q: 7.0 ms for a 384 x 3072 block with the branch, 1 ms without).
_JIT = dict(cache=True, nogil=True, error_model="numpy")
_FAST = {"reassoc", "contract"}


# --- matrix products over weights packed in panels --------------------------------------------------------
# x @ W.T for a linear layer whose [out, in] matrix weights.relayout_for_speed stored as panels: [out / 32, in,
# 32], panel p holding W.T's columns 32p..32p+31, each k's 32 values contiguous, so a product streams each
# panel once, in order, and never repacks it (OpenBLAS copies both operands into its blocked layout on every
# call: at 16 rows that is most of its time). x: [M, in] C-contiguous float32. Returns [M, out].
#
# The micro-kernel is written in LLVM's vector IR (numba's intrinsic API), since numba's loop vectoriser does
# not keep a register tile in registers (plain numba loops over the same panels ran 10x slower than OpenBLAS):
# an 8-row x 32-column tile of x @ W.T lives in 16 AVX-512 registers (2 per row) for a block of k; per k it
# loads the panel's 32 values once (2 vectors), broadcasts each row's x[i, k], and does 16 fused
# multiply-adds. On the AMD EPYC here (Zen 5, 2 cores) the forward's GEMMs ran 1.8-2.5x faster than numpy's
# OpenBLAS 0.3.31 (docs/performance.md). It needs AVX-512 to be fast (32 vector registers of 16 floats):
# weights.relayout_for_speed packs panels only where LLVM targets it (panels_pay_off).

PANEL_WIDTH = 32  # columns of W.T per panel: two 16-float vectors per tile row
_TILE_ROWS = 8  # rows of x per tile: 8 x 2 accumulators + 2 panel vectors + a broadcast = 19 of 32 registers
# k is walked in blocks: each block's sum starts in registers and is added to the tile in memory, so a
# float32 dot product of length 3072 is rounded as 12 sums of 256 (plus their 12-term sum), not one long
# running sum: max |error| against float64 1.2e-5 instead of 4.0e-5 for lin2 (OpenBLAS: 5e-6). A block of
# the panel (256 x 32 floats, 32 KB) also stays in L1 while every row tile uses it.
_K_BLOCK = 256


@numba.extending.intrinsic
def _panel_tile(typingctx, x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate):
    """out[i, j] (+)= sum over k < k_count of x[i, k] * panel[k, j], for i < 8, j < 32: x and out row-major
    from flat offsets (elements) and row strides, the panel from its flat offset. Emits LLVM vector IR."""
    sig = numba.types.void(x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate)

    def codegen(context, builder, signature, args):
        from llvmlite import ir

        x, x_at, x_row_stride, panels, panel_at, out, out_at, out_row_stride, k_count, accumulate = args
        data = lambda i, value: context.make_array(signature.args[i])(context, builder, value).data  # noqa: E731
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(f32, 16)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731
        x_ptr = builder.gep(data(0, x), [x_at])
        panel_ptr = builder.gep(data(3, panels), [panel_at])
        out_ptr = builder.gep(data(5, out), [out_at])
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32")
        zero, undef = ir.Constant(vec, [0.0] * 16), ir.Constant(vec, ir.Undefined)
        splat_lane0 = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        vectors = PANEL_WIDTH // 16

        x_rows = [builder.gep(x_ptr, [builder.mul(const(i), x_row_stride)]) for i in range(_TILE_ROWS)]  # hoisted
        entry, loop, done = builder.block, builder.append_basic_block("tile.k"), builder.append_basic_block("tile.out")
        builder.cbranch(builder.icmp_signed(">", k_count, const(0)), loop, done)
        builder.position_at_end(loop)  # one k: 2 panel loads, 8 broadcasts, 16 fused multiply-adds
        k = builder.phi(i64)
        acc = [[builder.phi(vec) for _ in range(vectors)] for _ in range(_TILE_ROWS)]
        row = builder.gep(panel_ptr, [builder.mul(k, const(PANEL_WIDTH))])
        w = [builder.load(builder.bitcast(builder.gep(row, [const(16 * j)]), vec.as_pointer()), align=4)
             for j in range(vectors)]
        summed = []
        for i in range(_TILE_ROWS):
            xi = builder.load(builder.gep(x_rows[i], [k]))
            xi = builder.shuffle_vector(builder.insert_element(undef, xi, ir.Constant(i32, 0)), undef, splat_lane0)
            summed.append([builder.call(fma, [xi, w[j], acc[i][j]]) for j in range(vectors)])
        k_next = builder.add(k, const(1))
        k.add_incoming(const(0), entry)
        k.add_incoming(k_next, loop)
        for i in range(_TILE_ROWS):
            for j in range(vectors):
                acc[i][j].add_incoming(zero, entry)
                acc[i][j].add_incoming(summed[i][j], loop)
        builder.cbranch(builder.icmp_signed("<", k_next, k_count), loop, done)

        builder.position_at_end(done)  # store the tile, or add it to what out holds
        final = [[builder.phi(vec) for _ in range(vectors)] for _ in range(_TILE_ROWS)]
        for i in range(_TILE_ROWS):
            for j in range(vectors):
                final[i][j].add_incoming(zero, entry)
                final[i][j].add_incoming(summed[i][j], loop)
        add = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
        for i in range(_TILE_ROWS):
            for j in range(vectors):
                at = builder.bitcast(builder.gep(out_ptr, [builder.add(builder.mul(const(i), out_row_stride),
                                                                        const(16 * j))]), vec.as_pointer())
                before = builder.select(add, builder.load(at, align=4), zero)
                builder.store(builder.fadd(before, final[i][j]), at, align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**_JIT)
def _matmul_panels_numba(x, panels, out, first, last):  # out[:, 32 first:32 last] = x @ W.T's panels first..last-1
    # x, panels, out: C-contiguous (the tile addresses them by flat offsets from their first element)
    M, K = x.shape
    N = out.shape[1]
    full = M - M % _TILE_ROWS
    # The last M % 8 rows go through a zero-padded 8-row copy and an 8 x 32 tile buffer. Loops, not
    # `padded[:r] = x[full:]`: numba took ~4.5 s to compile that slice copy (1.0 s for all of this).
    padded = np.zeros((_TILE_ROWS, K), np.float32)
    for i in range(M - full):
        for k in range(K):
            padded[i, k] = x[full + i, k]
    tile = np.empty(_TILE_ROWS * PANEL_WIDTH, np.float32)
    for p in range(first, last):
        for k0 in range(0, K, _K_BLOCK):
            k_count = min(_K_BLOCK, K - k0)
            at = p * K * PANEL_WIDTH + k0 * PANEL_WIDTH
            for i0 in range(0, full, _TILE_ROWS):
                _panel_tile(x, i0 * K + k0, K, panels, at, out, i0 * N + p * PANEL_WIDTH, N, k_count, k0 > 0)
            if full < M:
                _panel_tile(padded, k0, K, panels, at, tile, 0, PANEL_WIDTH, k_count, k0 > 0)
        if full < M:
            for i in range(M - full):
                for j in range(PANEL_WIDTH):
                    out[full + i, p * PANEL_WIDTH + j] = tile[i * PANEL_WIDTH + j]


# Below this many multiply-adds a product runs on the calling thread alone. Measured on 2 cores (Zen 5), six
# layers' GEMMs: at 1 row one thread took 8.7 ms and two 9.7 ms (the 170 MB of weights stream at ~20 GB/s
# either way); at 4 to 16 rows two threads took 0.65x to 1.39x of one's time from run to run (memory-bound,
# noisy); from 32 rows 0.64x to 0.73x. So one row stays serial (qkv at 1 row: 1.8M) and 4 rows split.
_MATMUL_SERIAL_BELOW = 1 << 22

GEMM_ENV = "NPBERT_GEMM"  # "panels" or "blas" (numpy's BLAS on column-major weights); unset: auto


def panels_pay_off(dtype) -> bool:
    """Whether weights.relayout_for_speed should store panels for the numba kernels: $NPBERT_GEMM=panels
    or blas decides; unset, float32 on a CPU where numba's LLVM targets AVX-512 (the tile needs its 32
    vector registers; on AVX2 its 16 accumulators would not fit in 16). float64 (audit mode) keeps BLAS."""
    choice = os.environ.get(GEMM_ENV, "").strip() or "auto"
    if choice not in ("auto", "panels", "blas"):
        raise ValueError(f"{GEMM_ENV} must be panels, blas or unset (auto), found {choice!r}")
    if choice == "blas" or np.dtype(dtype) != np.float32:
        return False
    return choice == "panels" or "+avx512f" in _llvm_cpu_features()


def _llvm_cpu_features() -> str:
    # What numba compiles for: $NUMBA_CPU_FEATURES when set, else the host's features as LLVM sees them.
    from numba.core import config

    if config.CPU_FEATURES:
        return config.CPU_FEATURES
    import llvmlite.binding

    return llvmlite.binding.get_host_cpu_features().flatten()


def matmul_panels_numpy(x, panels):  # [M, in] x [out/32, in, 32] -> [M, out]; the reference: x @ W.T
    n_panels, K, width = panels.shape
    return x @ panels.transpose(1, 0, 2).reshape(K, n_panels * width)


def matmul_panels_numba(x, panels):  # [M, in] x [out/32, in, 32] -> [M, out]
    n_panels, K, width = panels.shape
    if width != PANEL_WIDTH or x.dtype != np.float32 or panels.dtype != np.float32 or x.ndim != 2 or x.shape[1] != K:
        raise ValueError(f"matmul_panels: x {x.dtype}{list(x.shape)} and panels {panels.dtype}{list(panels.shape)} "
                         f"do not fit (float32, [M, in] and [out/{PANEL_WIDTH}, in, {PANEL_WIDTH}])")
    x, panels = np.ascontiguousarray(x), np.ascontiguousarray(panels)  # no copies for the re-laid weights
    out = np.empty((x.shape[0], n_panels * width), np.float32)
    _split_over_threads(lambda chunk: _matmul_panels_numba(x, panels, out, chunk.start, chunk.stop), range(n_panels),
                        x.shape[0] * K * n_panels * width >= _MATMUL_SERIAL_BELOW)
    return out


# --- attention -----------------------------------------------------------------------------------------
# q, k, v: [B, S, D] with head h in columns h*Dh:(h+1)*Dh (the layout q_lin produces; views of the fused
# qkv output are fine, no copies). keep: [B, S] bool, False for padded keys.
# Returns context [B, S, D] and, if asked, probs [B, H, S, S].


def _heads(x, n_heads):  # [B, S, D] -> [B, H, S, Dh], a view
    B, S, D = x.shape
    return x.reshape(B, S, n_heads, D // n_heads).transpose(0, 2, 1, 3)


def attention_numpy(q, k, v, keep, n_heads, return_probs=False):
    B, S, D = q.shape
    Dh = D // n_heads
    # transformers 4.57.6 scales q before the product (5.x scales the scores after: same up to rounding).
    qh = _heads(q, n_heads) / q.dtype.type(math.sqrt(Dh))
    scores = qh @ _heads(k, n_heads).transpose(0, 1, 3, 2)  # [B, H, S, S]
    # Masked keys get the dtype's most negative finite value, not -inf: a row whose keys are all masked
    # then softmaxes to a uniform row instead of NaN, exactly as transformers does.
    scores = np.where(keep[:, None, None, :], scores, np.finfo(q.dtype).min)
    scores = scores - scores.max(axis=-1, keepdims=True)  # stable softmax
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    context = (probs @ _heads(v, n_heads)).transpose(0, 2, 1, 3).reshape(B, S, D)
    return context, (probs if return_probs else None)


@numba.njit(**_JIT, fastmath=_FAST)
def _scale_mask_shift_numba(scores, keep, scale):  # in place on one head's [S, S]; keep: [S]
    # Scaling the scores instead of q is bit-identical when scale is a power of two (Dh = 64: 1/8),
    # and otherwise differs at rounding level only (what transformers 5.x does).
    S = scores.shape[0]
    n_kept = 0
    for j in range(S):
        n_kept += keep[j]
    for i in range(S):
        row = scores[i]
        if n_kept == 0:  # every key masked: finfo.min everywhere, exp(0) = 1 -> uniform, as the reference
            row[:] = 0.0
            continue
        m = -np.inf
        for j in range(S):
            if keep[j]:
                m = max(m, row[j] * scale)
        for j in range(S):
            # exp(finfo.min - max) underflows to exactly 0 in the reference; -inf gives the same 0.
            row[j] = row[j] * scale - m if keep[j] else -np.inf
    return scores


@numba.njit(**_JIT, fastmath=_FAST)
def _normalise_rows_numba(e):  # in place on [N, S]: each row divided by its sum
    for n in range(e.shape[0]):
        total = e.dtype.type(0.0)
        for j in range(e.shape[1]):
            total += e[n, j]
        inv = 1.0 / total
        for j in range(e.shape[1]):
            e[n, j] *= inv
    return e


def attention_numba(q, k, v, keep, n_heads, return_probs=False):
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    scale = q.dtype.type(1.0 / math.sqrt(Dh))
    context = np.empty((B, S, D), dtype=q.dtype)
    probs = np.empty((B, n_heads, S, S), dtype=q.dtype) if return_probs else None

    def heads(tasks):  # one thread's share of the (row, head) pairs, each start to finish
        scratch = np.empty((S, S), dtype=q.dtype) if probs is None else None
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p = scratch if probs is None else probs[b, h]  # [S, S]: 590 kB at S = 384, stays in L2
            np.matmul(q[b, :, cols], k[b, :, cols].T, out=p)  # strided views of the fused qkv: no copies
            _scale_mask_shift_numba(p, keep[b], scale)
            # numpy's exp is SIMD and exact to ~1 ulp; numba's math.exp is a scalar libm call per element.
            np.exp(p, out=p)
            _normalise_rows_numba(p)
            np.matmul(p, v[b, :, cols], out=context[b, :, cols])  # straight into head h's columns

    _split_over_threads(heads, [(b, h) for b in range(B) for h in range(n_heads)],
                        B * n_heads * S * S >= _ATTENTION_SERIAL_BELOW, uses_blas=True)
    return context, probs


# --- DeBERTa's disentangled attention ------------------------------------------------------------------
# q, k, v: [B, S, D] as above; pos_k, pos_q: [2A, D], the relative-position table projected like the keys
# (for c2p) and like the queries (for p2c), None for a term pos_att_type leaves out; c2p_pos, p2c_pos:
# [S, S] table rows (deberta.c2p_index, p2c_index); keep: [B, S]; scale: deberta.attention_scale.
# Scores are c2c + c2p + p2c (deberta.py explains the terms), masked by the outer product of keep with
# itself. Returns context [B, S, D] and, if asked, probs [B, H, S, S].


def disentangled_attention_numpy(q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, n_heads, scale, return_probs=False):
    B, S, D = q.shape
    heads = lambda t: None if t is None else deberta.head_rows(t, n_heads)  # noqa: E731  [H, 2A, Dh]
    terms = deberta.score_terms(_heads(q, n_heads), _heads(k, n_heads), heads(pos_k), heads(pos_q), c2p_pos,
                                p2c_pos, scale)
    probs = deberta.masked_softmax(deberta.combined_scores(*terms), keep)  # [B, H, S, S]
    context = (probs @ _heads(v, n_heads)).transpose(0, 2, 1, 3).reshape(B, S, D)
    return context, (probs if return_probs else None)


_P2C_TILE = 32


@numba.njit(**_JIT, fastmath=_FAST)
def _gather_p2c_numba(p2c_full, p2c_pos_t, scale, out):  # [S, 2A], [S, S], scalar -> out [S, S]
    # out[i, j] = p2c_full[j, p2c_pos[j, i]] / scale: key j's product at the row of query i. Query i reads
    # a different key row for every j; walked in 32 x 32 tiles, each key row is fetched once per tile
    # instead of once per query (1.6 ms a head at S = 384 untiled, mostly cache misses).
    S = out.shape[0]
    T = _P2C_TILE
    for i0 in range(0, S, T):
        for j0 in range(0, S, T):
            for j in range(j0, min(j0 + T, S)):
                for i in range(i0, min(i0 + T, S)):
                    out[i, j] = p2c_full[j, p2c_pos_t[i, j]] / scale
    return out


@numba.njit(**_JIT, fastmath=_FAST)
def _disentangled_mask_shift_numba(scores, c2p_full, p2c_term, c2p_pos, keep, scale, use_c2p, use_p2c):
    # In place on one head's c2c [S, S] (already scaled): add the gathered c2p ([S, 2A] full product, row
    # c2p_pos[i, j], divided by the scale) and the p2c term (_gather_p2c_numba), in the reference's order
    # c2c + (c2p + p2c), mask by keep[i] & keep[j], subtract each row's maximum. Rows of padded queries
    # are masked everywhere: all zeros here, exp -> uniform, as finfo.min everywhere gives in the reference.
    S = scores.shape[0]
    n_kept = 0
    for j in range(S):
        n_kept += keep[j]
    for i in range(S):
        row = scores[i]
        if n_kept == 0 or not keep[i]:
            row[:] = 0.0
            continue
        m = -np.inf
        for j in range(S):
            if keep[j]:
                position = scores.dtype.type(0.0)
                if use_c2p:
                    position = c2p_full[i, c2p_pos[i, j]] / scale
                if use_p2c:
                    position = position + p2c_term[i, j]
                row[j] = row[j] + position
                m = max(m, row[j])
        for j in range(S):
            row[j] = row[j] - m if keep[j] else -np.inf
    return scores


def disentangled_attention_numba(q, k, v, pos_k, pos_q, c2p_pos, p2c_pos, keep, n_heads, scale, return_probs=False):
    B, S, D = q.shape
    Dh = D // n_heads
    keep = np.ascontiguousarray(keep, dtype=np.bool_)
    no_index = np.zeros((1, 1), dtype=np.int64)  # stands for an absent term's [S, S] rows (no relative_attention)
    c2p_pos = no_index if c2p_pos is None else np.ascontiguousarray(c2p_pos, dtype=np.int64)
    p2c_pos_t = no_index if p2c_pos is None else np.ascontiguousarray(np.asarray(p2c_pos, dtype=np.int64).T)
    scale = q.dtype.type(scale)
    context = np.empty((B, S, D), dtype=q.dtype)
    probs = np.empty((B, n_heads, S, S), dtype=q.dtype) if return_probs else None
    unused = np.zeros((1, 1), dtype=q.dtype)  # stands for an absent term's [S, 2A] product

    def heads(tasks):  # one thread's share of the (row, head) pairs, as in attention_numba
        scratch = np.empty((S, S), dtype=q.dtype) if probs is None else None
        c2p_full = np.empty((S, pos_k.shape[0]), dtype=q.dtype) if pos_k is not None else unused
        p2c_full = np.empty((S, pos_q.shape[0]), dtype=q.dtype) if pos_q is not None else unused
        p2c_term = np.empty((S, S), dtype=q.dtype) if pos_q is not None else unused
        for b, h in tasks:
            cols = slice(h * Dh, (h + 1) * Dh)
            p = scratch if probs is None else probs[b, h]  # [S, S]
            np.matmul(q[b, :, cols], (k[b, :, cols] / scale).T, out=p)  # c2c: k scaled first, as the reference
            if pos_k is not None:
                np.matmul(q[b, :, cols], pos_k[:, cols].T, out=c2p_full)  # [S, 2A]: every query against every row
            if pos_q is not None:
                np.matmul(k[b, :, cols], pos_q[:, cols].T, out=p2c_full)  # [S, 2A]: every key against every row
                _gather_p2c_numba(p2c_full, p2c_pos_t, scale, p2c_term)
            _disentangled_mask_shift_numba(p, c2p_full, p2c_term, c2p_pos, keep[b], scale, pos_k is not None,
                                           pos_q is not None)
            np.exp(p, out=p)
            _normalise_rows_numba(p)
            np.matmul(p, v[b, :, cols], out=context[b, :, cols])

    _split_over_threads(heads, [(b, h) for b in range(B) for h in range(n_heads)],
                        B * n_heads * S * S >= _ATTENTION_SERIAL_BELOW, uses_blas=True)
    return context, probs


# --- bias + GELU ---------------------------------------------------------------------------------------
# h: [N, F] (lin1's output before its bias), bias: [F]. Returns gelu(h + bias).
# GELU is the exact erf form 0.5 x (1 + erf(x / sqrt 2)), which DistilBERT's "gelu" means; the tanh
# approximation differs by up to ~1e-3 and would break parity.

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf; this is libm's, computed in float64


def bias_gelu_numpy(h, bias):
    x = h + bias
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype))).astype(h.dtype)


# erf(x) = x P(x^2) / Q(x^2) on [-4, 4], clamped outside (|erf(4)| = 1 - 1.5e-8): the rational form
# Eigen and XLA use for float32. Evaluated in float64 it is within 6.5e-8 of math.erf everywhere
# (tests/test_kernels.py checks the bound against float64 math.erf on a dense grid), below float32's
# resolution near 1 (6e-8); evaluated in float32 it would lose ~7 ulp. Unlike math.erf (a libm call per
# element) it vectorises: the GELU of a 384 x 3072 block drops from ~6 ms to ~1 ms.
_ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
          -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
_ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
          -1.42647390514189e-02)


@numba.njit(**_JIT, fastmath=_FAST, inline="always")
def erf_rational(x):  # float64 -> float64, |error| < 6.5e-8, |result| <= 1
    x = min(max(x, -4.0), 4.0)
    x2 = x * x
    p0, p1, p2, p3, p4, p5, p6 = _ERF_P
    q0, q1, q2, q3, q4 = _ERF_Q
    p = (((((p0 * x2 + p1) * x2 + p2) * x2 + p3) * x2 + p4) * x2 + p5) * x2 + p6  # Horner
    q = (((q0 * x2 + q1) * x2 + q2) * x2 + q3) * x2 + q4
    # The rational form overshoots 1 by 4.9e-8 near the clamp: clip, or GELU's far negative tail
    # 0.5 x (1 + erf) would grow like -2.5e-8 x instead of being 0 (as it is in the float32 reference).
    return min(max(x * p / q, -1.0), 1.0)


@numba.njit(**_JIT, fastmath=_FAST)
def _bias_gelu_f32_numba(h, bias):  # in place
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(h[n, f] + bias[f])  # the sum rounds to float32 first, as in the reference
            h[n, f] = 0.5 * x * (1.0 + erf_rational(x * 0.7071067811865476))
    return h


@numba.njit(**_JIT)
def _bias_gelu_f64_numba(h, bias):  # in place; float64 (audit mode) keeps libm's erf: exact, not fast
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = h[n, f] + bias[f]
            h[n, f] = 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    return h


def bias_gelu_numba(h, bias):
    """Overwrites `h` (lin1's scratch output) with the result: no [N, F] temporary."""
    kernel = _bias_gelu_f64_numba if h.dtype == np.float64 else _bias_gelu_f32_numba
    _split_over_threads(lambda rows: kernel(h[rows.start:rows.stop], bias), range(h.shape[0]), h.size >= _GELU_SERIAL_BELOW)
    return h


# --- bias + the other activations a config may name (families.ACTIVATIONS) ---------------------------
# gelu_tanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), transformers' NewGELUActivation
# ("gelu_new", ALBERT's) and GELUTanh ("gelu_pytorch_tanh"); it is right only where the config names it.

_TANH_SCALE = math.sqrt(2.0 / math.pi)


def bias_gelu_tanh_numpy(h, bias):
    x = h + bias
    return (0.5 * x * (1.0 + np.tanh(_TANH_SCALE * (x + 0.044715 * x ** 3)))).astype(h.dtype)


@numba.njit(**_JIT, fastmath=_FAST)
def _bias_gelu_tanh_numba(h, bias):  # in place, float64 inside (float32: the sum rounds first, as the reference)
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            x = np.float64(h[n, f] + bias[f])
            h[n, f] = 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    return h


def bias_gelu_tanh_numba(h, bias):
    """Overwrites `h` with the result, like bias_gelu_numba."""
    _split_over_threads(lambda rows: _bias_gelu_tanh_numba(h[rows.start:rows.stop], bias), range(h.shape[0]),
                        h.size >= _GELU_SERIAL_BELOW)
    return h


def bias_relu_numpy(h, bias):
    return np.maximum(h + bias, 0).astype(h.dtype)


@numba.njit(**_JIT, fastmath=_FAST)
def _bias_relu_numba(h, bias):  # in place
    N, F = h.shape
    for n in range(N):
        for f in range(F):
            h[n, f] = max(h[n, f] + bias[f], 0.0)
    return h


def bias_relu_numba(h, bias):
    """Overwrites `h` with the result, like bias_gelu_numba."""
    _split_over_threads(lambda rows: _bias_relu_numba(h[rows.start:rows.stop], bias), range(h.shape[0]),
                        h.size >= _GELU_SERIAL_BELOW)
    return h


# --- residual + LayerNorm ------------------------------------------------------------------------------
# x, residual: [N, D]; weight, bias: [D]. Returns LayerNorm(x + residual): the post-LN order of every
# DistilBERT block (normalise after the residual add, not before the sublayer as in pre-LN models).
# eps is 1e-12 in DistilBERT, far below float32 resolution: it matters only for constant rows.


def residual_layernorm_numpy(x, residual, weight, bias, eps):
    y = x + residual
    mean = y.mean(axis=-1, keepdims=True)
    var = ((y - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as torch.nn.LayerNorm
    return ((y - mean) / np.sqrt(var + y.dtype.type(eps)) * weight + bias).astype(x.dtype)


@numba.njit(**_JIT, fastmath=_FAST)
def _residual_layernorm_numba(x, residual, weight, bias, eps, out):
    N, D = x.shape
    for n in range(N):
        # Two passes, accumulated in float64 (one row is only D values): the one-pass E[y^2] - E[y]^2
        # cancels catastrophically when the mean is large against the spread.
        mean = 0.0
        for d in range(D):
            mean += np.float64(x[n, d] + residual[n, d])  # the sum rounds to the dtype first, as the reference
        mean /= D
        var = 0.0
        for d in range(D):
            var += (np.float64(x[n, d] + residual[n, d]) - mean) ** 2
        inv = 1.0 / math.sqrt(var / D + eps)
        for d in range(D):
            out[n, d] = (np.float64(x[n, d] + residual[n, d]) - mean) * inv * weight[d] + bias[d]
    return out


def residual_layernorm_numba(x, residual, weight, bias, eps):
    out = np.empty_like(x)
    _split_over_threads(lambda rows: _residual_layernorm_numba(x[rows.start:rows.stop], residual[rows.start:rows.stop],
                                                               weight, bias, eps, out[rows.start:rows.stop]),
                        range(x.shape[0]), x.size >= _LAYERNORM_SERIAL_BELOW)
    return out


# --- choosing a set ------------------------------------------------------------------------------------


class Ops(NamedTuple):
    name: str
    attention: Callable
    bias_gelu: Callable
    residual_layernorm: Callable
    bias_gelu_tanh: Callable
    bias_relu: Callable
    disentangled_attention: Callable  # DeBERTa's

    def bias_activation(self, name: str) -> Callable:
        """The bias + activation kernel for a families.ACTIVATIONS value ("gelu", "gelu_tanh", "relu")."""
        return getattr(self, "bias_" + name)


NUMPY = Ops("numpy", attention_numpy, bias_gelu_numpy, residual_layernorm_numpy, bias_gelu_tanh_numpy,
            bias_relu_numpy, disentangled_attention_numpy)
NUMBA = Ops("numba", attention_numba, bias_gelu_numba, residual_layernorm_numba, bias_gelu_tanh_numba,
            bias_relu_numba, disentangled_attention_numba)
CHOICES = {"numpy": NUMPY, "numba": NUMBA}


def select(name: str | None = None) -> Ops:
    """The kernels to run: `name`, else $NPBERT_KERNELS, else numba."""
    name = name or os.environ.get("NPBERT_KERNELS") or "numba"
    if name not in CHOICES:
        raise ValueError(f"unknown kernels {name!r}: choose one of {', '.join(CHOICES)} (NPBERT_KERNELS)")
    return CHOICES[name]
