"""POST /v3/mail/send: SendGrid's own Python SDK, pointed at Mailman, gets its failover."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from pytest_aiohttp import AiohttpClient
from python_http_client.exceptions import (
    BadRequestsError,
    ForbiddenError,
    HTTPError,
    PayloadTooLargeError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    Category,
    Content,
    ContentId,
    CustomArg,
    Disposition,
    Email,
    FileContent,
    FileName,
    FileType,
    From,
    Header,
    Mail,
    MailSettings,
    Personalization,
    ReplyTo,
    SandBoxMode,
    SendAt,
    TemplateId,
    To,
)

from mailman.config import Config
from mailman.core.model import Mail as MailmanMail
from mailman.core.submission import parse_mail
from mailman.core.validation import ValidationFailed, parse_address
from mailman.intake.keys import Scope, create_key
from mailman.routes.compat_sendgrid import GRANT_INVALID, Refusal, mailbox, translate
from mailman.store import Idempotency, MailQuery, Store, StoreUnavailable
from mailman.store.sqlite import SQLiteStore
from mailman.system import Mailman, embedded

from ..conftest import eventually, make_config, provider_env
from ..support.api import Client, CountingOutbound, client_factory
from ..support.fakes import FakeMailgun, FakeSendGrid

TENANT = "shop"


@dataclass(frozen=True, slots=True)
class Running:
    """The embedded system, a Mailman key for it, and SendGrid's client pointed at it."""

    mailman: Mailman
    key: str

    def client(self, key: str | None = None) -> SendGridAPIClient:
        return SendGridAPIClient(api_key=key or self.key, host=self.mailman.url)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def new_key(tmp_path: Path, scope: Scope = Scope.SEND, rate: float | None = None) -> str:
    """A key in the store the system will open (made before it starts)."""
    async with SQLiteStore(str(tmp_path / "mailman.db")) as store:
        _, secret = await create_key(store, tenant=TENANT, scopes=[scope], rate=rate)
    return secret


@pytest.fixture
async def running(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun
) -> AsyncIterator[Running]:
    key = await new_key(tmp_path)
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        yield Running(mailman, key)


async def send(client: SendGridAPIClient, message: Mail | dict[str, Any], **headers: str) -> Any:
    """``client.send(message)`` off the loop (the SDK is synchronous), with extra headers."""
    body = message if isinstance(message, dict) else message.get()
    return await asyncio.to_thread(
        client.client.mail.send.post, request_body=body, request_headers=headers or None
    )


async def refused(client: SendGridAPIClient, message: Mail | dict[str, Any]) -> HTTPError:
    """The SDK's error for a request Mailman refuses."""
    with pytest.raises(HTTPError) as caught:
        await send(client, message)
    return caught.value


def errors_of(error: HTTPError) -> list[dict[str, Any]]:
    """SendGrid's error body: checked for its shape, its entries returned."""
    assert error.headers["Content-Type"].startswith("application/json")
    body = orjson.loads(error.body)
    assert set(body) == {"errors"}
    for entry in body["errors"]:
        assert set(entry) == {"message", "field", "help"} and entry["message"]
        assert entry["help"] is None
    errors: list[dict[str, Any]] = body["errors"]
    return errors


async def shown(http: aiohttp.ClientSession, running: Running, mail_id: str) -> Any:
    """GET /mail/{id}'s mail."""
    async with http.get(f"{running.mailman.url}/mail/{mail_id}", headers=running.auth) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["mail"]


async def wait_sent(http: aiohttp.ClientSession, running: Running, mail_id: str) -> Any:
    """GET /mail/{id}'s mail once it is sent."""

    async def sent() -> bool:
        return bool((await shown(http, running, mail_id))["status"] == "sent")

    await eventually(sent, what=f"{mail_id} sent")
    return await shown(http, running, mail_id)


async def stored(store: Store) -> list[str]:
    """The ids of every mail in the store."""
    return [m.id for m in await store.list_mails(MailQuery(tenant=None, limit=100))]


def welcome() -> Mail:
    """A mail with every field the endpoint maps, built with the SDK's helpers."""
    message = Mail(
        from_email=From("noreply@example.com", "Shop, Inc."),
        to_emails=To("ann@example.com", "Ann Lee"),
        subject="Welcome",
        plain_text_content="Hello Ann",
        html_content="<p>Hello Ann</p>",
    )
    message.reply_to = ReplyTo("help@example.com", "Help desk")
    message.category = [Category("welcome"), Category("onboarding")]
    message.custom_arg = [CustomArg("user_id", "42"), CustomArg("plan", "pro")]
    message.header = Header("X-Campaign", "spring")
    return message


# --- end to end, through the SDK ---------------------------------------------------


async def test_a_mail_sent_with_the_sdk_reaches_sendgrid_with_its_fields(
    running: Running, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """The SDK's mail is accepted (202, X-Message-Id) and reaches SendGrid as it was built."""
    message = welcome()
    categories = message.get()["categories"]  # the SDK puts the last added first
    assert sorted(categories) == ["onboarding", "welcome"]
    response = await send(running.client(), message)
    assert response.status_code == 202
    assert response.body == b""
    mail_id = response.headers["X-Message-Id"]
    assert response.headers["X-Mailman-Ids"] == mail_id
    mail = await wait_sent(http, running, mail_id)
    assert mail["provider"] == "sendgrid"
    assert mail["submitted"]["from"] == {"email": "noreply@example.com", "name": "Shop, Inc."}
    assert mail["submitted"]["tags"] == categories

    (got,) = sendgrid.received
    assert got["personalizations"] == [{"to": [{"email": "ann@example.com", "name": "Ann Lee"}]}]
    assert got["from"] == {"email": "noreply@example.com", "name": "Shop, Inc."}
    assert got["reply_to"] == {"email": "help@example.com", "name": "Help desk"}
    assert got["subject"] == "Welcome"
    assert got["content"] == [
        {"type": "text/plain", "value": "Hello Ann"},
        {"type": "text/html", "value": "<p>Hello Ann</p>"},
    ]
    assert got["categories"] == categories
    assert got["custom_args"] == {"user_id": "42", "plan": "pro", "mail_id": mail_id}
    assert got["headers"]["X-Campaign"] == "spring"


async def test_two_personalizations_become_two_mails_each_to_its_own(
    running: Running, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """Each personalization is a mail of its own: its recipients, subject and custom_args."""
    message = welcome()
    second = Personalization()
    second.add_to(Email("bob@example.com", "Bob"))
    second.add_cc(Email("carol@example.com"))
    second.subject = "Welcome, Bob"
    second.add_custom_arg(CustomArg("user_id", "43"))
    second.add_header(Header("X-Campaign", "autumn"))
    message.add_personalization(second)
    order = [p["to"][0]["email"] for p in message.get()["personalizations"]]
    response = await send(running.client(), message)
    assert response.status_code == 202
    ids = response.headers["X-Mailman-Ids"].split(",")
    assert len(ids) == 2 and ids[0] == response.headers["X-Message-Id"]
    for mail_id in ids:
        await wait_sent(http, running, mail_id)

    # The ids come in the order of the personalizations (the SDK puts the last added first).
    by_id = {body["custom_args"]["mail_id"]: body for body in sendgrid.received}
    by_recipient = dict(zip(order, ids, strict=True))
    first, other = by_id[by_recipient["ann@example.com"]], by_id[by_recipient["bob@example.com"]]
    assert first["personalizations"][0]["to"] == [{"email": "ann@example.com", "name": "Ann Lee"}]
    assert "cc" not in first["personalizations"][0]
    assert (first["subject"], first["custom_args"]["user_id"]) == ("Welcome", "42")
    assert other["personalizations"][0]["to"] == [{"email": "bob@example.com", "name": "Bob"}]
    assert other["personalizations"][0]["cc"] == [{"email": "carol@example.com"}]
    assert other["subject"] == "Welcome, Bob"
    assert other["custom_args"] == {
        "user_id": "43",
        "plan": "pro",
        "mail_id": by_recipient["bob@example.com"],
    }
    assert other["headers"]["X-Campaign"] == "autumn"


async def test_with_sendgrid_down_the_mail_goes_out_through_mailgun(
    running: Running,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """The SDK's mail fails over: SendGrid answers 503, Mailgun takes it."""
    sendgrid.mode = "503"
    response = await send(running.client(), welcome())
    mail = await wait_sent(http, running, response.headers["X-Message-Id"])
    assert mail["provider"] == "mailgun"
    (got,) = mailgun.received
    assert any("ann@example.com" in to for to in got["to"])
    assert got["subject"] == ["Welcome"]
    assert sorted(got["o:tag"]) == ["onboarding", "welcome"]
    assert got["v:user_id"] == ["42"]
    assert sendgrid.received == []


def bad_third_recipient() -> Mail:
    message = welcome()
    for address in ("bob@example.com", "carol@example..com"):
        extra = Personalization()
        extra.add_to(Email(address))
        message.add_personalization(extra, index=len(message.personalizations))
    return message


def with_template() -> Mail:
    message = welcome()
    message.template_id = TemplateId("d-1234")
    return message


def with_amp() -> Mail:
    message = welcome()
    message.add_content(Content("text/x-amp-html", "<html amp4email></html>"))
    return message


def with_header(name: str) -> Mail:
    message = welcome()
    message.header = Header(name, "<mailto:unsubscribe@example.com>")
    return message


def with_categories(count: int) -> Mail:
    message = welcome()
    message.category = [Category(f"c{i}") for i in range(count)]
    return message


def with_reserved_arg() -> Mail:
    message = welcome()
    message.personalizations[0].add_custom_arg(CustomArg("event", "x"))
    return message


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (bad_third_recipient, "personalizations.2.to.0.email"),
        (with_template, "content"),  # the template renders it
        (with_amp, "content.1.type"),  # the SDK puts AMP between text and HTML
        (lambda: with_header("List-Unsubscribe"), "headers.List-Unsubscribe"),
        (lambda: with_categories(4), "categories"),
        (with_reserved_arg, "personalizations.0.custom_args.event"),
    ],
)
async def test_a_bad_request_is_a_sendgrid_400_naming_the_field_and_stores_nothing(
    running: Running, sendgrid: FakeSendGrid, build: Any, field: str
) -> None:
    """The SDK gets BadRequestsError with SendGrid's error body, the field as a SendGrid path;
    no personalization of the request is stored, not even the good ones before the bad one."""
    error = await refused(running.client(), build())
    assert isinstance(error, BadRequestsError)
    assert [e["field"] for e in errors_of(error)] == [field]
    assert await stored(running.mailman.store) == []
    assert sendgrid.calls == 0


async def test_a_bad_or_missing_key_is_a_sendgrid_401_and_a_read_key_a_403(
    tmp_path: Path, running: Running, http: aiohttp.ClientSession
) -> None:
    """An unknown key gets SendGrid's 401; no key 401 too (keys exist); a read-only key 403."""
    error = await refused(running.client("SG.not-a-mailman-key"), welcome())
    assert isinstance(error, UnauthorizedError)
    assert [e["message"] for e in errors_of(error)] == [GRANT_INVALID]
    url = f"{running.mailman.url}/v3/mail/send"
    async with http.post(url, json=welcome().get()) as resp:
        assert resp.status == 401 and resp.content_type == "application/json"
        assert (await resp.json())["errors"][0]["field"] is None
    _, reader = await create_key(running.mailman.store, tenant=TENANT, scopes=[Scope.READ])
    error = await refused(running.client(reader), welcome())
    assert isinstance(error, ForbiddenError)
    assert "send" in errors_of(error)[0]["message"]
    assert await stored(running.mailman.store) == []


async def test_sandbox_mode_answers_200_and_stores_nothing(
    running: Running, sendgrid: FakeSendGrid
) -> None:
    """mail_settings.sandbox_mode: checked, answered 200 with no body, nothing stored or sent."""
    message = welcome()
    settings = MailSettings()
    settings.sandbox_mode = SandBoxMode(True)
    message.mail_settings = settings
    response = await send(running.client(), message)
    assert (response.status_code, response.body) == (200, b"")
    assert "X-Message-Id" not in response.headers
    assert await stored(running.mailman.store) == []
    assert sendgrid.calls == 0
    message.header = Header("Bcc", "x@example.com")  # still checked in the sandbox
    error = await refused(running.client(), message)
    assert [e["field"] for e in errors_of(error)] == ["headers.Bcc"]


async def test_send_at_schedules_the_mail(running: Running, http: aiohttp.ClientSession) -> None:
    """A send_at an hour ahead makes the mail scheduled, at that time (RFC 3339)."""
    at = int(time.time()) + 3600
    message = welcome()
    message.send_at = SendAt(at)
    response = await send(running.client(), message)
    mail = await shown(http, running, response.headers["X-Message-Id"])
    assert mail["status"] == "scheduled"
    assert mail["submitted"]["send_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    )


async def test_attachments_reach_the_provider(
    running: Running, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """A file and an inline image made with the SDK's Attachment reach SendGrid intact."""
    pdf, png = b"%PDF-1.4 invoice", b"\x89PNG\r\n\x1a\n-logo"
    message = welcome()
    message.attachment = [
        Attachment(
            FileContent(base64.b64encode(pdf).decode()),
            FileName("invoice.pdf"),
            FileType("application/pdf"),
            Disposition("attachment"),
        ),
        Attachment(
            FileContent(base64.b64encode(png).decode()),
            FileName("logo.png"),
            FileType("image/png"),
            Disposition("inline"),
            ContentId("logo"),
        ),
    ]
    response = await send(running.client(), message)
    await wait_sent(http, running, response.headers["X-Message-Id"])
    (files,) = sendgrid.files
    got = {(f.filename, f.content_type, f.disposition, f.content_id): f.data for f in files}
    assert got == {
        ("invoice.pdf", "application/pdf", "attachment", None): pdf,
        ("logo.png", "image/png", "inline", "logo"): png,
    }


async def test_an_idempotency_key_makes_a_repeat_answer_the_same_mails(
    running: Running, http: aiohttp.ClientSession
) -> None:
    """With Idempotency-Key a repeat answers the same ids and stores nothing more; the same key
    with another request is a 400 naming the header."""
    message = welcome()
    extra = Personalization()
    extra.add_to(Email("bob@example.com"))
    message.add_personalization(extra)
    client = running.client()
    first = await send(client, message, **{"Idempotency-Key": "order-17"})
    again = await send(client, message, **{"Idempotency-Key": "order-17"})
    assert again.headers["X-Mailman-Ids"] == first.headers["X-Mailman-Ids"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert sorted(await stored(running.mailman.store)) == sorted(
        first.headers["X-Mailman-Ids"].split(",")
    )
    message.subject = "Another mail"
    error = await refused(client, message)
    assert isinstance(error, BadRequestsError)
    assert [e["field"] for e in errors_of(error)] == ["Idempotency-Key"]
    assert len(await stored(running.mailman.store)) == 2


async def test_the_rate_is_charged_per_mail(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun
) -> None:
    """A key of one mail per 100 s: one mail passes, the next is a 429 with Retry-After, and
    two personalizations at once (more than its burst) are a 400 naming personalizations."""
    key = await new_key(tmp_path, rate=0.01)
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        client = Running(mailman, key).client()
        message = welcome()
        extra = Personalization()
        extra.add_to(Email("bob@example.com"))
        message.add_personalization(extra)
        error = await refused(client, message)
        assert isinstance(error, BadRequestsError)
        assert [e["field"] for e in errors_of(error)] == ["personalizations"]
        assert (await send(client, welcome())).status_code == 202
        error = await refused(client, welcome())
        assert isinstance(error, TooManyRequestsError)
        assert int(error.headers["Retry-After"]) >= 1
        assert error.headers["RateLimit-Limit"] == "0.01"
        errors_of(error)
        assert len(await stored(mailman.store)) == 1


async def test_a_body_over_the_limit_is_a_sendgrid_413(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun
) -> None:
    """A body past MAILMAN_MAX_BODY_BYTES gets SendGrid's 413, nothing stored."""
    key = await new_key(tmp_path)
    env = provider_env(sendgrid, mailgun, MAILMAN_MAX_BODY_BYTES="4096")
    async with embedded(make_config(tmp_path, env)) as mailman:
        message = welcome()
        message.content = Content("text/plain", "x" * 5000)
        error = await refused(Running(mailman, key).client(), message)
        assert isinstance(error, PayloadTooLargeError)
        errors_of(error)
        assert await stored(mailman.store) == []


# --- the HTTP edges, without the SDK ----------------------------------------------------


async def test_open_while_no_key_exists(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """With no key in the store a request without Authorization is taken (like /mail/send);
    a key that is not Mailman's is still a 401."""
    async with embedded(make_config(tmp_path, {"MAILMAN_PROVIDERS": "outbox"})) as mailman:
        url = f"{mailman.url}/v3/mail/send"
        async with http.post(url, json=welcome().get()) as resp:
            assert resp.status == 202, await resp.text()
            assert resp.headers["X-Message-Id"]
        async with http.post(url, json=welcome().get(), headers={"Authorization": "Bearer x"}) as r:
            assert r.status == 401


@pytest.mark.parametrize(
    ("method", "body", "status"),
    [
        ("POST", b"{not json", 400),
        ("POST", b"[1, 2]", 400),
        ("POST", b"", 400),
        ("GET", b"", 405),
        ("PUT", b"{}", 405),
    ],
)
async def test_edges_answer_in_sendgrids_shape_never_problem_json(
    running: Running, http: aiohttp.ClientSession, method: str, body: bytes, status: int
) -> None:
    """Malformed JSON, a body that is not an object, a wrong method: SendGrid's error shape."""
    url = f"{running.mailman.url}/v3/mail/send"
    headers = {**running.auth, "Content-Type": "application/json"}
    async with http.request(method, url, data=body, headers=headers) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        errors = (await resp.json())["errors"]
        assert errors and all(e["message"] for e in errors)


async def test_a_full_backlog_is_a_sendgrid_503_with_retry_after(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """At the backlog limit: 503 in SendGrid's shape with Retry-After, nothing more stored."""
    config = dataclasses.replace(Config(), backlog_limit=1)
    client: Client = await client_factory(aiohttp_client, store, outbound, config)()
    resp = await client.post("/v3/mail/send", json=welcome().get())
    assert resp.status == 202
    resp = await client.post("/v3/mail/send", json=welcome().get())
    assert resp.status == 503 and resp.content_type == "application/json"
    assert resp.headers["Retry-After"] == "5"
    assert len((await resp.json())["errors"]) == 1
    assert await store.backlog() == 1


class SecondAddFails(SQLiteStore):
    """A real store whose second mail does not get stored: the store goes away mid-request."""

    adds = 0

    async def add(self, mail: MailmanMail, idempotency: Idempotency | None = None) -> str:
        self.adds += 1
        if self.adds == 2:
            raise StoreUnavailable("gone for a moment")
        return await super().add(mail, idempotency)


async def test_a_store_failure_between_mails_names_the_ones_kept_and_a_repeat_stores_the_rest(
    aiohttp_client: AiohttpClient, tmp_path: Path, outbound: CountingOutbound
) -> None:
    """The store fails on the second of two mails: 503 with Retry-After and the first mail's id
    in X-Mailman-Ids; the same request again with its Idempotency-Key stores only the second."""
    message = welcome()
    extra = Personalization()
    extra.add_to(Email("bob@example.com"))
    message.add_personalization(extra)
    headers = {"Idempotency-Key": "order-18"}
    async with SecondAddFails(str(tmp_path / "faulty.db")) as store:
        client = await client_factory(aiohttp_client, store, outbound, Config())()
        resp = await client.post("/v3/mail/send", json=message.get(), headers=headers)
        assert resp.status == 503 and resp.content_type == "application/json"
        assert resp.headers["Retry-After"]
        kept = resp.headers["X-Mailman-Ids"]
        assert await stored(store) == [kept]
        resp = await client.post("/v3/mail/send", json=message.get(), headers=headers)
        assert resp.status == 202
        first, second = resp.headers["X-Mailman-Ids"].split(",")
        assert first == kept
        assert sorted(await stored(store)) == sorted([first, second])
        assert "Idempotent-Replayed" not in resp.headers


# --- the translation ----------------------------------------------------------------


def test_display_names_survive_the_translation() -> None:
    """Names with commas, quotes, backslashes or accents come out of Mailman's parser as sent."""
    for name in ("Ann Lee", "Doe, Ann", 'Ann "the" Lee', "back\\slash", "Zoë", "(c) x"):
        assert parse_address(mailbox("ann@example.com", name)).name == name
    assert mailbox("ann@example.com", "") == "ann@example.com"


def test_whole_numbers_written_with_a_point_are_whole_numbers() -> None:
    """``asm.group_id`` 590.0 is the JSON number 590 (JSON Schema's integer): the group
    "590", as 590 gives; so are the groups to display and a ``send_at`` of 1.0 seconds."""
    with_point = {**BODY, "asm": {"group_id": 590.0, "groups_to_display": [590.0, 7]}}
    plain = {**BODY, "asm": {"group_id": 590, "groups_to_display": [590, 7]}}
    assert translate(with_point) == translate(plain)
    assert "590" in str(translate(plain))


def refusal(body: dict[str, Any]) -> list[str | None]:
    """The fields ``translate`` refuses ``body`` for."""
    with pytest.raises(Refusal) as caught:
        translate(body)
    assert caught.value.status == 400
    return [e.field for e in caught.value.errors]


BODY: dict[str, Any] = {
    "personalizations": [{"to": [{"email": "ann@example.com"}]}],
    "from": {"email": "noreply@example.com"},
    "subject": "Hi",
    "content": [{"type": "text/plain", "value": "Hi"}],
}


@pytest.mark.parametrize(
    ("extra", "fields"),
    [
        ({"asm": {"group_id": "1", "extra": 1}}, ["asm.extra", "asm.group_id"]),
        ({"asm": {"group_id": 1, "groups_to_display": "1"}}, ["asm.groups_to_display"]),
        ({"asm": {"group_id": 1.5}}, ["asm.group_id"]),
        ({"asm": {"group_id": True}}, ["asm.group_id"]),
        ({"asm": {"group_id": 10**18}}, ["asm.group_id"]),
        ({"asm": {"group_id": 1, "groups_to_display": [1, 2.5]}}, ["asm.groups_to_display"]),
        ({"batch_id": "b"}, ["batch_id"]),
        ({"ip_pool_name": "p"}, ["ip_pool_name"]),
        ({"sections": {"a": "b"}}, ["sections"]),
        ({"surprise": 1}, ["surprise"]),
        ({"mail_settings": {"footer": {"enable": True, "text": "x"}}}, ["mail_settings.footer"]),
        ({"reply_to_list": [{"email": "a@example.com"}, {"email": "b@example.com"}]}, None),
        ({"send_at": "tomorrow"}, ["send_at"]),
        ({"content": [{"type": "text/plain", "value": ""}]}, ["content.0.value"]),
        ({"from": {"email": "Ann <a@example.com>"}}, ["from.email"]),
        ({"personalizations": []}, ["personalizations"]),
        (
            {"personalizations": [{"to": [{"email": "a@example.com"}], "substitutions": {}}]},
            ["personalizations.0.substitutions"],
        ),
        (
            {
                "personalizations": [
                    {"to": [{"email": "a@example.com"}], "dynamic_template_data": {}}
                ]
            },
            ["personalizations.0.dynamic_template_data"],
        ),
        ({"template_id": 7}, ["template_id"]),
    ],
)
def test_what_mailman_cannot_honour_is_refused_by_name(
    extra: dict[str, Any], fields: list[str] | None
) -> None:
    """Templates, bad unsubscribe groups, IP pools, batches, unknown fields, enabled mail
    settings other than the sandbox, several reply-to addresses, bad shapes: a 400 naming
    each."""
    assert refusal({**BODY, **extra}) == (fields or ["reply_to_list"])


def test_harmless_and_mappable_fields_are_taken() -> None:
    """tracking_settings is ignored; a reply_to_list of one is the reply-to; disabled settings
    pass; personalization headers replace the message's case-insensitively."""
    (draft,) = translate(
        {
            **BODY,
            "tracking_settings": {"click_tracking": {"enable": True}},
            "mail_settings": {"footer": {"enable": False}, "sandbox_mode": {"enable": False}},
            "reply_to_list": [{"email": "help@example.com", "name": "Help"}],
            "headers": {"X-A": "1", "X-B": "2"},
            "personalizations": [
                {"to": [{"email": "ann@example.com"}], "headers": {"x-a": "3"}, "send_at": 0}
            ],
            "send_at": 1_750_000_000,
            "categories": ["a", "b"],
        }
    ).drafts
    assert draft.body["reply_to"] == "Help <help@example.com>"
    assert draft.body["headers"] == {"X-B": "2", "x-a": "3"}
    assert draft.body["send_at"] == datetime(1970, 1, 1, tzinfo=UTC)
    assert draft.path("headers.x-a") == "personalizations.0.headers.x-a"
    assert draft.path("headers.X-B") == "headers.X-B"
    assert draft.addresses["reply_to"] == ("reply_to_list.0", "help@example.com")
    assert draft.path("tags[1]") == "categories.1"
    assert draft.path("attachments[0].content_type") == "attachments.0.type"


@pytest.mark.parametrize(
    ("to", "field"),
    [
        ({"email": "ann@example.com", "name": "Ann\u0000Lee"}, "personalizations.0.to.0.name"),
        ({"email": "ann@@example.com", "name": "Ann"}, "personalizations.0.to.0.email"),
    ],
)
def test_an_address_error_names_the_email_or_the_name(to: dict[str, str], field: str) -> None:
    """Mailman's error about a recipient is put on its email, or on its name when the email
    alone is fine."""
    (draft,) = translate({**BODY, "personalizations": [{"to": [to]}]}).drafts
    with pytest.raises(ValidationFailed) as caught:
        parse_mail(draft.body, mail_id="01J", default_subject="(none)", now=0.0)
    assert [draft.path(e.field) for e in caught.value.errors] == [field]


def test_a_null_reply_to_list_entry_is_refused_by_name() -> None:
    """reply_to_list's one entry must be an address: null is refused, not dropped."""
    assert refusal({**BODY, "reply_to_list": [None]}) == ["reply_to_list.0"]


def test_a_whole_number_send_at_is_whole_seconds_however_written() -> None:
    """A send_at written 1.75e9 is the JSON number 1750000000, whole seconds; 1.5 is not."""
    (draft,) = translate({**BODY, "send_at": 1.75e9}).drafts
    assert draft.body["send_at"] == datetime.fromtimestamp(1_750_000_000, UTC)
    assert refusal({**BODY, "send_at": 1.5}) == ["send_at"]


@pytest.mark.parametrize("disposition", ["left out", None, "attachment", "ATTACHMENT"])
def test_a_plain_attachments_content_id_is_ignored_in_any_case(disposition: str | None) -> None:
    """A content_id on a plain attachment (disposition left out, null, or attachment in any
    case) is ignored, as SendGrid ignores it; the mail is valid."""
    file: dict[str, Any] = {"content": "QQ==", "filename": "a.txt", "content_id": {"any": 1}}
    if disposition != "left out":
        file["disposition"] = disposition
    (draft,) = translate({**BODY, "attachments": [file]}).drafts
    assert "content_id" not in draft.body["attachments"][0]
    mail = parse_mail(draft.body, mail_id="01J", default_subject="(none)", now=0.0)
    assert mail.attachments[0].content_id is None


# --- templates --------------------------------------------------------------------------

RECEIPT = {
    "name": "d-receipt",
    "subject": "Receipt for {{name}}",
    "html": "<p>Thanks {{name}}</p>{{#each items}}<li>{{title}}</li>{{/each}}"
    "{{#equals plan 'pro'}}<b>pro</b>{{/equals}}",
    "text": "Thanks {{name}}",
}


def templated(*people: tuple[str, dict[str, Any]]) -> Mail:
    """A mail naming the template d-receipt, one personalization per (address, data)."""
    message = Mail(from_email=From("noreply@example.com"))
    message.subject = "not used: the template's subject is"
    for address, data in people:
        personalization = Personalization()
        personalization.add_to(Email(address))
        personalization.dynamic_template_data = data
        message.add_personalization(personalization, index=len(message.personalizations))
    message.template_id = TemplateId("d-receipt")
    return message


async def create_template(running: Running, http: aiohttp.ClientSession, body: Any) -> None:
    url = f"{running.mailman.url}/templates"
    async with http.post(url, json=body, headers=running.auth) as resp:
        assert resp.status == 201, await resp.text()


async def test_template_id_is_rendered_per_personalization_and_sent_rendered(
    running: Running, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """Each personalization's dynamic_template_data renders the tenant's template (the
    subject too, SendGrid's rule); SendGrid gets the rendered mail, no template_id."""
    await create_template(running, http, RECEIPT)
    message = templated(
        ("ann@example.com", {"name": "Ann <3", "items": [{"title": "Tea"}], "plan": "pro"}),
        ("bob@example.com", {"name": "Bob", "items": [], "plan": "free"}),
    )
    response = await send(running.client(), message)
    assert response.status_code == 202
    ann, bob = response.headers["X-Mailman-Ids"].split(",")
    shown = await wait_sent(http, running, ann)
    assert shown["submitted"]["template"]["name"] == "d-receipt"
    await wait_sent(http, running, bob)
    by_id = {body["custom_args"]["mail_id"]: body for body in sendgrid.received}
    assert "template_id" not in by_id[ann]
    assert by_id[ann]["subject"] == "Receipt for Ann <3"
    assert by_id[ann]["content"] == [
        {"type": "text/plain", "value": "Thanks Ann <3"},
        {"type": "text/html", "value": "<p>Thanks Ann &lt;3</p><li>Tea</li><b>pro</b>"},
    ]
    assert by_id[bob]["subject"] == "Receipt for Bob"
    assert by_id[bob]["content"][1]["value"] == "<p>Thanks Bob</p>"


async def test_a_personalization_missing_a_variable_is_a_400_naming_its_data(
    running: Running, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """The second personalization lacks name: a 400 naming its dynamic_template_data and
    the variable; nothing is stored. An unknown template_id is a 400 naming it."""
    await create_template(running, http, RECEIPT)
    message = templated(("ann@example.com", {"name": "Ann"}), ("bob@example.com", {}))
    error = await refused(running.client(), message)
    assert isinstance(error, BadRequestsError)
    [entry] = errors_of(error)
    assert entry["field"] == "personalizations.1.dynamic_template_data"
    assert "name" in entry["message"]
    missing = templated(("ann@example.com", {"name": "Ann"}))
    missing.template_id = TemplateId("d-nothing")
    error = await refused(running.client(), missing)
    assert [e["field"] for e in errors_of(error)] == ["template_id"]
    assert await stored(running.mailman.store) == []
    assert sendgrid.calls == 0
