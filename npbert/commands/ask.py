"""`npbert ask`: answer one question about a context with the question-answering pipeline."""

from __future__ import annotations

import json
import os
import sys

from ..hub import DEFAULT_MODEL
from ..limits import DEFAULT_MAX_WINDOWS


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ask",
        help="answer a question about a context",
        description="Answer a question about a context: the span of the context most likely to answer it, "
        "found as transformers' question-answering pipeline finds it.",
    )
    add_input_arguments(p)
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="checkpoint folder or hub repository id (default: %(default)s)"
    )
    p.add_argument("--revision", default=None, help="hub revision: branch, tag or commit; hub ids only (default: main)")
    p.add_argument(
        "--local-files-only", action="store_true", help="never download, use the hub cache only (default: off)"
    )
    p.add_argument("--top-k", type=int, default=1, help="number of answers (default: %(default)s)")
    p.add_argument("--max-answer-len", type=int, default=15, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument(
        "--max-seq-len", type=int, default=None, help="tokens per window (default: min(model_max_length, 384))"
    )
    p.add_argument(
        "--doc-stride",
        type=int,
        default=None,
        help="context tokens shared by consecutive windows (default: min(max_seq_len // 2, 128))",
    )
    p.add_argument("--handle-impossible-answer", action="store_true", help="allow the empty (no) answer (default: off)")
    p.add_argument(
        "--no-align-to-words",
        dest="align_to_words",
        action="store_false",
        help="report token spans instead of widening them to whole words (default: align to words)",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_WINDOWS,
        help="a context making more windows of --max-seq-len tokens is refused before any is answered, "
        "as in npbert batch and serve (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the pipeline's result as JSON (default: human-readable)")
    p.set_defaults(run=run)


def add_input_arguments(p) -> None:
    """--question/-q and one of --context/-c or --context-file (ask, trace and attention)."""
    p.add_argument("--question", "-q", required=True, help="the question (required)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--context", "-c", help="the context text; '-' reads it from stdin (this or --context-file is required)"
    )
    source.add_argument("--context-file", metavar="FILE", help="read the context from FILE, UTF-8; '-' is stdin")


def question_and_context(args) -> tuple[str, str]:
    """The question and the context the flags give, checked before any model is loaded: UTF-8 text (a
    one-line error naming the flag and the byte otherwise) that is not empty or blank (as the server)."""
    from . import CommandError

    question = _argument_text(args.question, "--question")
    if args.context_file is not None:
        where = "stdin" if args.context_file == "-" else args.context_file
        raw = sys.stdin.buffer.read() if args.context_file == "-" else _read_bytes(args.context_file)
        context = _utf8(raw, where)
    elif args.context == "-":
        context = _utf8(sys.stdin.buffer.read(), "stdin")
    else:
        context = _argument_text(args.context, "--context")
    if not question.strip():
        raise CommandError("--question is empty or blank", 2)
    if not context.strip():
        raise CommandError("the context is empty or blank", 2)
    return question, context


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:  # OSError -> one-line error in cli.main
        return f.read()


def _utf8(raw: bytes, where: str) -> str:
    from . import CommandError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandError(f"{where}: not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r})", 2) from None


def _argument_text(value: str, flag: str) -> str:
    # Python hands undecodable bytes of the command line over as lone surrogates (PEP 383); the tokenizer
    # would refuse them with a TypeError. Say which flag and byte instead.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _utf8(os.fsencode(value), flag)
    return value


def format_answers(result) -> str:
    answers = result if isinstance(result, list) else [result]
    lines = []
    for rank, a in enumerate(answers, 1):
        prefix = f"{rank}. " if len(answers) > 1 else ""
        text = a["answer"] if a["answer"] else "(no answer)"
        lines.append(f"{prefix}{text}\n{' ' * len(prefix)}score {a['score']:.4f}  characters {a['start']}-{a['end']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..pipeline import WindowLimitError, check_parameters, pipeline
    from . import CommandError

    question, context = question_and_context(args)  # bad input is refused before loading a 261 MB model
    params = dict(
        top_k=args.top_k,
        max_answer_len=args.max_answer_len,
        max_seq_len=args.max_seq_len,
        doc_stride=args.doc_stride,
        handle_impossible_answer=args.handle_impossible_answer,
        align_to_words=args.align_to_words,
    )
    check_parameters(params)
    if args.max_windows < 1:
        raise CommandError(f"--max-windows must be a positive integer, found {args.max_windows}", 2)
    qa = pipeline(
        "question-answering",
        model=args.model,
        revision=args.revision,
        local_files_only=args.local_files_only,
        max_windows=args.max_windows,
    )
    try:
        result = qa(question=question, context=context, **params)
    except WindowLimitError as e:
        raise CommandError(f"{e}, or a larger --max-windows", 2) from None
    print(json.dumps(result, ensure_ascii=False) if args.json else format_answers(result))
    return 0
