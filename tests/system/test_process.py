"""Mailman as a real process: SIGKILL mid-delivery loses nothing; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from ..conftest import eventually, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.processes import ROOT, mailman_process


async def status_of(http: aiohttp.ClientSession, url: str, mail_id: str) -> str:
    async with http.get(f"{url}/mail/{mail_id}/status") as resp:
        assert resp.status == 200
        status: str = (await resp.json())["mail"]["status"]
        return status


async def test_sigkill_mid_delivery_loses_no_accepted_mail(tmp_path: Path) -> None:
    """Every mail answered 201 before a SIGKILL is sent after a restart on the same store, once."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        env = provider_env(
            sg,
            mg,
            MAILMAN_STORE=f"sqlite:///{tmp_path / 'mailman.db'}",
            MAILMAN_PROVIDER_TIMEOUT="60",
        )
        sg.mode = "timeout"  # every call hangs: mails are caught mid-delivery
        ids: list[str] = []
        async with mailman_process(env, tmp_path / "first.log") as first:
            for n in range(30):
                body = {"to": [f"user{n}@example.com"], "from": "a@example.com", "content": "x"}
                async with http.post(f"{first.url}/mail/send", json=body) as resp:
                    assert resp.status == 201
                    ids.append((await resp.json())["mail"]["id"])
            # Every mail is now in flight at SendGrid (published, status sending).
            await eventually(lambda: sg.calls >= len(ids), what="every mail in flight")
            first.proc.send_signal(signal.SIGKILL)
            assert await first.proc.wait() == -signal.SIGKILL

        sg.mode = "up"
        async with mailman_process(env, tmp_path / "second.log") as second:
            for mail_id in ids:

                async def sent(mail_id: str = mail_id) -> bool:
                    return await status_of(http, second.url, mail_id) == "sent"

                await eventually(sent, within=20, what=f"{mail_id} sent after the restart")
            assert sorted(sg.mail_ids() + mg.mail_ids()) == sorted(ids)
            # Mails whose outbox entry was already removed got a new one; the last
            # batch's entries (removed only by the next claim) were still there and
            # were released: how many of each depends on how the relay batched.
            recovered = [e for e in second.events() if e.get("event") == "recovery.requeued"]
            assert all(0 < e["mails"] <= len(ids) for e in recovered)

            second.proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(second.proc.wait(), 20)
            assert code == 0, second.log.read_text()
            assert any(e.get("event") == "mailman.stopped" for e in second.events())


async def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    """A configuration that cannot work ends the process at once: exit code 2, a clear line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailman",
        "--port",
        "not-a-port",
        cwd=ROOT,
        env={**os.environ, "MAILMAN_STORE": f"sqlite:///{tmp_path / 'x.db'}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"port must be a whole number" in err
