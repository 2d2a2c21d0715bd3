"""A SQLite file's writer in a process of its own (``MAILMAN_SQLITE_WRITER=process``).

The store contract runs against it too (``test_store.py``'s ``sqlite-process``
backend); here is what is particular to the process: its lifecycle, its death,
and what crosses its socket.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mailman.store import Idempotency, IdempotencyMismatch, OutcomeUnknown, frames, open_store
from mailman.store.dialect import Dialect
from mailman.store.mails import MailTooLarge
from mailman.store.operation import Statement, Steps, write
from mailman.store.sqlite import SQLiteStore, _portable, _ProcessWriter

from ..conftest import eventually, make_config
from .test_store import mail


def writer_of(store: SQLiteStore) -> _ProcessWriter:
    writer = store._writer
    assert isinstance(writer, _ProcessWriter)
    return writer


def pid_of(store: SQLiteStore) -> int:
    pid = writer_of(store)._pid
    assert pid is not None
    return pid


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(str(tmp_path / "mailman.db"), writer="process")
    async with opened:
        yield opened


async def test_writes_run_in_another_process_and_are_read_back(store: SQLiteStore) -> None:
    """Mails added at once through the writer process are all committed and read back."""
    assert pid_of(store) != os.getpid()
    ids = await asyncio.gather(*(store.add(mail(f"m{n}")) for n in range(50)))
    assert ids == [f"m{n}" for n in range(50)]
    assert all([await store.get(f"m{n}") is not None for n in range(50)])


async def test_an_idle_writer_process_gets_a_turns_first_calls_at_once(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of forty adds made in one event-loop turn, the idle writer process gets the first
    ``submit_every`` at once, and, busy with them, the rest at the turn's end; each is
    committed."""
    sizes: list[int] = []
    calls_frame = frames.calls_frame

    def counted(calls: list[Any]) -> bytes:
        sizes.append(len(calls))
        return calls_frame(calls)

    monkeypatch.setattr(frames, "calls_frame", counted)
    every = writer_of(store).submit_every
    assert 1 < every < 40
    ids = await asyncio.gather(*(store.add(mail(f"m{n}")) for n in range(40)))
    assert ids == [f"m{n}" for n in range(40)]
    assert sizes == [every, 40 - every]
    assert all([await store.get(f"m{n}") is not None for n in range(40)])


async def test_an_error_of_one_call_comes_back_as_itself(store: SQLiteStore) -> None:
    """A key reused with another body is IdempotencyMismatch naming the first mail."""
    first = Idempotency(key_hash="k", fingerprint="a", expires_at=2000.0)
    assert await store.add(mail("m1"), first) == "m1"
    again = Idempotency(key_hash="k", fingerprint="b", expires_at=2000.0)
    with pytest.raises(IdempotencyMismatch) as raised:
        await store.add(mail("m2"), again)
    assert raised.value.mail_id == "m1"


async def test_an_operation_the_writer_process_cannot_find_fails_alone(
    store: SQLiteStore,
) -> None:
    """A call of an operation defined inside a function (no name to find it by) fails
    with an error naming it; the calls beside it run and the process goes on."""

    @write
    def one(d: Dialect) -> Steps[int]:
        cursor = yield Statement("SELECT 1")
        return int(cursor.fetchone()[0])

    pid = pid_of(store)
    lost = asyncio.ensure_future(store.run(one))
    added = asyncio.ensure_future(store.add(mail("m1")))  # in the same batch
    with pytest.raises(RuntimeError, match="one"):
        await lost
    assert await added == "m1"
    assert pid_of(store) == pid


@write
def _bound_back(d: Dialect) -> Steps[tuple[bool, list[Any]]]:
    """Whether this process finds None and bytes in sqlite3's adapters, and a row of a
    None, bytes and an int bound and read back."""
    found = all((kind, sqlite3.PrepareProtocol) in sqlite3.adapters for kind in (type(None), bytes))
    cursor = yield Statement("SELECT ?, ?, ?", (None, b"\x00\xffraw", 7))
    return found, list(cursor.fetchone())


async def test_the_writer_process_binds_none_and_bytes_as_they_are(store: SQLiteStore) -> None:
    """The writer process finds an adapter for None and bytes at once (no failed lookups
    per parameter) and binds them as they were; this process's sqlite3 is left as it is."""
    found, row = await store.run(_bound_back)
    assert found
    assert row == [None, b"\x00\xffraw", 7]
    assert (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters


def test_an_error_that_cannot_cross_as_itself_comes_back_named() -> None:
    """An exception pickle cannot rebuild becomes a RuntimeError naming it; others stay."""

    class Odd(Exception):
        def __init__(self, a: int, b: int) -> None:
            super().__init__(f"{a} and {b}")

    assert isinstance(_portable(MailTooLarge(10, 5)), MailTooLarge)
    crossed = _portable(Odd(1, 2))
    assert type(crossed) is RuntimeError and "Odd: 1 and 2" in str(crossed)


async def test_a_killed_writer_process_leaves_its_calls_unknown_and_a_new_one_starts(
    store: SQLiteStore,
) -> None:
    """A call sent to a writer process that dies is OutcomeUnknown; the next gets a new process."""
    first = pid_of(store)
    os.kill(first, signal.SIGSTOP)
    try:
        call = asyncio.create_task(store.add(mail("m1")))
        await eventually(lambda: bool(writer_of(store)._sent), what="the call sent")
    finally:
        os.kill(first, signal.SIGKILL)
    with pytest.raises(OutcomeUnknown):
        await call
    assert await store.add(mail("m2")) == "m2"
    assert pid_of(store) != first
    assert await store.get("m2") is not None


async def test_the_writer_process_ignores_sigterm_and_ends_with_its_store(
    tmp_path: Path,
) -> None:
    """SIGTERM (a stop reaching the process group) leaves the writer working; closing ends it."""
    store = SQLiteStore(str(tmp_path / "mailman.db"), writer="process")
    async with store:
        pid = pid_of(store)
        os.kill(pid, signal.SIGTERM)
        assert await store.add(mail("m1")) == "m1"
        assert not gone(pid)
    await eventually(lambda: gone(pid), what="the writer process ended")


async def test_closing_commits_what_was_handed_in(tmp_path: Path) -> None:
    """Calls made right before the store closes are committed by the writer process first."""
    path = str(tmp_path / "mailman.db")
    store = SQLiteStore(path, writer="process")
    await store.open()
    calls = [asyncio.create_task(store.add(mail(f"m{n}"))) for n in range(20)]
    await asyncio.sleep(0)  # the calls are handed in, not yet answered
    await store.close()
    assert [await call for call in calls] == [f"m{n}" for n in range(20)]
    async with SQLiteStore(path) as reopened:
        assert all([await reopened.get(f"m{n}") is not None for n in range(20)])


def test_the_setting_names_where_a_files_writes_run(tmp_path: Path) -> None:
    """MAILMAN_SQLITE_WRITER reaches the store: process by default, thread when asked."""
    default = make_config(tmp_path)
    assert default.sqlite_writer == "process"
    store = open_store(default.store, sqlite_writer=default.sqlite_writer)
    assert isinstance(store, SQLiteStore) and store.writer == "process"
    asked = make_config(tmp_path, {"MAILMAN_SQLITE_WRITER": "thread"})
    assert asked.sqlite_writer == "thread"
    with pytest.raises(ValueError, match="writer must be one of"):
        SQLiteStore(str(tmp_path / "x.db"), writer="fork")


async def test_a_relative_path_is_the_callers_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative path names the file in the caller's working directory, wherever the
    forker of writer processes was started."""
    async with SQLiteStore(str(tmp_path / "first.db"), writer="process"):
        pass  # the forker is running, started in the test's own directory
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    async with SQLiteStore("relative.db", writer="process") as store:
        assert await store.add(mail("m1")) == "m1"
    async with SQLiteStore(str(here / "relative.db")) as written:
        assert await written.get("m1") is not None
