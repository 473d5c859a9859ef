"""`npbert ask`: answer one question about a context with the question-answering pipeline."""

from __future__ import annotations

import json
import sys

from ..hub import DEFAULT_MODEL


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ask", help="answer a question about a context",
        description="Answer a question about a context: the span of the context most likely to answer it, "
                    "found as transformers' question-answering pipeline finds it.")
    p.add_argument("--question", "-q", required=True, help="the question (required)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--context", "-c",
                        help="the context text; '-' reads it from stdin (this or --context-file is required)")
    source.add_argument("--context-file", metavar="FILE", help="read the context from FILE, UTF-8; '-' is stdin")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint folder or hub repository id (default: %(default)s)")
    p.add_argument("--revision", default=None,
                   help="hub revision: branch, tag or commit; hub ids only (default: main)")
    p.add_argument("--local-files-only", action="store_true",
                   help="never download, use the hub cache only (default: off)")
    p.add_argument("--top-k", type=int, default=1, help="number of answers (default: %(default)s)")
    p.add_argument("--max-answer-len", type=int, default=15, help="longest answer, in tokens (default: %(default)s)")
    p.add_argument("--max-seq-len", type=int, default=None,
                   help="tokens per window (default: min(model_max_length, 384))")
    p.add_argument("--doc-stride", type=int, default=None,
                   help="context tokens shared by consecutive windows (default: min(max_seq_len // 2, 128))")
    p.add_argument("--handle-impossible-answer", action="store_true", help="allow the empty (no) answer (default: off)")
    p.add_argument("--no-align-to-words", dest="align_to_words", action="store_false",
                   help="report token spans instead of widening them to whole words (default: align to words)")
    p.add_argument("--json", action="store_true", help="print the pipeline's result as JSON (default: human-readable)")
    p.set_defaults(run=run)


def read_context(args) -> str:
    if args.context_file is not None:
        if args.context_file == "-":
            return sys.stdin.read()
        with open(args.context_file, encoding="utf-8") as f:  # OSError -> one-line error in cli.main
            return f.read()
    return sys.stdin.read() if args.context == "-" else args.context


def format_answers(result) -> str:
    answers = result if isinstance(result, list) else [result]
    lines = []
    for rank, a in enumerate(answers, 1):
        prefix = f"{rank}. " if len(answers) > 1 else ""
        text = a["answer"] if a["answer"] else "(no answer)"
        lines.append(f"{prefix}{text}\n{' ' * len(prefix)}score {a['score']:.4f}  characters {a['start']}-{a['end']}")
    return "\n".join(lines)


def run(args) -> int:
    from ..cli import CommandError
    from ..pipeline import check_parameters, pipeline

    try:
        context = read_context(args)
    except UnicodeDecodeError as e:
        raise CommandError(f"{args.context_file}: not UTF-8 text ({e.reason})", 2) from None
    params = dict(top_k=args.top_k, max_answer_len=args.max_answer_len, max_seq_len=args.max_seq_len,
                  doc_stride=args.doc_stride, handle_impossible_answer=args.handle_impossible_answer,
                  align_to_words=args.align_to_words)
    # Reject bad input before loading a 261 MB model.
    if not args.question:
        raise CommandError("--question is empty", 2)
    if not context:
        raise CommandError("the context is empty", 2)
    check_parameters(params)
    qa = pipeline("question-answering", model=args.model, revision=args.revision,
                  local_files_only=args.local_files_only)
    result = qa(question=args.question, context=context, **params)
    print(json.dumps(result, ensure_ascii=False) if args.json else format_answers(result))
    return 0
