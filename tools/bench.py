"""Benchmark npbert against transformers 4.57.6 on PyTorch and against ONNX Runtime, in one run.

The same full-size random weights (seeded, the real checkpoint's shapes) run in three engines in one
process: npbert, transformers (PyTorch, eager), and ONNX Runtime on the model exported by
`torch.onnx.export` (dynamic batch and sequence axes). Each engine gets the same number of threads
(--threads, default 2). Repeats are interleaved (engine order rotates every round) so machine noise hits
all engines alike; every figure is a median, and every comparison a ratio to a peer of the same run.

Rows (docs/performance.md explains each and the targets):
  forward   latency at B=1 for S = 16, 128, 384, 512; throughput at B=8, S=192
  gflops    achieved GFLOP/s of the forward at S=384 against numpy's float32 GEMM GFLOP/s on the
            forward's own GEMM shapes (the practical roofline), measured in the same run
  pipeline  questions/s of npbert.pipeline vs transformers' pipeline on SQuAD dev contexts (../shared)
  cold      new process to first answer (numba cache warm, and cold) and its peak RSS, vs transformers
  bandwidth the machine's read bandwidth (a STREAM-like sum of a 1 GB buffer on --threads threads, best of 5)
            and each engine's B=1 S=16 forward as an effective bandwidth: bytes of linear weights / time
            (at S <= 32 a forward is a stream of the weights), in interleaved rounds: medians
  backward  one backward at B=1 S=384 (model.gradients from the loss: every weight's gradient, and
            weights=False, the embeddings output's alone: what an attribution needs) with the numba and
            the numpy kernels, against torch autograd on the transformers model (loss.backward(); the
            embeddings output's gradient alone with the parameters frozen), interleaved medians; the
            gradients' largest difference from torch's; each one's peak memory (a child process each)
  train     one training step (forward with dropout, backward, clipping, AdamW) at B=8 S=384 as `npbert train`
            runs it, against PyTorch's (transformers in train mode, clip_grad_norm_, torch.optim.AdamW),
            interleaved medians, and each one's peak memory above the state it starts from (a child each)
  attributions  integrated gradients, n_steps 50, S=384, start and end, against Captum's
            LayerIntegratedGradients on transformers with the same rows per backward: time and peak memory,
            one run each in its own process; the per-token attributions' difference and the deltas

npbert gets npbert's default thread count (every core of the process's CPU affinity) where that equals
--threads, else $NPBERT_BLAS_THREADS=--threads (a count you set yourself wins); the header prints it.
--busy N starts N external busy processes (`while True: pass`, each killed when the bench ends, or dies)
before the rows and stops them after: the figures on a loaded machine (issue 26); the header and the table
print the load average.

npbert's GEMM path (panels-avx512, panels-avx2 or blas: ops.gemm.gemm_path) is printed and recorded;
force one with NPBERT_GEMM. To see the AVX2 tile as a CPU without AVX-512 compiles it, run under
NUMBA_CPU_NAME=znver3 and NUMBA_CPU_FEATURES with the avx512 features turned off (docs/performance.md).

    python tools/bench.py                        # everything; writes bench.json
    python tools/bench.py --rows forward,gflops --repeats 5 --json /tmp/b.json
    NPBERT_GEMM=panels-avx2 python tools/bench.py --rows forward,bandwidth
    python tools/bench.py --rows forward --busy 2   # beside two busy processes

Needs the `parity` extra (transformers, torch) and onnx + onnxruntime (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORWARD_SHAPES = [(1, 16), (1, 128), (1, 384), (1, 512), (8, 192)]
ENGINES = ("npbert", "pytorch", "onnxruntime")
QUESTION = "Where do I live?"
CONTEXT = "My name is Wolfgang and I live in Berlin, where I work as a baker."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="a full-size checkpoint folder (default: a seeded random one written to a temp dir)",
    )
    p.add_argument(
        "--rows",
        default="forward,gflops,bandwidth,backward,attributions,train,pipeline,cold",
        help="comma-separated subset of rows",
    )
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per forward shape")
    p.add_argument("--threads", type=int, default=2, help="threads per engine")
    p.add_argument("--pipeline-contexts", type=int, default=300, help="SQuAD dev contexts for the pipeline row")
    p.add_argument("--cold-runs", type=int, default=3, help="warm-cache process starts per engine")
    p.add_argument("--json", type=Path, default=Path("bench.json"), help="where to write the results")
    p.add_argument(
        "--busy", type=int, default=0, metavar="N", help="run the rows beside N busy processes (default: none)"
    )
    return p.parse_args(argv)


def _die_with_parent() -> None:  # in a busy child, before exec: SIGKILL when the bench's process dies
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def busy_processes(n: int):
    """n processes spinning on a core each (a pure-Python loop: no memory traffic) for the duration of the
    block; killed on leaving it, and (Linux) when this process dies without leaving it."""
    linux = sys.platform.startswith("linux")
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=_die_with_parent if linux else None)
        for _ in range(n)
    ]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# --- setup ---------------------------------------------------------------------------------------------


def make_checkpoint(folder: Path) -> Path:
    """A full-size random checkpoint (seed 0), as the tests make it (tests/checkpoints.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import checkpoints

    vocab = checkpoints.real_or_generated_vocab()
    vocab = vocab + [f"[extra{i}]" for i in range(checkpoints.FULL_SIZE["vocab_size"] - len(vocab))]
    return checkpoints.write_checkpoint(folder, seed=0, vocab=vocab, sinusoidal_pos_embds=True, **checkpoints.FULL_SIZE)


def export_onnx(tm, onnx_path: Path) -> Path:
    """The transformers model `tm` exported for ONNX Runtime, dynamic batch and sequence axes."""
    import torch

    ids = torch.ones((1, 16), dtype=torch.long)
    names = ["input_ids", "attention_mask", "start_logits", "end_logits"]
    # dynamo=False: the TorchScript exporter, which takes dynamic_axes as the issue asks.
    torch.onnx.export(
        tm,
        (ids, torch.ones_like(ids)),
        str(onnx_path),
        input_names=names[:2],
        output_names=names[2:],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        opset_version=17,
        dynamo=False,
    )
    return onnx_path


def ort_session(onnx_path: Path, threads: int, profile_prefix: str | None = None):
    """ONNX Runtime's session as the bench runs it: `threads` intra-op threads, one inter-op, the default
    graph optimizations (all: its fused LayerNorm and BiasGelu); with `profile_prefix`, its profiler on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile_prefix is not None:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def load_engines(folder: Path, threads: int, tmp: Path) -> dict:
    """name -> forward(ids, mask) -> (start_logits, end_logits) as numpy arrays."""
    import torch
    import transformers

    import npbert

    torch.set_num_threads(threads)
    model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
    tm = transformers.DistilBertForQuestionAnswering.from_pretrained(folder).eval()
    session = ort_session(export_onnx(tm, tmp / "distilbert-qa.onnx"), threads)

    def run_npbert(ids, mask):
        out = model(ids, mask)
        return out.start_logits, out.end_logits

    def run_torch(ids, mask):
        with torch.inference_mode():
            out = tm(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        return out.start_logits.numpy(), out.end_logits.numpy()

    def run_ort(ids, mask):
        return tuple(session.run(None, {"input_ids": ids, "attention_mask": mask}))

    engines = {"npbert": run_npbert, "pytorch": run_torch, "onnxruntime": run_ort}
    engines["_model"], engines["_torch_model"] = model, tm
    return engines


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# How long each engine runs untimed before its timed call: longer than another engine's idle workers spin
# after a run (PyTorch's OpenMP and ONNX Runtime's pools; measured on 2 cores: npbert's S=16 forward took
# 16.6 ms right after ONNX Runtime's, 12.1 ms 50 ms later, 10.1 ms after itself; ONNX Runtime's took 23 ms
# right after PyTorch's, 15 ms after itself), so that no engine is timed while another's threads still
# hold the cores: a single untimed call (10 ms at S=16) did not outlast them (docs/performance.md).
SETTLE_SECONDS = 0.1


def settle(fn, args: tuple) -> None:  # untimed calls of fn for at least SETTLE_SECONDS (at least one)
    start = time.perf_counter()
    fn(*args)
    while time.perf_counter() - start < SETTLE_SECONDS:
        fn(*args)


def interleaved(fns: dict, args: tuple, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, rounds interleaved with a rotating order. Each timed call
    follows SETTLE_SECONDS of untimed calls of the same engine (settle)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n](*args)
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            settle(fns[n], args)
            times[n].append(timed(fns[n], *args))
    return {n: statistics.median(t) for n, t in times.items()}


def forward_flops(B: int, S: int, D=768, F=3072, L=6) -> float:
    """Multiply-adds x 2 of one forward: the linears (q, k, v, out, lin1, lin2, qa) and attention's two
    batched products (q k^T and probs v). Elementwise work is not counted."""
    linears = 2 * B * S * (4 * D * D + 2 * D * F) * L + 2 * B * S * D * 2
    attention = 2 * 2 * B * S * S * D * L
    return linears + attention


# --- rows ----------------------------------------------------------------------------------------------


def forward_rows(engines: dict, repeats: int) -> list[dict]:
    import numpy as np

    rows = []
    rng = np.random.default_rng(0)
    for B, S in FORWARD_SHAPES:
        ids = rng.integers(1000, 28000, (B, S)).astype(np.int64)
        ids[:, 0] = 101
        mask = np.ones((B, S), dtype=np.int64)
        if B > 1:  # a realistic batch: some rows padded
            mask[B // 2 :, S * 3 // 4 :] = 0
        outs = {n: engines[n](ids, mask) for n in ENGINES}
        keep = mask.astype(bool)
        diff = {n: float(max(np.abs(outs[n][i] - outs["pytorch"][i])[keep].max() for i in (0, 1))) for n in ENGINES}
        med = interleaved({n: engines[n] for n in ENGINES}, (ids, mask), repeats)
        rows.append(
            {
                "B": B,
                "S": S,
                "seconds": med,
                "max_abs_diff_vs_pytorch": diff,
                "ratio_vs_pytorch": med["npbert"] / med["pytorch"],
                "ratio_vs_onnxruntime": med["npbert"] / med["onnxruntime"],
                "sequences_per_s": {n: B / t for n, t in med.items()},
            }
        )
        print(f"  B={B} S={S}: " + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in med.items()), flush=True)
    return rows


def gflops_row(engines: dict, forward: list[dict], repeats: int) -> dict:
    """The forward at S=384 against numpy's GEMM speed on the forward's own GEMM shapes (one layer's
    q/k/v fused, out, lin1, lin2 at 384 rows), with the weights in whichever of the two layouts is faster
    in this run: stored [out, in] (x @ W.T) or [in, out] (x @ W)."""
    import numpy as np

    S, D, F = 384, 768, 3072
    rng = np.random.default_rng(1)
    x, h = rng.standard_normal((S, D), dtype=np.float32), rng.standard_normal((S, F), dtype=np.float32)
    w = {
        n: rng.standard_normal(s, dtype=np.float32)
        for n, s in {"qkv": (3 * D, D), "out": (D, D), "lin1": (F, D), "lin2": (D, F)}.items()
    }

    wt = {n: np.ascontiguousarray(a.T) for n, a in w.items()}

    def layer_gemms():
        x @ w["qkv"].T, x @ w["out"].T, x @ w["lin1"].T, h @ w["lin2"].T

    def layer_gemms_in_out():
        x @ wt["qkv"], x @ wt["out"], x @ wt["lin1"], h @ wt["lin2"]

    from npbert import threads
    from npbert.ops import gemm

    panels = {
        n: np.ascontiguousarray(a.reshape(a.shape[0], -1, gemm.PANEL_WIDTH).transpose(1, 0, 2)) for n, a in wt.items()
    }

    def layer_gemms_panels():  # npbert's own GEMM (ops.gemm.matmul_panels_numba), as inside a model call
        with threads.for_model_call():
            for n, a in panels.items():
                gemm.matmul_panels_numba(h if n == "lin2" else x, a)

    gemm_flops = 2 * S * (4 * D * D + 2 * D * F)
    t = min(interleaved({"out_in": layer_gemms, "in_out": layer_gemms_in_out}, (), repeats * 3).values())
    roofline = gemm_flops / t / 1e9
    panels_gflops = gemm_flops / interleaved({"panels": layer_gemms_panels}, (), repeats * 3)["panels"] / 1e9
    seconds = next(r["seconds"] for r in forward if (r["B"], r["S"]) == (1, S))
    flops = forward_flops(1, S)
    achieved = {n: flops / s / 1e9 for n, s in seconds.items()}
    print(
        f"  GEMM roofline {roofline:.0f} GFLOP/s (numpy's BLAS; npbert's panel GEMM {panels_gflops:.0f}); forward: "
        + ", ".join(f"{n} {g:.0f} GFLOP/s ({g / roofline:.0%})" for n, g in achieved.items()),
        flush=True,
    )
    return {
        "S": S,
        "forward_gflop": flops / 1e9,
        "gemm_roofline_gflops": roofline,
        "panels_gemm_gflops": panels_gflops,
        "achieved_gflops": achieved,
        "fraction_of_roofline": {n: g / roofline for n, g in achieved.items()},
    }


def read_bandwidth(threads: int, gigabytes: float = 1.0, rounds: int = 7, buffer=None) -> float:
    """Bytes/s of reading a buffer far beyond the caches (STREAM's idea, read only): numpy sums of
    `gigabytes` of float32 split over `threads` threads (a float reduction releases the GIL), best of
    `rounds`. (A plain numba loop summed at 4-5 GB/s here: its one float32 accumulator is a dependency
    chain, where numpy's pairwise sum keeps 8 and runs at memory speed.)"""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    if buffer is None:
        buffer = np.ones(int(gigabytes * 2**30) // 4, np.float32)  # written: every page mapped before timing
    parts = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = min(best, time.perf_counter() - t0)
    return buffer.nbytes / best


def linear_weight_bytes(D=768, F=3072, L=6, itemsize=4) -> int:
    """Bytes of the forward's linear weights (q, k, v, out, lin1, lin2 per layer, the QA head): what a forward
    at a few tokens must read from memory once (the embeddings' few rows and the biases are not counted)."""
    return itemsize * (L * (4 * D * D + 2 * D * F) + 2 * D)


def bandwidth_row(engines: dict, threads: int, repeats: int) -> dict:
    """The read bandwidth and the B=1 S=16 forwards, interleaved: each round measures the bandwidth (best of
    3 reads) and then times each engine's forward, so both see the same load on a shared machine; each
    engine's fraction is the median over rounds of (weights / its time) / that round's bandwidth."""
    import numpy as np

    buffer = np.ones(2**30 // 4, np.float32)
    ids = np.random.default_rng(0).integers(1000, 28000, (1, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    weights = linear_weight_bytes()
    machine, effective, fraction = [], {n: [] for n in ENGINES}, {n: [] for n in ENGINES}
    for _ in range(repeats):
        machine.append(read_bandwidth(threads, rounds=3, buffer=buffer))
        for n, t in interleaved({n: engines[n] for n in ENGINES}, (ids, mask), 3, warmup=1).items():
            effective[n].append(weights / t)
            fraction[n].append(weights / t / machine[-1])
    med = statistics.median
    row = {
        "read_bytes_per_s": med(machine),
        "read_bytes_per_s_range": [min(machine), max(machine)],
        "linear_weight_bytes": weights,
        "effective_bytes_per_s_b1_s16": {n: med(v) for n, v in effective.items()},
        "fraction_of_read_bandwidth": {n: med(v) for n, v in fraction.items()},
    }
    print(
        f"  read bandwidth {row['read_bytes_per_s'] / 1e9:.1f} GB/s "
        f"({min(machine) / 1e9:.1f}-{max(machine) / 1e9:.1f}; {threads} threads); "
        f"B=1 S=16, {weights / 1e6:.0f} MB of linear weights: "
        + ", ".join(
            f"{n} {row['effective_bytes_per_s_b1_s16'][n] / 1e9:.1f} GB/s ({row['fraction_of_read_bandwidth'][n]:.0%})"
            for n in ENGINES
        ),
        flush=True,
    )
    return row


# One backward at B=1 S=384, the loss from these answer positions (the same in every engine).
BACKWARD_SHAPE = (1, 384)
BACKWARD_POSITIONS = (40, 47)


def backward_inputs():
    import numpy as np

    B, S = BACKWARD_SHAPE
    ids = np.random.default_rng(3).integers(1000, 28000, (B, S)).astype(np.int64)
    ids[:, 0] = 101
    return ids, np.ones_like(ids), np.array([BACKWARD_POSITIONS[0]] * B), np.array([BACKWARD_POSITIONS[1]] * B)


def backward_engines(model, numpy_model, tm) -> dict:
    """name -> one backward (forward included) at BACKWARD_SHAPE: npbert's model.gradients with the numba and the
    numpy kernels, every weight's gradient or (no weights) the embeddings output's alone, and torch autograd's
    on the transformers model (each for the models given, not None). Each returns (the embeddings output's
    gradient, {checkpoint key: gradient} | None)."""
    ids, mask, start, end = backward_inputs()

    def npbert_backward(m, weights):
        def run():
            g = m.gradients(ids, mask, start_positions=start, end_positions=end, weights=weights)
            return g.embeddings, (g.named(m.config) if weights else None)

        return run

    def torch_backward(weights):
        import torch

        t_ids, t_mask, t_start, t_end = (torch.from_numpy(a) for a in (ids, mask, start, end))
        # the parameters autograd differentiates (DistilBERT's sinusoidal position table is frozen)
        params = {n: p for n, p in tm.named_parameters() if p.requires_grad}

        def run():
            kept = {}
            hook = tm.distilbert.embeddings.register_forward_hook(
                lambda module, inputs, out: kept.setdefault("out", out.requires_grad_() if not weights else out)
            )
            for p in params.values():
                p.requires_grad_(weights)
                p.grad = None
            try:
                loss = tm(t_ids, attention_mask=t_mask, start_positions=t_start, end_positions=t_end).loss
                kept["out"].retain_grad()
                loss.backward()
            finally:
                hook.remove()
            grads = {n: p.grad.numpy() for n, p in params.items() if p.grad is not None} if weights else None
            return kept["out"].grad.numpy(), grads

        return run

    fns = {}
    if model is not None:
        fns.update(
            {"npbert numba": npbert_backward(model, True), "npbert numba, no weights": npbert_backward(model, False)}
        )
    if numpy_model is not None:
        fns["npbert numpy"] = npbert_backward(numpy_model, True)
        fns["npbert numpy, no weights"] = npbert_backward(numpy_model, False)
    if tm is not None:
        fns.update({"pytorch": torch_backward(True), "pytorch, no weights": torch_backward(False)})
    return fns


def gradient_difference(got, want) -> float:
    """The largest |difference| of any tensor, over that tensor's largest |gradient|; tensors whose largest
    |gradient| is below 1e-2 of the largest of all (gradients that are mathematically zero, such as every key
    bias's and, with the loss over all positions, qa_outputs.bias's, where both hold rounding noise) are
    measured against that floor instead."""
    import numpy as np

    floor = 1e-2 * max(float(np.abs(w).max()) for w in want.values())
    return max(float(np.abs(got[n] - w).max()) / max(float(np.abs(w).max()), floor) for n, w in want.items())


_BACKWARD_MEMORY_CHILD = """
import sys
sys.path.insert(0, {tools!r})
import bench
engine = {engine!r}
model = numpy_model = tm = None
if engine.startswith("npbert"):
    import npbert
    kernels = engine.split()[1].strip(",")
    model = npbert.DistilBertForQuestionAnswering.from_pretrained({folder!r}, kernels=kernels)
    model, numpy_model = (model, None) if kernels == "numba" else (None, model)
else:
    import torch, transformers
    torch.set_num_threads({threads})
    tm = transformers.DistilBertForQuestionAnswering.from_pretrained({folder!r}).eval()
run = bench.backward_engines(model, numpy_model, tm)[engine]
run()  # the first call compiles, maps pages, grows the allocators' pools: the figure is a later call's
for p in (tm.parameters() if tm is not None else ()):
    p.grad = None  # torch keeps the last gradients; npbert's are freed with its return value
status = lambda field: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(field)))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS")
run()
print("PEAK_KB", status("VmHWM") - before, before)
"""


def backward_peak_memory(engine: str, folder: Path, threads: int) -> tuple[float, float]:
    """(peak RSS of one backward above the loaded model's, resident set before it), MB: a child process per
    engine, the backward's second call (the first compiles, maps the weights' pages and grows the pools)."""
    code = _BACKWARD_MEMORY_CHILD.format(tools=str(ROOT / "tools"), engine=engine, folder=str(folder), threads=threads)
    # A fixed mmap threshold: glibc then maps every large block afresh and unmaps it when freed, instead of
    # keeping the first call's freed blocks in its heap (where they would hide the second call's peak).
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    peak, before = next(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("PEAK_KB"))
    return int(peak) / 1024, int(before) / 1024


def backward_row(engines: dict, folder: Path, threads: int, repeats: int) -> dict:
    """One backward's time (interleaved medians) and peak memory, npbert (numba, numpy kernels) and torch."""
    import npbert
    from npbert import threads as npbert_threads

    model = engines["_model"]
    numpy_model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder, kernels="numpy")
    fns = backward_engines(model, numpy_model, engines["_torch_model"])
    outs = {n: fn() for n, fn in fns.items()}
    d_emb = outs["pytorch"][0]
    difference = {
        n: max(
            gradient_difference({"embeddings": e}, {"embeddings": d_emb}), gradient_difference(w, outs["pytorch"][1])
        )
        if w is not None
        else gradient_difference({"embeddings": e}, {"embeddings": d_emb})
        for n, (e, w) in outs.items()
        if n.startswith("npbert")
    }
    med = interleaved(fns, (), repeats, warmup=1)
    with npbert_threads.for_model_call():
        npbert_blas_threads = npbert_threads.current()
    memory = {n: backward_peak_memory(n, folder, threads) for n in fns}
    B, S = BACKWARD_SHAPE
    row = {
        "B": B,
        "S": S,
        "seconds": med,
        "ratio_vs_pytorch": {
            n: t / med["pytorch, no weights" if "no weights" in n else "pytorch"]
            for n, t in med.items()
            if n.startswith("npbert")
        },
        "max_relative_diff_vs_pytorch": difference,
        "peak_mb_above_loaded": {n: m[0] for n, m in memory.items()},
        "rss_mb_loaded": {n: m[1] for n, m in memory.items()},
        "npbert_blas_threads": npbert_blas_threads,
    }
    for n, t in med.items():
        extra = f", max rel. diff vs torch {difference[n]:.1e}" if n in difference else ""
        print(f"  {n}: {t * 1e3:.0f} ms, peak +{memory[n][0]:.0f} MB{extra}", flush=True)
    return row


IG_STEPS = 50


def ig_inputs(pad_token_id: int):
    """The backward row's window (B=1 S=384) as [CLS] question (20 tokens) [SEP] context [SEP], its answer
    span the backward row's positions, and the tutorial's baseline (question and context ids -> pad)."""
    ids, mask, _, _ = backward_inputs()
    S = ids.shape[1]
    sequence_ids = (None,) + (0,) * 20 + (None,) + (1,) * (S - 23) + (None,)
    ids[0, [0, 21, S - 1]] = 101, 102, 102
    baseline = ids[0].copy()
    baseline[[i for i, s in enumerate(sequence_ids) if s is not None]] = pad_token_id
    return ids, mask, baseline


def ig_child(engine: str, folder: str, threads: int, out: str) -> None:
    """One IG run (n_steps 50, start and end targets) in this process, timed, its peak RSS above the RSS
    before it (VmHWM after clear_refs), the per-token attributions saved to `out` (.npz)."""
    import numpy as np

    status = lambda field: int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field)))  # noqa: E731
    if engine == "npbert":
        import npbert
        from npbert import attributions as A

        model = npbert.DistilBertForQuestionAnswering.from_pretrained(folder)
        ids, mask, baseline = ig_inputs(model.config.pad_token_id)
        window = A.Window(ids, mask, None, *BACKWARD_POSITIONS)
        model(ids, mask)  # maps the weights, loads the kernels

        def run():
            r = A.integrated_gradients(model, window, baseline, n_steps=IG_STEPS)
            return r["start"], r["end"], r["delta_start"], r["delta_end"]

        rows_per_backward = A.BATCH_TOKENS // ids.shape[1]
    else:
        import torch
        import transformers
        from captum.attr import LayerIntegratedGradients

        torch.set_num_threads(threads)
        tm = transformers.DistilBertForQuestionAnswering.from_pretrained(folder).eval()
        ids, mask, baseline = ig_inputs(tm.config.pad_token_id)
        t_ids, t_mask, t_base = torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(baseline[None])
        rows_per_backward = 2  # internal_batch_size: npbert's rows per backward at S = 384 (BATCH_TOKENS // S)
        with torch.inference_mode():
            tm(t_ids, attention_mask=t_mask)

        def run():
            got = []
            for which, index in (("start_logits", BACKWARD_POSITIONS[0]), ("end_logits", BACKWARD_POSITIONS[1])):
                f = lambda i, m, which=which, index=index: getattr(tm(i, attention_mask=m), which)[:, index]  # noqa: E731
                lig = LayerIntegratedGradients(f, tm.distilbert.embeddings)
                attr, delta = lig.attribute(
                    t_ids,
                    baselines=t_base,
                    additional_forward_args=(t_mask,),
                    n_steps=IG_STEPS,
                    internal_batch_size=rows_per_backward,
                    return_convergence_delta=True,
                )
                got.append((attr.detach().numpy()[0], float(delta)))
            return got[0][0], got[1][0], got[0][1], got[1][1]

    open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    t0 = time.perf_counter()
    start, end, delta_start, delta_end = run()
    seconds = time.perf_counter() - t0
    peak = status("VmHWM") - before
    np.savez(out, start=start.sum(-1), end=end.sum(-1), deltas=[delta_start, delta_end])
    print("IG", seconds, peak, rows_per_backward)


def attributions_row(folder: Path, threads: int, tmp: Path) -> dict:
    """Integrated gradients, n_steps 50, one window of S=384, start and end targets, npbert's
    (attributions.integrated_gradients) against Captum's LayerIntegratedGradients on the transformers model
    (the same rows per backward): time and peak memory, each in its own process, one after the other (a run
    takes minutes); the per-token attributions' largest difference and the convergence deltas."""
    import numpy as np

    import npbert

    # npbert's own folder: an editable install of another checkout could otherwise supply the module
    if not (Path(npbert.__file__).parent / "attributions.py").is_file():
        return {"skipped": "npbert.attributions does not exist yet"}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    row = {"n_steps": IG_STEPS, "S": BACKWARD_SHAPE[1], "seconds": {}, "peak_mb": {}, "delta": {}}
    tokens = {}
    for engine, name in (("npbert", "npbert"), ("captum", "captum")):
        out = tmp / f"ig-{engine}.npz"
        code = f"import sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); import bench; "
        code += f"bench.ig_child({engine!r}, {str(folder)!r}, {threads}, {str(out)!r})"
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        seconds, peak_kb, rows = next(line.split()[1:] for line in r.stdout.splitlines() if line.startswith("IG "))
        saved = np.load(out)
        row["seconds"][name], row["peak_mb"][name] = float(seconds), int(peak_kb) / 1024
        row["delta"][name] = [float(d) for d in saved["deltas"]]
        row["rows_per_backward"] = int(rows)
        tokens[name] = (saved["start"], saved["end"])
    row["ratio_vs_captum"] = row["seconds"]["npbert"] / row["seconds"]["captum"]
    # per token (summed over the hidden dimension), against the largest |token attribution|, as the parity test
    row["max_token_diff_vs_captum"] = max(
        float(np.abs(a - b).max() / np.abs(b).max()) for a, b in zip(tokens["npbert"], tokens["captum"])
    )
    t, m, d = row["seconds"], row["peak_mb"], row["delta"]
    print(
        f"  IG n_steps {IG_STEPS} S={row['S']}: npbert {t['npbert']:.0f} s (peak +{m['npbert']:.0f} MB), Captum "
        f"{t['captum']:.0f} s (+{m['captum']:.0f} MB); tokens' max diff {row['max_token_diff_vs_captum']:.1e}; "
        f"deltas npbert {d['npbert']}, Captum {d['captum']}",
        flush=True,
    )
    return row


TRAIN_SHAPE = (8, 384)


def train_step_engines(folder: Path, threads: int, which=("npbert", "pytorch")) -> dict:
    """name -> one training step at TRAIN_SHAPE, as `npbert train` runs it and as transformers' examples do
    (train mode with the config's dropout, the QA loss, backward, clip_grad_norm_ 1.0, AdamW step with the
    Trainer's groups, the schedule's rate): npbert's train.step_gradients + optim, and torch's."""
    import numpy as np

    from npbert import optim, train, weights as W
    from npbert.config import Config
    from npbert.model import Dropout
    from npbert.ops import select

    B, S = TRAIN_SHAPE
    rng = np.random.default_rng(4)
    ids = rng.integers(1000, 28000, (B, S)).astype(np.int64)
    ids[:, 0] = 101
    starts, ends = rng.integers(20, 300, B), None
    ends = starts + rng.integers(0, 10, B)
    features = train.Features(ids, np.ones_like(ids), None, starts, ends, np.arange(B))
    job = train.TrainJob(model=str(folder), data="", out="", max_steps=1000, batch_size=B, shuffle=False)
    fns = {}
    if "npbert" in which:
        config = Config.from_file(folder / "config.json")
        params = {n: np.array(a) for n, a in W.load_arrays(folder, config).items()}
        trainable = {n: p for n, p in params.items() if train.trainable(n, config)}
        adamw = optim.AdamW(trainable, weight_decay=0.01)
        dropout, ops = Dropout(config, np.random.default_rng(0)), select()

        def npbert_step():
            loss, grads = train.step_gradients(0, job, params, config, ops, features, None, dropout)
            grads = {n: grads[n] for n in trainable}
            optim.clip_grad_norm(grads, 1.0)
            adamw.step(trainable, grads, 3e-5)
            return loss

        fns["npbert"] = npbert_step
    if "pytorch" in which:
        import torch
        import transformers

        torch.set_num_threads(threads)
        tm = transformers.DistilBertForQuestionAnswering.from_pretrained(folder).train()
        named = [(n, p) for n, p in tm.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            [
                {"params": [p for n, p in named if optim.decays(n)], "weight_decay": 0.01},
                {"params": [p for n, p in named if not optim.decays(n)], "weight_decay": 0.0},
            ],
            lr=3e-5,
        )
        t_ids, t_start, t_end = (torch.from_numpy(a) for a in (ids, starts, ends))

        def torch_step():
            loss = tm(t_ids, attention_mask=torch.ones_like(t_ids), start_positions=t_start, end_positions=t_end).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
            opt.step()
            opt.zero_grad()
            return float(loss)

        fns["pytorch"] = torch_step
    return fns


_TRAIN_MEMORY_CHILD = """
import sys
sys.path.insert(0, {tools!r})
from pathlib import Path
import bench
run = bench.train_step_engines(Path({folder!r}), {threads}, which=({engine!r},))[{engine!r}]
run()  # the first step compiles, maps pages, makes the optimizer's moments: the figure is a later step's
status = lambda field: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(field)))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS")
run()
print("PEAK_KB", status("VmHWM") - before, before)
"""


def train_row(folder: Path, threads: int, repeats: int) -> dict:
    """One training step's time (interleaved medians) and its peak memory above the state it starts from
    (weights, gradients' predecessors freed, AdamW's moments), npbert and PyTorch, each in a child process
    for the memory."""
    fns = train_step_engines(folder, threads)
    med = interleaved(fns, (), repeats, warmup=1)
    memory = {}
    for n in fns:
        code = _TRAIN_MEMORY_CHILD.format(tools=str(ROOT / "tools"), folder=str(folder), threads=threads, engine=n)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": str(ROOT),
            "MALLOC_MMAP_THRESHOLD_": "131072",
        }
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        peak, before = next(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("PEAK_KB"))
        memory[n] = (int(peak) / 1024, int(before) / 1024)
    B, S = TRAIN_SHAPE
    for n, t in med.items():
        print(f"  {n}: {t:.2f} s, peak +{memory[n][0]:.0f} MB above {memory[n][1]:.0f} MB", flush=True)
    return {
        "B": B,
        "S": S,
        "seconds": med,
        "ratio_vs_pytorch": med["npbert"] / med["pytorch"],
        "peak_mb_above_start": {n: m[0] for n, m in memory.items()},
        "rss_mb_at_start": {n: m[1] for n, m in memory.items()},
    }


def squad_examples(n: int) -> list[tuple[str, str]]:
    """The first question of each of the first n SQuAD v1.1 dev contexts."""
    path = ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json"
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    out = [(p["qas"][0]["question"], p["context"]) for a in data for p in a["paragraphs"]]
    return out[:n]


def pipeline_row(folder: Path, engines: dict, n: int) -> dict:
    """Questions/s of each pipeline called as a user would (a list of questions, default batching),
    interleaved in chunks of 25 questions."""
    import transformers

    import npbert

    if not hasattr(npbert, "pipeline"):
        return {"skipped": "npbert.pipeline does not exist yet"}
    path = ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json"
    if not path.is_file():
        return {"skipped": f"{path} not found"}
    examples = squad_examples(n)
    ours = npbert.pipeline("question-answering", model=folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = transformers.pipeline("question-answering", model=engines["_torch_model"], tokenizer=tok, device=-1)
    pipes = {
        "npbert": lambda q, c: ours(question=q, context=c),
        "transformers": lambda q, c: theirs(question=q, context=c),
    }
    for p in pipes.values():  # warm-up
        p([examples[0][0]], [examples[0][1]])
    seconds, answers = {k: 0.0 for k in pipes}, {k: [] for k in pipes}
    for i, start in enumerate(range(0, len(examples), 25)):
        chunk = examples[start : start + 25]
        qs, cs = [q for q, _ in chunk], [c for _, c in chunk]
        for name in list(pipes)[i % 2 :] + list(pipes)[: i % 2]:
            t0 = time.perf_counter()
            out = pipes[name](qs, cs)
            seconds[name] += time.perf_counter() - t0
            answers[name] += out if isinstance(out, list) else [out]
    same = sum(
        a["answer"] == b["answer"] and a["start"] == b["start"]
        for a, b in zip(answers["npbert"], answers["transformers"])
    )
    qps = {k: len(examples) / s for k, s in seconds.items()}
    print(
        f"  pipeline ({len(examples)} questions): "
        + ", ".join(f"{k} {v:.2f} q/s" for k, v in qps.items())
        + f"; same answer {same}/{len(examples)}",
        flush=True,
    )
    return {
        "questions": len(examples),
        "seconds": seconds,
        "questions_per_s": qps,
        "ratio_vs_transformers": qps["npbert"] / qps["transformers"],
        "same_answers": same,
    }


_CHILD = {
    "npbert": "import npbert\nqa = npbert.pipeline('question-answering', model={folder!r})\n",
    "transformers": "from transformers import pipeline\nqa = pipeline('question-answering', model={folder!r}, device=-1)\n",  # noqa: E501
}
# Peak RSS from /proc (VmHWM, this process's own high-water mark): ru_maxrss would report the parent's
# RSS instead, since Linux carries it over fork + exec. ru_maxrss only where /proc is absent.
_CHILD_END = (
    "print(qa(question={q!r}, context={c!r}))\nimport os, resource\n"
    "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')] "
    "if os.path.exists('/proc/self/status') else []\n"
    "print('MAXRSS_KB', hwm[0] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


def start_process(engine: str, folder: Path, threads: int, numba_cache: Path) -> tuple[float, float]:
    """Wall seconds from process start to first answer printed (and exit), and peak RSS in MB."""
    code = _CHILD[engine].format(folder=str(folder)) + _CHILD_END.format(q=QUESTION, c=CONTEXT)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(numba_cache), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    rss_kb = int(next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("MAXRSS_KB")))
    return seconds, rss_kb / 1024


def cold_row(folder: Path, threads: int, runs: int, tmp: Path) -> dict:
    cache = tmp / "numba-cache"
    first_ever, first_rss = start_process("npbert", folder, threads, cache)  # empty cache: compiles everything
    warm = {"npbert": [], "transformers": []}
    rss = {"npbert": [], "transformers": []}
    for _ in range(runs):
        for engine in warm:
            s, r = start_process(engine, folder, threads, cache)
            warm[engine].append(s)
            rss[engine].append(r)
    med = {k: statistics.median(v) for k, v in warm.items()}
    peak = {k: max(v) for k, v in rss.items()}
    print(
        f"  start to first answer: npbert {med['npbert']:.2f} s (cold numba cache {first_ever:.2f} s), "
        f"transformers {med['transformers']:.2f} s; peak RSS npbert {peak['npbert']:.0f} MB, "
        f"transformers {peak['transformers']:.0f} MB",
        flush=True,
    )
    return {
        "seconds_warm_cache": med,
        "seconds_cold_cache_npbert": first_ever,
        "peak_rss_mb": peak,
        "ratio_start_vs_transformers": med["npbert"] / med["transformers"],
        "ratio_cold_cache_vs_transformers": first_ever / med["transformers"],
        "ratio_rss_vs_transformers": peak["npbert"] / peak["transformers"],
    }


# --- report --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    field = lambda name: next(  # noqa: E731
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()  # noqa: E731
            if line.startswith(name)
        ),
        "?",
    )
    simd = [
        flag
        for flag in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile")
        if f" {flag}" in field("flags")
    ]
    return f"{field('model name')} (family {field('cpu family')}, model {field('model')}; {' '.join(simd)})"


def llvm_cpu() -> str:  # what numba compiles for: $NUMBA_CPU_NAME, else the host CPU as LLVM names it
    import llvmlite.binding
    from numba.core import config

    return config.CPU_NAME or llvmlite.binding.get_host_cpu_name()


def table(results: dict) -> str:
    lines = ["| row | npbert | PyTorch | ONNX Runtime | npbert / PyTorch | npbert / ORT |", "|---|---|---|---|---|---|"]
    for r in results.get("forward", []):
        s = r["seconds"]
        if r["B"] == 1:
            cells = [f"{s[n] * 1e3:.1f} ms" for n in ENGINES]
            label = f"latency B=1 S={r['S']}"
        else:
            cells = [f"{r['B'] / s[n]:.2f} seq/s" for n in ENGINES]
            label = f"throughput B={r['B']} S={r['S']} (time ratio)"
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {r['ratio_vs_pytorch']:.2f}x | {r['ratio_vs_onnxruntime']:.2f}x |"
        )
    g = results.get("gflops")
    if g:
        a = g["achieved_gflops"]
        lines.append(
            f"| GFLOP/s at S=384 (numpy's GEMM {g['gemm_roofline_gflops']:.0f}, npbert's panel GEMM "
            f"{g.get('panels_gemm_gflops', float('nan')):.0f}; % of numpy's) | "
            + " | ".join(f"{a[n]:.0f} ({g['fraction_of_roofline'][n]:.0%})" for n in ENGINES)
            + " | | |"
        )
    b = results.get("bandwidth")
    if b:
        e, f = b["effective_bytes_per_s_b1_s16"], b["fraction_of_read_bandwidth"]
        lines.append(
            f"| B=1 S=16 as GB/s of linear weights (read bandwidth {b['read_bytes_per_s'] / 1e9:.1f} GB/s; "
            "% of it) | " + " | ".join(f"{e[n] / 1e9:.1f} ({f[n]:.0%})" for n in ENGINES) + " | | |"
        )
    k = results.get("backward")
    if k:
        s, r, m = k["seconds"], k["ratio_vs_pytorch"], k["peak_mb_above_loaded"]
        for n in ("npbert numba", "npbert numpy"):
            for suffix, label in (("", "every weight's gradient"), (", no weights", "the embeddings' gradient alone")):
                torch_name = "pytorch" + suffix
                lines.append(
                    f"| one backward B=1 S={k['S']}, {label}, {n.split()[1]} kernels (peak MB above the loaded "
                    "model) | "
                    f"{s[n + suffix] * 1e3:.0f} ms ({m[n + suffix]:.0f} MB) | {s[torch_name] * 1e3:.0f} ms "
                    f"({m[torch_name]:.0f} MB) | | {r[n + suffix]:.2f}x | |"
                )
    a = results.get("attributions")
    if a and "skipped" in a:
        lines.append(f"| attributions ig n_steps 50 S=384 vs Captum | skipped: {a['skipped']} | | | | |")
    elif a:
        t, m = a["seconds"], a["peak_mb"]
        lines.append(
            f"| attributions ig n_steps {a['n_steps']} S={a['S']} vs Captum ({a['rows_per_backward']} rows per "
            f"backward; peak MB above the loaded model) | {t['npbert']:.0f} s ({m['npbert']:.0f} MB) | "
            f"{t['captum']:.0f} s ({m['captum']:.0f} MB) | | {a['ratio_vs_captum']:.2f}x | |"
        )
    t = results.get("train")
    if t:
        s, m = t["seconds"], t["peak_mb_above_start"]
        lines.append(
            f"| one training step B={t['B']} S={t['S']}: forward, backward, AdamW (peak MB above the start) | "
            f"{s['npbert']:.2f} s ({m['npbert']:.0f} MB) | {s['pytorch']:.2f} s ({m['pytorch']:.0f} MB) | | "
            f"{t['ratio_vs_pytorch']:.2f}x | |"
        )
    p = results.get("pipeline")
    if p and "skipped" not in p:
        q = p["questions_per_s"]
        lines.append(
            f"| pipeline q/s, {p['questions']} SQuAD dev contexts (vs transformers) | {q['npbert']:.2f} | "
            f"{q['transformers']:.2f} | | {p['ratio_vs_transformers']:.2f}x (speed) | |"
        )
    elif p:
        lines.append(f"| pipeline | skipped: {p['skipped']} | | | | |")
    c = results.get("cold")
    if c:
        w = c["seconds_warm_cache"]
        lines.append(
            f"| start to first answer, warm numba cache | {w['npbert']:.2f} s | {w['transformers']:.2f} s | | "
            f"{c['ratio_start_vs_transformers']:.2f}x | |"
        )
        lines.append(
            f"| start to first answer, cold numba cache | {c['seconds_cold_cache_npbert']:.2f} s | "
            f"{w['transformers']:.2f} s | | {c['ratio_cold_cache_vs_transformers']:.2f}x | |"
        )
        m = c["peak_rss_mb"]
        lines.append(
            f"| peak RSS, one question | {m['npbert']:.0f} MB | {m['transformers']:.0f} MB | | "
            f"{c['ratio_rss_vs_transformers']:.2f}x | |"
        )
    return "\n".join(lines)


def run_rows(results: dict, rows: set, engines: dict, folder: Path, args, tmp: Path) -> None:
    if rows & {"forward", "gflops"}:
        print("forward (medians, interleaved):", flush=True)
        results["forward"] = forward_rows(engines, args.repeats)
    if "gflops" in rows:
        results["gflops"] = gflops_row(engines, results["forward"], args.repeats)
    if "bandwidth" in rows:
        results["bandwidth"] = bandwidth_row(engines, args.threads, args.repeats)
    if "backward" in rows:
        print("backward (medians, interleaved):", flush=True)
        results["backward"] = backward_row(engines, folder, args.threads, args.repeats)
    if "attributions" in rows:
        print("attributions (one run each, one after the other):", flush=True)
        results["attributions"] = attributions_row(folder, args.threads, tmp)
    if "train" in rows:
        print("training step (medians, interleaved):", flush=True)
        results["train"] = train_row(folder, args.threads, max(3, args.repeats // 2))
    if "pipeline" in rows:
        results["pipeline"] = pipeline_row(folder, engines, args.pipeline_contexts)
    if "cold" in rows:
        results["cold"] = cold_row(folder, args.threads, args.cold_runs, tmp)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Thread counts must be fixed before numpy, numba and torch start their pools.
    for var in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import numba
    import numpy as np
    import onnxruntime
    import torch
    import transformers

    import npbert  # noqa: F401  before numpy: npbert.threads sets the thread pools' wait policy
    from npbert import threads as npbert_threads

    if args.threads != npbert_threads.cores():  # npbert's default is every core: give it --threads, as the others
        os.environ.setdefault(npbert_threads.OVERRIDE_ENV, str(args.threads))

    rows = set(args.rows.split(","))
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "llvm_cpu": llvm_cpu(),
            "load_average_at_start": os.getloadavg(),
        },
        "versions": {
            "npbert": npbert.__version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "threads": args.threads,
        "npbert_threads": npbert_threads.policy(),
        "npbert_threads_from": f"${npbert_threads.OVERRIDE_ENV}"
        if os.environ.get(npbert_threads.OVERRIDE_ENV)
        else "the CPU affinity",
        "busy_processes": args.busy,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="npbert-bench-") as tmp:
        tmp = Path(tmp)
        folder = args.checkpoint or make_checkpoint(tmp / "checkpoint")
        engines = load_engines(folder, args.threads, tmp)
        from npbert.ops import gemm

        lin1 = engines["_model"].weights.encoder.transformer.layer[0].ffn.lin1.weight
        results["npbert_gemm"] = gemm.gemm_path(np.float32) if lin1.ndim == 3 else "blas"
        print(
            f"CPU: {results['machine']['cpu']} (LLVM: {results['machine']['llvm_cpu']}); npbert's GEMM: "
            f"{results['npbert_gemm']} (NPBERT_GEMM={os.environ.get('NPBERT_GEMM', '')!r}); threads: "
            f"{args.threads} per engine, npbert {results['npbert_threads']} ({results['npbert_threads_from']}); "
            f"{args.busy} busy processes; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        with busy_processes(args.busy):
            run_rows(results, rows, engines, folder, args, tmp)
    results["load_average_at_end"] = os.getloadavg()
    print()
    print(table(results))
    print(
        f"\n{args.busy} busy processes; load average {results['machine']['load_average_at_start'][0]:.2f} at the "
        f"start, {results['load_average_at_end'][0]:.2f} at the end"
    )
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
