"""Per-op profile of npbert's forward: where a B=1 (or B=8) forward's time goes, op by op.

Wraps, in this process only, the forward's pieces with wall-clock timers: `model.linear` (attributed by
the weight's shape: qkv, out_lin, lin2, qa head), `model.ffn` (its lin1 GEMM is ffn's own time minus the
activation kernel and lin2), and each kernel of the model's `ops` (attention, bias + activation,
residual + LayerNorm). The rest of the model call (embeddings' gathers, masks, thread scopes, the qa
head's split) is "the rest". Each figure is the median over `--repeats` forwards after warm-up.

Works on any checkout with the same layer functions (so a "before" profile can come from an older
commit: `PYTHONPATH=<worktree at that commit> python tools/profile_ops.py ...`).

    python tools/profile_ops.py --checkpoint DIR --shapes 1x16,1x384 --repeats 15
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


def profile(checkpoint: Path, B: int, S: int, repeats: int) -> dict[str, float]:
    import npbert
    from npbert import model as M
    from npbert.ops import gemm

    model = npbert.AutoModelForQuestionAnswering.from_pretrained(checkpoint)
    timers = Timers()
    ops = model.ops
    wrapped_ops = ops._replace(
        attention=timers.wrap(lambda *a: "attention (products, mask, softmax)", ops.attention),
        residual_layernorm=timers.wrap(lambda *a: "residual + LayerNorm", ops.residual_layernorm),
        **{
            f"bias_{a}": timers.wrap(lambda *a: "bias + activation", getattr(ops, f"bias_{a}"))
            for a in ("gelu", "gelu_tanh", "relu")
            if hasattr(ops, f"bias_{a}")
        },
    )
    model.ops = wrapped_ops
    original_linear, original_ffn = M.linear, M.ffn
    # model.py's linears, and ops/gemm.py's own: the fused qkv product (gemm.qkv_projections) calls it there
    M.linear = gemm.linear = timers.wrap(linear_name, original_linear)
    M.ffn = timers.wrap(lambda *a: "_ffn", original_ffn)
    ids = np.random.default_rng(0).integers(1000, 20000, (B, S))
    mask = np.ones_like(ids)
    try:
        for _ in range(3):
            model(ids, mask)
        per_op = collections.defaultdict(list)
        for _ in range(repeats):
            timers.now.clear()
            t0 = time.perf_counter()
            model(ids, mask)
            total = time.perf_counter() - t0
            now = dict(timers.now)
            now["GEMM lin1"] = now.pop("_ffn") - now.get("bias + activation", 0) - now.get("GEMM lin2", 0)
            now["the rest (embeddings, masks, qa split, thread scopes)"] = total - sum(now.values())
            now["total"] = total
            for k, v in now.items():
                per_op[k].append(v)
    finally:
        M.linear, M.ffn = original_linear, original_ffn
        gemm.linear = original_linear
    return {k: statistics.median(v) * 1e3 for k, v in per_op.items()}


ORDER = [
    "GEMM qkv (fused)",
    "GEMM out_lin",
    "GEMM lin1",
    "GEMM lin2",
    "GEMM qa head",
    "attention (products, mask, softmax)",
    "bias + activation",
    "residual + LayerNorm",
    "the rest (embeddings, masks, qa split, thread scopes)",
    "total",
]


def main(argv=None) -> int:
    args = parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    results = {f"B={B} S={S}": profile(args.checkpoint, B, S, args.repeats) for B, S in shapes}
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
