"""Command-line flags from the declarations.

``add_service_flags`` gives a parser every flag the service has, each with its
default and environment variable in its help, and an epilog that lists every
setting without a flag. ``add_flag`` gives a command one setting as a flag
(``mailman keys --store``), so it reads the same variable with the same default.
A flag's value is None when not given: ``Setting.read`` then falls back to the
environment, then to the default.
"""

from __future__ import annotations

import argparse
import shutil
import textwrap
from typing import Any

from .declare import Setting
from .settings import SETTINGS

DESCRIPTION = "Mailman: transactional mail through several providers, with failover."


def default_text(s: Setting) -> str:
    """The default as ``--help`` says it: '16777216, 16 MiB', 'off', 'none'."""
    return ", ".join(part for part in (s.shown, s.note) if part) or "none"


def flag_help(s: Setting, help: str | None = None, now: str | None = None) -> str:
    """'``help`` (default: ...; env VAR[; now: ...])', escaped for argparse."""
    said = [f"default: {default_text(s)}"]
    if s.env is not None:
        said.append(f"env {s.env}")
    if now is not None:
        said.append(f"now: {now}")
    return f"{help or s.help} ({'; '.join(said)})".replace("%", "%%")


def add_flag(
    parser: argparse.ArgumentParser,
    s: Setting,
    *,
    flag: str | None = None,
    help: str | None = None,
    now: str | None = None,
    default: Any = None,
) -> None:
    """``s`` as the flag ``flag`` (its own by default), into ``s.dest``.

    ``now``: the value in effect, shown in the help (already redacted).
    ``default``: the value when not given (``argparse.SUPPRESS``: leave the
    one an enclosing parser set).
    """
    name = flag or s.flag
    if name is None:
        raise ValueError(f"{s.path} has no flag")
    shown = argparse.SUPPRESS if s.hidden else flag_help(s, help, now)
    if isinstance(s.default, bool):  # a switch: given, it says true
        parser.add_argument(
            name, dest=s.dest, action="store_const", const="true", default=default, help=shown
        )
    else:
        parser.add_argument(name, dest=s.dest, metavar=s.metavar, default=default, help=shown)


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Every flag of the service, and the epilog listing the settings without one."""
    for s in SETTINGS.values():
        if s.flag is not None:
            add_flag(parser, s)
    parser.epilog = epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def epilog(width: int | None = None) -> str:
    """Flag over environment, then every setting without a flag with its help and default."""
    width = width or max(shutil.get_terminal_size().columns - 2, 40)
    fill = textwrap.TextWrapper(width=width)
    indent = textwrap.TextWrapper(width=width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines = [
        fill.fill(
            "Every flag has an environment twin; the flag wins. "
            "Settings without a flag are environment variables:"
        )
    ]
    for s in SETTINGS.values():
        if s.env is not None and s.flag is None and not s.hidden:
            lines.append(f"  {s.env}")
            lines.append(indent.fill(f"{s.help} (default: {default_text(s)})"))
    lines.append("")
    lines.append(fill.fill("docs/configuration.md says more about each."))
    return "\n".join(lines)


def service_parser() -> argparse.ArgumentParser:
    """The service's flags alone (``load``); the command line's ``serve`` has the same."""
    parser = argparse.ArgumentParser(prog="mailman", description=DESCRIPTION)
    add_service_flags(parser)
    return parser
