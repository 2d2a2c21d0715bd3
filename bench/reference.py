"""The framework's ceiling: a bare aiohttp app with Mailman's ``POST /mail/send`` shape.

    python -m bench.reference --port 0

One handler. It parses the same JSON body the same way (orjson) and answers
201 with the same response shape and ``Location`` header as Mailman, with a
fresh id from Mailman's own source, but validates nothing beyond "a JSON object", stores nothing and
logs nothing. Whatever this process answers per second on this machine is the
most an aiohttp service can answer: Mailman's figures are ratios to it.

Once listening it prints one JSON line to stdout, ``{"port": N}``, and runs
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web

from mailman.core.ids import new_id

JSON_CONTENT_TYPE = "application/json"


async def send_mail(request: web.Request) -> web.Response:
    """Parse the body as Mailman does, answer 201 as Mailman does; no storage."""
    if request.content_type != JSON_CONTENT_TYPE:
        return web.Response(status=415)
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.Response(status=400)
    if not isinstance(body, dict):
        return web.Response(status=422)
    mail_id = new_id()
    location = f"/mail/{mail_id}"
    answer = {
        "mail": {
            "id": mail_id,
            "status": "queued",
            "links": [{"status": f"{location}/status", "self": location}],
        }
    }
    return web.Response(
        status=201,
        body=orjson.dumps(answer),
        content_type=JSON_CONTENT_TYPE,
        headers={"Location": location},
    )


def create_app() -> web.Application:
    """The reference app: ``POST /mail/send`` only."""
    app = web.Application()
    app.router.add_post("/mail/send", send_mail)
    return app


async def serve(host: str, port: int) -> None:
    """Listen, announce the port on stdout, run until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        sys.stdout.write(orjson.dumps({"port": bound}).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reference", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
