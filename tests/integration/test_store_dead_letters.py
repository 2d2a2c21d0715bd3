"""Dead letters: kept with their bytes and error; they fail their mail.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

from mailman.core.model import Status
from mailman.store import (
    Store,
)

from . import test_store as contract
from .test_store import mail

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


async def test_dead_letters_keep_the_record_and_fail_the_mail(store: Store) -> None:
    """add_dead_letter() keeps the raw bytes and error, fails the mail with the reason;
    listing and marking replayed work."""
    await store.add(mail())
    letter = await store.add_dead_letter(
        "send.sendgrid", "m1", b"\x00raw", "IndexError: hop", 3000.0
    )
    orphan = await store.add_dead_letter("status", None, b"not json", "not JSON", 3001.0)
    letters = await store.dead_letters()
    assert [(x.id, x.mailbox, x.mail_id, x.payload, x.error) for x in letters] == [
        (letter, "send.sendgrid", "m1", b"\x00raw", "IndexError: hop"),
        (orphan, "status", None, b"not json", "not JSON"),
    ]
    record = await store.get("m1")
    assert record is not None and record.status is Status.FAILED
    assert record.reason is not None and f"dead letter {letter}" in record.reason
    await store.mark_replayed([letter], 3100.0)
    assert [x.id for x in await store.dead_letters()] == [orphan]
    everything = await store.dead_letters(replayed=True)
    assert [(x.id, x.replayed_at) for x in everything] == [(letter, 3100.0), (orphan, None)]
