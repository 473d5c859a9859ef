"""npbert's thread count beside busy processes (issue 26 item 5): one process, every setting interleaved.

npbert's forward at each thread setting and transformers 4.57.6 on PyTorch (--threads threads), their
rounds interleaved in one process (tools/bench.py's `interleaved`), so every ratio is of one run under one
load, with --busy N external busy processes running throughout (tools/bench.py's `busy_processes`).
npbert's settings, applied per model call through $NPBERT_BLAS_THREADS (read at each call):

  cores      the default: every core of the process's CPU affinity
  1          one thread
  load-rule  the rule issue 26 dropped: one thread while the 1-minute load average exceeds the core
             count, else every core (as it was, read at each call; the count it chose is reported)

    python tools/bench_threads.py --busy 2
    python tools/bench_threads.py --busy 0 --shapes 1x16,1x512 --repeats 9

Needs the `parity` extra (transformers, torch) and onnx + onnxruntime, as tools/bench.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # noqa: E402

SETTINGS = ("cores", "1", "load-rule")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a full-size checkpoint folder (default: bench.py's seeded one)")
    p.add_argument("--shapes", default="1x16,1x128,1x384,1x512,8x192", help="BxS, comma-separated")
    p.add_argument("--busy", type=int, default=2, metavar="N", help="external busy processes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch's threads (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per shape (default: %(default)s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):  # PyTorch's pools, fixed before they start
        os.environ[var] = str(args.threads)
    import numpy as np

    import npbert  # noqa: F401
    from npbert import threads

    chosen = []  # what the load rule chose, call by call

    def with_setting(run, setting):
        def call(ids, mask):
            if setting == "load-rule":
                value = "1" if os.getloadavg()[0] > threads.cores() else ""
                chosen.append(value or str(threads.cores()))
            else:
                value = "" if setting == "cores" else setting
            os.environ[threads.OVERRIDE_ENV] = value
            try:
                return run(ids, mask)
            finally:
                os.environ.pop(threads.OVERRIDE_ENV)

        return call

    os.environ.pop(threads.OVERRIDE_ENV, None)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    with tempfile.TemporaryDirectory(prefix="npbert-bench-threads-") as tmp:
        folder = args.checkpoint or bench.make_checkpoint(Path(tmp) / "checkpoint")
        engines = bench.load_engines(folder, args.threads, Path(tmp))
        fns = {f"npbert {s}": with_setting(engines["npbert"], s) for s in SETTINGS}
        fns["pytorch"] = engines["pytorch"]
        print(
            f"CPU: {bench.cpu_model()}, {threads.cores()} cores in the affinity; PyTorch {args.threads} threads; "
            f"{args.busy} busy processes; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        npbert_names = [n for n in fns if n != "pytorch"]
        print("| B x S | " + " | ".join(fns) + " | " + " | ".join(f"{n} / pytorch" for n in npbert_names) + " |")
        print("|---" * (2 * len(fns)) + "|")
        with bench.busy_processes(args.busy):
            for B, S in shapes:
                rng = np.random.default_rng(0)
                ids = rng.integers(1000, 20000, (B, S), dtype=np.int64)
                mask = np.ones((B, S), dtype=np.int64)
                chosen.clear()
                t = bench.interleaved(fns, (ids, mask), args.repeats)
                ratios = [f"{t[n] / t['pytorch']:.2f}x" for n in npbert_names]
                rule = f" (load rule: {chosen.count('1')}/{len(chosen)} calls on 1 thread)"
                cells = " | ".join(f"{t[n] * 1e3:.0f} ms" for n in fns)
                print(f"| {B} x {S} | {cells} | {' | '.join(ratios)} |{rule}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
