"""Shared test helpers: waiting on a condition with a deadline; configs for the embedded system."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import aiohttp
import pytest

from mailman.config import Config, load
from mailman.store import Store
from mailman.store.mysql import MySQLStore
from mailman.store.sqlite import SQLiteStore

from .support.api import CountingOutbound
from .support.databases import fresh_mysql
from .support.fake_postmark import FakePostmark
from .support.fake_resend import FakeResend
from .support.fake_ses import FakeSes, isolate_aws
from .support.fake_smtp_relay import FakeSmtpRelay
from .support.fakes import FakeMailgun, FakeSendGrid
from .support.kafka_broker import kafka_bootstrap  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tier (``pytest -m "not slow"`` leaves it out): every test of
    ``tests/system/`` (whole processes, faults, the benchmark), and every test that
    needs the Kafka broker (a group join or rebalance takes seconds)."""
    for item in items:
        system = "system" in Path(str(item.path)).relative_to(Path(__file__).parent).parts[:1]
        params = getattr(getattr(item, "callspec", None), "params", {})
        kafka = "kafka_bootstrap" in getattr(item, "fixturenames", ()) or "kafka" in params.values()
        if system or kafka:
            item.add_marker(pytest.mark.slow)


async def eventually(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    within: float = 10.0,
    interval: float = 0.01,
    what: str = "condition",
) -> None:
    """Wait until ``condition()`` holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(interval)


def make_config(tmp_path: Path, env: Mapping[str, str] | None = None, *argv: str) -> Config:
    """A Config built as production builds it (flags, env), on a free port and a tmp store."""
    base = {
        "MAILMAN_PORT": "0",
        # No SMTP listener: 2525 is one port for every test (tests/test_smtp.py asks for one).
        "MAILMAN_SMTP_PORT": "0",
        "MAILMAN_STORE": f"sqlite:///{tmp_path / 'mailman.db'}",
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        "MAILMAN_PROVIDER_TIMEOUT": "2",
        "MAILMAN_RETRY_BASE_SECONDS": "0.05",
        "MAILMAN_RETRY_CAP_SECONDS": "0.2",
        "MAILMAN_SHUTDOWN_TIMEOUT": "5",
        # A timed-out call hands its mail on at once unless a test listens for late answers.
        "MAILMAN_LATE_ANSWER_SECONDS": "0",
        "MAILMAN_PROVIDERS": "",
    }
    return load(list(argv), {**base, **(env or {})})


def sqlite_store(path: Path) -> str:
    """The URL of a SQLite store at ``path``, created (migrated) the way the service
    creates its store on its first start: the CLI tools work on an existing store only."""

    async def create() -> None:
        async with SQLiteStore(str(path)):
            pass

    asyncio.run(create())
    return f"sqlite:///{path}"


def provider_env(sg: FakeSendGrid, mg: FakeMailgun, **extra: str) -> dict[str, str]:
    """The environment that points Mailman's provider chain at the two fakes."""
    return {
        "MAILMAN_PROVIDERS": "sendgrid,mailgun",
        "SENDGRID_API_KEY": sg.api_key,
        "SENDGRID_BASE_URL": sg.base_url,
        "MAILGUN_API_KEY": mg.api_key,
        "MAILGUN_DOMAIN": mg.domain,
        "MAILGUN_BASE_URL": mg.base_url,
        **extra,
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A SQLite store in the test's directory, open for the test."""
    async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
        yield opened


@pytest.fixture
async def sendgrid() -> AsyncIterator[FakeSendGrid]:
    """A SendGrid fake on loopback (a test file may define its own)."""
    async with FakeSendGrid(api_key="SG.secret-test-key") as fake:
        yield fake


@pytest.fixture
async def mailgun() -> AsyncIterator[FakeMailgun]:
    """A Mailgun fake on loopback (a test file may define its own)."""
    async with FakeMailgun(api_key="key-secret-test", domain="mg.example.com") as fake:
        yield fake


@pytest.fixture
async def resend() -> AsyncIterator[FakeResend]:
    """A Resend fake on loopback."""
    async with FakeResend(api_key="re_secret-test-key") as fake:
        yield fake


@pytest.fixture
async def ses(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSes]:
    """An SES fake on loopback; the AWS credential chain finds its keys and nothing else."""
    async with FakeSes() as fake:
        isolate_aws(monkeypatch, fake.env())
        yield fake


@pytest.fixture
async def postmark() -> AsyncIterator[FakePostmark]:
    """A Postmark fake on loopback (a test file may define its own)."""
    async with FakePostmark(server_token="pm-secret-test-token") as fake:
        yield fake


def postmark_env(pm: FakePostmark) -> dict[str, str]:
    """The settings that point Mailman's ``postmark`` provider at the fake."""
    return {"POSTMARK_SERVER_TOKEN": pm.server_token, "POSTMARK_BASE_URL": pm.base_url}


@pytest.fixture
async def smtp_relay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FakeSmtpRelay]:
    """An SMTP relay fake on loopback whose CA the process trusts (``SSL_CERT_FILE``)."""
    async with FakeSmtpRelay(tmp_path) as fake:
        monkeypatch.setenv("SSL_CERT_FILE", str(fake.ca_file))
        yield fake


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for talking to a running Mailman."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def outbound() -> CountingOutbound:
    return CountingOutbound()


@pytest.fixture(params=["sqlite", "mysql"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each kind (MySQL: a fresh database; CI fails without a server)."""
    if request.param == "sqlite":
        async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
            yield opened
        return
    async with fresh_mysql("any") as url, MySQLStore.from_url(url) as opened:
        yield opened
