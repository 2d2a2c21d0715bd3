"""The HTTP server actor: binds the port in ``start``, stops accepting first on ``stop``."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web

from .lifecycle import Actor

log = structlog.get_logger("mailman.http")


class HttpServer(Actor):
    def __init__(
        self,
        app_factory: Callable[[], web.Application],
        *,
        host: str,
        port: int,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__("api")
        self.app_factory = app_factory
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    async def setup(self) -> None:
        self._runner = web.AppRunner(
            self.app_factory(),
            handle_signals=False,  # signals are handled in one place: the entry point
            access_log=None,  # the request-id middleware logs requests as events
            shutdown_timeout=self.shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("http.listening", host=self.host, port=self.port)

    async def run(self) -> None:
        await self.stopping.wait()

    async def teardown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            # Stops accepting, lets requests in flight finish within the
            # shutdown timeout, then runs the app's cleanup contexts.
            await runner.cleanup()
            log.info("http.stopped")
