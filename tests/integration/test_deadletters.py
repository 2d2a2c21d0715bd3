"""Poison records end in the dead letters; `mailman dead-letters` lists and replays them."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import aiohttp
import orjson

from mailman import main
from mailman.core.messages import Dispatch, RetryLater, decode
from mailman.core.model import Mail
from mailman.providers import Accepted, ProviderClient, Result
from mailman.system import embedded

from ..conftest import eventually, make_config
from .test_system import Api


class Buggy(ProviderClient):
    """A provider client that raises until ``fixed`` is set (a bug, then its fix)."""

    name = "outbox"

    def __init__(self) -> None:
        self.fixed = False
        self.sent: list[str] = []

    async def send(self, mail: Mail) -> Result:
        if not self.fixed:
            raise RuntimeError("bug in a provider client")
        self.sent.append(mail.id)
        return Accepted(message_id=f"<{mail.id}@buggy>")


async def cli(*argv: str) -> tuple[int, str, str]:
    """``mailman dead-letters ARGV`` as a command run beside the service: (code, out, err)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, ["dead-letters", *argv], {}, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_a_dead_lettered_mail_is_listed_and_replayed(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A mail whose sender kept raising is failed and listed; once the bug is fixed, replaying
    its dead letter sends it, and the letter is no longer listed."""
    client = Buggy()
    config = make_config(tmp_path, {"MAILMAN_POISON_ATTEMPTS": "2"})
    async with embedded(config, clients={"outbox": client}) as mailman:
        api = Api(http, mailman.url)
        mail_id = await api.send()
        await api.wait_status(mail_id, "failed")
        code, out, _ = await cli("list", "--json", "--store", config.store)
        assert code == 0
        (letter,) = [orjson.loads(line) for line in out.splitlines()]
        assert letter["mailbox"] == "send.outbox" and letter["mail_id"] == mail_id
        assert "RuntimeError: bug in a provider client" in letter["error"]
        assert decode(Dispatch, base64.b64decode(letter["payload_base64"])).mail_id == mail_id
        code, table, _ = await cli("list", "--store", config.store)
        assert code == 0 and mail_id in table.splitlines()[1]

        client.fixed = True
        code, out, err = await cli("replay", str(letter["id"]), "--store", config.store)
        assert (code, err) == (0, "")
        assert "queued again" in out
        await api.wait_status(mail_id, "sent")
        assert client.sent == [mail_id]
        code, out, _ = await cli("list", "--json", "--store", config.store)
        assert (code, out) == (0, "")
        code, out, _ = await cli("list", "--json", "--all", "--store", config.store)
        assert orjson.loads(out)["replayed_at"] is not None


async def test_poison_in_the_retry_mailbox_is_dead_lettered(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A retry record that makes its handler raise is dead-lettered; the retry scheduler
    goes on (no restart) and other mail still flows."""
    config = make_config(tmp_path, {"MAILMAN_POISON_ATTEMPTS": "2"})
    async with embedded(config) as mailman:
        api = Api(http, mailman.url)
        victim = await api.send(subject="victim")
        await api.wait_status(victim, "sent")
        # A hop past the chain's end makes handing the mail back raise.
        await mailman.router.retry.put(RetryLater(Dispatch(victim, 1.0, hop=7), 0.0))

        async def kept() -> bool:
            return len(await mailman.store.dead_letters()) == 1

        await eventually(kept, what="the record dead-lettered")
        after = await api.send(subject="after")
        await api.wait_status(after, "sent")
        assert mailman.supervisor is not None
        assert mailman.supervisor.restarts["retry"] == 0
        found = await mailman.store.dead_letters()
    assert [x.mailbox for x in found] == ["retry"]


async def test_replay_needs_ids_and_reports_what_it_cannot_do(tmp_path: Path) -> None:
    """replay without ids is a usage error (2); a letter naming no mail cannot be replayed
    without Kafka (1, and it stays listed); an unknown id is reported (1)."""
    config = make_config(tmp_path)
    async with embedded(config) as mailman:
        letter = await mailman.store.add_dead_letter("send.outbox", None, b"\xff", "not JSON", 5.0)
    code, _, err = await cli("replay", "--store", config.store)
    assert code == 2 and "needs dead letter ids" in err
    code, _, err = await cli("replay", str(letter), "--store", config.store)
    assert code == 1 and "needs --broker kafka://" in err
    code, _, err = await cli("replay", "999", "--store", config.store)
    assert code == 1 and "no such dead letter" in err
    code, out, _ = await cli("list", "--json", "--store", config.store)
    assert [orjson.loads(line)["id"] for line in out.splitlines()] == [letter]
