"""The sweeper picks up mails that nothing is handling any more, in a running system."""

from __future__ import annotations

import time
from pathlib import Path

from mailman.core.model import Address, Mail, Outcome, Status
from mailman.system import embedded

from ..conftest import eventually, make_config


def forgotten_mail() -> Mail:
    return Mail(
        id="01FORGOTTEN00000000000000A",
        sender=Address("shop@example.com"),
        to=(Address("ann@example.com"),),
        subject="left behind",
        text="a worker died with this one",
        created_at=time.time() - 120,
    )


async def test_a_forgotten_sending_mail_is_swept_and_sent(tmp_path: Path) -> None:
    """A mail left `sending` with a stale pending attempt and no outbox entry (its worker
    died, its message gone) is found by the sweeper, its attempt becomes unknown, and it
    is sent: the outbox provider is asked first and has no file for it."""
    config = make_config(
        tmp_path,
        {
            "MAILMAN_PROVIDER_TIMEOUT": "0.5",
            "MAILMAN_SWEEP_MARGIN_SECONDS": "0.5",
            "MAILMAN_SWEEP_INTERVAL_SECONDS": "0.05",
        },
    )
    async with embedded(config) as mailman:
        store = mailman.store
        mail = forgotten_mail()
        long_ago = time.time() - 60
        await store.add(mail)
        # Another relay claimed it a minute ago, published it and removed its entry...
        entries = await store.claim_outbox("dead-relay", 10, 30.0, long_ago)
        assert [e.mail_id for e in entries] == [mail.id]
        await store.published([e.id for e in entries])
        # ... and a sender that then died recorded its attempt, and nothing more.
        begun = await store.begin_attempt(mail.id, "outbox", 0, long_ago, 0.0)
        assert begun is not None and begun.attempt_id is not None

        async def sent() -> bool:
            record = await store.get(mail.id)
            return record is not None and record.status is Status.SENT

        await eventually(sent, what="the forgotten mail swept and sent")
        record = await store.get(mail.id)
    assert record is not None
    assert [(a.outcome, a.checked) for a in record.attempts] == [
        (Outcome.UNKNOWN, "not-found"),
        (Outcome.ACCEPTED, None),
    ]
    assert (tmp_path / "outbox" / f"{mail.id}.eml").exists()
