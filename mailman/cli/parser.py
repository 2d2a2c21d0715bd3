"""The one ``mailman`` parser: ``--version``, and a subcommand per command.

``serve`` is the default: a command line that does not start with a command
(``mailman --port 0``) is ``serve``'s. ``mailman --help`` shows the service's
flags and settings too, as ``mailman serve --help`` does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from typing import Any

from mailman.config.flags import DESCRIPTION, add_service_flags

from .command import Command

#: What the top level itself answers; anything else not a command is ``serve``'s.
_OWN = ("-h", "--help", "--version")


def with_command(argv: Sequence[str], commands: Sequence[Command]) -> list[str]:
    """``argv`` with the default command (the first) put first when it names none."""
    if argv and (argv[0] in _OWN or argv[0] in {c.name for c in commands}):
        return list(argv)
    return [commands[0].name, *argv]


def build_parser(commands: Sequence[Command], env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser of ``mailman``: ``commands`` as subcommands (the first the default)."""
    root = argparse.ArgumentParser(prog="mailman", description=DESCRIPTION)
    root.add_argument("--version", action=_Version, help="show Mailman's version and exit")
    add_service_flags(root)
    names = ",".join(c.name for c in commands)
    sub = root.add_subparsers(dest="command", metavar=f"{{{names}}}", title="commands")
    for command in commands:
        parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.define(parser, env)
    return root


class _Version(argparse.Action):
    """``--version``: 'mailman X.Y.Z' (the installed package's) on stdout, exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, **kwargs
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{parser.prog} {version('mailman')}", file=sys.stdout)
        parser.exit()
