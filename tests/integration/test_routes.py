"""The HTTP API: routes, validation, problem answers, against a real SQLite store."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from structlog.testing import capture_logs

from mailman.config import Config
from mailman.core.messages import Dispatch, StatusUpdate
from mailman.core.model import Address, Attempt, Mail, Outcome, Status
from mailman.core.submission import parse_mail
from mailman.core.validation import MAX_RECIPIENTS, FieldError, ValidationFailed
from mailman.routes import CONFIG, OUTBOUND, STORE, create_app
from mailman.store import Store
from mailman.store.sqlite import SQLiteStore

Client = TestClient[web.Request, web.Application]
PROBLEM = "application/problem+json"
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

VALID: dict[str, Any] = {
    "from": "sender@example.com",
    "to": ["ann@example.com"],
    "subject": "Hello",
    "content": "Hi Ann",
}


class RecordingOutbound:
    """An outbound mailbox that records each dispatch, and whether the store had the mail then."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.dispatched: list[Dispatch] = []
        self.stored_at_dispatch: list[bool] = []

    async def dispatch(self, dispatch: Dispatch) -> None:
        self.stored_at_dispatch.append(await self.store.load(dispatch.mail_id) is not None)
        self.dispatched.append(dispatch)


class FailingOutbound:
    """An outbound mailbox that is down."""

    async def dispatch(self, dispatch: Dispatch) -> None:
        raise ConnectionError("broker unreachable")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with SQLiteStore(str(tmp_path / "mailman.db")) as opened:
        yield opened


@pytest.fixture
def outbound(store: Store) -> RecordingOutbound:
    return RecordingOutbound(store)


MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, store: Store, outbound: RecordingOutbound
) -> MakeClient:
    async def make(config: Config | None = None, out: Any = None) -> Client:
        app = create_app(
            store=store, outbound=outbound if out is None else out, config=config or Config()
        )
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def send(client: Client, body: object) -> ClientResponse:
    return await client.post(
        "/mail/send", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    """The problem body of ``resp``, after checking its status and shape."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def nothing_accepted(store: Store, outbound: RecordingOutbound) -> None:
    assert await store.unfinished() == []
    assert outbound.dispatched == []


async def accepted_id(client: Client, body: object = VALID) -> str:
    resp = await send(client, body)
    assert resp.status == 201, await resp.text()
    data = await resp.json()
    mail_id: str = data["mail"]["id"]
    return mail_id


# --- the app -------------------------------------------------------------------


def test_create_app_keeps_its_dependencies_under_typed_keys(
    store: Store, outbound: RecordingOutbound
) -> None:
    """create_app puts store, outbound and config into the app under their keys."""
    config = dataclasses.replace(Config(), max_body_bytes=4096)
    app = create_app(store=store, outbound=outbound, config=config)
    assert app[STORE] is store
    assert app[OUTBOUND] is outbound
    assert app[CONFIG] is config


# --- POST /mail/send: accepted -------------------------------------------------


async def test_send_valid_mail_is_stored_then_dispatched(
    client: Client, store: Store, outbound: RecordingOutbound
) -> None:
    """A valid mail answers 201 with Location and the exact body, stored queued, then dispatched."""
    resp = await send(client, VALID)
    assert resp.status == 201
    assert resp.content_type == "application/json"
    data = await resp.json()
    mail_id = data["mail"]["id"]
    assert ULID.fullmatch(mail_id)
    assert resp.headers["Location"] == f"/mail/{mail_id}"
    assert data == {
        "mail": {
            "id": mail_id,
            "status": "queued",
            "links": [{"status": f"/mail/{mail_id}/status", "self": f"/mail/{mail_id}"}],
        }
    }
    loaded = await store.load(mail_id)
    assert loaded is not None
    mail, status = loaded
    assert status is Status.QUEUED
    assert mail.sender == Address("sender@example.com")
    assert mail.to == (Address("ann@example.com"),)
    assert mail.subject == "Hello"
    assert mail.text == "Hi Ann"
    assert mail.html is None
    assert outbound.dispatched == [Dispatch(mail_id=mail_id, accepted_at=mail.created_at)]
    assert outbound.stored_at_dispatch == [True]


async def test_send_accepts_display_names(client: Client, store: Store) -> None:
    """Addresses may carry display names, kept apart from the address."""
    body = {
        **VALID,
        "from": "Sender Co <sender@example.com>",
        "to": ["Ann <ann@example.com>", '"Doe, Bob" <bob@example.com>'],
        "cc": "Cy <cy@example.com>",
        "bcc": ["dee@example.com"],
        "reply_to": "Help <help@example.com>",
    }
    loaded = await store.load(await accepted_id(client, body))
    assert loaded is not None
    mail = loaded[0]
    assert mail.sender == Address("sender@example.com", "Sender Co")
    assert mail.to == (Address("ann@example.com", "Ann"), Address("bob@example.com", "Doe, Bob"))
    assert mail.cc == (Address("cy@example.com", "Cy"),)
    assert mail.bcc == (Address("dee@example.com"),)
    assert mail.reply_to == Address("help@example.com", "Help")


async def test_send_accepts_to_as_one_string(client: Client, store: Store) -> None:
    """`to` may be a single string instead of a list."""
    loaded = await store.load(await accepted_id(client, {**VALID, "to": "ann@example.com"}))
    assert loaded is not None
    assert loaded[0].to == (Address("ann@example.com"),)


@pytest.mark.parametrize("subject", [None, "", "   "], ids=["missing", "empty", "blank"])
async def test_send_without_subject_uses_the_default(
    make_client: MakeClient, store: Store, subject: str | None
) -> None:
    """A missing or empty subject becomes config.default_subject."""
    client = await make_client(dataclasses.replace(Config(), default_subject="(none given)"))
    body = {k: v for k, v in VALID.items() if k != "subject"}
    if subject is not None:
        body["subject"] = subject
    loaded = await store.load(await accepted_id(client, body))
    assert loaded is not None
    assert loaded[0].subject == "(none given)"


@pytest.mark.parametrize(
    "fields",
    [{"content": "plain"}, {"text": "plain"}, {"content": "plain", "text": "plain"}],
    ids=["content", "text", "both-equal"],
)
async def test_send_content_and_text_are_aliases(
    client: Client, store: Store, fields: dict[str, str]
) -> None:
    """`content` and `text` both give the plain-text body."""
    body = {k: v for k, v in VALID.items() if k != "content"} | fields
    loaded = await store.load(await accepted_id(client, body))
    assert loaded is not None
    assert loaded[0].text == "plain"


async def test_send_html_only(client: Client, store: Store) -> None:
    """An HTML body alone is enough."""
    body = {k: v for k, v in VALID.items() if k != "content"} | {"html": "<p>Hi</p>"}
    loaded = await store.load(await accepted_id(client, body))
    assert loaded is not None
    assert (loaded[0].text, loaded[0].html) == (None, "<p>Hi</p>")


async def test_send_accepts_json_with_utf8_charset(client: Client) -> None:
    """application/json with a UTF-8 charset parameter is accepted."""
    resp = await client.post(
        "/mail/send",
        data=orjson.dumps(VALID),
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert resp.status == 201


async def test_send_still_answers_201_when_dispatch_fails(
    make_client: MakeClient, store: Store
) -> None:
    """A mail committed but not handed on stays queued for recovery; the caller gets 201."""
    client = await make_client(out=FailingOutbound())
    with capture_logs() as logs:
        mail_id = await accepted_id(client)
    assert [p.mail_id for p in await store.unfinished()] == [mail_id]
    assert any(e["event"] == "mail.dispatch_failed" for e in logs)


# --- POST /mail/send: refused --------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
async def test_send_wrong_content_type_is_415(
    client: Client, store: Store, outbound: RecordingOutbound, content_type: str
) -> None:
    """A body that is not UTF-8 application/json is refused with 415."""
    resp = await client.post(
        "/mail/send", data=orjson.dumps(VALID), headers={"Content-Type": content_type}
    )
    body = await problem(resp, 415)
    assert body["type"] == "https://mailman.dev/problems/unsupported-media-type"
    await nothing_accepted(store, outbound)


async def test_send_without_content_type_is_415(client: Client) -> None:
    """A body without any Content-Type is refused with 415."""
    resp = await client.post("/mail/send", data=b"{}", skip_auto_headers=["Content-Type"])
    await problem(resp, 415)


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b'{"to": }', b"\xff\xfe"])
async def test_send_malformed_json_is_400(
    client: Client, store: Store, outbound: RecordingOutbound, raw: bytes
) -> None:
    """A body that is not JSON is refused with 400."""
    resp = await client.post("/mail/send", data=raw, headers={"Content-Type": "application/json"})
    body = await problem(resp, 400)
    assert body["type"] == "https://mailman.dev/problems/malformed-json"
    await nothing_accepted(store, outbound)


def _without(*fields: str, **changes: object) -> dict[str, object]:
    return {k: v for k, v in VALID.items() if k not in fields} | changes


INVALID: list[tuple[str, object, str]] = [
    ("bad address", _without(to=["ann@example.com", "not-an-address"]), "to[1]"),
    ("two addresses in one string", _without(to=["a@example.com, b@example.com"]), "to[0]"),
    ("bad from", _without(**{"from": "nobody"}), "from"),
    ("no from", _without("from"), "from"),
    ("no to", _without("to"), "to"),
    ("empty to", _without(to=[]), "to"),
    ("null to", _without(to=None), "to"),
    ("too many recipients", _without(to=[f"r{i}@example.com" for i in range(1001)]), "to"),
    (
        "too many with cc and bcc",
        _without(to=["a@example.com"], cc=["b@example.com"] * 500, bcc=["c@example.com"] * 500),
        "bcc",
    ),
    ("CRLF in subject", _without(subject="Hi\r\nBcc: victim@example.com"), "subject"),
    ("LF in subject", _without(subject="Hi\nthere"), "subject"),
    ("CR/LF in a name", _without(to=["Ann\r\nBcc: x@example.com <ann@example.com>"]), "to[0]"),
    ("LF in the from name", _without(**{"from": "Evil\n <sender@example.com>"}), "from"),
    ("CR in reply_to", _without(reply_to="help@example.com\r"), "reply_to"),
    ("no body", _without("content"), "content"),
    ("empty body", _without(content=""), "content"),
    ("text differs from content", _without(text="other"), "text"),
    ("to is a number", _without(to=5), "to"),
    ("to entry is a number", _without(to=["ann@example.com", 7]), "to[1]"),
    ("cc is an object", _without(cc={"email": "a@example.com"}), "cc"),
    ("from is a list", _without(**{"from": ["sender@example.com"]}), "from"),
    ("reply_to is a list", _without(reply_to=["help@example.com"]), "reply_to"),
    ("subject is a list", _without(subject=[]), "subject"),
    ("content is a number", _without(content=1), "content"),
    ("html is an object", _without(html={}), "html"),
    ("array instead of object", [VALID], "body"),
    ("string instead of object", "hello", "body"),
    ("null instead of object", None, "body"),
]


@pytest.mark.parametrize(
    ("payload", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
async def test_send_invalid_field_is_422(
    client: Client, store: Store, outbound: RecordingOutbound, payload: object, field: str
) -> None:
    """Each invalid field is refused with 422, named in `errors`, and nothing is accepted."""
    resp = await send(client, payload)
    body = await problem(resp, 422)
    assert body["type"] == "https://mailman.dev/problems/validation"
    assert [e["field"] for e in body["errors"]] == [field]
    assert all(isinstance(e["message"], str) and e["message"] for e in body["errors"])
    await nothing_accepted(store, outbound)


async def test_send_lists_every_bad_field(client: Client) -> None:
    """A 422 names every bad field at once, one message each."""
    resp = await send(
        client,
        {"from": 1, "to": ["ok@example.com", "bad", "bad2"], "subject": "a\nb", "cc": 3},
    )
    body = await problem(resp, 422)
    assert sorted(e["field"] for e in body["errors"]) == sorted(
        ["from", "to[1]", "to[2]", "subject", "cc", "content"]
    )


async def test_send_over_max_body_bytes_is_413(
    make_client: MakeClient, store: Store, outbound: RecordingOutbound
) -> None:
    """A body larger than max_body_bytes is refused with 413 (Content-Length given)."""
    client = await make_client(dataclasses.replace(Config(), max_body_bytes=1024))
    resp = await send(client, {**VALID, "content": "x" * 2000})
    body = await problem(resp, 413)
    assert body["type"] == "https://mailman.dev/problems/too-large"
    await nothing_accepted(store, outbound)


async def test_send_chunked_over_max_body_bytes_is_413(
    make_client: MakeClient, store: Store, outbound: RecordingOutbound
) -> None:
    """A chunked body (no Content-Length) growing past max_body_bytes is refused with 413."""
    client = await make_client(dataclasses.replace(Config(), max_body_bytes=1024))

    async def chunks() -> AsyncIterator[bytes]:
        yield orjson.dumps({**VALID, "content": "x" * 2000})

    resp = await client.post(
        "/mail/send", data=chunks(), headers={"Content-Type": "application/json"}
    )
    body = await problem(resp, 413)
    assert body["type"] == "https://mailman.dev/problems/too-large"
    await nothing_accepted(store, outbound)


async def test_unexpected_error_is_a_generic_500(
    client: Client, store: Store, outbound: RecordingOutbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception answers a 500 problem that reveals nothing, and is logged."""

    async def broken(mail: Mail) -> None:
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(store, "add", broken)
    with capture_logs() as logs:
        resp = await send(client, VALID)
    body = await problem(resp, 500)
    assert "hunter2" not in await resp.text()
    assert body["type"] == "https://mailman.dev/problems/internal"
    assert "X-Request-Id" in resp.headers
    errors = [e for e in logs if e["event"] == "http.error"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    assert outbound.dispatched == []


# --- GET /mail/{id}/status and GET /mail/{id} ---------------------------------


async def test_status_of_a_mail(client: Client) -> None:
    """GET /mail/{id}/status answers the status with self and show links."""
    mail_id = await accepted_id(client)
    resp = await client.get(f"/mail/{mail_id}/status")
    assert resp.status == 200
    assert await resp.json() == {
        "mail": {
            "id": mail_id,
            "status": "queued",
            "links": [{"self": f"/mail/{mail_id}/status", "show": f"/mail/{mail_id}"}],
        }
    }


async def test_show_mail_has_submitted_fields_and_attempts(client: Client, store: Store) -> None:
    """GET /mail/{id} shows the status, the submitted mail and every attempt, times in ISO UTC."""
    body = {
        **VALID,
        "from": "Sender <sender@example.com>",
        "cc": ["cy@example.com"],
        "html": "<p>Hi</p>",
    }
    mail_id = await accepted_id(client, body)
    attempt = Attempt("sendgrid", 0, 1_700_000_000.5, Outcome.TRANSIENT, reason="503")
    accepted = Attempt("mailgun", 0, 1_700_000_001.0, Outcome.ACCEPTED, message_id="mg-1")
    await store.apply(
        [
            StatusUpdate(mail_id, Status.SENDING, 1_700_000_000.5, attempt=attempt),
            StatusUpdate(
                mail_id,
                Status.SENT,
                1_700_000_001.0,
                provider="mailgun",
                provider_message_id="mg-1",
                attempt=accepted,
            ),
        ]
    )
    resp = await client.get(f"/mail/{mail_id}")
    assert resp.status == 200
    mail = (await resp.json())["mail"]
    assert mail["id"] == mail_id
    assert mail["status"] == "sent"
    assert (mail["provider"], mail["provider_message_id"], mail["reason"]) == (
        "mailgun",
        "mg-1",
        None,
    )
    assert mail["updated_at"] == "2023-11-14T22:13:21.000Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", mail["created_at"])
    assert mail["submitted"] == {
        "from": {"email": "sender@example.com", "name": "Sender"},
        "to": [{"email": "ann@example.com"}],
        "cc": [{"email": "cy@example.com"}],
        "subject": "Hello",
        "text": "Hi Ann",
        "html": "<p>Hi</p>",
    }
    assert mail["attempts"] == [
        {
            "provider": "sendgrid",
            "round": 0,
            "at": "2023-11-14T22:13:20.500Z",
            "outcome": "transient",
            "reason": "503",
            "message_id": None,
            "checked": None,
        },
        {
            "provider": "mailgun",
            "round": 0,
            "at": "2023-11-14T22:13:21.000Z",
            "outcome": "accepted",
            "reason": None,
            "message_id": "mg-1",
            "checked": None,
        },
    ]
    assert mail["links"] == [{"self": f"/mail/{mail_id}", "status": f"/mail/{mail_id}/status"}]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/mail/01HZZZZZZZZZZZZZZZZZZZZZZZ"),
        ("GET", "/mail/nope/status"),
        ("POST", "/mail/nope/sent"),
        ("POST", "/mail/nope/failed"),
        ("GET", "/nowhere"),
        ("GET", "/mail/a/b/c"),
    ],
)
async def test_unknown_mail_or_path_is_404(client: Client, method: str, path: str) -> None:
    """An unknown mail id or path answers a 404 problem."""
    resp = await client.request(method, path)
    body = await problem(resp, 404)
    assert body["type"] == "https://mailman.dev/problems/not-found"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/mail/send", {"POST"}),
        ("GET", "/mail/send", {"POST"}),
        ("PUT", "/mail/x/status", {"GET", "HEAD"}),
        ("GET", "/mail/x/sent", {"POST"}),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: Client, method: str, path: str, allow: set[str]
) -> None:
    """A known path with the wrong method answers a 405 problem that keeps the Allow header."""
    resp = await client.request(method, path)
    body = await problem(resp, 405)
    assert body["type"] == "https://mailman.dev/problems/method-not-allowed"
    assert set(resp.headers["Allow"].split(",")) == allow


# --- request ids -----------------------------------------------------------------


async def test_request_id_is_echoed(client: Client) -> None:
    """A sane X-Request-Id from the caller is echoed back, on success and on error."""
    resp = await client.get("/mail/nope/status", headers={"X-Request-Id": "abc-123_x.y"})
    assert resp.headers["X-Request-Id"] == "abc-123_x.y"
    resp = await client.post("/mail/send", json=VALID, headers={"X-Request-Id": "req-2"})
    assert resp.status == 201
    assert resp.headers["X-Request-Id"] == "req-2"


@pytest.mark.parametrize("given", [None, "", "has space", "x" * 129, "semi;colon", "ünï"])
async def test_request_id_is_generated(client: Client, given: str | None) -> None:
    """Without a sane X-Request-Id, a new uuid4 hex one is made (also on 405s)."""
    headers = {} if given is None else {"X-Request-Id": given}
    resp = await client.get("/mail/send", headers=headers)
    assert resp.status == 405
    assert re.fullmatch(r"[0-9a-f]{32}", resp.headers["X-Request-Id"])


async def test_request_id_is_bound_to_log_events(client: Client) -> None:
    """Log events of a request carry its request id."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        await client.post("/mail/send", json=VALID, headers={"X-Request-Id": "trace-me"})
    events = {e["event"]: e for e in logs}
    assert events["mail.accepted"]["request_id"] == "trace-me"
    assert events["http.request"]["request_id"] == "trace-me"
    assert events["http.request"]["status"] == 201


# --- POST /mail/{id}/sent and /failed --------------------------------------------


async def test_mark_sent_then_repeat_then_failed(client: Client, store: Store) -> None:
    """queued -> sent answers 200; sent again is a 200 no-op; sent -> failed is a 409."""
    mail_id = await accepted_id(client)
    expected = {
        "mail": {
            "id": mail_id,
            "status": "sent",
            "links": [{"self": f"/mail/{mail_id}/status", "show": f"/mail/{mail_id}"}],
        }
    }
    resp = await client.post(f"/mail/{mail_id}/sent")
    assert resp.status == 200
    assert await resp.json() == expected
    resp = await client.post(f"/mail/{mail_id}/sent")
    assert resp.status == 200
    assert await resp.json() == expected
    resp = await client.post(f"/mail/{mail_id}/failed")
    body = await problem(resp, 409)
    assert body["type"] == "https://mailman.dev/problems/status-conflict"
    assert "sent" in body["detail"]
    loaded = await store.load(mail_id)
    assert loaded is not None and loaded[1] is Status.SENT


async def test_mark_failed_with_reason_then_sent_is_409(client: Client, store: Store) -> None:
    """queued -> failed keeps the given reason; failed -> sent is a 409 naming `failed`."""
    mail_id = await accepted_id(client)
    resp = await client.post(f"/mail/{mail_id}/failed", json={"reason": "bounced"})
    assert resp.status == 200
    assert (await resp.json())["mail"]["status"] == "failed"
    record = await store.get(mail_id)
    assert record is not None
    assert (record.status, record.reason) == (Status.FAILED, "bounced")
    resp = await client.post(f"/mail/{mail_id}/failed")
    assert resp.status == 200
    resp = await client.post(f"/mail/{mail_id}/sent")
    body = await problem(resp, 409)
    assert "failed" in body["detail"]


async def test_mark_failed_without_body(client: Client, store: Store) -> None:
    """POST /mail/{id}/failed needs no body."""
    mail_id = await accepted_id(client)
    resp = await client.post(f"/mail/{mail_id}/failed")
    assert resp.status == 200
    record = await store.get(mail_id)
    assert record is not None
    assert (record.status, record.reason) == (Status.FAILED, None)


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"{", 400), (b"[1]", 422), (b'{"reason": 5}', 422)],
)
async def test_mark_failed_with_a_bad_body(
    client: Client, store: Store, raw: bytes, status: int
) -> None:
    """A bad body on /failed is refused and the mail does not move."""
    mail_id = await accepted_id(client)
    resp = await client.post(
        f"/mail/{mail_id}/failed", data=raw, headers={"Content-Type": "application/json"}
    )
    await problem(resp, status)
    loaded = await store.load(mail_id)
    assert loaded is not None and loaded[1] is Status.QUEUED


# --- parse_mail ----------------------------------------------------------------


def parse(body: object) -> Mail:
    return parse_mail(body, mail_id="m1", default_subject="(no subject)", now=1234.5)


def fields_of(body: object) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        parse(body)
    return [e.field for e in caught.value.errors]


def test_parse_mail_builds_the_mail() -> None:
    """A full valid body becomes a Mail with id, time and every field."""
    mail = parse(
        {
            "from": "Sender <sender@example.com>",
            "to": "ann@example.com",
            "cc": ["Cy <cy@example.com>"],
            "bcc": "dee@example.com",
            "reply_to": "help@example.com",
            "subject": "Hi",
            "text": "plain",
            "html": "<b>hi</b>",
        }
    )
    assert mail == Mail(
        id="m1",
        sender=Address("sender@example.com", "Sender"),
        to=(Address("ann@example.com"),),
        subject="Hi",
        text="plain",
        html="<b>hi</b>",
        cc=(Address("cy@example.com", "Cy"),),
        bcc=(Address("dee@example.com"),),
        reply_to=Address("help@example.com"),
        created_at=1234.5,
    )


def test_parse_mail_normalizes_addresses() -> None:
    """The address part is kept in email-validator's normalized form."""
    mail = parse({**VALID, "to": "Ann <ann@EXAMPLE.COM>"})
    assert mail.to == (Address("ann@example.com", "Ann"),)


def test_parse_mail_allows_exactly_the_recipient_limit() -> None:
    """MAX_RECIPIENTS recipients in total are fine, one more is not."""
    to = [f"r{i}@example.com" for i in range(MAX_RECIPIENTS - 1)]
    assert len(parse({**VALID, "to": to, "cc": "c@example.com"}).to) == MAX_RECIPIENTS - 1
    assert fields_of({**VALID, "to": to, "cc": ["c@example.com", "d@example.com"]}) == ["cc"]


@pytest.mark.parametrize(
    "raw",
    [
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "alice@example.org)<bob@example.org>",
        "a@example.com <b@example.com>",
        "Ann",
        "",
        "<>",
    ],
)
def test_parse_mail_wants_exactly_one_valid_address_per_string(raw: str) -> None:
    """A recipient string must hold exactly one valid address."""
    assert fields_of({**VALID, "to": [raw]}) == ["to[0]"]


def test_parse_mail_one_message_per_field() -> None:
    """A field with several problems gets one message only."""
    with pytest.raises(ValidationFailed) as caught:
        parse({**VALID, "content": 5, "text": 6})
    errors = caught.value.errors
    assert [e.field for e in errors] == ["content", "text"]
    assert all(isinstance(e, FieldError) for e in errors)


def test_parse_mail_rejects_a_non_object() -> None:
    """The body must be a JSON object."""
    assert fields_of(["to"]) == ["body"]
    assert fields_of(42) == ["body"]


def test_parse_mail_keeps_the_first_error_of_a_field() -> None:
    """An empty list of recipients is reported once, as `to`."""
    assert fields_of({**VALID, "to": []}) == ["to"]


def test_validation_failed_message_names_fields() -> None:
    """ValidationFailed's text lists field and message pairs."""
    exc = ValidationFailed([FieldError("to", "is required"), FieldError("from", "is required")])
    assert str(exc) == "to: is required; from: is required"


# --- health --------------------------------------------------------------------


async def test_health_is_ok_while_the_store_answers(client: Client) -> None:
    """GET /health answers 200 while the store answers."""
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_health_is_503_when_the_store_is_gone(client: Client, store: Store) -> None:
    """GET /health answers a 503 problem once the store no longer answers."""
    await store.close()
    body = await problem(await client.get("/health"), 503)
    assert "store" in body["detail"]
