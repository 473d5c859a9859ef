"""`npbert explain`: why the model gave its answer: each token's (or word's) attribution to the answer's start
and end (npbert/attributions.py: integrated gradients, Grad x Input, SmoothGrad, attention rollout)."""

from __future__ import annotations

import json

from ..limits import DEFAULT_MAX_ATTRIBUTION_WINDOWS
from .trace import add_question_arguments


def parse_span(text: str) -> tuple[int, int]:
    """--span START:END (or START-END), character positions in the context."""
    from . import CommandError

    for sep in (":", "-"):
        parts = text.split(sep)
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    raise CommandError(f"--span must be START:END, two character positions of the context, found {text!r}", 2)


def check_flags(args) -> None:
    """Everything the flags alone decide, before the model is loaded: one line, exit 2."""
    import importlib.util

    from ..attributions import METHODS, approximation, check_noise, check_samples
    from . import CommandError

    if args.method not in METHODS:
        raise CommandError(f"--method {args.method!r} is not one of {', '.join(METHODS)}", 2)
    if args.method == "ig":
        if args.n_steps < 1:
            raise CommandError(f"--n-steps must be >= 1, found {args.n_steps}", 2)
        approximation(args.approximation, args.n_steps)
    if args.method == "smoothgrad":
        check_samples(args.samples)
        check_noise(args.noise)
    if args.max_windows < 1:
        raise CommandError(f"--max-windows must be a positive integer, found {args.max_windows}", 2)
    if args.batch_size is not None and args.batch_size < 1:
        raise CommandError(f"--batch-size must be a positive integer, found {args.batch_size}", 2)
    args.span = None if args.span is None else parse_span(args.span)
    if args.out is not None and importlib.util.find_spec("matplotlib") is None:
        raise CommandError(
            "--out pictures need matplotlib (the viz extra): pip install -e '.[viz]' in the npbert clone, or "
            "pip install matplotlib"
        )


def windows_of(result: dict) -> list[dict]:
    return result["windows"] if "windows" in result else [result]


def format_result(result: dict, by: str = "word") -> str:
    """The readable table: the answer, the settings, then per window its tokens (or words) with their start
    and end scores, the target tokens marked."""
    span = result["span"]
    score = "" if result["score"] is None else f"score {result['score']:.4f}, "
    lines = [f"answer: {result['answer']!r} ({score}characters {span[0]}-{span[1]})"]
    settings = ", ".join(f"{k} {v}" for k, v in result["settings"].items())
    lines.append(f"method: {result['method']} ({settings})")
    lines.append(
        "scores: per token, summed over the hidden dimension and divided by the L2 norm over the window's "
        "tokens; a word's is the sum of its tokens'"
    )
    windows = windows_of(result)
    for w in windows:
        t = w["target"]
        where = "holds the answer" if t["holds_answer"] else "does not hold the answer: its own best span"
        head = f"window {w['window']} of {len(windows)}, " if len(windows) > 1 else ""
        lines.append("")
        lines.append(
            f"{head}{where}: start token {t['start']} ({w['tokens'][t['start']]}), end token {t['end']} "
            f"({w['tokens'][t['end']]})"
        )
        if "delta_start" in w:
            lines.append(f"convergence delta: start {w['delta_start']:.3e}, end {w['delta_end']:.3e}")
        if by == "token":
            parts = ["special" if s is None else ("question", "context")[s] for s in w["sequence_ids"]]
            rows = [(str(i), tok, parts[i], w["start"][i], w["end"][i], [i]) for i, tok in enumerate(w["tokens"])]
        else:
            rows = [(str(n), x["text"], x["part"], x["start"], x["end"], x["tokens"]) for n, x in enumerate(w["words"])]
        width = min(max([len(r[1]) for r in rows] + [5]), 30)
        lines.append(f"{'#':>4}  {by:<{width}}  {'part':<8}  {'start':>8}  {'end':>8}")
        for n, text, part, start, end, idx in rows:
            marks = [name for name, i in (("start", t["start"]), ("end", t["end"])) if i in idx]
            mark = f"  <- {', '.join(marks)}" if marks else ""
            shown = text if len(text) <= width else text[: width - 1] + "…"
            lines.append(f"{n:>4}  {shown:<{width}}  {part:<8}  {start:>8.4f}  {end:>8.4f}{mark}")
    return "\n".join(lines)


def run(args) -> int:
    import numpy as np

    from ..attributions import explain
    from ..pipeline import WindowLimitError, pipeline
    from . import CommandError
    from .ask import question_and_context

    check_flags(args)
    question, context = question_and_context(args)
    qa = pipeline("question-answering", model=args.model, revision=args.revision, dtype=np.dtype(args.dtype))
    try:
        result = explain(
            qa,
            question,
            context,
            args.method,
            n_steps=args.n_steps,
            approximation_method=args.approximation,
            samples=args.samples,
            noise=args.noise,
            seed=args.seed,
            span=args.span,
            params={"max_seq_len": args.max_seq_len, "doc_stride": args.doc_stride},
            max_windows=args.max_windows,
            batch_size=args.batch_size,
        )
    except WindowLimitError as e:
        raise CommandError(f"{e}, or a larger --max-windows", 2) from None
    if args.out is not None:
        from ..viz import attribution_figure, save_png

        windows = windows_of(result)
        panels = [
            (f"window {w['window']}" if len(windows) > 1 else "", w["tokens"], w["start"], w["end"]) for w in windows
        ]
        title = f"{result['method']}: {result['answer']!r}"
        path = save_png(
            attribution_figure(panels, title), args.out, dpi=args.dpi, description=f"npbert explain {title}"
        )
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result, args.by))
    if args.out is not None and not args.json:
        print(f"picture -> {path}")
    return 0


def add_parser(subparsers) -> None:
    from ..attributions import APPROXIMATIONS, DEFAULT_N_STEPS, DEFAULT_NOISE, DEFAULT_SAMPLES, METHODS

    p = subparsers.add_parser(
        "explain",
        help="why that answer: each token's attribution to the answer's start and end",
        description="Attribute the answer (the pipeline's best, or --span) to the question's and context's "
        "tokens: integrated gradients on the embeddings layer as Captum's LayerIntegratedGradients (ig), Grad x "
        "Input, SmoothGrad or attention rollout. Scores are summed over the hidden dimension and divided by "
        "the L2 norm over the window's tokens (docs/attributions.md).",
    )
    add_question_arguments(p)
    p.add_argument("--method", default="ig", help=f"{', '.join(METHODS)} (default: %(default)s)")
    p.add_argument("--n-steps", type=int, default=DEFAULT_N_STEPS, help="ig: integration steps (default: %(default)s)")
    p.add_argument(
        "--approximation",
        default="gausslegendre",
        help=f"ig: Captum's approximation method, one of {', '.join(APPROXIMATIONS)} (default: %(default)s)",
    )
    p.add_argument(
        "--samples", type=int, default=DEFAULT_SAMPLES, help="smoothgrad: noisy copies averaged (default: %(default)s)"
    )
    p.add_argument(
        "--noise",
        type=float,
        default=DEFAULT_NOISE,
        help="smoothgrad: noise standard deviation as a fraction of the embeddings' range (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="smoothgrad: the noise's seed (default: %(default)s)")
    p.add_argument(
        "--span",
        metavar="START:END",
        help="explain these characters of the context (on token boundaries) instead of the pipeline's answer",
    )
    p.add_argument(
        "--max-windows",
        type=int,
        metavar="N",
        default=DEFAULT_MAX_ATTRIBUTION_WINDOWS,
        help="a context making more windows is refused: each costs about 2 x n_steps forwards and backwards "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="ROWS",
        help="rows per backward pass, which bounds memory (default: 1024 tokens' worth, at least 2)",
    )
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="(default: %(default)s)")
    p.add_argument("--by", choices=["word", "token"], default="word", help="table rows (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (docs/attributions.md)")
    p.add_argument("--out", metavar="PNG", help="also draw the scores as bar charts (needs the viz extra)")
    p.add_argument("--dpi", type=int, default=100, help="--out: pixels per inch (default: %(default)s)")
    p.set_defaults(run=run)
