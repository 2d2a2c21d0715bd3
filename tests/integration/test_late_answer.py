"""A provider slower than the timeout: its answer is still listened for
(``MAILMAN_LATE_ANSWER_SECONDS``) and settles the mail before it is handed on.

The whole system, embedded, on real fakes: SendGrid (which cannot be asked whether it
took a mail) answers after ``MAILMAN_PROVIDER_TIMEOUT``, Mailgun is next in the chain.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from mailman.system import embedded

from ..conftest import make_config, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid
from .test_webhooks import Service

TIMEOUT = 0.5
LATE = 2.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def late_env(sg: FakeSendGrid, mg: FakeMailgun, late: float = LATE) -> dict[str, str]:
    return provider_env(
        sg,
        mg,
        MAILMAN_PROVIDER_TIMEOUT=str(TIMEOUT),
        MAILMAN_LATE_ANSWER_SECONDS=str(late),
    )


@pytest.mark.slow
async def test_an_answer_after_the_timeout_settles_the_mail_sent(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SendGrid takes the mail and answers after the timeout, within the late window: the
    mail is sent by SendGrid with its message id, Mailgun never called; the attempt is
    unknown (the breaker counted it) and checked taken by the late answer."""
    async with (
        FakeSendGrid(answer_delay=TIMEOUT + 0.5) as sg,
        FakeMailgun() as mg,
        embedded(make_config(tmp_path, late_env(sg, mg))) as mailman,
    ):
        service = Service(mailman.url, http, sg, mg)
        with capture_logs() as logs:
            mail_id = await service.send()
            shown = await service.wait(mail_id, "sent")
    assert sg.mail_ids() == [mail_id] and mg.calls == 0
    assert (shown["provider"], shown["provider_message_id"]) == ("sendgrid", sg.message_ids[0])
    [attempt] = shown["attempts"]
    assert (attempt["outcome"], attempt["checked"]) == ("unknown", "taken")
    assert attempt["reason"] == (
        f"timeout after {TIMEOUT:g}s waiting for the answer; checked: answered late: accepted"
    )
    assert any(e["event"] == "attempt.late_answer" and e["outcome"] == "accepted" for e in logs)


@pytest.mark.slow
async def test_no_answer_in_the_late_window_hands_the_mail_on_after_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SendGrid silent past the late window too: the mail goes to Mailgun once the window
    is over, not before; the SendGrid attempt checked as any lost answer (cannot-check)."""
    async with (
        FakeSendGrid(mode="timeout") as sg,
        FakeMailgun() as mg,
        embedded(make_config(tmp_path, late_env(sg, mg, late=1.0))) as mailman,
    ):
        service = Service(mailman.url, http, sg, mg)
        began = time.monotonic()
        mail_id = await service.send()
        shown = await service.wait(mail_id, "sent")
        took = time.monotonic() - began
    assert shown["provider"] == "mailgun" and mg.mail_ids() == [mail_id]
    first, _ = shown["attempts"]
    assert (first["outcome"], first["checked"]) == ("unknown", "cannot-check")
    assert took >= TIMEOUT + 1.0


@pytest.mark.slow
async def test_a_late_refusal_is_recorded_and_the_mail_sent_on(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """SendGrid refuses (503) after the timeout: the attempt is checked not-found with
    that answer, and Mailgun sends the mail, once."""
    async with (
        FakeSendGrid(mode="503", delay=TIMEOUT + 0.3) as sg,
        FakeMailgun() as mg,
        embedded(make_config(tmp_path, late_env(sg, mg))) as mailman,
    ):
        service = Service(mailman.url, http, sg, mg)
        mail_id = await service.send()
        shown = await service.wait(mail_id, "sent")
    assert shown["provider"] == "mailgun" and mg.mail_ids() == [mail_id] and sg.mail_ids() == []
    first, second = shown["attempts"]
    assert (first["outcome"], first["checked"]) == ("unknown", "not-found")
    assert "answered late: transient: Service Unavailable" in first["reason"]
    assert (second["provider"], second["outcome"]) == ("mailgun", "accepted")
