"""POST /v3/{domain}/messages: an app written for Mailgun sends through Mailman unchanged."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.validation import FieldError
from mailman.intake.keys import Scope, create_key
from mailman.routes.compat_mailgun import Translation, Upload, message, translate
from mailman.store import Store
from mailman.store.sqlite import SQLiteStore
from mailman.system import Mailman, embedded

from ..conftest import eventually, make_config, provider_env
from ..support.api import CountingOutbound, client_factory
from ..support.fakes import FakeMailgun, FakeSendGrid

DOMAIN = "mg.myapp.example"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(reversed(range(256))) * 4
#: A message as an app would post it to Mailgun: repeated and comma-separated
#: recipients (one display name holds a quoted comma), a tag twice, a header, variables.
FORM: list[tuple[str, str]] = [
    ("from", "Shop <orders@shop.example.com>"),
    ("to", "ann@example.com"),
    ("to", '"Doe, Bob" <bob@example.com>, cat@example.com'),
    ("cc", "dan@example.com"),
    ("bcc", "eve@example.com"),
    ("subject", "Your order"),
    ("text", "Thanks for your order!"),
    ("html", "<p>Thanks for your order!</p>"),
    ("o:tag", "orders"),
    ("o:tag", "receipt"),
    ("h:X-Custom", "spring"),
    ("h:Reply-To", "Help <help@shop.example.com>"),
    ("v:user_id", "42"),
    ("v:order", "A-17"),
    ("o:tracking", "yes"),
]


@dataclasses.dataclass(frozen=True)
class Keys:
    send: str
    read: str


@pytest.fixture
async def keys(tmp_path: Path) -> Keys:
    """A send key and a read-only key, in the store the system will open."""
    async with SQLiteStore(str(tmp_path / "mailman.db")) as store:
        _, send = await create_key(store, tenant="shop", scopes=[Scope.SEND])
        _, read = await create_key(store, tenant="shop", scopes=[Scope.READ])
    return Keys(send=send, read=read)


@pytest.fixture
async def mailman(
    tmp_path: Path, keys: Keys, sendgrid: FakeSendGrid, mailgun: FakeMailgun
) -> AsyncIterator[Mailman]:
    """The whole system in this loop, SendGrid's fake first, Mailgun's second."""
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as running:
        yield running


async def post(
    base: str,
    data: Any,
    *,
    key: str | None,
    files: Sequence[tuple[str, tuple[str, bytes, str] | tuple[str, bytes]]] | None = None,
    headers: dict[str, str] | None = None,
    domain: str = DOMAIN,
) -> requests.Response:
    """Post a message the way Mailgun's docs show, with ``requests``, off the loop."""
    return await asyncio.to_thread(
        requests.post,
        f"{base}/v3/{domain}/messages",
        auth=None if key is None else ("api", key),
        data=data,
        files=files,
        headers=headers,
        timeout=10,
    )


async def show(http: aiohttp.ClientSession, base: str, key: str, mail_id: str) -> Any:
    """GET /mail/{id}'s mail (Mailman's own API)."""
    async with http.get(
        f"{base}/mail/{mail_id}", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return (await resp.json())["mail"]


async def sent(http: aiohttp.ClientSession, base: str, key: str, mail_id: str) -> Any:
    """The mail once it is sent."""

    async def done() -> bool:
        return bool((await show(http, base, key, mail_id))["status"] == "sent")

    await eventually(done, what=f"{mail_id} sent")
    return await show(http, base, key, mail_id)


async def listed(http: aiohttp.ClientSession, base: str, key: str) -> list[Any]:
    async with http.get(f"{base}/mail", headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status == 200
        mails: list[Any] = (await resp.json())["mails"]
        return mails


def queued(resp: requests.Response) -> str:
    """The Mailman id of a message Mailgun-style accepted: the Message-ID's part before @."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"] == "Queued. Thank you."
    message_id: str = body["id"]
    mail_id, _, domain = message_id.strip("<>").partition("@")
    assert message_id == f"<{mail_id}@{domain}>"
    assert resp.headers["Location"] == f"/mail/{mail_id}"
    return mail_id


def refusal(resp: requests.Response, status: int = 400) -> str:
    """The message of a Mailgun-style JSON error."""
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    message: str = resp.json()["message"]
    return message


# --- the form, translated -----------------------------------------------------------


def test_recipients_split_at_commas_but_not_inside_quoted_names() -> None:
    """Repeated and comma-separated fields give one entry per address, names kept."""
    got = translate(
        [
            ("from", "a@example.com"),
            ("to", '"Doe, Jane" <jane@example.com>,bob@example.com, '),
            ("to", "Ann <ann@example.com>"),
            ("cc", ""),
            ("text", "hi"),
        ]
    )
    assert got.body["to"] == [
        '"Doe, Jane" <jane@example.com>',
        "bob@example.com",
        '"Ann" <ann@example.com>',
    ]
    assert "cc" not in got.body


def test_files_become_attachments_and_inline_parts_get_their_name_as_content_id() -> None:
    """attachment and inline file parts are base64 attachments; inline ones are cid:<name>."""
    got = translate(
        [
            ("from", "a@example.com"),
            ("to", "b@example.com"),
            ("html", '<img src="cid:logo.png">'),
            ("attachment", Upload("a.pdf", "application/pdf", PDF)),
            ("inline", Upload("logo.png", None, PNG)),
        ]
    )
    assert got.body["attachments"] == [
        {
            "filename": "a.pdf",
            "content": PDF,
            "content_type": "application/pdf",
            "disposition": "attachment",
        },
        {
            "filename": "logo.png",
            "content": PNG,
            "content_type": "image/png",
            "disposition": "inline",
            "content_id": "logo.png",
        },
    ]


def test_options_map_and_harmless_ones_are_ignored() -> None:
    """o:tag, h:, v:, o:deliverytime and o:testmode map; tracking options are ignored."""
    got = translate(
        [
            ("from", "a@example.com"),
            ("to", "b@example.com"),
            ("text", "hi"),
            ("o:tag", "x"),
            ("o:tag", "y"),
            ("h:X-A", "1"),
            ("h:reply-to", "r@example.com"),
            ("v:k", "v"),
            ("o:deliverytime", "Thu, 13 Oct 2011 18:02:00 +0200"),
            ("o:testmode", "yes"),
            ("o:tracking-clicks", "htmlonly"),
        ]
    )
    assert got == Translation(
        body={
            "from": "a@example.com",
            "to": ["b@example.com"],
            "text": "hi",
            "tags": ["x", "y"],
            "headers": {"X-A": "1"},
            "reply_to": "r@example.com",
            "metadata": {"k": "v"},
            "send_at": datetime(2011, 10, 13, 18, 2, tzinfo=timezone(timedelta(hours=2))),
        },
        testmode=True,
        recipients={"to": ["b@example.com"]},
        ignored=("o:tracking-clicks",),
    )


def test_an_error_names_the_form_field_and_quotes_a_long_value_short() -> None:
    """Mailman's field errors name Mailgun's fields; a huge value is not echoed whole."""
    form = translate([("from", "a@example.com"), ("to", "b" * 50_000), ("text", "hi")])
    errors = [
        FieldError("to[0]", "is not a valid address: no @"),
        FieldError("headers.X-A", "must not be empty"),
        FieldError("metadata.k", "must be a string"),
        FieldError("content", "give a non-empty plain-text body (content or text) or html"),
    ]
    said = message(errors, form)
    assert said.startswith("'to' parameter: 'bbbb")
    assert "'h:X-A' parameter must not be empty" in said
    assert "'v:k' parameter must be a string" in said
    assert "Need at least one of 'text' or 'html'" in said
    assert len(said) < 500


# --- end to end, with requests as Mailgun's docs show it -------------------------------


async def test_a_urlencoded_message_reaches_sendgrid_mapped(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """Recipients, subject, bodies, tags, headers and variables arrive at SendGrid."""
    resp = await post(mailman.url, FORM, key=keys.send)
    mail_id = queued(resp)
    shown = await sent(http, mailman.url, keys.send, mail_id)
    assert shown["provider"] == "sendgrid"
    (got,) = sendgrid.received
    (personalization,) = got["personalizations"]
    # SendGrid takes no comma in a name (Mailman's SendGrid mapping drops it); the mail keeps it.
    assert personalization["to"] == [
        {"email": "ann@example.com"},
        {"email": "bob@example.com", "name": "Doe Bob"},
        {"email": "cat@example.com"},
    ]
    assert shown["submitted"]["to"][1] == {"email": "bob@example.com", "name": "Doe, Bob"}
    assert personalization["cc"] == [{"email": "dan@example.com"}]
    assert personalization["bcc"] == [{"email": "eve@example.com"}]
    assert got["from"] == {"email": "orders@shop.example.com", "name": "Shop"}
    assert got["reply_to"] == {"email": "help@shop.example.com", "name": "Help"}
    assert got["subject"] == "Your order"
    assert got["content"] == [
        {"type": "text/plain", "value": "Thanks for your order!"},
        {"type": "text/html", "value": "<p>Thanks for your order!</p>"},
    ]
    assert got["categories"] == ["orders", "receipt"]
    assert got["headers"] == {"X-Custom": "spring", "Message-ID": resp.json()["id"]}
    assert got["custom_args"] == {"user_id": "42", "order": "A-17", "mail_id": mail_id}
    assert resp.json()["id"] == f"<{mail_id}@shop.example.com>"
    assert shown["submitted"]["tags"] == ["orders", "receipt"]


async def test_multipart_with_files_round_trips_byte_identical(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """A multipart post with an attachment and an inline image reaches SendGrid intact."""
    files: list[tuple[str, tuple[str, bytes, str] | tuple[str, bytes]]] = [
        ("attachment", ("a.pdf", PDF, "application/pdf")),
        ("inline", ("logo.png", PNG)),
    ]
    form = [*FORM, ("html", '<p>Thanks! <img src="cid:logo.png"></p>')]
    form = [(k, v) for k, v in form if (k, v) != ("html", "<p>Thanks for your order!</p>")]
    mail_id = queued(await post(mailman.url, form, key=keys.send, files=files))
    await sent(http, mailman.url, keys.send, mail_id)
    (got,) = sendgrid.received
    assert len(got["personalizations"][0]["to"]) == 3
    attachments = {a["filename"]: a for a in got["attachments"]}
    assert base64.b64decode(attachments["a.pdf"]["content"]) == PDF
    assert attachments["a.pdf"]["type"] == "application/pdf"
    assert attachments["a.pdf"].get("disposition", "attachment") == "attachment"
    assert base64.b64decode(attachments["logo.png"]["content"]) == PNG
    assert attachments["logo.png"]["type"] == "image/png"
    assert attachments["logo.png"]["disposition"] == "inline"
    assert attachments["logo.png"]["content_id"] == "logo.png"


async def test_failover_to_mailgun_when_sendgrid_is_down(
    mailman: Mailman,
    keys: Keys,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    http: aiohttp.ClientSession,
) -> None:
    """With SendGrid down the same message goes out through Mailgun, fields intact."""
    sendgrid.mode = "503"
    files = [("attachment", ("a.pdf", PDF, "application/pdf"))]
    mail_id = queued(await post(mailman.url, FORM, key=keys.send, files=files))
    shown = await sent(http, mailman.url, keys.send, mail_id)
    assert shown["provider"] == "mailgun"
    (got,) = mailgun.received
    assert got["to"] == ["ann@example.com", '"Doe, Bob" <bob@example.com>', "cat@example.com"]
    assert got["subject"] == ["Your order"]
    assert got["o:tag"] == ["orders", "receipt"]
    assert got["h:X-Custom"] == ["spring"]
    assert got["v:user_id"] == ["42"] and got["v:mail_id"] == [mail_id]
    assert got["attachment"] == ["a.pdf"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"to": "not-an-address"}, "'to'"),
        ({"to": None}, "'to' parameter is missing"),
        ({"from": None}, "'from' parameter is missing"),
        ({"cc": "ann@example.com, @nowhere"}, "'cc'"),
        ({"subject": "line\r\nBcc: evil@example.com"}, "'subject'"),
        ({"text": None, "html": None}, "'text' or 'html'"),
        ({"h:List-Unsubscribe": "<mailto:u@example.com>"}, "'h:List-Unsubscribe'"),
        ({"h:X-Mailgun-Variables": "{}"}, "'h:X-Mailgun-Variables'"),
        ({"h:Reply-To": "nobody"}, "'h:Reply-To'"),
        ({"v:mail_id": "mine"}, "'v:mail_id'"),
        ({"o:tag": ["a", "b", "c", "d"]}, "'o:tag'"),
        ({"o:deliverytime": "tomorrow"}, "'o:deliverytime'"),
        ({"o:deliverytime": "Thu, 13 Oct 2099 18:02:00 +0000"}, "'o:deliverytime'"),
        ({"o:testmode": "maybe"}, "'o:testmode'"),
        ({"o:require-tls": "yes"}, "'o:require-tls'"),
        ({"template": "welcome", "text": None}, "'template'"),  # not the tenant's
        ({"template": "welcome"}, "'text'"),  # the template renders it
        ({"template": "welcome", "t:variables": "[1]"}, "'t:variables'"),
        ({"template": "welcome", "t:version": "v2"}, "'t:version'"),
        ({"t:variables": "{}"}, "'t:variables'"),
        ({"h:X-Mailgun-Template-Variables": "{}"}, "'h:X-Mailgun-Template-Variables'"),
        ({"recipient-variables": "{}"}, "'recipient-variables'"),
        ({"attachment": "not a file"}, "'attachment'"),
    ],
)
async def test_bad_input_gets_400_naming_the_field_and_stores_nothing(
    mailman: Mailman,
    keys: Keys,
    http: aiohttp.ClientSession,
    change: dict[str, Any],
    named: str,
) -> None:
    """Every refusal is a 400 {"message"} naming the Mailgun field; nothing is stored."""
    form: dict[str, Any] = {
        "from": "orders@shop.example.com",
        "to": "ann@example.com",
        "subject": "Hi",
        "text": "Hello",
    }
    form.update(change)
    form = {k: v for k, v in form.items() if v is not None}
    assert named in refusal(await post(mailman.url, form, key=keys.send))
    assert await listed(http, mailman.url, keys.send) == []


async def test_a_file_without_a_valid_name_is_refused_naming_it(
    mailman: Mailman, keys: Keys, http: aiohttp.ClientSession
) -> None:
    """An inline file whose name cannot be a content id gets a 400 naming the part."""
    form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
    files = [("inline", ("my logo.png", PNG, "image/png"))]
    message = refusal(await post(mailman.url, form, key=keys.send, files=files))
    assert "'inline'" in message and "'my logo.png'" in message
    assert await listed(http, mailman.url, keys.send) == []


async def test_no_or_bad_key_gets_401_forbidden_and_a_read_key_403(
    mailman: Mailman, keys: Keys, http: aiohttp.ClientSession
) -> None:
    """No key, an unknown key or another user: 401 Forbidden; a read-only key: 403."""
    form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
    for key in (None, "key-0123456789abcdef", ""):
        resp = await post(mailman.url, form, key=key)
        assert resp.status_code == 401
        assert resp.text == "Forbidden"
        assert resp.headers["WWW-Authenticate"] == 'Basic realm="MG API"'
    resp = await asyncio.to_thread(
        requests.post,
        f"{mailman.url}/v3/{DOMAIN}/messages",
        auth=("someone", keys.send),
        data=form,
        timeout=10,
    )
    assert resp.status_code == 401 and resp.text == "Forbidden"
    assert "scope" in refusal(await post(mailman.url, form, key=keys.read), 403)
    assert await listed(http, mailman.url, keys.send) == []
    bearer = {"Authorization": f"Bearer {keys.send}"}
    queued(await post(mailman.url, form, key=None, headers=bearer))


async def test_testmode_answers_200_and_stores_and_sends_nothing(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """o:testmode=yes is validated and answered like Mailgun, but nothing is kept or sent."""
    resp = await post(mailman.url, [*FORM, ("o:testmode", "yes")], key=keys.send)
    assert resp.status_code == 200, resp.text
    assert resp.json()["message"] == "Queued. Thank you."
    assert resp.json()["id"].endswith("@shop.example.com>")
    assert "Location" not in resp.headers
    assert "'to'" in refusal(
        await post(
            mailman.url, {"from": "a@b.example.com", "to": "x", "o:testmode": "yes"}, key=keys.send
        )
    )
    assert await listed(http, mailman.url, keys.send) == []
    # A real message after it: once that one is sent, the fake has seen only it.
    mail_id = queued(await post(mailman.url, FORM, key=keys.send))
    await sent(http, mailman.url, keys.send, mail_id)
    assert sendgrid.mail_ids() == [mail_id]


async def test_deliverytime_schedules_the_mail(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """o:deliverytime (RFC 2822) makes a scheduled mail with that send_at."""
    when = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    form = [*FORM, ("o:deliverytime", format_datetime(when))]
    mail_id = queued(await post(mailman.url, form, key=keys.send))
    shown = await show(http, mailman.url, keys.send, mail_id)
    assert shown["status"] == "scheduled"
    sent_at = datetime.fromisoformat(shown["submitted"]["send_at"].replace("Z", "+00:00"))
    assert sent_at == when
    assert sendgrid.received == []


async def test_an_idempotency_key_makes_a_repeat_one_mail(
    mailman: Mailman, keys: Keys, http: aiohttp.ClientSession
) -> None:
    """The same Idempotency-Key and form answer the first id again; another form is a 400."""
    headers = {"Idempotency-Key": "order-A-17"}
    first = await post(mailman.url, FORM, key=keys.send, headers=headers)
    again = await post(mailman.url, FORM, key=keys.send, headers=headers)
    assert queued(again) == queued(first)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await post(mailman.url, [*FORM, ("v:extra", "1")], key=keys.send, headers=headers)
    assert "Idempotency-Key" in refusal(other)
    assert len(await listed(http, mailman.url, keys.send)) == 1


async def test_the_official_mailgun_client_sends_through_mailman(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """mailgun-python's Client, pointed at Mailman by its api_url, gets a message sent."""
    from mailgun.client import Client

    def send() -> Any:
        with Client(auth=("api", keys.send), api_url=mailman.url) as client:
            return client.messages.create(
                domain=DOMAIN,
                data={
                    "from": "Shop <orders@shop.example.com>",
                    "to": ["ann@example.com", "bob@example.com"],
                    "subject": "Hello",
                    "text": "Hi from the SDK",
                    "o:tag": ["sdk"],
                },
                files=[("attachment", ("a.pdf", PDF))],
            )

    resp = await asyncio.to_thread(send)
    mail_id = queued(resp)
    await sent(http, mailman.url, keys.send, mail_id)
    (got,) = sendgrid.received
    assert [r["email"] for r in got["personalizations"][0]["to"]] == [
        "ann@example.com",
        "bob@example.com",
    ]
    assert got["categories"] == ["sdk"]
    assert base64.b64decode(got["attachments"][0]["content"]) == PDF


# --- the refusals that need a small limit, on the app alone ---------------------------------


async def app_url(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound, config: Config
) -> str:
    client = await client_factory(aiohttp_client, store, outbound, config)()
    return str(client.make_url("")).rstrip("/")


async def test_a_full_backlog_is_a_503_with_retry_after(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """At the backlog limit the answer is 503 {"message"} with Retry-After; nothing stored."""
    config = dataclasses.replace(Config(), backlog_limit=1)
    url = await app_url(aiohttp_client, store, outbound, config)
    form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
    queued(await post(url, form, key=None))
    resp = await post(url, form, key=None)
    assert "waiting to be sent" in refusal(resp, 503)
    assert resp.headers["Retry-After"] == "5"
    assert len(outbound.dispatched) == 1


async def test_over_the_rate_limit_is_a_429_with_retry_after(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """A key's rate applies: past it, 429 {"message"} with Retry-After and RateLimit-*."""
    _, key = await create_key(store, tenant="shop", scopes=[Scope.SEND], rate=1)
    url = await app_url(aiohttp_client, store, outbound, Config())
    form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
    first = await post(url, form, key=key)
    queued(first)
    assert first.headers["RateLimit-Limit"] == "1"
    resp = await post(url, form, key=key)
    assert "per second" in refusal(resp, 429)
    assert int(resp.headers["Retry-After"]) >= 1
    assert "RateLimit-Remaining" in resp.headers


async def test_too_large_and_wrong_content_types_are_refused(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """Over max_body_bytes: 413; JSON instead of a form: 415; both as {"message"}."""
    config = dataclasses.replace(Config(), max_body_bytes=4096)
    url = await app_url(aiohttp_client, store, outbound, config)
    form = {"from": "a@shop.example.com", "to": "ann@example.com", "text": "Hi"}
    files = [("attachment", ("big.bin", b"\0" * 8192, "application/octet-stream"))]
    assert "limit" in refusal(await post(url, form, key=None, files=files), 413)
    resp = await asyncio.to_thread(
        requests.post, f"{url}/v3/{DOMAIN}/messages", json=form, timeout=10
    )
    assert "multipart/form-data" in refusal(resp, 415)
    assert outbound.dispatched == []


# --- templates ------------------------------------------------------------------------------


async def create_template(
    http: aiohttp.ClientSession, base: str, key: str, body: dict[str, Any], *, put: bool = False
) -> None:
    url = f"{base}/templates" + (f"/{body['name']}" if put else "")
    sent_body = {k: v for k, v in body.items() if not (put and k == "name")}
    method = http.put if put else http.post
    async with method(url, json=sent_body, headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status in (200, 201), await resp.text()


ORDER = {
    "name": "order.shipped",
    "subject": "Order {{order}} shipped",
    "html": "<p>Hi {{name}}, order {{order}}</p>{{#equal carrier 'ups'}}<i>UPS</i>{{/equal}}",
    "text": "Hi {{name}}, order {{order}}",
}


async def test_a_template_is_rendered_with_t_variables_through_the_official_client(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """mailgun-python's template and t:variables render the tenant's template (v: variables
    under t:variables); the provider gets the rendered mail."""
    from mailgun.client import Client

    await create_template(http, mailman.url, keys.send, ORDER)

    def send() -> Any:
        with Client(auth=("api", keys.send), api_url=mailman.url) as client:
            return client.messages.create(
                domain=DOMAIN,
                data={
                    "from": "Shop <orders@shop.example.com>",
                    "to": ["ann@example.com"],
                    "template": "order.shipped",
                    "t:variables": '{"name": "Ann & co", "carrier": "ups"}',
                    "v:order": "A-17",
                },
            )

    mail_id = queued(await asyncio.to_thread(send))
    shown = await sent(http, mailman.url, keys.send, mail_id)
    assert shown["submitted"]["template"]["name"] == "order.shipped"
    assert shown["submitted"]["metadata"] == {"order": "A-17"}
    (got,) = sendgrid.received
    assert got["subject"] == "Order A-17 shipped"
    assert got["content"] == [
        {"type": "text/plain", "value": "Hi Ann & co, order A-17"},
        {"type": "text/html", "value": "<p>Hi Ann &amp; co, order A-17</p><i>UPS</i>"},
    ]


async def test_t_version_and_the_forms_subject_are_honoured(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """t:version renders that version; a subject in the form is the mail's, not rendered."""
    await create_template(http, mailman.url, keys.send, ORDER)
    await create_template(http, mailman.url, keys.send, {**ORDER, "text": "v2"}, put=True)
    form = [
        ("from", "orders@shop.example.com"),
        ("to", "ann@example.com"),
        ("subject", "Your parcel"),
        ("template", "order.shipped"),
        ("t:version", "1"),
        ("t:variables", '{"name": "Ann", "order": "B-2", "carrier": "dhl"}'),
    ]
    mail_id = queued(await post(mailman.url, form, key=keys.send))
    shown = await sent(http, mailman.url, keys.send, mail_id)
    assert shown["submitted"]["subject"] == "Your parcel"
    assert shown["submitted"]["text"] == "Hi Ann, order B-2"
    assert shown["submitted"]["template"]["version"] == 1


async def test_a_missing_variable_is_a_400_naming_t_variables_even_in_test_mode(
    mailman: Mailman, keys: Keys, sendgrid: FakeSendGrid, http: aiohttp.ClientSession
) -> None:
    """A variable the template prints but the form does not give is refused by name, in
    test mode too (which renders as a real send does); nothing is stored or sent."""
    await create_template(http, mailman.url, keys.send, ORDER)
    form = [
        ("from", "orders@shop.example.com"),
        ("to", "ann@example.com"),
        ("template", "order.shipped"),
        ("t:variables", '{"name": "Ann"}'),
    ]
    for extra in ([], [("o:testmode", "yes")]):
        resp = await post(mailman.url, [*form, *extra], key=keys.send)
        assert resp.status_code == 400, resp.text
        assert "'t:variables'" in resp.json()["message"]
        assert "order" in resp.json()["message"]
    given = ("t:variables", '{"name": "Ann", "carrier": "dhl"}')
    ok = await post(
        mailman.url, [*form[:3], given, ("v:order", "C-3"), ("o:testmode", "yes")], key=keys.send
    )
    assert ok.status_code == 200, ok.text  # v:order fills what t:variables leaves out
    assert await listed(http, mailman.url, keys.send) == []
    assert sendgrid.calls == 0
