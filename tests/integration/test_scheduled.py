"""``send_at``: a mail waits ``scheduled`` and goes out at its time, restarts or not."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mailman.core.ids import new_id
from mailman.core.model import Address, Mail, Status
from mailman.core.submission import parse_mail
from mailman.core.validation import MAX_SCHEDULE_SECONDS, ValidationFailed
from mailman.store import Store
from mailman.system import embedded

from ..conftest import eventually, make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid

BASE: dict[str, Any] = {"to": ["ann@example.com"], "from": "noreply@example.com", "content": "Hi"}
NOW = 1_750_000_000.0


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse(send_at: object) -> Mail:
    return parse_mail(
        {**BASE, "send_at": send_at}, mail_id="01J", default_subject="(none)", now=NOW
    )


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-06-15T16:00:00Z", datetime(2025, 6, 15, 16, tzinfo=UTC).timestamp()),
        ("2025-06-15t16:00:00.250z", datetime(2025, 6, 15, 16, tzinfo=UTC).timestamp() + 0.25),
        ("2025-06-15T18:00:00+02:00", datetime(2025, 6, 15, 16, tzinfo=UTC).timestamp()),
        ("2025-06-15 16:00:00Z", datetime(2025, 6, 15, 16, tzinfo=UTC).timestamp()),
    ],
)
def test_send_at_takes_rfc3339_times_with_an_offset(raw: str, expected: float) -> None:
    """An RFC 3339 time (Z or an offset, any case, fraction allowed) is kept as unix time."""
    assert NOW < expected < NOW + MAX_SCHEDULE_SECONDS
    assert parse(raw).send_at == pytest.approx(expected)


@pytest.mark.parametrize(
    "raw",
    [
        "2025-06-15T16:00:00",  # no offset: RFC 3339 needs one
        "2025-06-15",
        "tomorrow",
        "2025-13-15T16:00:00Z",
        "2025-06-15T16:00:60Z",
        1750003600,
        "",
    ],
)
def test_send_at_refuses_what_is_not_an_rfc3339_time(raw: object) -> None:
    """A time without its offset, another format or a number is a 422 naming send_at."""
    with pytest.raises(ValidationFailed) as caught:
        parse(raw)
    assert [e.field for e in caught.value.errors] == ["send_at"]


def test_send_at_at_most_72_hours_ahead() -> None:
    """72 hours ahead is taken; a second more is refused."""
    assert parse(rfc3339(NOW + MAX_SCHEDULE_SECONDS)).send_at == NOW + MAX_SCHEDULE_SECONDS
    with pytest.raises(ValidationFailed) as caught:
        parse(rfc3339(NOW + MAX_SCHEDULE_SECONDS + 1))
    assert "72 hours" in caught.value.errors[0].message


def test_a_past_send_at_means_at_once() -> None:
    """A time already past sends the mail at once (no schedule)."""
    assert parse(rfc3339(NOW - 60)).send_at is None


# --- the store ------------------------------------------------------------------------


def scheduled_mail(send_at: float, now: float) -> Mail:
    return Mail(
        id=new_id(now),
        sender=Address("noreply@example.com"),
        to=(Address("ann@example.com"),),
        subject="s",
        text="t",
        created_at=now,
        send_at=send_at,
    )


async def test_the_store_releases_a_scheduled_mail_at_its_time(any_store: Store) -> None:
    """Scheduled mails have no outbox entry and no backlog share till released, once."""
    now = time.time()
    later = scheduled_mail(now + 100, now)
    sooner = scheduled_mail(now + 50, now)
    for mail in (later, sooner):
        await any_store.add(mail)
    assert (await any_store.load(later.id)) == (later, Status.SCHEDULED)
    assert await any_store.backlog() == 0
    assert await any_store.claim_outbox("test", 10, 30.0, now) == []
    assert await any_store.release_scheduled(now + 49) == []
    assert await any_store.release_scheduled(now + 100) == [sooner.id, later.id]
    assert await any_store.release_scheduled(now + 100) == []
    assert (await any_store.load(later.id)) == (later, Status.QUEUED)
    claimed = await any_store.claim_outbox("test", 10, 30.0, now + 100)
    assert sorted(e.mail_id for e in claimed) == sorted([sooner.id, later.id])


async def test_releasing_a_scheduled_mail_queues_its_queued_callback(any_store: Store) -> None:
    """Being scheduled is the 201 itself; when its time comes the callback says queued."""
    now = time.time()
    mail = dataclasses.replace(
        scheduled_mail(now + 10, now), callback_url="https://hooks.example.com/m"
    )
    await any_store.add(mail)
    assert await any_store.claim_callbacks("test", 10, 30.0, now) == []
    assert await any_store.release_scheduled(now + 10) == [mail.id]
    (due,) = await any_store.claim_callbacks("test", 10, 30.0, now + 10)
    assert (due.mail_id, due.status) == (mail.id, Status.QUEUED)


async def test_a_scheduled_mail_marked_failed_is_never_released(any_store: Store) -> None:
    """Marking a scheduled mail failed by hand cancels it."""
    now = time.time()
    mail = scheduled_mail(now + 10, now)
    await any_store.add(mail)
    moved = await any_store.transition(mail.id, Status.FAILED, at=now, reason="cancelled")
    assert moved is not None and moved.changed
    assert await any_store.release_scheduled(now + 20) == []
    assert (await any_store.load(mail.id)) == (mail, Status.FAILED)


async def test_a_scheduled_mail_is_not_sent_before_its_time(store: Store) -> None:
    """A sender handed a scheduled mail early records no attempt (``scheduled``)."""
    now = time.time()
    mail = scheduled_mail(now + 60, now)
    await store.add(mail)
    begun = await store.begin_attempt(mail.id, "sendgrid", 0, now, now - 30)
    assert begun is not None and begun.attempt_id is None and begun.why == "scheduled"


# --- end to end -------------------------------------------------------------------------


FAST = {"MAILMAN_SWEEP_INTERVAL_SECONDS": "0.1"}


async def shown(http: aiohttp.ClientSession, url: str, mail_id: str) -> Any:
    async with http.get(f"{url}/mail/{mail_id}") as resp:
        assert resp.status == 200
        return (await resp.json())["mail"]


@pytest.mark.slow
async def test_a_scheduled_mail_goes_out_at_its_time(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """201 says scheduled; the provider gets it only once send_at has come."""
    config = make_config(tmp_path, provider_env(sendgrid, mailgun, **FAST))
    async with embedded(config) as mailman:
        send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        body = {**BASE, "send_at": send_at.isoformat().replace("+00:00", "Z")}
        async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            answer = await resp.json()
        mail_id = answer["mail"]["id"]
        assert answer["mail"]["status"] == "scheduled"
        first = await shown(http, mailman.url, mail_id)
        assert first["status"] == "scheduled" and first["attempts"] == []
        assert datetime.fromisoformat(first["submitted"]["send_at"]) == send_at

        async def sent() -> bool:
            return bool((await shown(http, mailman.url, mail_id))["status"] == "sent")

        await eventually(sent, within=15, what="the scheduled mail sent")
        final = await shown(http, mailman.url, mail_id)
    assert sendgrid.mail_ids() == [mail_id]
    first_try = datetime.fromisoformat(final["attempts"][0]["at"])
    assert first_try >= send_at


@pytest.mark.slow
async def test_a_scheduled_mail_survives_a_restart(
    tmp_path: Path, sendgrid: FakeSendGrid, mailgun: FakeMailgun, http: aiohttp.ClientSession
) -> None:
    """Scheduled, the service stopped and started again: the mail still goes out, once."""
    config = make_config(tmp_path, provider_env(sendgrid, mailgun, **FAST))
    send_at = datetime.now(UTC) + timedelta(seconds=3)
    async with embedded(config) as mailman:
        body = {**BASE, "send_at": send_at.isoformat()}
        async with http.post(f"{mailman.url}/mail/send", json=body) as resp:
            assert resp.status == 201, await resp.text()
            mail_id = (await resp.json())["mail"]["id"]
    assert sendgrid.received == []
    async with embedded(config) as mailman:

        async def sent() -> bool:
            return bool((await shown(http, mailman.url, mail_id))["status"] == "sent")

        await eventually(sent, within=15, what="the scheduled mail sent after a restart")
    assert sendgrid.mail_ids() == [mail_id]
