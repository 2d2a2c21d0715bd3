"""Logging on the request path: one canonical line per request at info, detail at debug."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.config.logging import MASK, LineWriter, configure_logging, get_logger
from mailman.config.secret import Secret
from mailman.core.model import Mail
from mailman.core.unsubscribe import Ticket, sign
from mailman.intake.keys import Scope, create_key
from mailman.store import Store

from ..support.api import VALID, Client, CountingOutbound, client_factory
from ..support.fakes import FakeMailgun, FakeSendGrid

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z")


class Logs:
    """What the configured pipeline wrote to a UTF-8 text stream (our lines via its buffer)."""

    def __init__(self) -> None:
        self.raw = io.BytesIO()
        self.stream = io.TextIOWrapper(self.raw, encoding="utf-8", write_through=True)
        self.start = 0

    def text(self) -> str:
        self.stream.flush()
        return self.raw.getvalue().decode()

    def mark(self) -> None:
        """Later ``lines()`` are only those written from now on."""
        self.start = len(self.text())

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.text()[self.start :].splitlines()]


@contextlib.contextmanager
def configured(level: str = "info", *, cache: bool = False) -> Iterator[Logs]:
    """Logging as production sets it up (JSON), into ``Logs``; the previous set-up restored."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    logs = Logs()
    configure_logging(level, "json", stream=logs.stream, cache=cache)
    try:
        yield logs
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logging.captureWarnings(False)


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound) -> Client:
    return await client_factory(aiohttp_client, store, outbound, Config())()


async def a_key(store: Store) -> str:
    _, secret = await create_key(store, tenant="acme", scopes=(Scope.SEND,), rate=None)
    return secret


async def test_accepted_mail_is_one_info_line_with_the_request_fields(
    client: Client, store: Store
) -> None:
    """A 201 POST /mail/send logs one info line, http.request, with its id, mail and tenant."""
    secret = await a_key(store)
    with configured("info") as logs:
        logs.mark()
        resp = await client.post(
            "/mail/send",
            json=VALID,
            headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "trace-1"},
        )
        assert resp.status == 201
        mail_id = (await resp.json())["mail"]["id"]
        lines = logs.lines()
        text = logs.text()
    assert len(lines) == 1, lines
    line = lines[0]
    assert {k: line[k] for k in ("event", "level", "logger")} == {
        "event": "http.request",
        "level": "info",
        "logger": "mailman.http",
    }
    assert line["request_id"] == "trace-1" and line["status"] == 201
    assert line["mail_id"] == mail_id and line["recipients"] == 1 and line["tenant"] == "acme"
    assert (line["method"], line["path"]) == ("POST", "/mail/send")
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    assert ISO_UTC.fullmatch(line["timestamp"])
    assert "problem" not in line and secret not in text


async def test_refused_request_is_one_info_line_naming_the_problem(
    client: Client, store: Store
) -> None:
    """An unknown key (401) and an invalid mail (422): one http.request line each, with problem."""
    await a_key(store)
    with configured("info") as logs:
        logs.mark()
        resp = await client.post(
            "/mail/send", json=VALID, headers={"Authorization": "Bearer mm_not-a-real-key"}
        )
        assert resp.status == 401
        refused = logs.lines()
        text = logs.text()
        secret = await a_key(store)
        logs.mark()
        bad = {**VALID, "to": ["not an address"]}
        resp = await client.post(
            "/mail/send", json=bad, headers={"Authorization": f"Bearer {secret}"}
        )
        assert resp.status == 422
        invalid = logs.lines()
    assert [(e["event"], e["status"], e["problem"]) for e in refused] == [
        ("http.request", 401, "unauthorized")
    ]
    assert "mm_not-a-real-key" not in text
    assert [(e["event"], e["status"], e["problem"]) for e in invalid] == [
        ("http.request", 422, "validation")
    ]
    assert invalid[0]["invalid"] and invalid[0]["tenant"] == "acme"


async def test_debug_keeps_the_detail_lines_with_the_request_id(client: Client) -> None:
    """At debug, mail.accepted is logged too, and carries the request's id from contextvars."""
    with configured("debug") as logs:
        logs.mark()
        resp = await client.post("/mail/send", json=VALID, headers={"X-Request-Id": "trace-2"})
        assert resp.status == 201
        lines = logs.lines()
    events = {e["event"]: e for e in lines}
    assert set(events) == {"mail.accepted", "http.request"}
    assert events["mail.accepted"]["level"] == "debug"
    assert events["mail.accepted"]["request_id"] == "trace-2"
    assert events["mail.accepted"]["mail_id"] == events["http.request"]["mail_id"]


async def test_an_error_line_of_a_request_carries_its_request_id(
    client: Client, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500's http.error line has the request id (contextvars); http.request names the problem."""

    async def broken(mail: Mail, *args: object) -> None:
        raise RuntimeError("the password is hunter2")

    monkeypatch.setattr(store, "add", broken)
    with configured("info") as logs:
        logs.mark()
        resp = await client.post("/mail/send", json=VALID, headers={"X-Request-Id": "trace-3"})
        assert resp.status == 500
        lines = logs.lines()
    assert [(e["event"], e["level"], e["request_id"]) for e in lines] == [
        ("http.error", "error", "trace-3"),
        ("http.request", "info", "trace-3"),
    ]
    assert "RuntimeError" in lines[0]["exception"] and lines[1]["problem"] == "internal"


async def test_an_unsubscribe_link_logs_neither_its_token_nor_its_address(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """POST /unsubscribe/{token} logs its path as the route (the token is a capability and
    names its recipient) and suppression.added without the address; a forged one too."""
    config = dataclasses.replace(Config(), unsubscribe_secret=Secret("s3cret-unsub"))
    client = await client_factory(aiohttp_client, store, outbound, config)()
    token = sign("s3cret-unsub", Ticket("acme", "ann@example.com", "news", "01JMAIL"))
    with configured("info") as logs:
        logs.mark()
        for path in (f"/unsubscribe/{token}", f"/unsubscribe/{token}x"):
            resp = await client.post(path, data="List-Unsubscribe=One-Click")
            assert resp.status in (200, 403)
        lines = logs.lines()
        text = logs.text()
    assert [(e["event"], e.get("path"), e.get("status")) for e in lines] == [
        ("suppression.added", None, None),
        ("http.request", "/unsubscribe/{token}", 200),
        ("http.request", "/unsubscribe/{token}", 403),
    ]
    assert token[:20] not in text and "ann@example.com" not in text and "s3cret" not in text


def test_secrets_are_masked_every_time_a_field_name_is_seen() -> None:
    """Secret-looking fields are masked on each line (the known-safe names cache skips none)."""
    with configured("info") as logs:
        log = get_logger("mailman.test")
        for _ in range(3):
            log.info("ours", api_key="sk-secret", password="pw", n=1)
        logging.getLogger("asyncio").warning("lib", extra={"token": "tk-secret"})
        lines = logs.lines()
        text = logs.text()
    assert [(e["api_key"], e["password"], e["n"]) for e in lines[:3]] == [(MASK, MASK, 1)] * 3
    assert lines[3]["token"] == MASK and lines[3]["logger"] == "asyncio"
    assert "sk-secret" not in text and '"pw"' not in text and "tk-secret" not in text


def test_values_orjson_cannot_write_still_make_one_json_line() -> None:
    """A huge int, a non-str key, an object: the line is still one JSON object (repr values)."""

    @dataclasses.dataclass
    class Point:
        x: int

    with configured("info") as logs:
        get_logger("mailman.test").info("odd", big=2**70, keys={1: "a"}, obj=object(), p=Point(1))
        get_logger("mailman.test").info("fine", p=Point(2))
        lines = logs.lines()
    assert [e["event"] for e in lines] == ["odd", "fine"]
    assert lines[0]["big"] == str(2**70) and lines[1]["p"] == {"x": 2}


def test_a_cached_logger_binds_once_and_only_when_caching_is_on() -> None:
    """With caching, get_logger's methods are the bound logger's; without, each call resolves."""
    with configured("info", cache=False) as logs:
        log = get_logger("mailman.test")
        log.info("uncached")
        assert "info" not in vars(log)
        assert [e["event"] for e in logs.lines()] == ["uncached"]
    with configured("info", cache=True) as logs:
        log = get_logger("mailman.test")
        log.info("first")
        log.info("second")
        log.debug("filtered")
        assert "info" in vars(log) and "debug" in vars(log)
        assert [(e["event"], e["logger"]) for e in logs.lines()] == [
            ("first", "mailman.test"),
            ("second", "mailman.test"),
        ]


def _calls(log: Any) -> None:
    """The same lines, by every level method and shape a module logger is called with."""
    bound = structlog.contextvars.bind_contextvars(request_id="r-1", tenant="acme")
    try:
        log.info("plain", n=1, path="/mail", ratio=0.5, none=None)
        log.info("secret", api_key="sk-x", password="pw", level="not-this")
        log.warning("warned", mail_id="m1")
        log.warn("warned.old", mail_id="m2")
        log.error("failed", error="boom")
        log.critical("down", tenant="other")
        log.info("interpolated %s of %d", "one", 2)
        try:
            raise ValueError("x")
        except ValueError:
            log.exception("caught", mail_id="m3")
            log.error("with.info", exc_info=True)
        log.debug("filtered")
    finally:
        structlog.contextvars.reset_contextvars(**bound)


def _without_time(lines: list[dict[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Each line's fields in order, the timestamp checked and left out."""
    out = []
    for line in lines:
        assert ISO_UTC.fullmatch(line.pop("timestamp"))
        out.append(list(line.items()))
    return out


def test_a_cached_module_logger_writes_what_structlog_writes() -> None:
    """Our module loggers' own level methods write the very lines structlog's pipeline
    writes: fields in the same order, context, masks, ``%`` arguments and tracebacks."""
    with configured("info", cache=False) as logs:
        _calls(get_logger("mailman.test"))
        expected = _without_time(logs.lines())
    with configured("info", cache=True) as logs:
        log = get_logger("mailman.test")
        _calls(log)
        _calls(log)  # the methods kept from the first calls
        got = _without_time(logs.lines())
        assert "_fast_method" in log.info.__qualname__  # not structlog's own
        assert "_fast_method" not in log.exception.__qualname__  # its traceback: structlog's
    assert got == expected * 2
    assert [dict(line)["event"] for line in expected] == [
        "plain",
        "secret",
        "warned",
        "warned.old",
        "failed",
        "down",
        "interpolated one of 2",
        "caught",
        "with.info",
    ]
    assert "ValueError" in dict(expected[-1])["exception"]
    assert dict(expected[1])["api_key"] == MASK and dict(expected[1])["level"] == "info"


class CountingBuffer(io.BytesIO):
    """A binary stream that counts its writes (system calls, for a real file)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        return super().write(data)


async def test_info_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    """Info lines logged in one loop turn are one write; a warning goes out at once, in order."""
    buffer = CountingBuffer()
    writer = LineWriter(buffer)
    for n in range(3):
        writer.line(b'{"n": %d}' % n)
    assert buffer.writes == 0  # held until the loop turns
    writer.now(b'{"n": 3}')  # a warning: what was held first, then it
    assert buffer.getvalue().splitlines() == [b'{"n": %d}' % n for n in range(4)]
    writer.line(b'{"n": 4}')
    writer.line(b'{"n": 5}')
    writes = buffer.writes
    await asyncio.sleep(0)  # one loop turn
    assert buffer.writes == writes + 1
    assert buffer.getvalue().splitlines()[-2:] == [b'{"n": 4}', b'{"n": 5}']


def test_lines_outside_a_loop_are_written_at_once() -> None:
    """With no event loop running (start-up, other threads) a line is written at once."""
    buffer = CountingBuffer()
    LineWriter(buffer).line(b'{"n": 1}')
    assert buffer.getvalue() == b'{"n": 1}\n'


async def test_the_request_id_goes_with_the_mail_to_its_provider_call(tmp_path: Path) -> None:
    """The provider.call line of a mail carries the request id of the POST that sent it."""
    import aiohttp

    from mailman.system import embedded

    from ..conftest import eventually, make_config

    with configured("debug") as logs:
        async with (
            embedded(make_config(tmp_path)) as mailman,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(
                f"{mailman.url}/mail/send", json=VALID, headers={"X-Request-Id": "trace-77"}
            ) as resp:
                assert resp.status == 201
                mail_id = (await resp.json())["mail"]["id"]

            def called() -> list[dict[str, Any]]:
                return [
                    line
                    for line in logs.lines()
                    if line["event"] == "provider.call" and line.get("mail_id") == mail_id
                ]

            await eventually(lambda: bool(called()), what="the provider call's line")
            (line,) = called()
    assert line["request_id"] == "trace-77" and line["outcome"] == "accepted"
    assert line["level"] == "debug"


async def test_accepted_calls_are_summed_up_at_info_not_logged_one_by_one(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun
) -> None:
    """At info an accepted call logs no provider.call line; provider.calls counts it, and a
    refused call still logs its own provider.call line at warning."""
    import aiohttp

    from mailman.system import embedded

    from ..conftest import eventually, make_config

    env = {
        "MAILMAN_PROVIDERS": "sendgrid,mailgun",
        "SENDGRID_API_KEY": sendgrid.api_key,
        "SENDGRID_BASE_URL": sendgrid.base_url,
        "MAILGUN_API_KEY": mailgun.api_key,
        "MAILGUN_DOMAIN": mailgun.domain,
        "MAILGUN_BASE_URL": mailgun.base_url,
        "MAILMAN_CALLS_LOG_SECONDS": "0.1",
    }
    with configured("info") as logs:
        async with (
            embedded(make_config(tmp_path, env)) as mailman,
            aiohttp.ClientSession() as http,
        ):

            async def send() -> None:
                async with http.post(f"{mailman.url}/mail/send", json=VALID) as resp:
                    assert resp.status == 201

            def summed(provider: str) -> tuple[int, int]:
                lines = [
                    line
                    for line in logs.lines()
                    if line["event"] == "provider.calls" and line["provider"] == provider
                ]
                return sum(x["calls"] for x in lines), sum(x["accepted"] for x in lines)

            for _ in range(3):
                await send()
            await eventually(lambda: summed("sendgrid") == (3, 3), what="3 calls summed up")
            sendgrid.mode = "503"
            await send()
            await eventually(lambda: summed("mailgun") == (1, 1), what="the failover summed")
            await eventually(lambda: summed("sendgrid") == (4, 3), what="the refusal summed")
    calls = [line for line in logs.lines() if line["event"] == "provider.call"]
    assert [(c["provider"], c["level"], c["outcome"]) for c in calls] == [
        ("sendgrid", "warning", "transient")
    ]
    (summary, *_) = [line for line in logs.lines() if line["event"] == "provider.calls"]
    assert summary["level"] == "info" and summary["p99_ms"] >= summary["p50_ms"] > 0


@pytest.mark.parametrize(
    ("path", "given"),
    [
        ("/mail/send", None),
        ("/mail/send", "trace-3"),
        ("/v3/mail/send", None),
        ("/v3/mg.example.com/messages", None),
    ],
)
async def test_a_mail_carries_the_request_id_its_answer_and_line_name(
    aiohttp_client: AiohttpClient,
    store: Store,
    outbound: CountingOutbound,
    path: str,
    given: str | None,
) -> None:
    """The mail stores the id of the request that submitted it, the one its answer's
    X-Request-Id and its http.request line give, whether the caller gave one or not."""
    client = await client_factory(aiohttp_client, store, outbound, Config())()
    body: dict[str, Any] = dict(VALID)
    if path == "/v3/mail/send":
        body = {
            "personalizations": [{"to": [{"email": "ann@example.com"}]}],
            "from": {"email": "noreply@example.com"},
            "subject": "Welcome",
            "content": [{"type": "text/plain", "value": "Hello"}],
        }
    headers = {} if given is None else {"X-Request-Id": given}
    with configured("info") as logs:
        logs.mark()
        if path.endswith("/messages"):  # Mailgun's form
            form = {"from": "noreply@example.com", "to": "ann@example.com", "text": "Hello"}
            resp = await client.post(path, data=form, headers=headers)
        else:
            resp = await client.post(path, json=body, headers=headers)
        assert resp.status in (200, 201, 202), await resp.text()
        lines = logs.lines()
    rid = resp.headers["X-Request-Id"]
    assert given is None or rid == given
    (line,) = [e for e in lines if e["event"] == "http.request"]
    assert line["request_id"] == rid
    (dispatch,) = outbound.dispatched
    record = await store.get(dispatch.mail_id)
    assert record is not None and record.mail.request_id == rid
