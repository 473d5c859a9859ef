"""`npbert score DATASET PREDICTIONS`: the official SQuAD v1.1 / v2.0 evaluation; the score JSON is the
last line of stdout, as `evaluate-v1.1.py` prints it (v2.0's keys on one line too)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="score SQuAD predictions exactly as the official scripts do", description=__doc__
    )
    p.add_argument("dataset", help="SQuAD JSON (v1.1 or v2.0) or JSON Lines of {id, question, context, answers}")
    p.add_argument("predictions", help='JSON object {question id: answer text} (no answer: "")')
    p.add_argument("--version", help="1.1 or 2.0 (default: the dataset's own, else 1.1)")
    p.add_argument(
        "--na-prob",
        metavar="NA.json",
        help="v2.0: {question id: no-answer probability}; adds the best-threshold figures",
    )
    p.add_argument(
        "--na-prob-thresh",
        type=float,
        default=1.0,
        help="v2.0: predict no-answer above this probability (default 1.0, as the official script)",
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import sys

    from .. import squad

    version = None if args.version is None else squad.check_version(args.version)
    data = squad.read_dataset(args.dataset, version)
    version = version or data.version or "1.1"
    if data.version is not None and data.version != version:
        print(f"npbert score: note: {args.dataset} says version {data.version}, scoring as {version}", file=sys.stderr)
    predictions = squad.read_predictions(args.predictions)
    na_probs = None if args.na_prob is None else squad.read_na_probs(args.na_prob)
    if na_probs is not None and version != "2.0":
        raise ValueError("--na-prob applies only to SQuAD v2.0 (pass --version 2.0)")
    missing = squad.missing_predictions(data, predictions)
    if missing:
        print(
            f"npbert score: note: {len(missing)} of {len(data.examples)} questions have no prediction and "
            f"score 0 (first: {missing[0]!r})",
            file=sys.stderr,
        )
    result = squad.evaluate(data, predictions, version, na_probs, args.na_prob_thresh)
    print(json.dumps(result))
    return 0
