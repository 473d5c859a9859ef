"""`npbert attention`: draw attention heat maps for a question and a context (needs the viz extra:
matplotlib)."""

from __future__ import annotations

from .trace import add_question_arguments, load_and_encode


def run(args) -> int:
    import importlib.util

    from . import CommandError

    if importlib.util.find_spec("matplotlib") is None:  # say so before loading the model and running it
        raise CommandError(
            "attention pictures need matplotlib (the viz extra): pip install -e '.[viz]' in the npbert "
            "clone, or pip install matplotlib"
        )
    model, inputs, tokens = load_and_encode(args)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    config = model.config
    for flag, value, n, what in (
        ("--layer", args.layer, config.n_block_runs, "layers in the model"),
        ("--head", args.head, config.n_heads, "heads per layer"),
        ("--window", args.window, ids.shape[0], "window(s) for this context"),
    ):
        if value is not None and not 0 <= value < n:
            raise CommandError(f"{flag} {value} is out of range: there are {n} {what} (0 to {n - 1})", 2)
    try:
        from ..viz import attention_figure, save_png
    except ImportError as e:
        raise CommandError(str(e))
    layer = config.n_block_runs - 1 if args.layer is None else args.layer
    w = args.window
    out = model(**{name: batch[w : w + 1] for name, batch in inputs.items()}, output_attentions=True)
    n = int(mask[w].sum())  # drop padding: it attends and is attended to by nothing of interest
    probs = out.attentions[layer][0, :, :n, :n]  # [H, n, n]
    heads = list(range(config.n_heads)) if args.head is None else [args.head]
    what = f"layer {layer}, " + ("all heads" if args.head is None else f"head {args.head}")
    title = f"{what}, window {w}" if ids.shape[0] > 1 else what
    fig = attention_figure(probs[heads], tokens[w][:n], title=title, heads=heads)
    path = save_png(fig, args.out, dpi=args.dpi, description=f"npbert attention {title}: {' '.join(tokens[w][:n])}")
    width, height = fig.get_size_inches() * args.dpi
    print(f"{title}: {n} tokens, {round(width)}x{round(height)} px -> {path}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "attention",
        help="draw attention heat maps labelled with the tokens (PNG)",
        description="Heat maps of attention probabilities (rows: attending tokens, columns: "
        "attended tokens) for one head, or a grid of every head of a layer. Needs the "
        "optional viz extra (matplotlib): pip install -e '.[viz]' in the npbert clone.",
    )
    add_question_arguments(p)
    p.add_argument("--layer", type=int, default=None, help="layer, from 0 (default: the last)")
    p.add_argument("--head", type=int, default=None, help="head, from 0 (default: every head of the layer)")
    p.add_argument("--window", type=int, default=0, help="window of a long context, from 0 (default: 0)")
    p.add_argument("--dpi", type=int, default=100, help="pixels per inch (default: %(default)s)")
    p.add_argument("--out", required=True, help="output .png file")
    p.set_defaults(run=run)
