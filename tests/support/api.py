"""Shared pieces of the HTTP API tests: a valid mail, problem checks, and app clients built by
``create_app`` as production builds it (the ``store`` and ``outbound`` fixtures are in
``conftest.py``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.messages import Dispatch
from mailman.routes import Outbound, create_app
from mailman.store import Store

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
PROBLEM = "application/problem+json"

VALID: dict[str, Any] = {
    "from": "sender@example.com",
    "to": ["ann@example.com"],
    "subject": "Hello",
    "content": "Hi Ann",
}


class CountingOutbound:
    """An outbound mailbox that keeps every dispatch."""

    def __init__(self) -> None:
        self.dispatched: list[Dispatch] = []

    async def dispatch(self, dispatch: Dispatch) -> None:
        self.dispatched.append(dispatch)


async def problem(resp: ClientResponse, status: int) -> dict[str, Any]:
    """The problem body of ``resp``, after checking its status and content type."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body: dict[str, Any] = await resp.json(content_type=None)
    assert body["status"] == status
    return body


def client_factory(
    aiohttp_client: AiohttpClient, store: Store, outbound: Outbound, default: Config
) -> MakeClient:
    """Makes app clients: ``make(config=None, on=None)`` (``on``: another store)."""

    async def make(config: Config | None = None, on: Store | None = None) -> Client:
        app = create_app(store=on or store, outbound=outbound, config=config or default)
        return await aiohttp_client(app)

    return make
