"""Store calls from the API: bounded in time, and an unreachable store is a 503, not a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from mailman.store import Store, StoreUnavailable

T = TypeVar("T")


async def guarded(store: Store, within: float, operation: Awaitable[T]) -> T:
    """``operation``'s result; ``StoreUnavailable`` if the store is unreachable or slower
    than ``within`` seconds (the error middleware answers 503 with ``Retry-After``)."""
    try:
        async with asyncio.timeout(within):
            return await operation
    except TimeoutError:
        raise StoreUnavailable(f"the store did not answer within {within:g} s") from None
    except store.unavailable as exc:
        # The type only: a driver's message may name hosts or users.
        raise StoreUnavailable(f"the store is unreachable ({type(exc).__name__})") from None
