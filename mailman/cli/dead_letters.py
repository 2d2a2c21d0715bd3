"""``mailman dead-letters list|replay``: the records no handler could handle.

A record lands in the dead letters when its handler raised
``MAILMAN_POISON_ATTEMPTS`` times (``actors.poison``) or, on Kafka, when it
does not decode as its mailbox's type. Each keeps its mailbox, the mail id it
names (if any), the error and the raw bytes.

``replay`` sends a dead letter's mail again: one that names a mail that is
``failed`` (which dead-lettering made it) gets a new round through the outbox,
exactly like ``POST /mail/{id}/retry``, in every deployment. One that names no
mail (it did not decode) is published again, as it was, to its mailbox's
Kafka topic when ``--broker`` names Kafka; with in-process mailboxes there is
nowhere to put it and it is left as it is.
"""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

import orjson

from mailman.config import SETTINGS
from mailman.config.flags import add_flag
from mailman.core.clock import iso_time
from mailman.store import DeadLetter, Store, open_store

from ._tools import run_store_tool, store_flags
from .command import Call, Command


def _define(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    p.description = "List and replay the mailbox records no handler could handle."
    common = store_flags(p, env)
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,replay}")
    listing = actions.add_parser("list", parents=[common], help="the dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument(
        "--all", action="store_true", help="also the ones already replayed (default: not)"
    )
    listing.add_argument("--limit", type=int, default=1000, help="at most this many (1000)")
    replay = actions.add_parser(
        "replay", parents=[common], help="send the mails of dead letters again"
    )
    replay.add_argument("ids", nargs="*", type=int, help="dead letter ids (see list)")
    replay.add_argument("--all", action="store_true", help="every dead letter not yet replayed")
    add_flag(
        replay,
        SETTINGS["broker"],
        help="the service's broker: with kafka://, a record that names no mail is published "
        "again to its topic",
    )
    add_flag(
        replay,
        SETTINGS["kafka.topic_prefix"],
        flag="--topic-prefix",
        help="the service's Kafka topic prefix",
    )


@dataclass(frozen=True, slots=True)
class _Where:
    """The service's store, broker and topic prefix, as the flags and environment say."""

    store: str
    broker: str
    topic_prefix: str


def _run(args: argparse.Namespace, call: Call) -> int:
    """0 done, 1 the store failed or a letter could not be replayed, 2 bad usage."""
    if args.action == "replay" and not args.ids and not args.all:
        print("mailman dead-letters: replay needs dead letter ids or --all", file=call.err)
        return 2
    where = _Where(
        store=SETTINGS["store"].read_args(args, call.env),
        broker=SETTINGS["broker"].read_args(args, call.env),
        topic_prefix=SETTINGS["kafka.topic_prefix"].read_args(args, call.env),
    )
    return run_store_tool(
        "mailman dead-letters",
        where.store,
        lambda: _letters(args, where, call.out, call.err),
        call.err,
    )


COMMAND = Command("dead-letters", "list and replay dead letters", _define, _run)


async def _letters(args: argparse.Namespace, where: _Where, out: TextIO, err: TextIO) -> int:
    async with open_store(where.store) as store:
        if args.action == "list":
            letters = await store.dead_letters(replayed=args.all, limit=args.limit)
            if args.json:
                for letter in letters:
                    out.write(orjson.dumps(as_json(letter)).decode() + "\n")
            else:
                print(_table(letters), file=out)
            return 0
        return await _replay(store, args, where, out, err)


def as_json(letter: DeadLetter) -> dict[str, object]:
    """A dead letter as ``list --json`` prints it (the bytes in base64)."""
    return {
        "id": letter.id,
        "mailbox": letter.mailbox,
        "mail_id": letter.mail_id,
        "error": letter.error,
        "at": _when(letter.at),
        "replayed_at": None if letter.replayed_at is None else _when(letter.replayed_at),
        "payload_base64": base64.b64encode(letter.payload).decode("ascii"),
    }


async def _replay(
    store: Store, args: argparse.Namespace, where: _Where, out: TextIO, err: TextIO
) -> int:
    pending = await store.dead_letters(replayed=False, limit=1_000_000)
    failures = 0
    if args.all:
        chosen = pending
    else:
        by_id = {letter.id: letter for letter in pending}
        chosen = [by_id[i] for i in args.ids if i in by_id]
        for letter_id in (i for i in args.ids if i not in by_id):
            print(f"dead letter {letter_id}: no such dead letter, or already replayed", file=err)
            failures += 1
    replayed: list[int] = []
    for letter in chosen:
        done, note = await _replay_one(store, letter, where)
        print(f"dead letter {letter.id}: {note}", file=out if done else err)
        if done:
            replayed.append(letter.id)
        else:
            failures += 1
    await store.mark_replayed(replayed, time.time())
    return 1 if failures else 0


async def _replay_one(store: Store, letter: DeadLetter, where: _Where) -> tuple[bool, str]:
    """Replay one letter: (done, what happened)."""
    if letter.mail_id is not None:
        moved = await store.retry(letter.mail_id, time.time())
        if moved is None:
            return False, f"mail {letter.mail_id} is not in this store"
        if moved.changed:
            return True, f"mail {letter.mail_id} queued again (a new round)"
        return True, f"mail {letter.mail_id} is {moved.status.value}: nothing to send"
    scheme, _, rest = where.broker.partition("://")
    if scheme != "kafka" or not rest.strip("/"):
        return False, "names no mail; publishing it again needs --broker kafka://..."
    topic = f"{where.topic_prefix}{letter.mailbox}"
    await _publish(rest.strip("/"), topic, letter.payload)
    return True, f"published again to {topic}"


async def _publish(bootstrap: str, topic: str, payload: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload)
    finally:
        await producer.stop()


def _when(at: float) -> str:
    """A time in the table and the JSON: RFC 3339 in UTC, to the second."""
    return iso_time(at, "seconds")


def _table(letters: list[DeadLetter]) -> str:
    rows = [("ID", "MAILBOX", "MAIL", "AT", "REPLAYED", "ERROR")]
    for x in letters:
        replayed = "-" if x.replayed_at is None else _when(x.replayed_at)
        rows.append((str(x.id), x.mailbox, x.mail_id or "-", _when(x.at), replayed, x.error))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]]
        ).rstrip()
        for row in rows
    )
