"""Resolving a callback's host: every address it resolves to must be public.

At submission ``resolution_problem`` refuses a ``callback_url`` whose host
resolves to an address ``mailman.core.callbacks`` forbids; at call time the
notifier's ``GuardedResolver`` checks every address again before aiohttp
connects, and aiohttp connects only to the addresses it returned (no second
lookup to rebind).
"""

from __future__ import annotations

import asyncio
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from mailman.core.callbacks import address_problem, literal_address, names_this_machine


class UnsafeDestination(OSError):
    """A callback's host resolved to an address it must not go to."""


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a host if any address it resolves to is not public.

    Given to the notifier's ``TCPConnector``: aiohttp connects only to the
    addresses a resolver returned, so what is checked is what is connected
    to. (aiohttp does not ask a resolver about a host that is an IP
    address: ``url_problem`` checks those.)
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if names_this_machine(host):
            raise UnsafeDestination(f"{host} names this machine")
        found = await self._inner.resolve(host, port, family)
        for result in found:
            address = literal_address(result["host"].partition("%")[0])
            problem = "not an IP address" if address is None else address_problem(address)
            if problem is not None:
                raise UnsafeDestination(f"{host} resolves to {result['host']}, {problem}")
        return found

    async def close(self) -> None:
        await self._inner.close()


async def resolution_problem(
    url: str, *, resolver: AbstractResolver | None = None, within: float = 5.0
) -> str | None:
    """Why ``url``'s host must not get callbacks, after resolving it; None if it may.

    For a URL ``url_problem`` passed: a host that is an IP address was checked
    there; a name is resolved (``resolver``, or the system's) and refused if
    any address is not public, or if it does not resolve ``within`` seconds.
    """
    parsed = URL(url)
    host = parsed.host or ""
    if literal_address(host) is not None:
        return None
    guard = GuardedResolver(resolver)
    try:
        async with asyncio.timeout(within):
            await guard.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except UnsafeDestination as exc:
        return f"must not resolve to a private address: {exc}"
    except (OSError, TimeoutError):
        return f"has a host that could not be resolved ({host})"
    return None
