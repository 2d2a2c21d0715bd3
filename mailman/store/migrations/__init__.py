"""The schema's migrations: numbered ``.sql`` files, one folder per dialect.

``sqlite/0003_tenants_keys_idempotency_rates.sql`` is the script that brings a
SQLite database from version 2 to 3. Each driver applies the scripts its database
is missing, in order, and records each version in ``schema_version``. Never edit
a released migration: add the next number, for both dialects.

MySQL's scripts are split on ``;``, so none may hold one in a comment or a
literal; DDL commits there at once, so each of its statements must be safe to
run again (``CREATE TABLE IF NOT EXISTS``, indexes inside the table; see
``mysql.ALREADY_DONE``).
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


def scripts(dialect: str, folder: Traversable | None = None) -> tuple[str, ...]:
    """The migration scripts of ``dialect`` (``sqlite`` or ``mysql``), script N
    bringing the schema from version N-1 to N. ``folder`` holds the dialects'
    folders: this package's own unless given."""
    root = resources.files(__name__) if folder is None else folder
    numbered: dict[int, str] = {}
    for entry in root.joinpath(dialect).iterdir():
        match = _NAME.fullmatch(entry.name)
        if match is None:
            continue
        number = int(match[1])
        if number in numbered:
            raise RuntimeError(f"two {dialect} migrations numbered {number}")
        numbered[number] = entry.read_text(encoding="utf-8")
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1..N: {sorted(numbered)}")
    return tuple(numbered[n] for n in sorted(numbered))
