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
    """argparse, adding "did you mean ...?" to a mistyped command or flag, and giving a mistyped flag the
    sub-command's usage, not the top-level one. The sub-command parsers are of this class too (argparse
    makes them of the parent's class)."""

    argv: list[str] = []

    def error(self, message: str):
        # argparse reports a sub-command's unknown flags from the top-level parser (parse_args collects them
        # after the sub-command has parsed): hand them to the sub-command, whose usage is the one that helps.
        command = _subcommand(self)
        if command is not None and message.startswith("unrecognized arguments: "):
            command.error(message)
        if command is None and not message.startswith("unrecognized arguments: "):
            # a sub-command's own error (a required flag missing) caused by a mistyped flag: name that too
            unknown = _unknown_flags(self)
            if unknown:
                message += f"; unrecognized arguments: {' '.join(unknown)}"
        super().error(message + _did_you_mean(self, message))


def _subcommand(parser: argparse.ArgumentParser) -> argparse.ArgumentParser | None:
    """The parser of the sub-command named on the command line, when `parser` has sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = next((a for a in Parser.argv if a in action.choices), None)
            return action.choices[command] if command else None
    return None


def _unknown_flags(parser: argparse.ArgumentParser) -> list[str]:
    """The command line's words after the sub-command that look like flags `parser` does not know."""
    name = parser.prog.split()[-1]
    words = Parser.argv[Parser.argv.index(name) + 1 :] if name in Parser.argv else []
    return [
        w
        for w in words
        if w.startswith("-")
        and len(w) > 1
        and not w.lstrip("-").replace(".", "").isdigit()
        and w.split("=")[0] not in parser._option_string_actions
    ]


def _did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    choice = re.match(r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if choice:
        close = difflib.get_close_matches(choice.group(2), re.findall(r"'([^']*)'", choice.group(3)), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""
    if "unrecognized arguments: " not in message:
        return ""
    known = list(parser._option_string_actions)
    hints = []
    for flag in message.split("unrecognized arguments: ", 1)[1].split():
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
