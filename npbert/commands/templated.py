"""`npbert templated`: generated question-answering data to train a model from scratch (npbert/templated.py):
train.json and held_out.json (SQuAD v1.1; the held-out file phrased with templates the training file never
uses) and tokenizer/ (a WordPiece vocabulary of train.json's text), seeded."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "templated",
        help="generate templated QA data (SQuAD JSON) and a tokenizer trained on it",
        description=__doc__,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write train.json, held_out.json, tokenizer/")
    p.add_argument("--seed", type=int, default=0, help="the generator's seed (default: %(default)s)")
    p.add_argument(
        "--train-paragraphs",
        type=int,
        default=1000,
        metavar="N",
        help="paragraphs of 3 questions (default: %(default)s)",
    )
    p.add_argument("--held-out-paragraphs", type=int, default=100, metavar="N", help="(default: %(default)s)")
    p.add_argument(
        "--vocab-size", type=int, default=1000, metavar="V", help="most WordPiece tokens (default: %(default)s)"
    )
    p.add_argument(
        "--people", type=int, default=1, metavar="N", help="people per paragraph, to tell apart (default: %(default)s)"
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from .. import templated
    from . import CommandError

    for flag, value, least in (
        ("--train-paragraphs", args.train_paragraphs, 1),
        ("--held-out-paragraphs", args.held_out_paragraphs, 1),
        ("--people", args.people, 1),
        ("--vocab-size", args.vocab_size, len(templated.SPECIAL_TOKENS) + 94),
    ):
        if value < least:
            raise CommandError(f"{flag} must be at least {least}, found {value}", 2)
    if not Path(args.out).parent.is_dir():
        raise CommandError(f"--out {args.out}: its parent folder does not exist", 2)
    paths = templated.write(
        Path(args.out), args.seed, args.train_paragraphs, args.held_out_paragraphs, args.vocab_size, args.people
    )
    print(json.dumps({name: str(path) for name, path in paths.items()}))
    return 0
