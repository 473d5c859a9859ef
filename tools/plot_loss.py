"""The loss curve of an `npbert train` run as a small PNG, from its log.jsonl (one {"step", "loss",
"learning_rate"} line per optimizer step) and, when the run scored itself (--eval-data, --eval-steps), the
held-out F1 of its eval.jsonl on a second axis. Drawn with matplotlib's Agg canvas (the viz extra).

    python tools/plot_loss.py RUN_DIR docs/training-loss.png [--title TEXT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="the --out folder of npbert train (holds log.jsonl)")
    p.add_argument("png", type=Path, help="the picture to write")
    p.add_argument("--title", default=None, help="a title above the plot")
    args = p.parse_args(argv)
    if not (args.run / "log.jsonl").is_file():
        print(f"plot_loss: {args.run / 'log.jsonl'}: no such file (not an npbert train folder)", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = read_jsonl(args.run / "log.jsonl")
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.8, color="tab:blue", label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (log scale)", color="tab:blue")
    scores = args.run / "eval.jsonl"
    if scores.is_file():
        evals = read_jsonl(scores)
        f1 = ax.twinx()
        f1.plot([r["step"] for r in evals], [r["f1"] for r in evals], "o-", color="tab:orange", label="held-out F1")
        f1.set_ylim(0, 100)
        f1.set_ylabel("held-out F1", color="tab:orange")
    if args.title:
        ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"{len(log)} steps -> {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
