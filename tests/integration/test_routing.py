"""Routing end to end: weights split first attempts between the fakes, failover takes
the rest, a tenant's own chain."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import smtplib
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailman.cli import main
from mailman.core.chain import Chain
from mailman.intake.keys import Scope, create_key
from mailman.intake.tenants import TenantChains
from mailman.mailboxes.memory import MemoryBroker
from mailman.mailboxes.routing import Router
from mailman.store.sqlite import SQLiteStore
from mailman.system import embedded

from ..conftest import eventually, make_config, postmark_env, provider_env, sqlite_store
from ..support.fake_postmark import FakePostmark
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_system import Api

#: Enough mails for both providers to get some, few enough to stay fast.
MAILS = 24
WEIGHTS = "sendgrid:3,mailgun:1"
#: A deployment's environment with SendGrid and Mailgun configured (the CLI reads it).
ENV = {
    "MAILMAN_PROVIDERS": "sendgrid,mailgun",
    "SENDGRID_API_KEY": "SG.k",
    "MAILGUN_API_KEY": "key-k",
    "MAILGUN_DOMAIN": "mg.example.com",
}


async def send_all(api: Api, count: int) -> list[str]:
    ids = [await api.send(subject=f"Mail {n}") for n in range(count)]

    async def all_sent() -> bool:
        return all([await api.status(i) == "sent" for i in ids])

    await eventually(all_sent, within=20.0, what=f"{count} mails sent")
    return ids


async def test_weights_split_first_attempts_between_providers(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """sendgrid:3,mailgun:1: each mail goes out through the provider its id chooses by
    weight, once; both get some, none fails over."""
    env = provider_env(sendgrid, mailgun, MAILMAN_PROVIDERS=WEIGHTS)
    async with embedded(make_config(tmp_path, env)) as mailman:
        ids = await send_all(Api(http, mailman.url), MAILS)
    chain = Chain(("sendgrid", "mailgun"), (3, 1))
    expected_sg = sorted(i for i in ids if chain.first(i) == "sendgrid")
    expected_mg = sorted(i for i in ids if chain.first(i) == "mailgun")
    assert expected_sg and expected_mg  # the ids split: the test can tell the providers apart
    assert sorted(sendgrid.mail_ids()) == expected_sg
    assert sorted(mailgun.mail_ids()) == expected_mg
    assert sendgrid.calls + mailgun.calls == MAILS


async def test_with_one_weighted_provider_down_the_other_sends_everything(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Mailgun answering 503: the mails that chose it fail over to SendGrid, which sends
    every mail exactly once."""
    mailgun.mode = "503"
    # The breaker kept closed: every mail that chose Mailgun meets a 503, none a skip.
    env = provider_env(
        sendgrid, mailgun, MAILMAN_PROVIDERS=WEIGHTS, MAILMAN_BREAKER_FAIL_MAX="1000"
    )
    async with embedded(make_config(tmp_path, env)) as mailman:
        api = Api(http, mailman.url)
        ids = await send_all(api, MAILS)
        shown = {i: await api.show(i) for i in ids}
    chain = Chain(("sendgrid", "mailgun"), (3, 1))
    moved = [i for i in ids if chain.first(i) == "mailgun"]
    assert moved
    assert sorted(sendgrid.mail_ids()) == sorted(ids)
    assert mailgun.received == [] and mailgun.calls == len(moved)
    for i in moved:
        assert [(a["provider"], a["outcome"]) for a in shown[i]["attempts"]] == [
            ("mailgun", "transient"),
            ("sendgrid", "accepted"),
        ]


def v3_body(subject: str) -> dict[str, Any]:
    """A SendGrid v3 mail send body."""
    return {
        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
        "from": {"email": "noreply@example.com"},
        "subject": subject,
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


async def test_a_tenants_chain_is_followed_from_every_entry_point(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Tenant acme's chain is mailgun,sendgrid: its mails go out through Mailgun, from
    POST /mail/send and from the SendGrid-compatible endpoint; another tenant's follow the
    deployment's chain (SendGrid first)."""
    async with embedded(make_config(tmp_path, provider_env(sendgrid, mailgun))) as mailman:
        _, acme = await create_key(mailman.store, tenant="acme", scopes=[Scope.SEND])
        _, beta = await create_key(mailman.store, tenant="beta", scopes=[Scope.SEND])
        await mailman.store.set_tenant_chain("acme", "mailgun,sendgrid", 0.0)
        sent: dict[str, list[str]] = {"acme": [], "beta": []}
        for tenant, key in (("acme", acme), ("beta", beta)):
            auth = {"Authorization": f"Bearer {key}"}
            body = {"to": ["ann@example.com"], "from": "noreply@example.com", "content": "Hi"}
            async with http.post(f"{mailman.url}/mail/send", json=body, headers=auth) as resp:
                assert resp.status == 201, await resp.text()
                sent[tenant].append((await resp.json())["mail"]["id"])
            v3 = v3_body(f"compat {tenant}")
            async with http.post(f"{mailman.url}/v3/mail/send", json=v3, headers=auth) as resp:
                assert resp.status == 202, await resp.text()

        def every_mail_out() -> bool:
            return len(sendgrid.received) + len(mailgun.received) == 4

        await eventually(every_mail_out, what="four mails sent")
    assert sorted(b["subject"] for b in sendgrid.received) == ["(no subject)", "compat beta"]
    assert sorted(f["subject"][0] for f in mailgun.received) == ["(no subject)", "compat acme"]
    assert sent["acme"][0] in mailgun.mail_ids() and sent["beta"][0] in sendgrid.mail_ids()
    assert sendgrid.calls == 2 and mailgun.calls == 2  # no failover: each chain's first


def smtp_send(port: int, key: str, subject: str) -> None:
    """One mail by SMTP submission, ``key`` as the AUTH password (smtplib raises if refused)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "noreply@example.com", "ann@example.com", subject
    msg.set_content("Hi")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.login("api", key)
        client.send_message(msg)


async def test_a_tenants_chain_is_used_by_all_four_entry_points(
    tmp_path: Path,
    sendgrid: FakeSendGrid,
    mailgun: FakeMailgun,
    postmark: FakePostmark,
    http: aiohttp.ClientSession,
) -> None:
    """The deployment's chain is sendgrid,postmark; tenant acme's is postmark alone. acme's
    mails arrive at Postmark only, whether sent to POST /mail/send, the SendGrid-compatible
    /v3/mail/send, the Mailgun-compatible /v3/{domain}/messages or by SMTP with its key;
    beta's, through the same four, at SendGrid only."""
    env = provider_env(sendgrid, mailgun, MAILMAN_PROVIDERS="sendgrid,postmark")
    config = make_config(tmp_path, {**env, **postmark_env(postmark)})
    config = dataclasses.replace(config, smtp=dataclasses.replace(config.smtp, port=0))
    async with embedded(config) as mailman:
        await mailman.store.set_tenant_chain("acme", "postmark", 0.0)
        for tenant in ("acme", "beta"):
            _, key = await create_key(mailman.store, tenant=tenant, scopes=[Scope.SEND])
            bearer = {"Authorization": f"Bearer {key}"}
            body = {"to": ["ann@example.com"], "from": "noreply@example.com", "content": "Hi"}
            body["subject"] = f"{tenant} native"
            async with http.post(f"{mailman.url}/mail/send", json=body, headers=bearer) as resp:
                assert resp.status == 201, await resp.text()
            v3 = v3_body(f"{tenant} sendgrid-compatible")
            async with http.post(f"{mailman.url}/v3/mail/send", json=v3, headers=bearer) as resp:
                assert resp.status == 202, await resp.text()
            form = {
                "from": "noreply@example.com",
                "to": "ann@example.com",
                "subject": f"{tenant} mailgun-compatible",
                "text": "Hi",
            }
            async with http.post(
                f"{mailman.url}/v3/mg.example.com/messages",
                data=form,
                headers={
                    "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()
                },
            ) as resp:
                assert resp.status == 200, await resp.text()
            assert mailman.smtp_port is not None
            await asyncio.to_thread(smtp_send, mailman.smtp_port, key, f"{tenant} smtp")

        def every_mail_out() -> bool:
            return len(sendgrid.received) + len(postmark.received) == 8

        await eventually(every_mail_out, what="eight mails sent")
    ways = ["native", "sendgrid-compatible", "mailgun-compatible", "smtp"]
    assert sorted(b["Subject"] for b in postmark.received) == sorted(f"acme {w}" for w in ways)
    assert sorted(b["subject"] for b in sendgrid.received) == sorted(f"beta {w}" for w in ways)
    assert sendgrid.calls == 4 and postmark.calls == 4  # no failover: each chain's first
    assert mailgun.calls == 0


def cli(env: dict[str, str]) -> Callable[..., tuple[int, str, str]]:
    """``mailman ARGV`` in this process with ``env``: its exit code, stdout and stderr."""

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), env, out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    return run


def test_tenants_set_list_and_back_to_the_default(tmp_path: Path) -> None:
    """``mailman tenants set acme --providers ...`` keeps the chain (weights too), ``list``
    shows every tenant with its chain and live keys, ``--providers default`` clears it."""
    url = sqlite_store(tmp_path / "mailman.db")
    env = {"MAILMAN_STORE": url, **ENV}

    run = cli(env)

    assert run("keys", "create", "--tenant", "beta")[0] == 0
    assert run("tenants", "set", "acme", "--providers", "Mailgun:1, sendgrid:3") == (
        0,
        "",
        "tenant acme: mailgun:1,sendgrid:3\n",
    )
    code, out, _ = run("tenants", "list")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["TENANT", "PROVIDERS", "KEYS", "UNSUBSCRIBE", "MAILTO"],
        ["acme", "mailgun:1,sendgrid:3", "0", "-", "-"],
        ["beta", "default", "1", "-", "-"],
    ]
    assert run("tenants", "set", "acme", "--providers", "default")[0] == 0
    assert "acme" not in run("tenants", "list")[1]


def test_tenants_set_a_default_unsubscribe_group_list_it_and_clear_it(tmp_path: Path) -> None:
    """``--unsubscribe-group`` (and ``--unsubscribe-mailto``) keeps a tenant's default
    group beside its chain, ``list`` shows both, ``-`` or ``default`` clears the group
    only; without MAILMAN_PUBLIC_URL here ``set`` says what a service without it does."""
    url = sqlite_store(tmp_path / "mailman.db")
    env = {"MAILMAN_STORE": url, **ENV}

    run = cli(env)

    def listed() -> list[list[str]]:
        return [line.split() for line in run("tenants", "list")[1].splitlines()[1:]]

    code, _, said = run(
        "tenants", "set", "acme", "--providers", "mailgun", "--unsubscribe-group", "newsletter"
    )
    assert code == 0
    assert said.splitlines() == [
        "tenant acme: mailgun",
        "tenant acme: default unsubscribe group newsletter; note: MAILMAN_PUBLIC_URL and "
        "MAILMAN_UNSUBSCRIBE_SECRET unset here: a service without them sends the group's "
        "mails without List-Unsubscribe",
    ]
    argv = ("--unsubscribe-group", "offers", "--unsubscribe-mailto", "Out@Example.com")
    assert run("tenants", "set", "beta", *argv)[0] == 0
    assert listed() == [
        ["acme", "mailgun", "0", "newsletter", "-"],
        ["beta", "default", "0", "offers", "Out@example.com"],
    ]
    assert run("tenants", "set", "acme", "--unsubscribe-group", "-")[0] == 0
    assert run("tenants", "set", "beta", "--unsubscribe-group", "default")[0] == 0
    assert listed() == [["acme", "mailgun", "0", "-", "-"]]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "say what to set: --providers, --unsubscribe-group or both"),
        (("--unsubscribe-group", "a b"), "--unsubscribe-group must be 1 to 64 letters"),
        (("--unsubscribe-mailto", "x@example.com"), "--unsubscribe-mailto needs a group"),
        (
            ("--unsubscribe-group", "-", "--unsubscribe-mailto", "x@example.com"),
            "--unsubscribe-mailto needs a group",
        ),
        (
            ("--unsubscribe-group", "n", "--unsubscribe-mailto", "X <x@example.com>"),
            "--unsubscribe-mailto must be a bare address",
        ),
        (("--unsubscribe-group", "n", "--unsubscribe-mailto", "nope"), "--unsubscribe-mailto: "),
    ],
)
def test_tenants_set_refuses_a_bad_unsubscribe_default(
    tmp_path: Path, argv: tuple[str, ...], says: str
) -> None:
    """No flag, a bad group, a mailto without a group or not a bare address: exit 2, one
    line saying which, nothing stored."""
    url = sqlite_store(tmp_path / "mailman.db")
    out, err = io.StringIO(), io.StringIO()
    assert main(["tenants", "set", "acme", *argv], {"MAILMAN_STORE": url}, out=out, err=err) == 2
    assert err.getvalue().startswith(f"mailman tenants: {says}"), err.getvalue()
    assert err.getvalue().count("\n") == 1
    listed = io.StringIO()
    assert main(["tenants", "list", "--store", url], {}, out=listed, err=io.StringIO()) == 0
    assert listed.getvalue().splitlines()[1:] == []


@pytest.mark.parametrize(
    ("providers", "says"),
    [
        ("postmark,ses", "--providers names postmark, ses, not configured in this deployment"),
        ("outbox", "--providers names outbox, not configured in this deployment"),
        ("mailgun:0", "--providers: the weight of mailgun must be a whole number of at least 1"),
        (",", "--providers names no provider"),
    ],
)
def test_tenants_set_refuses_a_chain_this_deployment_cannot_send_with(
    tmp_path: Path, providers: str, says: str
) -> None:
    """A provider not configured here (unknown, or without a key), a bad weight or no
    provider: exit 2, one line saying which, nothing stored."""
    url = sqlite_store(tmp_path / "mailman.db")
    out, err = io.StringIO(), io.StringIO()
    argv = ["tenants", "set", "acme", "--providers", providers]
    assert main(argv, {"MAILMAN_STORE": url, **ENV}, out=out, err=err) == 2
    assert err.getvalue().startswith(f"mailman tenants: {says}")
    assert err.getvalue().count("\n") == 1
    listed = io.StringIO()
    assert main(["tenants", "list", "--store", url], {}, out=listed, err=io.StringIO()) == 0
    assert listed.getvalue().splitlines()[1:] == []


class CountingStore(SQLiteStore):
    """A SQLite store that counts reads of the tenants' chains."""

    reads = 0

    async def tenant_chains(self) -> dict[str, str]:
        self.reads += 1
        return await super().tenant_chains()


async def test_tenant_chains_are_read_once_per_ttl_at_acceptance(tmp_path: Path) -> None:
    """Acceptance reads every tenant's chain at most once per TTL (none for no tenant);
    a change is seen once the TTL has passed."""
    now = [0.0]
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        await store.set_tenant_chain("acme", "mailgun", 0.0)
        chains = TenantChains(store, ttl=2.0, clock=lambda: now[0])
        assert await chains.of("") is None
        assert store.reads == 0
        assert [await chains.of("acme"), await chains.of("beta")] == ["mailgun", None]
        await store.set_tenant_chain("acme", "sendgrid", 1.0)
        now[0] = 1.9
        assert await chains.of("acme") == "mailgun"
        assert store.reads == 1
        now[0] = 2.0
        assert await chains.of("acme") == "sendgrid"
        assert store.reads == 2


def test_a_mails_own_chain_is_cut_to_the_providers_configured_here() -> None:
    """The relay orders a mail by its own chain, less providers this deployment does not
    run; with none left (or a chain it cannot read), by the deployment's."""
    router = Router(MemoryBroker(), ("sendgrid", "mailgun"))
    assert router.order("m1", "postmark,mailgun,sendgrid") == ("mailgun", "sendgrid")
    assert router.order("m1", "postmark,ses") == ("sendgrid", "mailgun")
    assert router.order("m1", "sendgrid:x") == ("sendgrid", "mailgun")
    assert router.order("m1") == ("sendgrid", "mailgun")
