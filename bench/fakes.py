"""The fake providers in a process of their own, with a control endpoint.

    python -m bench.fakes

Runs ``tests.support.fakes.FakeSendGrid`` and ``tests.support.fakes.FakeMailgun`` (real
aiohttp servers speaking the provider APIs, answering at once unless given a delay) and a control
server, each on a free loopback port, on uvloop where it is installed (as Mailman runs): they
stand for providers elsewhere, whose CPU no deployment pays on its own cores, so the less of
the machine they take, the less the bench's own infrastructure takes from Mailman's figures.
Once listening it prints one JSON line to stdout with their base URLs and credentials, and
runs until SIGTERM/SIGINT.

The control server (``control`` URL):

- ``POST /_control/{provider}/mode``, body ``503`` (or ``up``, ``timeout``,
  ``429``, ``400``, ``401``): switch that fake's mode; answers
  ``{"provider", "mode", "at"}`` with ``at`` the unix time of the switch;
- ``POST /_control/{provider}/delay``, body seconds (``0.2``): that fake waits
  this long before it looks at each request (every send answered that much
  later; ``0``: at once); answers ``{"provider", "delay_s", "at"}``;
- ``GET /_control/receipts``: per provider, the mail ids of the accepted
  requests, the unix time each was received, and the number of calls;
- ``POST /_control/reset``: every fake back to ``up``, no delay, and its records cleared.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
import time
from typing import Any, get_args

import orjson
from aiohttp import web

from tests.support.fakes import FakeMailgun, FakeSendGrid, Mode

MODES: frozenset[str] = frozenset(get_args(Mode))
#: The longest delay the control endpoint sets (a provider slower than this is down).
MAX_DELAY_S = 60.0


class _Timed:
    """Also records when each accepted request arrived (mixed into a fake provider)."""

    received_at: list[float]

    async def serve(self, request: web.Request) -> web.StreamResponse:
        at = time.time()
        response: web.StreamResponse = await super().serve(request)  # type: ignore[misc]
        if response.status < 300:
            self.received_at.append(at)
        return response


class TimedSendGrid(_Timed, FakeSendGrid):
    def __init__(self) -> None:
        super().__init__(api_key="SG.bench")
        self.received_at = []


class TimedMailgun(_Timed, FakeMailgun):
    def __init__(self) -> None:
        super().__init__(api_key="key-bench", domain="mg.bench.example.com")
        self.received_at = []


Fake = TimedSendGrid | TimedMailgun


def _reset(fake: Fake) -> None:
    fake.mode = "up"
    fake.delay = 0.0
    fake.calls = 0
    fake.call_times.clear()
    fake.received.clear()
    fake.message_ids.clear()
    fake.received_at.clear()


def _receipts(fake: Fake) -> dict[str, Any]:
    return {"ids": fake.mail_ids(), "at": list(fake.received_at), "calls": fake.calls}


def control_app(fakes: dict[str, Fake]) -> web.Application:
    """The control endpoints over ``fakes`` (by provider name)."""

    def fake_of(request: web.Request) -> Fake:
        name = request.match_info["provider"]
        if name not in fakes:
            raise web.HTTPNotFound(text=f"no fake called {name!r}")
        return fakes[name]

    async def set_mode(request: web.Request) -> web.Response:
        fake = fake_of(request)
        mode = (await request.text()).strip()
        if mode not in MODES:
            raise web.HTTPBadRequest(text=f"mode must be one of {sorted(MODES)}")
        fake.mode = mode  # type: ignore[assignment]  # checked against Mode just above
        answer = {"provider": request.match_info["provider"], "mode": mode, "at": time.time()}
        return web.json_response(answer)

    async def set_delay(request: web.Request) -> web.Response:
        fake = fake_of(request)
        text = (await request.text()).strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= MAX_DELAY_S:  # also refuses nan
            raise web.HTTPBadRequest(text=f"delay must be seconds from 0 to {MAX_DELAY_S}")
        fake.delay = seconds
        answer = {"provider": request.match_info["provider"], "delay_s": seconds, "at": time.time()}
        return web.json_response(answer)

    async def receipts(request: web.Request) -> web.Response:
        body = {name: _receipts(fake) for name, fake in fakes.items()}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def reset(request: web.Request) -> web.Response:
        for fake in fakes.values():
            _reset(fake)
        return web.json_response({"reset": sorted(fakes)})

    app = web.Application()
    app.router.add_post("/_control/{provider}/mode", set_mode)
    app.router.add_post("/_control/{provider}/delay", set_delay)
    app.router.add_get("/_control/receipts", receipts)
    app.router.add_post("/_control/reset", reset)
    return app


async def serve() -> None:
    """Start the fakes and the control server, announce them, run until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with TimedSendGrid() as sendgrid, TimedMailgun() as mailgun:
        runner = web.AppRunner(
            control_app({"sendgrid": sendgrid, "mailgun": mailgun}), access_log=None
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            announce = {
                "control": f"http://{host}:{port}",
                "sendgrid": sendgrid.base_url,
                "sendgrid_api_key": sendgrid.api_key,
                "mailgun": mailgun.base_url,
                "mailgun_api_key": mailgun.api_key,
                "mailgun_domain": mailgun.domain,
            }
            sys.stdout.write(orjson.dumps(announce).decode() + "\n")
            sys.stdout.flush()
            await stop.wait()
        finally:
            await runner.cleanup()


def main() -> int:
    try:
        import uvloop
    except ImportError:  # asyncio's own loop
        asyncio.run(serve())
    else:
        uvloop.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
