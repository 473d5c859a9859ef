"""`npbert trace`: run a question and a context through the model and save every named intermediate."""

from __future__ import annotations


def add_question_arguments(p) -> None:
    """The model and the question/context flags that `trace` and `attention` share (-q, -c, --context-file
    as `npbert ask`)."""
    from ..hub import DEFAULT_MODEL
    from .ask import add_input_arguments

    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id (default: %(default)s)")
    p.add_argument("--revision", help="hub revision (hub ids only)")
    add_input_arguments(p)
    p.add_argument(
        "--max-seq-len",
        type=int,
        default=None,
        help="tokens per window (default: min(model_max_length, 384), as the pipeline)",
    )
    p.add_argument(
        "--doc-stride",
        type=int,
        default=None,
        help="context tokens shared by consecutive windows (default: min(max_seq_len // 2, 128))",
    )


def load_and_encode(args, dtype="float32"):
    """(model, model inputs {input_ids, attention_mask[, token_type_ids]} [B, S], tokens per window) for the
    parsed flags; the question and context are read and checked first (`args.question`, `args.context`
    then hold them)."""
    import numpy as np

    from .. import hub
    from ..model import AutoModel, AutoModelForQuestionAnswering
    from ..pipeline import check_parameters, window_settings
    from ..tokenizer import Tokenizer
    from ..trace import encode
    from ..weights import read_header
    from .ask import question_and_context

    args.question, args.context = question_and_context(args)
    # The pipeline's own checks, before the model is loaded; its defaults once the tokenizer is known.
    settings = check_parameters(dict(max_seq_len=args.max_seq_len, doc_stride=args.doc_stride))
    args.context_file = None
    folder = hub.resolve(args.model, args.revision)
    weights = folder / "model.safetensors"
    # An encoder-only checkpoint (no qa_outputs) traces and draws too, without the logits.
    encoder_only = weights.is_file() and "qa_outputs.weight" not in read_header(weights)[0]
    cls = AutoModel if encoder_only else AutoModelForQuestionAnswering
    model = cls.from_pretrained(folder, dtype=np.dtype(dtype))
    tokenizer = Tokenizer.from_folder(folder, model.config.model_type)
    max_seq_len, doc_stride = window_settings(tokenizer, settings.get("max_seq_len"), settings.get("doc_stride"))
    inputs, tokens = encode(tokenizer, args.question, args.context, max_seq_len, doc_stride)
    return model, inputs, tokens


# The largest trace written without --max-mb: one full-size DistilBERT window of 384 tokens is ~203 MB in
# float32 (33 MB a layer: the [H, S, S] scores and probabilities, the [S, F] FFN activations), so the
# default takes one window and refuses a few (a 3.5 KB context made 3 windows: 603 MB, written silently).
DEFAULT_MAX_MB = 256


def run(args) -> int:
    from .. import __version__
    from ..trace import save
    from . import CommandError

    if args.max_mb <= 0:
        raise CommandError(f"--max-mb must be a positive number, found {args.max_mb:g}", 2)
    model, inputs, tokens = load_and_encode(args, args.dtype)
    ids = inputs["input_ids"]
    # The size before the work: trace the first window (every window is padded to the same length, and
    # every tensor but the [1, S, E] position table grows with the window count), write nothing yet.
    first = model.trace(**{k: v[:1] for k, v in inputs.items()})
    estimate = sum(t.nbytes for t in first.values()) * ids.shape[0]
    if estimate > args.max_mb * 1e6:
        raise CommandError(
            f"the trace would be about {estimate / 1e6:.1f} MB ({ids.shape[0]} window(s) x "
            f"{ids.shape[1]} tokens, {args.dtype}), over --max-mb {args.max_mb:g}: pass --max-mb "
            f"{-(-estimate // 1e5) / 10:g} to write it, or a shorter context or --max-seq-len",
            2,
        )
    tensors = first if ids.shape[0] == 1 else model.trace(**inputs)
    meta = {
        "producer": f"npbert {__version__}",
        "model": args.model,
        "question": args.question,
        "context": args.context,
        "dtype": args.dtype,
        "tokens": tokens,
    }
    path = save(tensors, args.out, meta)
    size = sum(t.nbytes for t in tensors.values())
    print(
        f"{len(tensors)} tensors ({size / 1e6:.1f} MB, {ids.shape[0]} window(s) x {ids.shape[1]} tokens, "
        f"{args.dtype}) -> {path}"
    )
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "trace",
        help="save every named intermediate of one forward (safetensors)",
        description="Run the question and context through the model (the pipeline's "
        "encoding: every window, padded to the longest) and save every named intermediate "
        "(names: npbert/trace.py, docs/walkthrough.md).",
    )
    add_question_arguments(p)
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="float64 is the audit reference (default: %(default)s)",
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument(
        "--max-mb",
        type=float,
        default=DEFAULT_MAX_MB,
        metavar="MB",
        help="refuse, saying the size, a trace larger than this many megabytes: every window keeps "
        "each layer's [heads, tokens, tokens] attention (default: %(default)s)",
    )
    p.set_defaults(run=run)
