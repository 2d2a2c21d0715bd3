"""Routing end to end: weights split first attempts between the fakes, failover takes
the rest, a tenant's own chain."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from mailman.core.chain import Chain
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_system import Api

#: Enough mails for both providers to get some, few enough to stay fast.
MAILS = 24
WEIGHTS = "sendgrid:3,mailgun:1"


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
