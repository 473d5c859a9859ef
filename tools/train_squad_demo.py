"""A demonstration, not a benchmark: fine-tune a full-size DistilBERT on SQuAD v1.1 dev questions with
`npbert train` and run the same steps in PyTorch, and draw both loss curves.

    python tools/train_squad_demo.py --steps 200 --out /tmp/squad-demo   # needs the parity and viz extras

SQuAD v1.1 dev (../shared/data/squad-v1.1-dev.json) is the one real QA data set this project has at hand,
and no pretrained checkpoint can be fetched here, so the model is a full-size DistilBERT (28996 x 768,
6 layers, 12 heads, the bert-base-cased vocabulary) with random weights (tests/checkpoints.py): what the
demonstration shows is that npbert's steps lower the loss as PyTorch's do on real questions at full size,
step for step, not what either reaches. Both runs: the same features (npbert's, which equal run_qa.py's)
in the same shuffled order (npbert train's permutation from the seed, which the PyTorch loop reads too), no
dropout in either (so the two runs take the same steps), AdamW with the Trainer's groups, the linear
schedule, clipping at 1. Writes OUT/npbert (npbert train's folder), OUT/losses.json (both curves, the
settings, the CPU, the times) and, with --png, the picture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-seq-len", type=int, default=192)
    p.add_argument("--doc-stride", type=int, default=64)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--questions", type=int, default=1200, help="the first N dev questions")
    p.add_argument("--png", type=Path, help="draw both curves here")
    args = p.parse_args(argv)
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "parity")]
    import checkpoints

    if not checkpoints.SHARED_SQUAD.is_file():
        print(f"train_squad_demo: {checkpoints.SHARED_SQUAD} not found (the SQuAD v1.1 dev set)", file=sys.stderr)
        return 2
    import torch
    import transformers

    from npbert import squad, train
    from npbert.tokenizer import Tokenizer
    from train_helpers import torch_run

    args.out.mkdir(parents=True, exist_ok=True)
    folder = args.out / "model"
    if not (folder / "model.safetensors").is_file():
        checkpoints.write_checkpoint(
            folder, seed=0, vocab=checkpoints.real_or_generated_vocab(), **checkpoints.FULL_SIZE
        )
    data = squad.read_dataset(checkpoints.SHARED_SQUAD).head(args.questions)
    data_file = args.out / "train.json"
    data_file.write_text(json.dumps({"version": "1.1", "data": data.articles}))
    job = train.TrainJob(
        model=str(folder),
        data=str(data_file),
        out=str(args.out / "npbert"),
        max_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=0.01,
        shuffle=True,
        seed=0,
        dropout=False,
        max_seq_len=args.max_seq_len,
        doc_stride=args.doc_stride,
        save_steps=50,
    )
    t0 = time.perf_counter()
    train.train(job, resume=(args.out / "npbert" / train.STATE).exists())
    npbert_seconds = time.perf_counter() - t0
    ours = [json.loads(line)["loss"] for line in (args.out / "npbert" / "log.jsonl").read_text().splitlines()]
    features = train.training_features(
        Tokenizer.from_folder(folder),
        train.labelled_examples(squad.read_dataset(data_file)),
        job.max_seq_len,
        job.doc_stride,
    )
    model = transformers.DistilBertForQuestionAnswering.from_pretrained(
        folder, attn_implementation="eager", dropout=0.0, attention_dropout=0.0, qa_dropout=0.0
    )
    t0 = time.perf_counter()
    theirs, _ = torch_run(job, model, features, None, torch.float32)
    torch_seconds = time.perf_counter() - t0
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if platform.system() == "Linux" else ""
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "png")},
        "features": len(features.input_ids),
        "npbert_loss": ours,
        "pytorch_loss": theirs,
        "seconds": {"npbert": npbert_seconds, "pytorch": torch_seconds},
        "cpu": next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), ""),
        "load_average": os.getloadavg(),
    }
    (args.out / "losses.json").write_text(json.dumps(result, indent=1))
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
    print(
        f"{len(ours)} steps: loss {ours[0]:.3f} -> {ours[-1]:.3f} (npbert), {theirs[0]:.3f} -> {theirs[-1]:.3f} "
        f"(PyTorch); largest relative difference of a step's loss {worst:.1e}"
    )
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        ax.plot(range(1, len(theirs) + 1), theirs, lw=2.5, color="tab:orange", alpha=0.6, label="PyTorch 2.13")
        ax.plot(range(1, len(ours) + 1), ours, lw=0.9, color="tab:blue", label="npbert train")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(
            f"full-size DistilBERT (random init), SQuAD v1.1 dev questions, B={args.batch_size} S={args.max_seq_len}",
            fontsize=8,
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
