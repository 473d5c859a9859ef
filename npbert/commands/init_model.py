"""`npbert init-model`: a question-answering model with random weights, initialised as transformers'
`_init_weights` does, sized to a tokenizer folder, to train from scratch (npbert/init_weights.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "init-model",
        help="make a randomly initialised QA model (DistilBERT or BERT) for a tokenizer",
        description=__doc__,
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a tokenizer folder (its files are copied)")
    p.add_argument("--out", required=True, metavar="DIR", help="the checkpoint folder to write")
    p.add_argument("--family", choices=("distilbert", "bert"), default="distilbert", help="(default: %(default)s)")
    p.add_argument("--layers", type=int, default=2, metavar="L", help="transformer layers (default: %(default)s)")
    p.add_argument("--width", type=int, default=128, metavar="D", help="hidden size (default: %(default)s)")
    p.add_argument("--heads", type=int, default=2, metavar="H", help="attention heads (default: %(default)s)")
    p.add_argument("--ffn", type=int, default=None, metavar="F", help="feed-forward width (default: 4 x width)")
    p.add_argument(
        "--initializer-range",
        type=float,
        default=0.02,
        metavar="SD",
        help="the weights' standard deviation, config.json's initializer_range (default: %(default)s, BERT's)",
    )
    p.add_argument("--seed", type=int, default=0, help="the weights' seed (default: %(default)s)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..init_weights import write_random_model
    from . import CommandError

    for flag, value in (("--layers", args.layers), ("--width", args.width), ("--heads", args.heads)):
        if value < 1:
            raise CommandError(f"{flag} must be at least 1, found {value}", 2)
    if args.ffn is not None and args.ffn < 1:
        raise CommandError(f"--ffn must be at least 1, found {args.ffn}", 2)
    if not args.initializer_range > 0:
        raise CommandError(f"--initializer-range must be above 0, found {args.initializer_range}", 2)
    if args.width % args.heads:
        raise CommandError(f"--width {args.width} must be a multiple of --heads {args.heads}", 2)
    if not Path(args.tokenizer).is_dir():
        raise CommandError(f"--tokenizer {args.tokenizer}: no such folder", 2)
    if not Path(args.out).parent.is_dir():
        raise CommandError(f"--out {args.out}: its parent folder does not exist", 2)
    out = write_random_model(
        Path(args.out),
        Path(args.tokenizer),
        args.family,
        args.layers,
        args.width,
        args.heads,
        args.ffn,
        args.seed,
        args.initializer_range,
    )
    print(out)
    return 0
