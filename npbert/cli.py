"""The `npbert` command: argparse sub-commands, each in its own module under `npbert/commands/`.

Thin by design: a command module parses its flags, calls the library, prints. Every module in
`npbert/commands/` that defines `add_parser(subparsers)` is a sub-command; heavy imports happen inside
the command's run function so `npbert --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__, commands


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2 (bad input) or 1 (anything else)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npbert", description="DistilBERT question answering in numpy.")
    parser.add_argument("--version", action="version", version=f"npbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except CommandError as e:
        print(f"npbert {args.command}: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print(f"npbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:  # bad input or an unloadable model: one line, no traceback
        print(f"npbert {args.command}: error: {e}", file=sys.stderr)
        return 2
