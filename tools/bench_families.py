"""B=1 forward latency of each family's base-size shape: npbert against transformers 4.57.6 (PyTorch, its
default attention) in one process, on the same random weights saved by transformers' `save_pretrained`.

    python tools/bench_families.py                          # bert and roberta base shapes, S=384
    python tools/bench_families.py --families all --seq-len 128,384 --repeats 7

Repeats are interleaved (tools/bench.py `interleaved`), each figure a median and each comparison a ratio
in the same run; the CPU model and the load average are printed beside the table. Needs the parity extra.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "parity"))
sys.path.insert(0, str(ROOT / "tools"))

from bench import cpu_model, interleaved  # noqa: E402
from parity_report import FAMILY  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="bert,roberta", help="comma-separated model types, or 'all'")
    p.add_argument("--seq-len", default="384", help="comma-separated sequence lengths (B=1)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch
    import transformers

    import npbert
    from parity_helpers import family_checkpoint, family_inputs

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NPBERT_BLAS_THREADS", str(args.threads))
    families = list(FAMILY) if args.families == "all" else args.families.split(",")
    print(
        f"CPU: {cpu_model()}, {os.cpu_count()} cores, {args.threads} threads per engine, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    print(f"{'family':<12} {'S':>4} {'npbert ms':>10} {'pytorch ms':>11} {'ratio':>6} {'max|diff|':>10}")
    for model_type in families:
        with tempfile.TemporaryDirectory() as tmp:
            folder, _ = family_checkpoint(Path(tmp), model_type, seed=0, **FAMILY[model_type])
            ours = npbert.AutoModelForQuestionAnswering.from_pretrained(folder)
            theirs = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()
            for S in map(int, args.seq_len.split(",")):
                inputs = family_inputs(np.random.default_rng(S), [S], theirs.config)
                torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

                def run_npbert():
                    return ours(**inputs).start_logits

                def run_torch():
                    with torch.inference_mode():
                        return theirs(**torch_inputs).start_logits.numpy()

                diff = float(np.abs(run_npbert() - run_torch()).max())
                med = interleaved({"npbert": run_npbert, "pytorch": run_torch}, (), args.repeats)
                print(
                    f"{model_type:<12} {S:>4} {med['npbert'] * 1e3:>10.1f} {med['pytorch'] * 1e3:>11.1f} "
                    f"{med['npbert'] / med['pytorch']:>5.2f}x {diff:>10.1e}",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
