"""`npbert audit`: a report of exactly what will run (files, config, tensors, checks, float32 drift)."""

from __future__ import annotations


def run(args) -> int:
    import json

    from ..audit import audit, format_text

    report = audit(args.model, args.revision)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0 if report["ok"] else 1


def add_parser(subparsers) -> None:
    from ..hub import DEFAULT_MODEL

    p = subparsers.add_parser(
        "audit",
        help="report files, tensors, checks and float32 vs float64 drift",
        description="Audit a checkpoint: files with sha256, config, every tensor (shape, dtype, "
        "sha256, mean, std, min, max), parameter count, checks, and the float32 logits' drift "
        "from the float64 reference on a sample input. Exit status 1 if a check fails.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or hub id (default: %(default)s)")
    p.add_argument("--revision", help="hub revision (hub ids only)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(run=run)
