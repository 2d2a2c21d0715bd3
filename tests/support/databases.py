"""A fresh database of its own on the test MySQL/MariaDB server."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import pytest

from mailman.store.mysql import MySQLStore

from .kafka_broker import in_ci

#: The server the MySQL tests use (``$MYSQL_URL`` overrides).
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/"


@asynccontextmanager
async def fresh_mysql(label: str) -> AsyncIterator[str]:
    """The URL of a new database ``mailman_<label>_<random>``, dropped afterwards.

    Without a server the test is skipped, except in CI (``CI=true``), where it fails.
    """
    base = urlsplit(os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL)
    url = urlunsplit(base._replace(path=f"/mailman_{label}_{secrets.token_hex(4)}"))
    try:
        await MySQLStore.create_database(url)
    except OSError as exc:
        if in_ci():
            pytest.fail(f"no MySQL server for the {label} test: {exc}")
        pytest.skip(f"no MySQL server for the {label} test: {exc}")
    try:
        yield url
    finally:
        with contextlib.suppress(OSError):
            await MySQLStore.drop_database(url)
