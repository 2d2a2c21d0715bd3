"""``python -m mailman.config --markdown [FILE]``: the settings table of
docs/configuration.md, printed, or written into FILE between its markers."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .docs import table, with_table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mailman.config", description="The settings, as documentation."
    )
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="FILE",
        required=True,
        help="the settings table in Markdown: printed, or put into FILE between its markers",
    )
    args = parser.parse_args(argv)
    if args.markdown == "-":
        print(table())
        return 0
    page = Path(args.markdown)
    try:
        page.write_text(with_table(page.read_text(encoding="utf-8")), encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"python -m mailman.config: {page}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
