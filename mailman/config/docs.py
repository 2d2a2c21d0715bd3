"""docs/configuration.md's settings table, generated from the declarations.

The table stands between two markers in the page; ``with_table`` puts the
current one there (``python -m mailman.config --markdown docs/configuration.md``),
and a test fails while the page's table is not the one the declarations make.
"""

from __future__ import annotations

from .declare import Setting
from .settings import SETTINGS

BEGIN = (
    "<!-- settings table: generated from mailman/config/settings.py and the providers' "
    "modules by "
    "`python -m mailman.config --markdown docs/configuration.md`; edit the declarations, "
    "not the table -->"
)
END = "<!-- end of settings table -->"
REGENERATE = "python -m mailman.config --markdown docs/configuration.md"


def table() -> str:
    """One row per setting (hidden ones left out): setting, env, flag, default, meaning."""
    rows = [
        "| setting | env | flag | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for s in SETTINGS.values():
        if not s.hidden:
            cells = (_code(s.path), _code(s.env), _code(s.flag), default_cell(s), s.meaning)
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def default_cell(s: Setting) -> str:
    """The default as the docs show it: '`16777216` (16 MiB)', '— (off)'."""
    shown = _code(s.shown)
    return f"{shown} ({s.note})" if s.note else shown


def with_table(page: str) -> str:
    """``page`` with the current table between its markers; ``ValueError`` without them."""
    try:
        head, rest = page.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise ValueError(f"the page has no settings table markers ({BEGIN} ... {END})") from None
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def _code(text: str | None) -> str:
    return f"`{text}`" if text else "\u2014"
