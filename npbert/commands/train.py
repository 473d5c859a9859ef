"""`npbert train`: fine-tune a question-answering model on SQuAD-format data, optionally distilling from a
teacher, in numpy (npbert/train.py: run_qa.py's features, run_squad_w_distillation.py's loss and step).

Settings come from flags, or from a YAML job file (`--config job.yml`, the same names with underscores:
model, data, out, max_steps, batch_size, learning_rate, ...); flags given beside a job file override it.
Writes model.safetensors, config.json and the tokenizer files (loadable by transformers and npbert) and
log.jsonl (one {"step", "loss", "learning_rate"} line per optimizer step) into --out; Ctrl-C or SIGTERM
saves the state, and the same command with --resume goes on from it to the same weights bit for bit.
"""

from __future__ import annotations

import argparse

# flag (argparse dest) -> job key
_FLAGS = (
    "model",
    "data",
    "out",
    "max_steps",
    "epochs",
    "batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "shuffle",
    "dropout",
    "dtype",
    "max_seq_len",
    "doc_stride",
    "teacher",
    "alpha_ce",
    "alpha_squad",
    "temperature",
    "save_steps",
    "eval_data",
    "eval_steps",
    "progress",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune (or distil) a question-answering model in numpy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="JOB.yml", help="YAML job file naming the settings below")
    p.add_argument("--model", metavar="M", help="checkpoint folder or hub repository id to start from")
    p.add_argument("--data", metavar="FILE", help="training data: SQuAD JSON (v1.1/v2.0) or JSON Lines")
    p.add_argument("--out", metavar="DIR", help="output folder (its parent must exist)")
    steps = p.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps (default: --epochs' worth)")
    steps.add_argument("--epochs", type=float, metavar="E", help="passes over the training features (default 1)")
    p.add_argument("--batch-size", type=int, metavar="B", help="features per forward (default 8)")
    p.add_argument(
        "--gradient-accumulation-steps", type=int, metavar="N", help="forwards per optimizer step (default 1)"
    )
    p.add_argument("--learning-rate", type=float, metavar="LR", help="peak learning rate (default 5e-5)")
    p.add_argument("--warmup-steps", type=int, metavar="W", help="linear warm-up steps (default 0)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="AdamW weight decay (default 0)")
    p.add_argument("--max-grad-norm", type=float, metavar="G", help="clip the gradients' norm to G (default 1)")
    p.add_argument("--seed", type=int, metavar="S", help="data order and dropout seed (default 42)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=None, help="features in file order")
    p.add_argument("--no-dropout", dest="dropout", action="store_false", default=None, help="train without dropout")
    p.add_argument("--dtype", choices=("float32", "float64"), help="float32 (default) or float64 (for checks)")
    p.add_argument("--max-seq-len", type=int, metavar="L", help="window length in tokens (default 384)")
    p.add_argument("--doc-stride", type=int, metavar="D", help="overlap between windows (default 128)")
    g = p.add_argument_group("distillation (run_squad_w_distillation.py's loss)")
    g.add_argument("--teacher", metavar="T", help="a question-answering model with the same tokenizer")
    g.add_argument("--alpha-ce", type=float, metavar="A", help="weight of the distillation term (default 0.5)")
    g.add_argument("--alpha-squad", type=float, metavar="A", help="weight of the QA loss (default 0.5)")
    g.add_argument("--temperature", type=float, metavar="T", help="softmax temperature (default 2)")
    p.add_argument("--save-steps", type=int, metavar="N", help="save the resumable state every N steps (default 50)")
    p.add_argument("--eval-data", metavar="FILE", help="score the trained model on this SQuAD file (npbert eval)")
    p.add_argument("--eval-steps", type=int, metavar="N", help="also save and score checkpoint-N/ every N steps")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr (default on)"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from .. import evaluate, train
    from . import CommandError

    settings, where_file = {}, None
    if args.config:
        settings, where_file = evaluate.read_job_file(args.config)
    from_flags = {key for key in _FLAGS if getattr(args, key) is not None}
    settings.update({key: getattr(args, key) for key in from_flags})

    def where(key):
        return "--" + key.replace("_", "-") if key in from_flags or where_file is None else where_file(key)

    try:
        job = train.make_train_job(settings, where)
    except evaluate.JobError as e:
        raise CommandError(str(e), 2) from None
    out = Path(job.out)
    if not out.parent.is_dir():
        raise CommandError(f"output folder {out}: its parent {out.parent} does not exist", 2)
    try:
        summary = train.train(job, resume=args.resume)
    except evaluate.JobError as e:
        raise CommandError(str(e), 2) from None
    except evaluate.Interrupted as e:
        raise CommandError(
            f"interrupted by {e} after {e.done} of {e.total} steps, saved in {e.saved}; run the same command "
            "with --resume to continue",
            128 + e.signum,
        ) from None
    print(json.dumps(summary))
    return 0
