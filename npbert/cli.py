"""The `npbert` command: argparse sub-commands, each in its own module under `npbert/commands/`.

Thin by design: a command module parses its flags, calls the library, prints. Every module in
`npbert/commands/` that defines `add_parser(subparsers)` is a sub-command; heavy imports happen inside
the command's run function so `npbert --help` stays fast.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import pkgutil
import re
import sys

from . import __version__, commands
from .commands import CommandError


class Parser(argparse.ArgumentParser):
    """argparse, adding "did you mean ...?" to a mistyped command or flag. The sub-command parsers are of
    this class too (argparse makes them of the parent's class)."""

    argv: list[str] = []

    def error(self, message: str):
        super().error(message + _did_you_mean(self, message))


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if choice:
        close = difflib.get_close_matches(choice.group(2), re.findall(r"'([^']*)'", choice.group(3)), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""
    if not message.startswith("unrecognized arguments: "):
        return ""
    # The top-level parser reports flags its sub-command did not know: look them up in that sub-command.
    known = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = next((a for a in Parser.argv if a in action.choices), None)
            if command:
                known = list(action.choices[command]._option_string_actions)
    hints = []
    for flag in message.removeprefix("unrecognized arguments: ").split():
        close = difflib.get_close_matches(flag.split("=")[0], known, n=1) if flag.startswith("-") else []
        if close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    return f" ({'; '.join(hints)})" if hints else ""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="npbert", description="DistilBERT question answering in numpy.")
    parser.add_argument("--version", action="version", version=f"npbert {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    Parser.argv = list(sys.argv[1:] if argv is None else argv)
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
