"""Few-row GEMMs of one DistilBERT layer (16 rows, the B=1 S=16 forward): the whole product (OpenBLAS's
packed path) against column blocks small enough for OpenBLAS's small-matrix kernel (M*N*K <= 1e6 on
SkylakeX kernels), serially and split over two Python threads with OpenBLAS on one thread. Interleaved
(the variant order rotates), each timed call after an untimed one, medians; six layers' distinct weights,
so the weights stream from memory as in a forward. docs/performance.md ("Short inputs") has the figures.

    python tools/bench_small_gemm.py [--rows 16] [--repeats 15]

Which OpenBLAS path a product takes was checked with gdb breakpoints (counting hits, never stopping) on
`sgemm_direct_performant_SKYLAKEX`, `sgemm_direct_SKYLAKEX`, `sgemm_small_matrix_permit_SKYLAKEX` and
`sgemm_small_kernel_b0_nn_SKYLAKEX` in numpy's bundled OpenBLAS.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import time

import numpy as np
import threadpoolctl

SHAPES = {"qkv": (768, 2304), "out_lin": (768, 768), "lin1": (768, 3072), "lin2": (3072, 768)}  # [in, out]
SMALL_KERNEL_MNK = 1e6  # sgemm_small_matrix_permit (SkylakeX kernels): M*N*K <= 100^3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    openblas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    rng = np.random.default_rng(0)
    rows = args.rows
    weights = {k: [rng.standard_normal(s, dtype=np.float32) for _ in range(6)] for k, s in SHAPES.items()}
    inputs = {k: rng.standard_normal((rows, s[0]), dtype=np.float32) for k, s in SHAPES.items()}
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def block_cols(k_in):
        return max(4, int(SMALL_KERNEL_MNK // (rows * k_in)) // 4 * 4)

    def whole(k, threads):
        with openblas.limit(limits=threads):
            for w in weights[k]:
                inputs[k] @ w

    def blocked_product(x, w, split):
        y = np.empty((rows, w.shape[1]), np.float32)
        b = block_cols(w.shape[0])
        starts = list(range(0, w.shape[1], b))

        def run(ss):
            for s in ss:
                np.matmul(x, w[:, s : s + b], out=y[:, s : s + b])

        if split:
            f = pool.submit(run, starts[len(starts) // 2 :])
            run(starts[: len(starts) // 2])
            f.result()
        else:
            run(starts)
        return y

    def blocks(k, split):
        with openblas.limit(limits=1):
            for w in weights[k]:
                blocked_product(inputs[k], w, split)

    variants = {
        "whole, 2 OpenBLAS threads": lambda k: whole(k, 2),
        "whole, 1 thread": lambda k: whole(k, 1),
        "small-kernel blocks, 1 thread": lambda k: blocks(k, False),
        "small-kernel blocks, 2 Python threads": lambda k: blocks(k, True),
    }
    for k in SHAPES:
        x, w = inputs[k], weights[k][0]
        ref = x.astype(np.float64) @ w
        print(
            f"{k}: block of {block_cols(w.shape[0])} columns; max |diff| vs float64: blocks "
            f"{np.abs(blocked_product(x, w, False) - ref).max():.2e}, whole {np.abs(x @ w - ref).max():.2e}"
        )
    times = {(v, k): [] for v in variants for k in SHAPES}
    for rep in range(args.repeats):
        order = list(variants)[rep % len(variants) :] + list(variants)[: rep % len(variants)]
        for v in order:
            for k in SHAPES:
                variants[v](k)  # untimed call first
                t = time.perf_counter()
                variants[v](k)
                times[v, k].append((time.perf_counter() - t) * 1e3 / 6)
    print(f"load average {os.getloadavg()[0]:.1f}; ms per layer GEMM at {rows} rows (median of {args.repeats})")
    print(f"{'variant':40}" + "".join(f"{k:>9}" for k in SHAPES) + f"{'sum':>9}")
    for v in variants:
        med = [statistics.median(times[v, k]) for k in SHAPES]
        print(f"{v:40}" + "".join(f"{m:9.3f}" for m in med) + f"{sum(med):9.3f}")


if __name__ == "__main__":
    main()
