"""The HTTP server actor: binds the port in ``start``, stops accepting first on ``stop``.

Slow or broken clients are bounded here, at the connection:

- ``header_timeout``: a request's headers must be complete within this many
  seconds of the connection's start, or of the first byte of a later
  keep-alive request; a client trickling header bytes (slow loris) is
  disconnected. aiohttp has no such timeout: ``HeaderTimeoutHandler`` adds it.
- ``keepalive_seconds``: an idle keep-alive connection is closed (aiohttp's
  ``keepalive_timeout``).
- ``body_idle_timeout``: how long the unread rest of a body is drained after
  the answer (aiohttp's ``lingering_time``); the body a handler reads is cut
  after that much silence by ``routes.body.read_body``.

aiohttp's ``auto_decompress`` is off: ``read_body`` decodes request bodies
itself, with the size limit on the decoded size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .lifecycle import Actor

log = structlog.get_logger("mailman.http")

#: The answer to a request aiohttp could not parse, by status (the app's error format).
BadRequest = Callable[[int], StreamResponse]


class HeaderTimeoutHandler(RequestHandler):
    """aiohttp's HTTP/1.1 protocol (one per connection), with a deadline on request headers.

    aiohttp (3.14) only bounds a connection waiting for its next request by
    ``keepalive_timeout``, counted from the connection's start or the end of
    the previous answer: a client that trickles header bytes holds the socket
    that long (75 s here), and there is no hook for a header deadline. So:

    - a timer is armed in ``connection_made``, and in ``data_received`` when
      the first byte of a new request arrives on an idle keep-alive connection
      (idle: aiohttp's ``start()`` loop awaits ``_waiter`` for the next message);
    - it is disarmed as soon as aiohttp's parser completes a request's headers,
      which is when it increments ``_request_count`` (also for a request it
      cannot parse: that one gets its 400);
    - if it fires first, the connection is closed with ``force_close()``, as
      aiohttp's own keep-alive timer does.

    A request's body is not under this deadline (``read_body`` bounds its
    silences). Bytes of a next request pipelined while one is being handled
    are timed from the first byte that arrives once the connection is idle.
    tests/integration/test_edge.py pins this behaviour: an aiohttp upgrade that renames
    these internals fails those tests (or mypy) rather than silently dropping
    the deadline.

    Requests aiohttp cannot parse are also answered here (``bad_request``: the
    app's problem+json) and logged once at info level (aiohttp logs them at
    error, with a traceback).
    """

    __slots__ = ("_bad_request", "_header_deadline_count", "_header_timeout", "_header_timer")

    def __init__(
        self, manager: web.Server, *, header_timeout: float, bad_request: BadRequest, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._bad_request = bad_request
        self._header_timer: asyncio.TimerHandle | None = None
        #: ``_request_count`` when the timer was armed: headers are in once it moves.
        self._header_deadline_count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        idle = waiter is not None and not waiter.done() and not self._upgraded
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm_header_timer()
        elif idle and data and self._header_timer is None:
            self._arm_header_timer(before)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self, count: int | None = None) -> None:
        self._header_deadline_count = self._request_count if count is None else count
        self._header_timer = self._loop.call_later(self._header_timeout, self._headers_late)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._request_count != self._header_deadline_count:
            return
        peer = transport.get_extra_info("peername")
        log.info(
            "http.header_timeout",
            peer=peer[0] if isinstance(peer, tuple) else peer,
            timeout_s=self._header_timeout,
        )
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # Garbage from the network (bad request line, header, method, a port
        # scanner speaking TLS...) is the client's error, not ours: one info
        # line, no traceback, and a problem answer like every other error.
        # Only the kind of error: aiohttp's message quotes the offending bytes,
        # which may hold a credential (a mangled Authorization header...).
        log.info("http.bad_request", status=status, error=type(exc).__name__, peer=request.remote)
        response = self._bad_request(status)
        response.force_close()
        return response


class HeaderTimeoutServer(web.Server):
    """aiohttp's low-level server (the protocol factory), building ``HeaderTimeoutHandler``s."""

    def __init__(
        self, *args: Any, header_timeout: float, bad_request: BadRequest, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.bad_request = bad_request

    def __call__(self) -> RequestHandler:
        # As aiohttp's Server.__call__, with our protocol class.
        return HeaderTimeoutHandler(
            self,
            loop=self._loop,
            header_timeout=self.header_timeout,
            bad_request=self.bad_request,
            **self._kwargs,
        )


class HeaderTimeoutRunner(web.AppRunner):
    """``web.AppRunner`` serving its app through a ``HeaderTimeoutServer``.

    Overrides aiohttp's ``BaseRunner._make_server`` and reuses the stock
    Server's ``_kwargs`` (the protocol's keyword arguments): the smallest hook
    aiohttp offers for its protocol class; tests/integration/test_edge.py pins it.
    """

    __slots__ = ("_bad_request", "_header_timeout")

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float,
        bad_request: BadRequest,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout
        self._bad_request = bad_request

    async def _make_server(self) -> web.Server:
        # aiohttp starts the app and builds its Server from the app and our
        # kwargs; we build the same server, with our protocol factory.
        stock = await super()._make_server()
        return HeaderTimeoutServer(
            stock.request_handler,
            request_factory=stock.request_factory,
            handler_cancellation=stock.handler_cancellation,
            loop=asyncio.get_running_loop(),
            header_timeout=self._header_timeout,
            bad_request=self._bad_request,
            **stock._kwargs,
        )


class HttpServer(Actor):
    def __init__(
        self,
        app_factory: Callable[[], web.Application],
        *,
        bad_request: BadRequest,
        host: str,
        port: int,
        shutdown_timeout: float = 10.0,
        header_timeout: float = 10.0,
        body_idle_timeout: float = 10.0,
        keepalive_seconds: float = 75.0,
        reuse_port: bool = False,
    ) -> None:
        super().__init__("api")
        self.app_factory = app_factory
        self.bad_request = bad_request
        self.host = host
        self.port = port
        self.shutdown_timeout = shutdown_timeout
        self.header_timeout = header_timeout
        self.body_idle_timeout = body_idle_timeout
        self.keepalive_seconds = keepalive_seconds
        #: SO_REUSEPORT: other processes may listen on the same port (the kernel spreads
        #: connections over them).
        self.reuse_port = reuse_port
        self._runner: web.AppRunner | None = None

    async def setup(self) -> None:
        self._runner = HeaderTimeoutRunner(
            self.app_factory(),
            header_timeout=self.header_timeout,
            bad_request=self.bad_request,
            handle_signals=False,  # signals are handled in one place: the entry point
            access_log=None,  # the request-id middleware logs requests as events
            shutdown_timeout=self.shutdown_timeout,
            keepalive_timeout=self.keepalive_seconds,
            lingering_time=self.body_idle_timeout,
            auto_decompress=False,  # routes.body.read_body decodes, within the size limit
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=self.reuse_port or None)
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
