"""One-click unsubscribe (RFC 8058) end to end: the headers every provider's fake
receives, the signed link a mail program POSTs, the suppression per group it makes, the
callback a real loopback receiver gets, and what the next mails do; on SQLite and MySQL.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email
import email.policy
import io
import re
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailman.actors.callbacks import SIGNATURE_HEADER, verify
from mailman.cli import main
from mailman.core.model import Unsubscribe
from mailman.core.unsubscribe import Ticket, sign
from mailman.intake.keys import Scope, create_key
from mailman.system import embedded

from ..conftest import eventually, make_config
from ..support.databases import fresh_mysql
from ..support.fake_postmark import FakePostmark
from ..support.fake_resend import FakeResend
from ..support.fake_ses import FakeSes
from ..support.fake_smtp_relay import FakeSmtpRelay
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_callbacks import SECRET as CALLBACK_SECRET
from .test_callbacks import Receiver

PUBLIC = "https://mail.example.com"
UNSUBSCRIBE_SECRET = "unsubscribe-secret-for-tests-0123"
ONE_CLICK = "List-Unsubscribe=One-Click"
#: ``<https://mail.example.com/unsubscribe/<token>>``, then perhaps a mailto.
LINK = re.compile(r"<https://mail\.example\.com(/unsubscribe/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)>")


def unsubscribe_env(**extra: str) -> dict[str, str]:
    return {
        "MAILMAN_PUBLIC_URL": PUBLIC,
        "MAILMAN_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "MAILMAN_CALLBACK_SECRET": CALLBACK_SECRET,
        "MAILMAN_CALLBACK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
        "MAILMAN_CALLBACK_INTERVAL_SECONDS": "0.02",
        **extra,
    }


@pytest.fixture(params=["sqlite", "mysql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The store a test runs on: a SQLite file, or a fresh MySQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailman.db'}"
        return
    async with fresh_mysql("unsub") as url:
        yield url


async def send(
    http: aiohttp.ClientSession, url: str, to: str, status: int = 201, **fields: Any
) -> dict[str, Any]:
    body = {"to": to, "from": "news@example.com", "subject": "News", "content": "Hi", **fields}
    async with http.post(f"{url}/mail/send", json=body) as resp:
        assert resp.status == status, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def send_v3(http: aiohttp.ClientSession, url: str, auth: dict[str, str], **extra: Any) -> str:
    """A mail to ann@example.com through the SendGrid-compatible endpoint; its id."""
    body = {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "news@example.com"},
        "subject": "News",
        "content": [{"type": "text/plain", "value": "Hi"}],
        **extra,
    }
    async with http.post(f"{url}/v3/mail/send", json=body, headers=auth) as r:
        assert r.status == 202, await r.text()
        return r.headers["X-Message-Id"]


async def mail_of(http: aiohttp.ClientSession, url: str, mail_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/mail/{mail_id}") as resp:
        assert resp.status == 200, await resp.text()
        shown: dict[str, Any] = (await resp.json())["mail"]
        return shown


async def suppressions(http: aiohttp.ClientSession, url: str, query: str = "") -> list[Any]:
    async with http.get(f"{url}/suppressions{query}") as resp:
        assert resp.status == 200, await resp.text()
        found: list[Any] = (await resp.json())["suppressions"]
        return found


def path_of(header: str) -> str:
    """The path of the https link of a ``List-Unsubscribe`` value."""
    found = LINK.match(header)
    assert found is not None, header
    return found.group(1)


# --- every provider carries the headers --------------------------------------------------


def _sendgrid(fake: FakeSendGrid) -> dict[str, str]:
    return dict(fake.received[-1]["headers"])


def _mailgun(fake: FakeMailgun) -> dict[str, str]:
    fields = fake.received[-1]
    return {k.removeprefix("h:"): v[0] for k, v in fields.items() if k.startswith("h:")}


def _postmark(fake: FakePostmark) -> dict[str, str]:
    return {h["Name"]: h["Value"] for h in fake.received[-1]["Headers"]}


def _resend(fake: FakeResend) -> dict[str, str]:
    return dict(fake.received[-1]["headers"])


def _mime(raw: bytes) -> dict[str, str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    return {name: str(message[name]) for name in ("List-Unsubscribe", "List-Unsubscribe-Post")}


@pytest.mark.parametrize(
    "provider", ["sendgrid", "mailgun", "postmark", "resend", "ses", "smtp-relay", "outbox"]
)
async def test_every_provider_sends_the_list_unsubscribe_headers(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    ses: FakeSes,
    provider: str,
) -> None:
    """A mail with ``unsubscribe`` reaches the provider with List-Unsubscribe (the signed
    https link on MAILMAN_PUBLIC_URL, then the mailto) and List-Unsubscribe-Post."""
    async with FakeResend() as resend, FakeSmtpRelay(tmp_path, auth_required=False) as relay:
        env = unsubscribe_env(
            MAILMAN_PROVIDERS=provider,
            SENDGRID_API_KEY=sendgrid.api_key,
            SENDGRID_BASE_URL=sendgrid.base_url,
            MAILGUN_API_KEY=mailgun.api_key,
            MAILGUN_DOMAIN=mailgun.domain,
            MAILGUN_BASE_URL=mailgun.base_url,
            POSTMARK_SERVER_TOKEN=postmark.server_token,
            POSTMARK_BASE_URL=postmark.base_url,
            RESEND_API_KEY=resend.api_key,
            RESEND_BASE_URL=resend.base_url,
            SES_REGION=ses.region,
            SES_ENDPOINT_URL=ses.base_url,
            SMTP_RELAY_URL=relay.url("smtp", password=""),
        )
        async with embedded(make_config(tmp_path, env)) as mailman:
            wanted = {"group": "newsletter", "mailto": "leave@example.com"}
            mail = (await send(http, mailman.url, "ann@example.com", unsubscribe=wanted))["mail"]
            shown = await _sent(http, mailman.url, mail["id"])
        headers = {
            "sendgrid": lambda: _sendgrid(sendgrid),
            "mailgun": lambda: _mailgun(mailgun),
            "postmark": lambda: _postmark(postmark),
            "resend": lambda: _resend(resend),
            "ses": lambda: _mime(ses.messages[-1].as_bytes()),
            "smtp-relay": lambda: _mime(relay.envelopes[-1].data),
            "outbox": lambda: _mime((tmp_path / "outbox" / f"{mail['id']}.eml").read_bytes()),
        }[provider]()
    assert shown["provider"] == provider
    links = headers["List-Unsubscribe"]
    assert re.fullmatch(
        LINK.pattern + r", <mailto:leave@example\.com\?subject=unsubscribe>", links
    ), links
    assert headers["List-Unsubscribe-Post"] == ONE_CLICK


async def _sent(http: aiohttp.ClientSession, url: str, mail_id: str) -> dict[str, Any]:
    shown: dict[str, Any] = {}

    async def sent() -> bool:
        shown.update(await mail_of(http, url, mail_id))
        return shown["status"] in ("sent", "delivered")

    await eventually(sent, what=f"{mail_id} sent")
    return shown


# --- the link, end to end --------------------------------------------------------------------


async def test_one_click_leaves_the_group_only_and_tells_the_callback(
    tmp_path: Path, http: aiohttp.ClientSession, sendgrid: FakeSendGrid, store_url: str
) -> None:
    """The link's GET shows a page with a button and changes nothing; its POST (as mail
    programs send it) suppresses the address for the group (unsubscribe, one-click) once,
    however often repeated, and the mail's callback_url hears ``unsubscribed``, signed.
    The next newsletter mail to it ends ``suppressed`` with no provider call; a mail of
    another group and a transactional one still go."""
    env = unsubscribe_env(
        MAILMAN_STORE=store_url,
        MAILMAN_PROVIDERS="sendgrid",
        SENDGRID_API_KEY=sendgrid.api_key,
        SENDGRID_BASE_URL=sendgrid.base_url,
    )
    async with Receiver() as receiver, embedded(make_config(tmp_path, env)) as mailman:
        url = mailman.url
        first = await send(
            http,
            url,
            "Ann <Ann@Example.com>",
            unsubscribe={"group": "newsletter"},
            callback_url=receiver.url(),
        )
        await _sent(http, url, first["mail"]["id"])
        headers = _sendgrid(sendgrid)
        assert headers["List-Unsubscribe-Post"] == ONE_CLICK
        link = url + path_of(headers["List-Unsubscribe"])
        shown = await mail_of(http, url, first["mail"]["id"])
        assert shown["submitted"]["unsubscribe"] == {
            "group": "newsletter",
            "url": PUBLIC + path_of(headers["List-Unsubscribe"]),
        }

        async with http.get(link) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        assert '<form method="post">' in page and "ann@example.com" in page
        assert await suppressions(http, url) == []

        for _ in range(2):  # a repeat changes nothing and answers the same
            form = {"List-Unsubscribe": "One-Click"}
            async with http.post(link, data=form) as resp:
                assert resp.status == 200, await resp.text()
        (kept,) = await suppressions(http, url)
        assert {k: kept[k] for k in ("address", "group", "reason", "source")} == {
            "address": "ann@example.com",
            "group": "newsletter",
            "reason": "unsubscribe",
            "source": "one-click",
        }
        assert await suppressions(http, url, "?group=newsletter") == [kept]
        assert await suppressions(http, url, "?group=") == []

        def told() -> list[dict[str, Any]]:
            return [c.json() for c in receiver.on("/hook") if "event" in c.json()]

        await eventually(lambda: bool(told()), what="the unsubscribed callback")
        (call,) = [c for c in receiver.on("/hook") if "event" in c.json()]
        assert verify(CALLBACK_SECRET, call.headers[SIGNATURE_HEADER], call.body)
        (event,) = told()
        assert {k: event[k] for k in ("mail_id", "event", "address", "group")} == {
            "mail_id": first["mail"]["id"],
            "event": "unsubscribed",
            "address": "ann@example.com",
            "group": "newsletter",
        }

        calls = sendgrid.calls
        again = await send(http, url, "ann@example.com", unsubscribe={"group": "newsletter"})
        assert again["mail"]["status"] == "suppressed"
        other = await send(http, url, "ann@example.com", unsubscribe={"group": "offers"})
        plain = await send(http, url, "ann@example.com")
        for mail in (other, plain):
            assert mail["mail"]["status"] == "queued"
            await _sent(http, url, mail["mail"]["id"])
        shown = await mail_of(http, url, again["mail"]["id"])
        assert shown["suppressed"] == [{"email": "ann@example.com", "reason": "unsubscribe"}]
        await eventually(lambda: len(told()) == 1 and len(receiver.on("/hook")) >= 3)
    assert sendgrid.calls == calls + 2
    assert len(told()) == 1  # the repeat told nobody


async def test_a_suppression_for_every_mail_keeps_grouped_mails_away_too(
    tmp_path: Path, http: aiohttp.ClientSession, store_url: str
) -> None:
    """An address suppressed for every mail (a bounce, by hand) is dropped from a mail of
    any group; one suppressed for a group only from that group's (POST /suppressions
    with group, DELETE ?group= takes that one off)."""
    env = unsubscribe_env(MAILMAN_STORE=store_url)
    async with embedded(make_config(tmp_path, env)) as mailman:
        url = mailman.url
        for body in (
            {"address": "gone@example.com", "reason": "bounce"},
            {"address": "ann@example.com", "reason": "manual", "group": "offers"},
        ):
            async with http.post(f"{url}/suppressions", json=body) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["suppression"]["group"] == body.get("group")
        grouped: dict[str, Any] = {"unsubscribe": {"group": "offers"}}
        assert (await send(http, url, "gone@example.com", **grouped))["mail"]["status"] == (
            "suppressed"
        )
        assert (await send(http, url, "ann@example.com", **grouped))["mail"]["status"] == (
            "suppressed"
        )
        assert (await send(http, url, "ann@example.com"))["mail"]["status"] == "queued"
        async with http.delete(f"{url}/suppressions/ann@example.com?group=news") as resp:
            assert resp.status == 404
        async with http.delete(f"{url}/suppressions/ann@example.com?group=offers") as resp:
            assert resp.status == 204
        assert (await send(http, url, "ann@example.com", **grouped))["mail"]["status"] == ("queued")


async def test_a_forged_or_altered_link_is_refused_and_keeps_nothing(
    tmp_path: Path, http: aiohttp.ClientSession, store_url: str
) -> None:
    """A token signed with another secret, altered (another address) or cut short is a
    403 for GET and POST, and nothing is suppressed."""
    env = unsubscribe_env(MAILMAN_STORE=store_url)
    async with embedded(make_config(tmp_path, env)) as mailman:
        url = mailman.url
        ticket = Ticket("", "ann@example.com", "newsletter", "m-1")
        good = sign(UNSUBSCRIBE_SECRET, ticket)
        payload, _, signature = good.partition(".")
        other = sign(UNSUBSCRIBE_SECRET, Ticket("", "bob@example.com", "newsletter", "m-1"))
        for token in (
            sign("another-secret", ticket),
            f"{other.partition('.')[0]}.{signature}",
            good[:-2],
            payload,
        ):
            for method in ("GET", "POST"):
                async with http.request(
                    method, f"{url}/unsubscribe/{token}", data=ONE_CLICK
                ) as resp:
                    assert resp.status == 403, (method, token, await resp.text())
        assert await suppressions(http, url) == []
        async with http.post(f"{url}/unsubscribe/{good}", data=ONE_CLICK) as resp:
            assert resp.status == 200
        assert [s["address"] for s in await suppressions(http, url)] == ["ann@example.com"]


async def test_unsubscribe_needs_the_settings_and_one_recipient(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Without MAILMAN_PUBLIC_URL a mail asking for unsubscribe is a 422 naming the field
    and the settings, and /unsubscribe/ is 404 without the secret; with them, a mail to
    two recipients is a 422 naming ``unsubscribe``, a bad group names ``unsubscribe.group``."""
    for name in "abc":
        (tmp_path / name).mkdir()
    env = {"MAILMAN_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET}
    async with embedded(make_config(tmp_path / "a", env)) as mailman:
        answer = await send(
            http, mailman.url, "ann@example.com", 422, unsubscribe={"group": "newsletter"}
        )
        (error,) = answer["errors"]
        assert error["field"] == "unsubscribe" and "MAILMAN_PUBLIC_URL" in error["message"]
    async with embedded(make_config(tmp_path / "b", {})) as mailman:
        token = sign(UNSUBSCRIBE_SECRET, Ticket("", "ann@example.com", "news", "m"))
        async with http.post(f"{mailman.url}/unsubscribe/{token}", data=ONE_CLICK) as resp:
            assert resp.status == 404
    async with embedded(make_config(tmp_path / "c", unsubscribe_env())) as mailman:
        answer = await send(
            http,
            mailman.url,
            "ann@example.com",
            422,
            cc="bob@example.com",
            unsubscribe={"group": "newsletter"},
        )
        assert [e["field"] for e in answer["errors"]] == ["unsubscribe"]
        answer = await send(
            http, mailman.url, "ann@example.com", 422, unsubscribe={"group": "a b", "x": 1}
        )
        assert [e["field"] for e in answer["errors"]] == ["unsubscribe.x", "unsubscribe.group"]


async def test_sendgrid_asm_group_is_a_one_click_group(
    tmp_path: Path, http: aiohttp.ClientSession, sendgrid: FakeSendGrid, store_url: str
) -> None:
    """/v3/mail/send with ``asm.group_id`` 42 sends List-Unsubscribe for group "42"; once
    the recipient clicks, the next such mail is suppressed (202, no provider call) while
    one without asm still goes. A tenant's key is needed; the link names its tenant."""
    env = unsubscribe_env(
        MAILMAN_STORE=store_url,
        MAILMAN_PROVIDERS="sendgrid",
        SENDGRID_API_KEY=sendgrid.api_key,
        SENDGRID_BASE_URL=sendgrid.base_url,
    )
    async with embedded(make_config(tmp_path, env)) as mailman:
        _, key = await create_key(mailman.store, tenant="acme", scopes=[Scope.SEND, Scope.READ])
        auth = {"Authorization": f"Bearer {key}"}

        async def v3(**extra: Any) -> str:
            return await send_v3(http, mailman.url, auth, **extra)

        async def status(mail_id: str) -> str:
            async with http.get(f"{mailman.url}/mail/{mail_id}", headers=auth) as r:
                shown: str = (await r.json())["mail"]["status"]
                return shown

        first = await v3(asm={"group_id": 42, "groups_to_display": [42, 7]})
        await eventually(lambda: sendgrid.calls == 1)
        link = mailman.url + path_of(_sendgrid(sendgrid)["List-Unsubscribe"])
        async with http.post(link, data=ONE_CLICK) as resp:
            assert resp.status == 200
        async with http.get(f"{mailman.url}/suppressions", headers=auth) as resp:
            (kept,) = (await resp.json())["suppressions"]
        assert (kept["tenant"], kept["group"]) == ("acme", "42")
        assert await status(await v3(asm={"group_id": 42})) == "suppressed"
        plain = await v3()
        await eventually(lambda: sendgrid.calls == 2)
        assert await status(first) in ("sent", "delivered")
        assert await status(plain) in ("queued", "sending", "sent", "delivered")


# --- a tenant's default group ------------------------------------------------------------


def _smtp(port: int, key: str, subject: str, *, to: str, opt_out: bool = False) -> str:
    """One mail by SMTP submission with ``key``; the mail id the 250 reply names."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "news@example.com", to, subject
    if opt_out:
        msg["X-Mailman-Unsubscribe"] = "off"
    msg.set_content("Hi")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login("api", key)
        client.mail("news@example.com")
        client.rcpt(to)
        code, reply = client.data(msg.as_bytes())
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


async def test_a_tenant_default_group_covers_every_entry_point_and_opts_out(
    tmp_path: Path, http: aiohttp.ClientSession, sendgrid: FakeSendGrid, store_url: str
) -> None:
    """With ``mailman tenants set acme --unsubscribe-group newsletter``, a mail of acme to
    one recipient that says nothing of unsubscribe carries List-Unsubscribe for group
    newsletter; once its link is POSTed, the next such mail to that address ends
    ``suppressed`` through POST /mail/send, /v3/mail/send, the Mailgun endpoint and SMTP,
    while one that opts out (``"unsubscribe": false``, X-Mailman-Unsubscribe: off) still
    goes without the header, as does a mail to two recipients (no 422, no group)."""
    env = unsubscribe_env(
        MAILMAN_STORE=store_url,
        MAILMAN_PROVIDERS="sendgrid",
        SENDGRID_API_KEY=sendgrid.api_key,
        SENDGRID_BASE_URL=sendgrid.base_url,
    )
    set_default = [
        "tenants",
        "set",
        "acme",
        "--unsubscribe-group",
        "newsletter",
        "--unsubscribe-mailto",
        "leave@example.com",
    ]
    config = make_config(tmp_path, env)
    config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, port=0))
    async with embedded(config) as mailman:
        said = io.StringIO()
        assert await asyncio.to_thread(main, set_default, env, out=io.StringIO(), err=said) == 0
        assert said.getvalue() == (
            "tenant acme: default unsubscribe group newsletter (mailto leave@example.com)\n"
        )
        url, port = mailman.url, mailman.smtp_port
        assert port is not None
        _, key = await create_key(mailman.store, tenant="acme", scopes=[Scope.SEND, Scope.READ])
        auth = {"Authorization": f"Bearer {key}"}
        basic = {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}

        async def native(status: int = 201, **fields: Any) -> str:
            body = {"to": "ann@example.com", "from": "news@example.com", "content": "Hi"}
            async with http.post(f"{url}/mail/send", json={**body, **fields}, headers=auth) as r:
                assert r.status == status, await r.text()
                return str((await r.json())["mail"]["id"]) if status == 201 else ""

        async def v3(**extra: Any) -> str:
            return await send_v3(http, url, auth, **extra)

        async def mailgun(**extra: str) -> str:
            form = {"from": "news@example.com", "to": "ann@example.com", "text": "Hi", **extra}
            async with http.post(
                f"{url}/v3/mg.example.com/messages", data=form, headers=basic
            ) as r:
                assert r.status == 200, await r.text()
                return r.headers["Location"].removeprefix("/mail/")

        async def shown(mail_id: str) -> dict[str, Any]:
            async with http.get(f"{url}/mail/{mail_id}", headers=auth) as r:
                assert r.status == 200, await r.text()
                found: dict[str, Any] = (await r.json())["mail"]
                return found

        def headers_of(mail_id: str) -> dict[str, str]:
            (body,) = [b for b in sendgrid.received if b["custom_args"]["mail_id"] == mail_id]
            return dict(body.get("headers", {}))

        first = await native()
        await eventually(lambda: sendgrid.calls == 1)
        links = headers_of(first)["List-Unsubscribe"]
        assert re.fullmatch(
            LINK.pattern + r", <mailto:leave@example\.com\?subject=unsubscribe>", links
        )
        assert headers_of(first)["List-Unsubscribe-Post"] == ONE_CLICK
        assert (await shown(first))["submitted"]["unsubscribe"]["group"] == "newsletter"
        async with http.post(url + path_of(links), data=ONE_CLICK) as resp:
            assert resp.status == 200
        async with http.get(f"{url}/suppressions", headers=auth) as resp:
            (kept,) = (await resp.json())["suppressions"]
        assert (kept["address"], kept["group"]) == ("ann@example.com", "newsletter")

        defaulted = [
            await native(),
            await v3(),
            await mailgun(subject="mg"),
            await asyncio.to_thread(_smtp, port, key, "smtp", to="ann@example.com"),
        ]
        for mail_id in defaulted:
            assert (await shown(mail_id))["status"] == "suppressed", mail_id
        opted_out = [
            await native(unsubscribe=False),
            await v3(headers={"X-Mailman-Unsubscribe": "off"}),
            await mailgun(subject="mg", **{"h:X-Mailman-Unsubscribe": "off"}),
            await asyncio.to_thread(_smtp, port, key, "smtp", to="ann@example.com", opt_out=True),
            await native(cc="bob@example.com"),  # two recipients: no group, no 422
        ]
        await eventually(lambda: sendgrid.calls == 1 + len(opted_out), what="opted-out mails")
        for mail_id in opted_out:
            assert "unsubscribe" not in (await shown(mail_id))["submitted"], mail_id
            sent = headers_of(mail_id)
            assert "List-Unsubscribe" not in sent and "X-Mailman-Unsubscribe" not in sent
        await native(422, cc="bob@example.com", unsubscribe={"group": "newsletter"})
        await native(422, unsubscribe=True)


async def test_a_tenant_default_without_the_settings_keeps_the_group_and_sends_no_link(
    tmp_path: Path, http: aiohttp.ClientSession, sendgrid: FakeSendGrid
) -> None:
    """Without MAILMAN_PUBLIC_URL a tenant's default group is no 422: its mail goes without
    List-Unsubscribe, of the group (an address unsubscribed from it is skipped)."""
    env = {
        "MAILMAN_UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
        "MAILMAN_PROVIDERS": "sendgrid",
        "SENDGRID_API_KEY": sendgrid.api_key,
        "SENDGRID_BASE_URL": sendgrid.base_url,
    }
    async with embedded(make_config(tmp_path, env)) as mailman:
        await mailman.store.set_tenant_unsubscribe("acme", Unsubscribe("newsletter"), 0.0)
        _, key = await create_key(mailman.store, tenant="acme", scopes=[Scope.SEND, Scope.READ])
        auth = {"Authorization": f"Bearer {key}"}
        body = {"address": "gone@example.com", "reason": "unsubscribe", "group": "newsletter"}
        async with http.post(f"{mailman.url}/suppressions", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
        ids = []
        for to in ("ann@example.com", "gone@example.com"):
            mail = {"to": to, "from": "news@example.com", "content": "Hi"}
            async with http.post(f"{mailman.url}/mail/send", json=mail, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                shown = (await resp.json())["mail"]
                ids.append(shown["id"])
        assert shown["status"] == "suppressed"
        await eventually(lambda: sendgrid.calls == 1)
        async with http.get(f"{mailman.url}/mail/{ids[0]}", headers=auth) as resp:
            first = (await resp.json())["mail"]
    assert first["submitted"]["unsubscribe"] == {"group": "newsletter", "url": ""}
    assert "List-Unsubscribe" not in sendgrid.received[-1].get("headers", {})
