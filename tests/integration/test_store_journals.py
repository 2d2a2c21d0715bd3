"""Where a SQLite writer keeps its statement journals (the pages one statement changes,
as they were, to undo that statement alone): in memory while it serves, in files while
it migrates, on the writer thread and the writer process alike."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from mailman.config.settings import SQLITE_WRITERS
from mailman.store import OutcomeUnknown
from mailman.store.dialect import Dialect
from mailman.store.operation import Statement, Steps, write
from mailman.store.sqlite import MIGRATIONS, SQLiteStore

from ..conftest import eventually
from .test_writer_process import gone, pid_of

#: A migration that notes where its own transaction keeps statement journals.
PROBE = "CREATE TABLE probe AS SELECT temp_store FROM pragma_temp_store()"
MEMORY, FILE = 2, 1


@write
def writers_temp_store(d: Dialect) -> Steps[int]:
    cur = yield Statement("SELECT temp_store FROM pragma_temp_store()")
    value: int = cur.fetchone()[0]
    return value


@write
def probed(d: Dialect) -> Steps[int]:
    cur = yield Statement("SELECT temp_store FROM probe")
    value: int = cur.fetchone()[0]
    return value


@pytest.mark.parametrize("writer", SQLITE_WRITERS)
async def test_the_writer_keeps_statement_journals_in_memory(tmp_path: Path, writer: str) -> None:
    """Once open, the writer's transactions journal their statements in memory."""
    store = SQLiteStore(str(tmp_path / "mailman.db"), writer=writer)
    async with store:
        assert await store.run(writers_temp_store) == MEMORY


@pytest.mark.parametrize("writer", SQLITE_WRITERS)
async def test_migrations_keep_statement_journals_in_files(tmp_path: Path, writer: str) -> None:
    """A migration (which may rewrite a whole table in one statement) journals in files."""
    path = str(tmp_path / "mailman.db")
    store = SQLiteStore(path, migrations=(*MIGRATIONS, PROBE), writer=writer)
    async with store:
        assert await store.run(probed) == FILE
        assert await store.run(writers_temp_store) == MEMORY


async def test_a_writer_process_started_again_journals_in_memory_too(tmp_path: Path) -> None:
    """The writer process that follows one that died journals in memory too."""
    store = SQLiteStore(str(tmp_path / "mailman.db"), writer="process")
    async with store:
        first = pid_of(store)
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: gone(first), what="the first writer process gone")
        with contextlib.suppress(OutcomeUnknown):  # sent before the death was seen
            await store.run(writers_temp_store)
        assert await store.run(writers_temp_store) == MEMORY
        assert pid_of(store) != first
