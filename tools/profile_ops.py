"""Per-op profile of npbert's forward: where a B=1 (or B=8) forward's time goes, op by op.

Wraps, in this process only, the forward's pieces with wall-clock timers: `model.linear` (attributed by
the weight's shape: qkv, out_lin, lin2, qa head), `model.ffn` (its lin1 GEMM is ffn's own time minus the
activation kernel and lin2), and each kernel of the model's `ops` (attention, bias + activation,
residual + LayerNorm). The rest of the model call (embeddings' gathers, masks, thread scopes, the qa
head's split) is "the rest". Each figure is the median over `--repeats` forwards after warm-up.

Works on any checkout with the same layer functions (so a "before" profile can come from an older
commit: `PYTHONPATH=<worktree at that commit> python tools/profile_ops.py ...`).

`--onnxruntime` adds ONNX Runtime's column beside each shape: the same checkpoint exported as tools/bench.py
exports it, run in ONNX Runtime's session as the bench runs it (`--threads` intra-op threads, 2 by default:
give npbert the same with `NPBERT_BLAS_THREADS`; the default graph optimizations, i.e. its fused
LayerNorm and BiasGelu), with its profiler on. Its per-node times are put in the same rows: each linear's MatMul and its
bias Add under that GEMM (q, k and v under "qkv"); every other node under `attention/` (the two products,
the head transposes, the scaling, the mask's Add, Softmax) under attention; BiasGelu (lin1's bias + GELU)
under bias + activation; LayerNormalization and the residual Adds before it under residual + LayerNorm;
the rest (embeddings' gathers, the mask's construction, shape ops, and the run's time outside its nodes)
under the rest. ONNX Runtime's profiler times each node with a clock of its own, a few microseconds per
node; the total is the run's own time (its `model_run` event), the median over `--repeats` runs after warm-up.

    python tools/profile_ops.py --checkpoint DIR --shapes 1x16,1x384 --repeats 15
    NPBERT_BLAS_THREADS=2 python tools/profile_ops.py --checkpoint DIR --shapes 1x128,1x384 --onnxruntime
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a DistilBERT-shaped checkpoint folder")
    p.add_argument("--shapes", default="1x16,1x384", help="comma-separated BxS")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument(
        "--onnxruntime",
        nargs="?",
        const="",
        metavar="ONNX_FILE",
        help="also profile ONNX Runtime (needs the bench extra); an ONNX_FILE that exists is used as it is, "
        "one that does not is where the export is written (default: a temporary folder)",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime's intra-op threads (set NPBERT_BLAS_THREADS to the same)"
    )
    return p.parse_args(argv)


class Timers:
    def __init__(self):
        self.now = collections.defaultdict(float)  # this forward's seconds per op

    def wrap(self, name_of, fn):
        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.now[name_of(*args)] += time.perf_counter() - t0

        return timed


def linear_name(x, lin, *_):
    out, inp = len(lin.bias), x.shape[-1]  # lin.weight is [out, in], or [out / 32, in, 32] panels
    if out == 3 * inp:
        return "GEMM qkv (fused)"
    if inp > out and out > 2:
        return "GEMM lin2"
    if out <= 2:
        return "GEMM qa head"
    return "GEMM out_lin"


class NpbertForwards:
    """npbert's forward at one shape, its pieces timed: each call runs one forward -> {row: seconds}."""

    def __init__(self, checkpoint: Path, B: int, S: int):
        import npbert

        self.model = npbert.AutoModelForQuestionAnswering.from_pretrained(checkpoint)
        self.timers = Timers()
        ops = self.model.ops
        self.model.ops = ops._replace(
            attention=self.timers.wrap(lambda *a: "attention (products, mask, softmax)", ops.attention),
            residual_layernorm=self.timers.wrap(lambda *a: "residual + LayerNorm", ops.residual_layernorm),
            **{
                f"bias_{a}": self.timers.wrap(lambda *a: "bias + activation", getattr(ops, f"bias_{a}"))
                for a in ("gelu", "gelu_tanh", "relu")
                if hasattr(ops, f"bias_{a}")
            },
        )
        self.ids = np.random.default_rng(0).integers(1000, 20000, (B, S))

    def __call__(self) -> dict[str, float]:
        from npbert import model as M
        from npbert.ops import gemm

        original_linear, original_ffn = M.linear, M.ffn
        # model.py's linears, and ops/gemm.py's own: the fused qkv product (gemm.qkv_projections) calls it there
        M.linear = gemm.linear = self.timers.wrap(linear_name, original_linear)
        M.ffn = self.timers.wrap(lambda *a: "_ffn", original_ffn)
        try:
            self.timers.now.clear()
            t0 = time.perf_counter()
            self.model(self.ids, np.ones_like(self.ids))
            total = time.perf_counter() - t0
        finally:
            M.linear, M.ffn = original_linear, original_ffn
            gemm.linear = original_linear
        now = dict(self.timers.now)
        now["GEMM lin1"] = now.pop("_ffn") - now.get("bias + activation", 0) - now.get("GEMM lin2", 0)
        now[REST] = total - sum(now.values())
        now["total"] = total
        return now


def ort_category(node: str, op: str) -> str:
    """The row of one ONNX Runtime node (its name from the TorchScript export, its op type)."""
    for part, row in (
        ("q_lin/", "GEMM qkv (fused)"),
        ("k_lin/", "GEMM qkv (fused)"),
        ("v_lin/", "GEMM qkv (fused)"),
        ("out_lin/", "GEMM out_lin"),
        ("lin1/", "GEMM lin1"),
        ("lin2/", "GEMM lin2"),
        ("qa_outputs/", "GEMM qa head"),
    ):
        if part in node:
            return row
    if op in ("BiasGelu", "Gelu", "FastGelu", "Erf", "Relu"):
        return "bias + activation"
    residual_add = node.rsplit("/", 1)[-1] in ("Add", "Add_1") and "/layer." in node and "/attention/" not in node
    if op in ("LayerNormalization", "SkipLayerNormalization") or (
        op == "Add" and ("/embeddings/Add" in node or residual_add)
    ):
        return "residual + LayerNorm"
    if "/attention/" in node or op in ("Attention", "MultiHeadAttention", "Softmax"):
        return "attention (products, mask, softmax)"
    return REST


class OrtForwards:
    """ONNX Runtime's forward at one shape with its profiler on: each call runs one forward; `per_run()`
    then reads the profile -> one {row: seconds} per call."""

    def __init__(self, checkpoint: Path, onnx_file: str, threads: int, B: int, S: int, tmp: Path):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench

        path = Path(onnx_file) if onnx_file else tmp / "distilbert-qa.onnx"
        if not path.exists():
            import transformers

            bench.export_onnx(transformers.DistilBertForQuestionAnswering.from_pretrained(checkpoint).eval(), path)
        self.session = bench.ort_session(path, threads, profile_prefix=str(tmp / f"ort-profile-{B}x{S}"))
        ids = np.random.default_rng(0).integers(1000, 20000, (B, S))
        self.feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    def __call__(self) -> None:
        self.session.run(None, self.feed)

    def per_run(self) -> list[dict[str, float]]:
        import json

        events = json.loads(Path(self.session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        runs = []
        for start, end in sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run"):
            now = collections.defaultdict(float)
            for e in nodes:
                if start <= e["ts"] <= end:
                    now[ort_category(e["name"].removesuffix("_kernel_time"), e["args"]["op_name"])] += e["dur"] * 1e-6
            now[REST] += (end - start) * 1e-6 - sum(now.values())  # the session's time outside its nodes
            now["total"] = (end - start) * 1e-6
            runs.append(dict(now))
        return runs


def profile(args, B: int, S: int) -> dict[str, dict[str, float]]:
    """{column: {row: median ms}}: npbert's and, with --onnxruntime, ONNX Runtime's forwards at B x S, in
    interleaved rounds (the order alternating) so the machine's noise falls on both alike."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        engines = {f"B={B} S={S}": NpbertForwards(args.checkpoint, B, S)}
        if args.onnxruntime is not None:
            engines[f"B={B} S={S} ORT"] = OrtForwards(args.checkpoint, args.onnxruntime, args.threads, B, S, Path(tmp))
        warmup, names = 3, list(engines)
        runs = {n: [] for n in names}
        for r in range(warmup + args.repeats):
            for n in names if r % 2 == 0 else names[::-1]:
                runs[n].append(engines[n]())
        for n, engine in engines.items():
            if isinstance(engine, OrtForwards):
                runs[n] = engine.per_run()
            runs[n] = runs[n][warmup:]
    return {n: {k: statistics.median(r.get(k, 0.0) for r in rs) * 1e3 for k in rs[0]} for n, rs in runs.items()}


REST = "the rest (embeddings, masks, qa split, thread scopes)"
ORDER = [
    "GEMM qkv (fused)",
    "GEMM out_lin",
    "GEMM lin1",
    "GEMM lin2",
    "GEMM qa head",
    "attention (products, mask, softmax)",
    "bias + activation",
    "residual + LayerNorm",
    REST,
    "total",
]


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results = {}
    for B, S in shapes:
        results.update(profile(args, B, S))
    print("| where (ms) | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for name in ORDER:
        cells = [f"{r[name]:.1f}" if name in r else "" for r in results.values()]
        bold = name == "total"
        print(f"| {'**total**' if bold else name} | " + " | ".join(f"**{c}**" if bold else c for c in cells) + " |")
    import npbert

    print(f"\nnpbert from {Path(npbert.__file__).parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
