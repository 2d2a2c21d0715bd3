"""Store calls from the API: bounded in time, and an unreachable store is a 503, not a 500."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from mailman.store import OutcomeUnknown, Store, StoreUnavailable, giving_up_by

T = TypeVar("T")


async def guarded(store: Store, within: float, operation: Awaitable[T]) -> T:
    """``operation``'s result; ``StoreUnavailable`` if the store is unreachable or slower
    than ``within`` seconds (the error middleware answers 503 with ``Retry-After``).

    ``StoreUnavailable`` means nothing was changed: a timeout abandons an operation the
    store has not started (it is never run later), and one it has started is waited
    for past ``within``. ``OutcomeUnknown`` (a commit whose answer was lost) passes
    through as itself: it does not say nothing was changed.
    """
    try:
        async with asyncio.timeout(within) as scope:
            with giving_up_by(scope):
                return await operation
    except TimeoutError:
        raise StoreUnavailable(f"the store did not answer within {within:g} s") from None
    except OutcomeUnknown:
        raise
    except store.unavailable as exc:
        # The type only: a driver's message may name hosts or users.
        raise StoreUnavailable(f"the store is unreachable ({type(exc).__name__})") from None
