"""Suppressions end to end: a provider's own webhook post (a hard bounce) suppresses the
address for every provider; an address suppressed by hand is dropped from mails accepted
through every entry point; on SQLite and on MySQL.

The fakes post their webhooks themselves (a recipient whose local part starts with
``bounce`` bounces hard), signed as each provider signs them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import smtplib
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mailman.core.model import SuppressionReason
from mailman.intake.keys import Scope, create_key
from mailman.routes.webhooks import MAILGUN_PATH, POSTMARK_PATH, RESEND_PATH, SENDGRID_PATH
from mailman.routes.webhooks_ses import SES_PATH
from mailman.store import Suppression, open_store
from mailman.system import embedded

from ..conftest import eventually, make_config
from ..support.databases import fresh_mysql
from ..support.fake_postmark import FakePostmark
from ..support.fake_resend import FakeResend
from ..support.fake_ses import FakeSes
from ..support.fakes import FakeMailgun, FakeSendGrid, sendgrid_verification_key

SG_KEY = ec.generate_private_key(ec.SECP256R1())
MG_KEY = "mg-signing-key-suppressions"
PM_USER, PM_PASSWORD = "hooks", "pm-pass-suppressions"
RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-suppressions-secret-0123").decode()
LOOPBACK = r"http://127\.0\.0\.1:[0-9]+"


@pytest.fixture(params=["sqlite", "mysql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The store every test here runs on: a SQLite file, or a fresh MySQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'mailman.db'}"
        return
    async with fresh_mysql("suppress") as url:
        yield url


@dataclasses.dataclass
class Fakes:
    sendgrid: FakeSendGrid
    mailgun: FakeMailgun
    postmark: FakePostmark
    resend: FakeResend
    ses: FakeSes

    def of(self, name: str) -> Any:
        return getattr(self, name)

    def env(self) -> dict[str, str]:
        """Every provider configured, every webhook on."""
        sg, mg, pm, rs, ses = self.sendgrid, self.mailgun, self.postmark, self.resend, self.ses
        return {
            "SENDGRID_API_KEY": sg.api_key,
            "SENDGRID_BASE_URL": sg.base_url,
            "MAILGUN_API_KEY": mg.api_key,
            "MAILGUN_DOMAIN": mg.domain,
            "MAILGUN_BASE_URL": mg.base_url,
            "POSTMARK_SERVER_TOKEN": pm.server_token,
            "POSTMARK_BASE_URL": pm.base_url,
            "RESEND_API_KEY": rs.api_key,
            "RESEND_BASE_URL": rs.base_url,
            "SES_REGION": ses.region,
            "SES_ENDPOINT_URL": ses.base_url,
            "MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY": sendgrid_verification_key(SG_KEY),
            "MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY": MG_KEY,
            "MAILMAN_POSTMARK_WEBHOOK_CREDENTIALS": f"{PM_USER}:{PM_PASSWORD}",
            "MAILMAN_RESEND_WEBHOOK_SECRET": RESEND_SECRET,
            "MAILMAN_SES_SNS_TOPIC_ARNS": ses.topic_arn,
            "MAILMAN_SNS_HOST_PATTERN": LOOPBACK,
        }

    def post_webhooks_to(self, url: str) -> None:
        host = url.removeprefix("http://")
        self.sendgrid.webhook_private_key = SG_KEY
        self.sendgrid.webhook_url = f"{url}{SENDGRID_PATH}"
        self.mailgun.webhook_signing_key = MG_KEY
        self.mailgun.webhook_url = f"{url}{MAILGUN_PATH}"
        self.postmark.webhook_url = f"http://{PM_USER}:{PM_PASSWORD}@{host}{POSTMARK_PATH}"
        self.resend.webhook_secret = RESEND_SECRET
        self.resend.webhook_url = f"{url}{RESEND_PATH}"
        self.ses.webhook_url = f"{url}{SES_PATH}"


@pytest.fixture
async def fakes(
    sendgrid: FakeSendGrid, mailgun: FakeMailgun, postmark: FakePostmark, ses: FakeSes
) -> AsyncIterator[Fakes]:
    async with FakeResend() as resend:
        yield Fakes(sendgrid, mailgun, postmark, resend, ses)


def recipients(fake: FakeSendGrid | FakeMailgun) -> list[list[str]]:
    """Every recipient of each mail the fake took, in order."""
    if isinstance(fake, FakeSendGrid):
        return [
            [
                a["email"]
                for p in body["personalizations"]
                for k in ("to", "cc", "bcc")
                for a in p.get(k) or []
            ]
            for body in fake.received
        ]
    return [[*f.get("to", []), *f.get("cc", []), *f.get("bcc", [])] for f in fake.received]


@dataclasses.dataclass
class Api:
    http: aiohttp.ClientSession
    url: str
    key: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {} if self.key is None else {"Authorization": f"Bearer {self.key}"}

    async def send(self, *to: str) -> dict[str, Any]:
        body = {"to": list(to), "from": "noreply@example.com", "subject": "Hi", "content": "Hi"}
        async with self.http.post(f"{self.url}/mail/send", json=body, headers=self.auth) as r:
            assert r.status == 201, await r.text()
            answer: dict[str, Any] = (await r.json())["mail"]
            return answer

    async def get(self, path: str) -> Any:
        async with self.http.get(f"{self.url}{path}", headers=self.auth) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait(self, mail_id: str, *statuses: str) -> dict[str, Any]:
        """The mail once it has one of ``statuses``."""
        shown: dict[str, Any] = {}

        async def reached() -> bool:
            shown.update((await self.get(f"/mail/{mail_id}"))["mail"])
            return shown["status"] in statuses

        await eventually(reached, what=f"{mail_id} {statuses}")
        return shown


#: Each provider whose fake posts its bounce, and the provider the next mail fails over to.
CHAINS = {
    "sendgrid": "mailgun",
    "mailgun": "sendgrid",
    "postmark": "sendgrid",
    "resend": "sendgrid",
    "ses": "mailgun",
}


@pytest.mark.parametrize("provider", sorted(CHAINS))
async def test_a_hard_bounce_one_provider_reports_keeps_every_provider_from_the_address(
    tmp_path: Path, store_url: str, fakes: Fakes, http: aiohttp.ClientSession, provider: str
) -> None:
    """The provider's own webhook post of a hard bounce suppresses the address for the
    tenant (source: the provider). With that provider down, the next mail fails over to
    another, which never sees the address (named in the mail's ``suppressed``); a mail to
    it alone is answered ``suppressed`` and no provider is called."""
    first, second = fakes.of(provider), fakes.of(CHAINS[provider])
    env = {**fakes.env(), "MAILMAN_PROVIDERS": f"{provider},{CHAINS[provider]}"}
    env["MAILMAN_STORE"] = store_url
    async with embedded(make_config(tmp_path, env)) as mailman:
        fakes.post_webhooks_to(mailman.url)
        api = Api(http, mailman.url)
        bounced = await api.send("Bounce@example.com")
        await api.wait(bounced["id"], "bounced")

        async def listed() -> bool:
            return bool((await api.get("/suppressions"))["suppressions"])

        await eventually(listed, what="the bounce's suppression")
        (kept,) = (await api.get("/suppressions?reason=bounce"))["suppressions"]
        assert (kept["address"], kept["reason"], kept["source"]) == (
            "bounce@example.com",
            "bounce",
            provider,
        )

        first.mode = "503"
        calls = first.calls
        mixed = await api.send("bounce@example.com", "ann@example.com")
        assert mixed["status"] == "queued"
        shown = await api.wait(mixed["id"], "sent", "delivered")
        assert shown["provider"] == CHAINS[provider]
        assert [a["email"] for a in shown["submitted"]["to"]] == ["ann@example.com"]
        assert shown["suppressed"] == [{"email": "bounce@example.com", "reason": "bounce"}]
        assert recipients(second)[-1] == ["ann@example.com"]

        before = (first.calls, second.calls)
        alone = await api.send("BOUNCE@example.com")
        assert alone["status"] == "suppressed"
        shown = (await api.get(f"/mail/{alone['id']}"))["mail"]
        assert (shown["status"], shown["attempts"]) == ("suppressed", [])
        metrics = await _metrics(http, mailman.url)
    assert first.calls == calls + 1  # the mixed mail's one try, refused with 503
    assert (first.calls, second.calls) == before
    assert 'mailman_suppressed_recipients_total{reason="bounce"} 2.0' in metrics
    assert 'mailman_mails{status="suppressed"} 1.0' in metrics


async def _metrics(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def smtp_send(port: int, key: str, to: list[str], subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "noreply@example.com", ", ".join(to), subject
    msg.set_content("Hi")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login("api", key)
        client.send_message(msg)


async def test_a_suppressed_address_is_dropped_at_every_entry_point(
    tmp_path: Path, store_url: str, fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """An address the tenant suppressed by hand (POST /suppressions) is dropped from mails
    accepted through POST /mail/send, /v3/mail/send, /v3/{domain}/messages and SMTP: the
    provider gets the others; a mail to it alone ends ``suppressed`` with no provider
    call. Another tenant's mails still go to it."""
    env = {**fakes.env(), "MAILMAN_PROVIDERS": "sendgrid", "MAILMAN_STORE": store_url}
    config = make_config(tmp_path, env)
    config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, port=0))
    async with embedded(config) as mailman:
        _, acme = await create_key(mailman.store, tenant="acme", scopes=[Scope.SEND])
        _, beta = await create_key(mailman.store, tenant="beta", scopes=[Scope.SEND])
        api = Api(http, mailman.url, acme)
        body = {"address": "Gone@Example.com", "reason": "unsubscribe"}
        async with http.post(f"{mailman.url}/suppressions", json=body, headers=api.auth) as r:
            assert r.status == 201, await r.text()

        for to in (["gone@example.com", "ann@example.com"], ["gone@example.com"]):
            await api.send(*to)
            v3 = {
                "personalizations": [{"to": [{"email": a} for a in to]}],
                "from": {"email": "noreply@example.com"},
                "subject": "compat",
                "content": [{"type": "text/plain", "value": "Hi"}],
            }
            async with http.post(f"{mailman.url}/v3/mail/send", json=v3, headers=api.auth) as r:
                assert r.status == 202, await r.text()
            form = {"from": "noreply@example.com", "to": ",".join(to), "text": "Hi"}
            basic = "Basic " + base64.b64encode(f"api:{acme}".encode()).decode()
            async with http.post(
                f"{mailman.url}/v3/{fakes.mailgun.domain}/messages",
                data=form,
                headers={"Authorization": basic},
            ) as r:
                assert r.status == 200, await r.text()
            assert mailman.smtp_port is not None
            await asyncio.to_thread(smtp_send, mailman.smtp_port, acme, to, "smtp")
        await Api(http, mailman.url, beta).send("gone@example.com")

        async def every_mail_settled() -> bool:
            listed = (await api.get("/mail?status=suppressed"))["mails"]
            return len(listed) == 4 and len(fakes.sendgrid.received) == 5

        await eventually(every_mail_settled, what="4 mails suppressed, 5 sent")
        suppressed = (await api.get("/mail?status=suppressed"))["mails"]
        shown = [(await api.get(f"/mail/{m['id']}"))["mail"] for m in suppressed]
    assert all(
        s["suppressed"] == [{"email": "gone@example.com", "reason": "unsubscribe"}] for s in shown
    )
    assert sorted(recipients(fakes.sendgrid)) == [["ann@example.com"]] * 4 + [["gone@example.com"]]
    assert fakes.sendgrid.calls == 5


@pytest.mark.slow
async def test_an_address_suppressed_after_acceptance_is_dropped_before_the_call(
    tmp_path: Path, store_url: str, fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """A scheduled mail accepted while its address was not suppressed, then suppressed
    before its time: right before the provider call it is found, the mail ends
    ``suppressed`` and the provider is never called."""
    env = {**fakes.env(), "MAILMAN_PROVIDERS": "sendgrid", "MAILMAN_STORE": store_url}
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        at = time.time() + 1.5
        send_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03}Z"
        body = {"to": ["late@example.com"], "from": "noreply@example.com", "content": "Hi"}
        async with http.post(f"{mailman.url}/mail/send", json={**body, "send_at": send_at}) as r:
            assert r.status == 201, await r.text()
            mail = (await r.json())["mail"]
        assert mail["status"] == "scheduled"
        async with http.post(
            f"{mailman.url}/suppressions", json={"address": "late@example.com"}
        ) as r:
            assert r.status == 201
        shown = await api.wait(mail["id"], "suppressed")
    assert shown["suppressed"] == [{"email": "late@example.com", "reason": "manual"}]
    assert shown["attempts"] == [] and fakes.sendgrid.calls == 0


async def test_a_tenant_with_no_suppressions_is_not_looked_up_per_mail(
    tmp_path: Path, store_url: str, fakes: Fakes, http: aiohttp.ClientSession
) -> None:
    """With no suppression, acceptance asks the store once per MAILMAN_KEY_CACHE_SECONDS
    whether there is any, not once per mail; a first suppression made meanwhile by another
    process still keeps its address from the provider (the check before the call), and one
    made through this process counts at once."""
    env = {
        **fakes.env(),
        "MAILMAN_PROVIDERS": "sendgrid",
        "MAILMAN_STORE": store_url,
        "MAILMAN_KEY_CACHE_SECONDS": "60",
    }
    async with embedded(make_config(tmp_path, env)) as mailman:
        store = mailman.store
        asked: list[str] = []
        has, among = store.has_suppressions, store.suppressed_among

        async def has_suppressions(tenant: str) -> bool:
            asked.append("any")
            return await has(tenant)

        async def suppressed_among(*args: Any) -> Any:
            asked.append("among")
            return await among(*args)

        store.has_suppressions = has_suppressions  # type: ignore[method-assign]
        store.suppressed_among = suppressed_among  # type: ignore[method-assign,assignment]
        api = Api(http, mailman.url)
        sent = await asyncio.gather(*(api.send("ann@example.com") for _ in range(20)))
        assert set(asked) == {"any"}  # (the first concurrent mails may each ask)
        asked.clear()
        # Through another process (another replica, `mailman suppressions add`).
        async with open_store(store_url) as elsewhere:
            late = Suppression("", "late@example.com", SuppressionReason.MANUAL, "cli", 1.0)
            assert await elsewhere.add_suppressions([late]) == 1
        first = await api.send("late@example.com")
        assert first["status"] == "queued"  # acceptance still trusts "none" (60 s)
        shown = await api.wait(first["id"], "suppressed")
        # Through this process: followed at once.
        async with http.post(f"{mailman.url}/suppressions", json={"address": "now@x.org"}) as r:
            assert r.status == 201
        assert (await api.send("now@x.org"))["status"] == "suppressed"
        for mail in sent:
            await api.wait(mail["id"], "sent")
    assert shown["suppressed"] == [{"email": "late@example.com", "reason": "manual"}]
    assert asked == ["any", "among"]  # after a write here: asked again, then looked up
    assert shown["attempts"] == []
    assert ["late@example.com"] not in recipients(fakes.sendgrid)
    assert len(fakes.sendgrid.received) == 20
