"""`npbert diff`: compare two dumps (npbert traces, or activations exported from another framework)."""

from __future__ import annotations


def run(args) -> int:
    from ..trace import diff, load
    from . import CommandError

    a, _ = load(args.a)
    b, _ = load(args.b)
    report = diff(a, b, args.tol)
    if not report.diffs:
        raise CommandError(f"{args.a} and {args.b} have no tensor name in common", 2)
    width = max(len(d.name) for d in report.diffs)
    print(f"{'tensor':<{width}}  {'shape':<16} {'max abs diff':>12} {'rel diff':>10}")
    first = report.first_divergence
    for d in report.diffs:
        shape = (
            "x".join(map(str, d.shape_a))
            if d.shape_a == d.shape_b
            else ("x".join(map(str, d.shape_a)) + " vs " + "x".join(map(str, d.shape_b)))
        )
        flag = "  <- diverges" if d.diverges else ""
        print(f"{d.name:<{width}}  {shape:<16} {d.max_abs:>12.3g} {d.rel:>10.3g}{flag}")
        if d is first and args.stop:
            break
    for side, names in (("A", report.only_a), ("B", report.only_b)):
        if names:
            print(f"only in {side} ({len(names)}): {', '.join(names)}")
    n_bad = sum(d.diverges for d in report.diffs)
    if first is None:
        print(f"all {len(report.diffs)} common tensors agree within rel diff {args.tol:g}")
        return 0
    print(
        f"first divergence: {first.name} (rel diff {first.rel:.3g} > {args.tol:g}); "
        f"{n_bad} of {len(report.diffs)} tensors diverge"
    )
    return 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "diff",
        help="compare two dumps tensor by tensor; exit status 1 if one diverges",
        description="Compare two safetensors dumps tensor by tensor, in A's order (forward order for traces). "
        "rel diff = max|a - b| / max|b|; a float tensor diverges when rel diff > --tol, an integer tensor "
        "(ids, mask) or a shape when they differ at all. Exit status: 0 agree, 1 divergence, 2 bad input.",
    )
    p.add_argument("a", help="first dump (e.g. npbert trace)")
    p.add_argument("b", help="second dump, the reference (e.g. tools/export_transformers_activations.py)")
    p.add_argument("--tol", type=float, default=1e-4, help="largest rel diff allowed (default: %(default)g)")
    p.add_argument("--stop", action="store_true", help="stop the table at the first divergence")
    p.set_defaults(run=run)
