"""Write the stored training fixture that checks `npbert train` against PyTorch where torch is not installed.

    python tools/make_train_reference.py      # needs the parity extra: pip install -e '.[parity]'

Into tests/fixtures/training/ it writes a tiny DistilBERT saved by transformers' `save_pretrained` (and a
teacher in teacher/), a WordPiece tokenizer over a small generated vocabulary, the training data
(train.json), and for each case what PyTorch computed for its job, the same steps
tests/parity/test_train_parity.py runs: reference-<case>.json (the format version, the torch, transformers
and numpy versions, the job's settings, the loss of every step) and reference-<case>.safetensors (every
weight after the last step). tests/test_train_fixture.py runs `npbert train` on it without torch. Deterministic (fixed
seeds): an unchanged reference stack rewrites identical files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "training"
FORMAT_VERSION = 1
HINT = "regenerate it with `python tools/make_train_reference.py` (needs the parity extra: pip install -e '.[parity]')"
MODEL = dict(
    vocab_size=321, dim=16, n_heads=2, hidden_dim=24, n_layers=2, max_position_embeddings=64, initializer_range=0.2
)
NO_DROPOUT = dict(dropout=0.0, attention_dropout=0.0, qa_dropout=0.0)
# case -> (job settings, float dtype, with a teacher)
CASES = {
    "float64": (dict(dtype="float64"), False),
    "float32": (dict(dtype="float32"), False),
    "distillation-accumulation": (
        dict(dtype="float64", gradient_accumulation_steps=2, alpha_ce=0.7, alpha_squad=0.3),
        True,
    ),
}
JOB = dict(
    max_steps=12,
    batch_size=3,
    learning_rate=3e-3,
    warmup_steps=3,
    weight_decay=0.01,
    shuffle=False,
    dropout=False,
    max_seq_len=40,
    doc_stride=12,
    progress=False,
)


def job_for(folder: Path, case: str, out: Path):
    from npbert import train

    settings, with_teacher = CASES[case]
    return train.TrainJob(
        model=str(folder),
        data=str(folder / "train.json"),
        out=str(out),
        teacher=str(folder / "teacher") if with_teacher else None,
        **JOB,
        **settings,
    )


def main() -> int:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import save_file

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "parity"))
    from checkpoints import generated_vocab, write_tokenizer
    from npbert import squad, train
    from npbert.tokenizer import Tokenizer
    from parity_helpers import transformers_checkpoint
    from train_helpers import data_file, torch_run

    vocab = generated_vocab(MODEL["vocab_size"])
    folder = FIXTURES
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    transformers_checkpoint(folder, 0, **MODEL, **NO_DROPOUT)
    write_tokenizer(folder, vocab)
    data_file(folder)
    transformers_checkpoint(folder / "teacher", 7, **MODEL, **NO_DROPOUT)
    write_tokenizer(folder / "teacher", vocab)
    for case, (settings, with_teacher) in CASES.items():
        # a fresh torch model from the stored files for every case: each run starts from the same weights
        model = transformers.DistilBertForQuestionAnswering.from_pretrained(folder, attn_implementation="eager")
        teacher = None
        if with_teacher:
            teacher = transformers.DistilBertForQuestionAnswering.from_pretrained(
                folder / "teacher", attn_implementation="eager"
            )
        job = job_for(folder, case, folder / "unused")
        features = train.training_features(
            Tokenizer.from_folder(folder),
            train.labelled_examples(squad.read_dataset(job.data)),
            job.max_seq_len,
            job.doc_stride,
        )
        dtype = torch.float64 if job.dtype == "float64" else torch.float32
        losses, weights = torch_run(job, model, features, teacher, dtype)
        save_file(
            {n: np.ascontiguousarray(w) for n, w in weights.items()}, str(folder / f"reference-{case}.safetensors")
        )
        settings = {k: v for k, v in dataclasses.asdict(job).items() if k not in ("model", "data", "out", "teacher")}
        (folder / f"reference-{case}.json").write_text(
            json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "numpy": np.__version__,
                    "job": settings,
                    "teacher": with_teacher,
                    "losses": losses,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"{folder.relative_to(ROOT)} {case}: {len(losses)} steps, final loss {losses[-1]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
