"""``--processes N`` and the api / rest split on one SQLite file, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp

from ..conftest import eventually, provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid
from ..support.processes import Process, mailman_process, start_mailman, stop_process

MAIL = {"to": ["ann@example.com"], "from": "a@example.com", "content": "x"}


async def post(http: aiohttp.ClientSession, url: str, n: int) -> str:
    body = {**MAIL, "to": [f"user{n}@example.com"]}
    async with http.post(f"{url}/mail/send", json=body) as resp:
        assert resp.status == 201, await resp.text()
        mail_id: str = (await resp.json())["mail"]["id"]
        return mail_id


async def all_sent(http: aiohttp.ClientSession, url: str, ids: list[str]) -> bool:
    for mail_id in ids:
        async with http.get(f"{url}/mail/{mail_id}/status") as resp:
            if resp.status != 200 or (await resp.json())["mail"]["status"] != "sent":
                return False
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie nobody reaped yet has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def exits(proc: Process, within: float = 30) -> int:
    return await asyncio.wait_for(proc.proc.wait(), within)


def env_for(sg: FakeSendGrid, mg: FakeMailgun, db: Path, **extra: str) -> dict[str, str]:
    return provider_env(sg, mg, MAILMAN_STORE=f"sqlite:///{db}", **extra)


async def test_processes_serve_on_one_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    """--processes 3: two API processes and a worker send every mail; SIGTERM ends all with 0."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        env = env_for(sg, mg, tmp_path / "m.db")
        async with mailman_process(env, tmp_path / "m.log", "--processes", "3") as parent:
            children = parent.children()
            assert sorted(children) == ["api-1", "api-2", "worker"]
            ids = [await post(http, parent.url, n) for n in range(40)]
            await eventually(lambda: all_sent(http, parent.url, ids), what="every mail sent")
            # Connections spread over both API processes (SO_REUSEPORT): each answered.
            assert sorted(sg.mail_ids()) == sorted(ids)

            parent.proc.send_signal(signal.SIGTERM)
            assert await exits(parent) == 0
            await eventually(
                lambda: not any(alive(pid) for pid in children.values()),
                what="every child gone",
            )
            assert parent.events("processes.stopped")[-1]["code"] == 0


async def test_a_killed_worker_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of the worker mid-delivery: the parent starts it again and every mail goes out."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        env = env_for(sg, mg, tmp_path / "m.db", MAILMAN_PROVIDER_TIMEOUT="60")
        sg.mode = "timeout"  # every call hangs: mails are caught mid-delivery
        async with mailman_process(env, tmp_path / "m.log", "--processes", "2") as parent:
            ids = [await post(http, parent.url, n) for n in range(20)]
            await eventually(lambda: sg.calls >= len(ids), what="every mail in flight")
            worker = parent.children()["worker"]
            os.kill(worker, signal.SIGKILL)
            await eventually(
                lambda: parent.children()["worker"] != worker, what="a new worker process"
            )
            sg.mode = "up"
            await eventually(
                lambda: all_sent(http, parent.url, ids), within=30, what="every mail sent"
            )
            assert sorted(set(sg.mail_ids()) | set(mg.mail_ids())) == sorted(ids)
            assert parent.events("process.restarting")[0]["process"] == "worker"


async def test_a_killed_api_process_is_restarted_while_the_other_serves(tmp_path: Path) -> None:
    """kill -9 of one API process: the other keeps answering; the parent starts a new one."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        env = env_for(sg, mg, tmp_path / "m.db")
        async with mailman_process(env, tmp_path / "m.log", "--processes", "3") as parent:
            api = parent.children()["api-1"]
            os.kill(api, signal.SIGKILL)
            # Until it is gone, the kernel may still queue connections on its socket.
            await eventually(lambda: not alive(api), what="api-1 gone")
            ids, resets = [], 0
            for n in range(20):  # fresh connections: the kernel sends them to the survivor
                for _ in range(3):  # a connection caught by the dying socket is reset: retry
                    try:
                        async with aiohttp.ClientSession() as fresh:
                            ids.append(await post(fresh, parent.url, n))
                        break
                    except aiohttp.ClientOSError:
                        resets += 1
            assert len(ids) == 20 and resets <= 2
            await eventually(lambda: parent.children()["api-1"] != api, what="a new api-1")
            await eventually(lambda: all_sent(http, parent.url, ids), what="every mail sent")


async def test_killing_the_parent_loses_nothing(tmp_path: Path) -> None:
    """kill -9 of the parent: its children stop too; the next start sends every mail."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        db = tmp_path / "m.db"
        env = env_for(sg, mg, db, MAILMAN_PROVIDER_TIMEOUT="60")
        sg.mode = "timeout"
        first = await start_mailman(env, tmp_path / "first.log", "--processes", "2")
        try:
            ids = [await post(http, first.url, n) for n in range(20)]
            await eventually(lambda: sg.calls >= len(ids), what="every mail in flight")
            children = first.children()
            first.proc.send_signal(signal.SIGKILL)
            await first.proc.wait()
            await eventually(
                lambda: not any(alive(pid) for pid in children.values()),
                within=30,
                what="the children ended with their parent",
            )
        finally:
            await stop_process(first)
        sg.mode = "up"
        async with mailman_process(env, tmp_path / "second.log", "--processes", "2") as second:
            await eventually(
                lambda: all_sent(http, second.url, ids), within=30, what="every mail sent"
            )
        assert sorted(set(sg.mail_ids()) | set(mg.mail_ids())) == sorted(ids)


async def test_api_and_the_rest_by_hand_share_one_sqlite_file(tmp_path: Path) -> None:
    """--role api and --role for the rest on one file: the relay is woken, not polled."""
    async with FakeSendGrid() as sg, FakeMailgun() as mg, aiohttp.ClientSession() as http:
        # A relay that only polled would wait 60 s: the wake-up must do it.
        env = env_for(sg, mg, tmp_path / "m.db", MAILMAN_RELAY_INTERVAL_SECONDS="60")
        rest = "mailgun,relay,retry,sendgrid,sweeper"
        async with (
            mailman_process(env, tmp_path / "rest.log", "--role", rest),
            mailman_process(env, tmp_path / "api.log", "--role", "api") as api,
        ):
            ids = [await post(http, api.url, n) for n in range(10)]
            await eventually(
                lambda: all_sent(http, api.url, ids), within=10, what="sent without polling"
            )
