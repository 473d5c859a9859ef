"""The forward's GEMMs on each candidate GEMM backend: numpy's BLAS, npbert's panel GEMM, and the optional ones.

Six layers of DistilBERT's linear shapes (qkv 768 -> 2304, out_lin 768 -> 768, lin1 768 -> 3072, lin2 3072 ->
768), each layer its own random weights (170 MB in all: more than any L3, as in a forward), at several row
counts, 2 threads (--threads). Each backend runs in its own process (spinning thread pools of one library
would steal the cores of the next), the processes in rounds (--rounds), and the table gives each backend's
median over the rounds of its median over 7 calls. Every product is checked against float64.

Backends (those whose library is missing are skipped, with the reason):
  numpy          numpy's matmul (its bundled OpenBLAS), weights [in, out] C-contiguous
  panels         npbert.gemm.matmul_panels_numba, weights packed as [out/32, in, 32] once
  openblas       a newer OpenBLAS: `pip install scipy-openblas32`, cblas_sgemm through ctypes
  mkl            MKL: `pip install mkl`, cblas_sgemm through ctypes on libmkl_rt
  mkl-packed     MKL's packed GEMM: cblas_sgemm_pack once per weight, cblas_sgemm_compute per call
  mlas           ONNX Runtime's MLAS: one MatMul session per weight (initializer: prepacked at session start)

    python tools/bench_gemm_backends.py --rows 16,128,384 --rounds 3
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import statistics
import subprocess
import sys
import time

SHAPES = {"qkv": (768, 2304), "out_lin": (768, 768), "lin1": (768, 3072), "lin2": (3072, 768)}  # (in, out)
LAYERS = 6
BACKENDS = ("numpy", "panels", "openblas", "mkl", "mkl-packed", "mlas")
ROW_MAJOR, NO_TRANS, B_MATRIX, PACKED = 101, 111, 162, 151  # CBLAS enum values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="16,128,384,1536", help="comma-separated row counts (B*S)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="processes per backend, interleaved")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one backend in this process
    return p.parse_args(argv)


def _cblas_sgemm(lib, name):
    f = getattr(lib, name)
    f.argtypes = [ctypes.c_int] * 6 + [
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_float,
        ctypes.c_void_p,
        ctypes.c_int,
    ]

    def matmul(x, w_t, out):
        (M, K), N = x.shape, w_t.shape[1]
        f(ROW_MAJOR, NO_TRANS, NO_TRANS, M, N, K, 1.0, x.ctypes.data, K, w_t.ctypes.data, N, 0.0, out.ctypes.data, N)
        return out

    return matmul


def _mkl():
    import importlib.metadata

    files = [str(importlib.metadata.distribution("mkl").locate_file(f)) for f in importlib.metadata.files("mkl")]
    rt = next(f for f in files if os.path.basename(f).startswith("libmkl_rt.so"))
    lib = ctypes.CDLL(rt)
    lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
    return lib


def backend(name: str, weights: list[dict], threads: int):
    """matmul(x, layer, linear) -> [M, out] for one backend, its weights prepared as that backend wants."""
    import numpy as np

    if name == "numpy":
        return lambda x, layer, lin: np.matmul(x, weights[layer][lin], out=None)
    if name == "panels":
        from npbert import threads as npbert_threads
        from npbert.ops import gemm

        panels = [
            {
                lin: np.ascontiguousarray(w.reshape(w.shape[0], -1, gemm.PANEL_WIDTH).transpose(1, 0, 2))
                for lin, w in layer.items()
            }
            for layer in weights
        ]
        npbert_threads._current = threads  # as inside a model call given that many threads
        return lambda x, layer, lin: gemm.matmul_panels_numba(x, panels[layer][lin])
    if name == "openblas":
        import scipy_openblas32

        lib = ctypes.CDLL(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas*.so"))[0])
        lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
        lib.scipy_openblas_set_num_threads(threads)
        sgemm = _cblas_sgemm(lib, "scipy_cblas_sgemm")
        return lambda x, layer, lin: sgemm(
            x, weights[layer][lin], np.empty((len(x), weights[layer][lin].shape[1]), np.float32)
        )
    if name in ("mkl", "mkl-packed"):
        lib = _mkl()
        lib.MKL_Set_Num_Threads(threads)
        if name == "mkl":
            sgemm = _cblas_sgemm(lib, "cblas_sgemm")
            return lambda x, layer, lin: sgemm(
                x, weights[layer][lin], np.empty((len(x), weights[layer][lin].shape[1]), np.float32)
            )
        lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
        lib.cblas_sgemm_pack_get_size.argtypes = [ctypes.c_int] * 4
        lib.cblas_sgemm_pack.argtypes = [ctypes.c_int] * 6 + [
            ctypes.c_float,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        lib.cblas_sgemm_compute.argtypes = [ctypes.c_int] * 6 + [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_float,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        packed = []
        for layer in weights:
            packed.append({})
            for lin, w in layer.items():
                (K, N), m = w.shape, 384  # the packed form does not depend on m here (same size for 16..2048)
                buf = np.empty(lib.cblas_sgemm_pack_get_size(B_MATRIX, m, N, K) // 4 + 16, np.float32)
                lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, NO_TRANS, m, N, K, 1.0, w.ctypes.data, N, buf.ctypes.data)
                packed[-1][lin] = buf

        def compute(x, layer, lin):
            (M, K), N = x.shape, weights[layer][lin].shape[1]
            out = np.empty((M, N), np.float32)
            lib.cblas_sgemm_compute(
                ROW_MAJOR,
                NO_TRANS,
                PACKED,
                M,
                N,
                K,
                x.ctypes.data,
                K,
                packed[layer][lin].ctypes.data,
                N,
                0.0,
                out.ctypes.data,
                N,
            )
            return out

        return compute
    if name == "mlas":
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # 24 sessions, each with its own pool: spinning idle pools would steal the cores of the running one
        # (213 ms at 16 rows with spinning, 11 ms without). A forward's one session spins, to its benefit.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions = []
        for layer in weights:
            sessions.append({})
            for lin, w in layer.items():
                K, N = w.shape
                graph = helper.make_graph(
                    [helper.make_node("MatMul", ["x", "w"], ["y"])],
                    lin,
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])],
                    [numpy_helper.from_array(w, "w")],
                )
                model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                model.ir_version = 8
                sessions[-1][lin] = ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
        return lambda x, layer, lin: sessions[layer][lin].run(None, {"x": x})[0]
    raise ValueError(f"unknown backend {name!r}")


def run_one(name: str, rows: list[int], threads: int) -> dict:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # idle OpenBLAS threads sleep, as under npbert
    os.environ.setdefault("KMP_BLOCKTIME", "0")  # and MKL's
    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    weights = [
        {lin: (0.02 * rng.standard_normal((d_in, d_out), dtype=np.float32)) for lin, (d_in, d_out) in SHAPES.items()}
        for _ in range(LAYERS)
    ]
    try:
        matmul = backend(name, weights, threads)
    except (ImportError, OSError, StopIteration, ModuleNotFoundError) as e:
        return {"skipped": f"{type(e).__name__}: {e}"}
    result = {}
    with threadpool_limits(threads):
        for M in rows:
            xs = {lin: rng.standard_normal((M, d_in), dtype=np.float32) for lin, (d_in, _) in SHAPES.items()}
            times = []
            for _ in range(8):  # the first is a warm-up
                t0 = time.perf_counter()
                for layer in range(LAYERS):
                    for lin in SHAPES:
                        matmul(xs[lin], layer, lin)
                times.append(time.perf_counter() - t0)
            exact = xs["lin2"].astype(np.float64) @ weights[0]["lin2"].astype(np.float64)
            error = float(np.abs(matmul(xs["lin2"], 0, "lin2") - exact).max())
            flops = 2 * M * LAYERS * sum(d_in * d_out for d_in, d_out in SHAPES.values())
            seconds = statistics.median(times[1:])
            result[M] = {"ms": seconds * 1e3, "gflops": flops / seconds / 1e9, "max_abs_error": error}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    if args.one:
        print(json.dumps(run_one(args.one, rows, args.threads)))
        return 0
    names = args.backends.split(",")
    runs = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            out = subprocess.run(
                [sys.executable, __file__, "--one", n, "--rows", args.rows, "--threads", str(args.threads)],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                runs[n].append({"skipped": out.stderr.strip().splitlines()[-1]})
            else:
                runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"| GEMM ({LAYERS} layers' qkv, out_lin, lin1, lin2; {args.threads} threads) | "
        + " | ".join(f"{M} rows" for M in rows)
        + " |"
    )
    print("|---|" + "---|" * len(rows))
    for n, results in runs.items():
        done = [r for r in results if "skipped" not in r]
        if not done:
            print(f"| {n} | skipped: {results[0]['skipped']} |" + " |" * (len(rows) - 1))
            continue
        cells = []
        for M in rows:  # each round's result came back as JSON: row counts are string keys
            ms = statistics.median(r[str(M)]["ms"] for r in done)
            gf = statistics.median(r[str(M)]["gflops"] for r in done)
            err = max(r[str(M)]["max_abs_error"] for r in done)
            cells.append(f"{ms:.1f} ms ({gf:.0f} GF/s, err {err:.1e})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
