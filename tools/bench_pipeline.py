"""Pipeline throughput and parity: npbert vs transformers 4.57.6 `pipeline("question-answering")` on the
same full-size weights, the same SQuAD v1.1 dev questions, in one process.

    python tools/bench_pipeline.py [--questions 300] [--blocks 3] [--checkpoint DIR] [--batch-size N]

Without --checkpoint it writes the test suite's full-size random checkpoint (tests/checkpoints.py: real
cased vocabulary, QA head x12) to a temporary folder. The questions are cut into blocks run alternately
by each side (npbert first in even blocks, transformers first in odd ones), so machine noise hits both;
the ratio reported is the median of the per-block ratios. Every answer is compared as the parity tests
compare them (answer/start/end identical, score within 1e-4 relative).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def squad_questions(path: Path, n: int, seed: int = 0):
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    pairs = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    return random.Random(seed).sample(pairs, n)


def full_checkpoint(folder: Path) -> Path:
    import checkpoints

    vocab = checkpoints.real_or_generated_vocab()
    vocab += [f"[extra{i}]" for i in range(checkpoints.FULL_SIZE["vocab_size"] - len(vocab))]
    return checkpoints.write_checkpoint(
        folder, seed=2, qa_scale=12.0, vocab=vocab, sinusoidal_pos_embds=True, **checkpoints.FULL_SIZE
    )


def same(a, b) -> bool:
    return (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"]) and abs(
        a["score"] - b["score"]
    ) <= 1e-4 * abs(b["score"]) + 1e-12


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=300)
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="npbert windows per forward (default: its own)")
    ap.add_argument("--squad", type=Path, default=ROOT.parent / "shared" / "data" / "squad-v1.1-dev.json")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    import npbert

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.checkpoint or full_checkpoint(Path(tmp) / "full")
        mine = npbert.pipeline("question-answering", model=folder)
        ref = transformers.pipeline("question-answering", model=str(folder), tokenizer=str(folder), device="cpu")
        pairs = squad_questions(args.squad, args.questions)
        mine(question="warm up", context=pairs[0][1])  # numba compilation, first-call costs
        ref(question="warm up", context=pairs[0][1])
        blocks = np.array_split(np.arange(len(pairs)), args.blocks)
        times = {"npbert": [], "transformers": []}
        answers = {"npbert": [None] * len(pairs), "transformers": [None] * len(pairs)}
        for b, idx in enumerate(blocks):
            qs, cs = [pairs[i][0] for i in idx], [pairs[i][1] for i in idx]
            order = ["npbert", "transformers"] if b % 2 == 0 else ["transformers", "npbert"]
            for name in order:
                t0 = time.perf_counter()
                if name == "npbert":
                    out = mine(question=qs, context=cs, batch_size=args.batch_size)
                else:
                    with torch.inference_mode():
                        out = ref(question=qs, context=cs)
                times[name].append(time.perf_counter() - t0)
                for i, a in zip(idx, out):
                    answers[name][i] = a
        qps = {k: len(pairs) / sum(v) for k, v in times.items()}
        ratios = [
            len(idx) / tn / (len(idx) / tt) for idx, tn, tt in zip(blocks, times["npbert"], times["transformers"])
        ]
        agree = sum(same(a, b) for a, b in zip(answers["npbert"], answers["transformers"]))
        rel = max(
            abs(a["score"] - b["score"]) / max(abs(b["score"]), 1e-30)
            for a, b in zip(answers["npbert"], answers["transformers"])
        )
        windows = sum(len(w) for w in mine.tokenizer.encode_pairs([p[0] for p in pairs], [p[1] for p in pairs]))
        print(
            json.dumps(
                {
                    "questions": len(pairs),
                    "windows": windows,
                    "blocks": args.blocks,
                    "npbert_questions_per_s": round(qps["npbert"], 3),
                    "transformers_questions_per_s": round(qps["transformers"], 3),
                    "ratio_npbert_over_transformers_median_of_blocks": round(statistics.median(ratios), 3),
                    "block_ratios": [round(r, 3) for r in ratios],
                    "identical_answers": f"{agree}/{len(pairs)}",
                    "max_score_rel_diff": rel,
                    "torch_threads": torch.get_num_threads(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
