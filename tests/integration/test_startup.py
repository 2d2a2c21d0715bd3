"""Start-up as a real ``python -m mailman`` process: a store missing or down is waited for,
then one JSON line names it (password redacted) and the exit code is 2; a MySQL database
that does not exist is created; every line written is one JSON object."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiomysql
import pytest

from mailman.store.mysql import MySQLStore

from ..conftest import eventually
from ..support.databases import DEFAULT_MYSQL_URL
from ..support.kafka_broker import in_ci
from ..support.processes import ROOT, start_mailman, stop_process
from ..support.proxy import TcpProxy

PASSWORD = "pw-s3cret-startup"


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "MAILMAN_PORT": "0",
        "MAILMAN_SMTP_PORT": "0",
        "MAILMAN_PROVIDERS": "outbox",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        **extra,
    }


async def run_to_exit(env: Mapping[str, str]) -> tuple[int, list[dict[str, Any]], bytes]:
    """Run ``python -m mailman`` until it exits: its code, stdout and stderr lines as JSON
    (the test fails on a line that is not one JSON object), and the raw output."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailman",
        env=dict(env),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in (out + err).splitlines() if line.strip()]
    events = []
    for line in lines:
        event = json.loads(line)  # raises on a line that is not JSON (a raw traceback)
        assert isinstance(event, dict), line
        events.append(event)
    assert proc.returncode is not None
    return proc.returncode, events, out + err


def mysql_base() -> Any:
    return urlsplit(os.environ.get("MYSQL_URL") or DEFAULT_MYSQL_URL)


async def mysql_or_skip() -> None:
    base = mysql_base()
    try:
        conn = await aiomysql.connect(
            host=base.hostname or "127.0.0.1",
            port=base.port or 3306,
            user=base.username or "root",
            password=base.password or "",
        )
    except Exception as exc:
        if in_ci():
            pytest.fail(f"no MySQL server: {exc}")
        pytest.skip(f"no MySQL server: {exc}")
    conn.close()


def fresh_name() -> str:
    return f"mailman_startup_{secrets.token_hex(4)}"


@pytest.mark.slow
async def test_a_store_that_stays_down_ends_start_up_with_one_json_line_and_exit_2(
    tmp_path: Path,
) -> None:
    """MySQL on a closed port, MAILMAN_STARTUP_TIMEOUT_SECONDS=1: exit 2, every line one JSON
    object, one store.waiting warning per try, one start_failed line naming the store with
    the password redacted; the password nowhere."""
    env = base_env(
        tmp_path,
        MAILMAN_STORE=f"mysql://mailman:{PASSWORD}@127.0.0.1:1/mailman",
        MAILMAN_STARTUP_TIMEOUT_SECONDS="1",
        MAILMAN_LOG_FORMAT="json",
    )
    code, events, raw = await run_to_exit(env)
    assert code == 2, raw
    assert PASSWORD.encode() not in raw
    waits = [e for e in events if e["event"] == "store.waiting"]
    assert waits and all(e["level"] == "warning" for e in waits)
    assert [e["attempt"] for e in waits] == list(range(1, len(waits) + 1))
    (failed,) = [e for e in events if e["event"] == "mailman.start_failed"]
    assert failed["store"] == "mysql://mailman:********@127.0.0.1:1/mailman"
    assert "still down after 1 s" in failed["detail"]
    assert not [e for e in events if "exception" in e]


@pytest.mark.slow
async def test_a_sqlite_file_in_a_missing_directory_is_named_with_its_directory(
    tmp_path: Path,
) -> None:
    """A SQLite path whose directory does not exist: waited for, then exit 2 with one line
    saying which directory is missing (no traceback); the format by default, off a terminal,
    is JSON."""
    missing = tmp_path / "not-mounted"
    env = base_env(
        tmp_path,
        MAILMAN_STORE=f"sqlite:///{missing / 'mailman.db'}",
        MAILMAN_STARTUP_TIMEOUT_SECONDS="0.5",
    )
    env.pop("MAILMAN_LOG_FORMAT", None)
    code, events, raw = await run_to_exit(env)
    assert code == 2, raw
    (failed,) = [e for e in events if e["event"] == "mailman.start_failed"]
    assert f"directory {missing} does not exist" in failed["detail"]


async def test_a_bad_setting_is_one_json_line_and_exit_2(tmp_path: Path) -> None:
    """A configuration error, found before anything else, is one JSON line too (exit 2)."""
    env = base_env(tmp_path, MAILMAN_PORT="not-a-port")
    env.pop("MAILMAN_LOG_FORMAT", None)
    code, events, raw = await run_to_exit(env)
    assert code == 2, raw
    (line,) = events
    assert line["event"] == "config.invalid"
    assert "not-a-port" in line["detail"]


@pytest.mark.slow
async def test_a_store_that_comes_up_during_the_wait_is_used(tmp_path: Path) -> None:
    """MySQL behind a proxy that refuses connections at start: mailman waits (store.waiting),
    and once the proxy lets connections through it creates the database, which did not
    exist, and starts."""
    await mysql_or_skip()
    base = mysql_base()
    name = fresh_name()
    async with TcpProxy(base.hostname or "127.0.0.1", base.port or 3306) as proxy:
        proxy.cut()
        url = urlunsplit(base._replace(netloc=f"root@127.0.0.1:{proxy.port}", path=f"/{name}"))
        log = tmp_path / "mailman.log"
        env = base_env(tmp_path, MAILMAN_STORE=url, MAILMAN_STARTUP_TIMEOUT_SECONDS="60")
        starting = asyncio.create_task(start_mailman(env, log))
        try:

            def waiting() -> bool:
                return log.exists() and b'"store.waiting"' in log.read_bytes()

            await eventually(waiting, within=30, what="mailman waiting for the store")
            proxy.restore()
            child = await starting
            try:
                assert child.events("store.waiting")
                assert child.events("store.database_created")
                assert not child.events("mailman.start_failed")
            finally:
                await stop_process(child)
        finally:
            if not starting.done():
                starting.cancel()
            await MySQLStore.drop_database(urlunsplit(base._replace(path=f"/{name}")))


async def test_a_missing_database_that_the_user_may_not_create_says_what_to_run(
    tmp_path: Path,
) -> None:
    """A user with no right to the database (it does not exist): no wait, exit 2, one line
    with the CREATE DATABASE and GRANT to run; the password nowhere."""
    await mysql_or_skip()
    base = mysql_base()
    user = f"mm_{secrets.token_hex(4)}"
    conn = await aiomysql.connect(
        host=base.hostname or "127.0.0.1",
        port=base.port or 3306,
        user=base.username or "root",
        password=base.password or "",
        autocommit=True,
    )
    try:
        cur = await conn.cursor()
        for host in ("%", "localhost"):
            await cur.execute(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{PASSWORD}'")
        name = fresh_name()
        host_port = f"{base.hostname or '127.0.0.1'}:{base.port or 3306}"
        env = base_env(
            tmp_path,
            MAILMAN_STORE=f"mysql://{user}:{PASSWORD}@{host_port}/{name}",
            MAILMAN_STARTUP_TIMEOUT_SECONDS="30",
            MAILMAN_LOG_FORMAT="json",
        )
        code, events, raw = await run_to_exit(env)
        assert code == 2, raw
        assert PASSWORD.encode() not in raw
        assert not [e for e in events if e["event"] == "store.waiting"]
        (failed,) = [e for e in events if e["event"] == "mailman.start_failed"]
        assert f"CREATE DATABASE IF NOT EXISTS `{name}`" in failed["detail"]
        assert f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'%'" in failed["detail"]
    finally:
        for host in ("%", "localhost"):
            await cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        conn.close()


@pytest.mark.slow
async def test_a_kafka_broker_that_stays_down_ends_start_up_with_exit_2(tmp_path: Path) -> None:
    """Kafka on a closed port: waited for (broker.waiting), then exit 2 with one JSON line
    naming the broker; aiokafka's own lines are JSON too."""
    env = base_env(
        tmp_path,
        MAILMAN_STORE=f"sqlite:///{tmp_path / 'mailman.db'}",
        MAILMAN_BROKER="kafka://127.0.0.1:1",
        MAILMAN_STARTUP_TIMEOUT_SECONDS="1",
        MAILMAN_LOG_FORMAT="json",
    )
    code, events, raw = await run_to_exit(env)
    assert code == 2, raw
    assert [e for e in events if e["event"] == "broker.waiting"]
    (failed,) = [e for e in events if e["event"] == "mailman.start_failed"]
    assert failed["broker"] == "kafka://127.0.0.1:1"
