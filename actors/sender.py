"""The sender actor: one class for every provider, the provider client injected.

It reads ``Dispatch`` messages from its provider's mailbox, calls the
provider through that provider's circuit breaker, reports the attempt to the
bookkeeper and hands the mail on: to the next provider at once (failover), to
the retry scheduler once every provider failed transiently, or gives up when
every provider rejected it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener

from config import RetryConfig

from .lifecycle import Actor
from .mailbox import Delivery
from .messages import Attempt, Dispatch, Mail, Outcome, RetryLater, Status, StatusUpdate
from .providers import Accepted, Misconfigured, ProviderClient, Rejected, Result, Transient
from .routing import Forward, GiveUp, Retry, Router, next_step
from .store import Store

log = structlog.get_logger("mailman.sender")


class _Unwell(Exception):
    """Raised inside the breaker so that it counts a result that says the provider is unwell."""

    def __init__(self, result: Result) -> None:
        super().__init__(type(result).__name__)
        self.result = result


class BreakerLog(CircuitBreakerListener):  # type: ignore[misc]
    """Logs every state change of a provider's circuit breaker."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def state_change(self, breaker: CircuitBreaker, old: object, new: object) -> None:
        log.warning(
            "breaker.state_changed",
            provider=self.provider,
            old=state_name(old),
            new=state_name(new),
        )


def state_name(state: object) -> str:
    """``open``, ``closed`` or ``half_open`` from a breaker state enum or state object."""
    inner = getattr(state, "state", state)
    return str(getattr(inner, "name", inner)).lower()


def make_breaker(provider: str, fail_max: int, reset_seconds: float) -> CircuitBreaker:
    """A provider's breaker: opens after ``fail_max`` unwell results in a row."""
    from datetime import timedelta

    return CircuitBreaker(
        fail_max=fail_max,
        timeout_duration=timedelta(seconds=reset_seconds),
        listeners=[BreakerLog(provider)],
        name=provider,
    )


class Sender(Actor):
    def __init__(
        self,
        *,
        client: ProviderClient,
        breaker: CircuitBreaker,
        router: Router,
        store: Store,
        retry: RetryConfig,
        concurrency: int = 32,
        stop_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(f"sender:{client.name}")
        self.client = client
        self.provider = client.name
        self.breaker = breaker
        self.router = router
        self.store = store
        self.retry = retry
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self.clock = clock

    async def setup(self) -> None:
        await self.client.start()

    async def teardown(self) -> None:
        await self.client.close()

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        async with (
            self.router.inbox_of(self.provider).subscribe() as inbox,
            asyncio.TaskGroup() as group,
        ):
            while True:
                await slots.acquire()
                delivery = await self.receive(inbox)
                if delivery is None:
                    slots.release()
                    break
                group.create_task(self._handle_and_release(delivery, slots))
            # Leaving the task group waits for the calls in flight.

    async def _handle_and_release(
        self, delivery: Delivery[Dispatch], slots: asyncio.Semaphore
    ) -> None:
        try:
            await self.handle(delivery.message)
            await delivery.ack()
        finally:
            slots.release()

    async def handle(self, dispatch: Dispatch) -> None:
        """Try one mail with this provider and hand it on. Idempotent for a sent mail."""
        with structlog.contextvars.bound_contextvars(
            mail_id=dispatch.mail_id, provider=self.provider, attempt=dispatch.round
        ):
            loaded = await self.store.load(dispatch.mail_id)
            if loaded is None:
                log.error("mail.unknown")
                return
            mail, status = loaded
            if status.terminal:
                log.info("mail.already_final", status=status)
                return
            result = await self._call(mail, dispatch)
            await self._after(dispatch, result)

    async def _call(self, mail: Mail, dispatch: Dispatch) -> Result | None:
        """The provider's result, or None when its breaker is open (no call made)."""

        async def guarded() -> Result:
            await self.router.status.put(
                StatusUpdate(mail.id, Status.SENDING, self.clock(), provider=self.provider)
            )
            result = await self.client.send(mail)
            if result.unwell:
                raise _Unwell(result)
            return result

        try:
            result: Result = await self.breaker.call_async(guarded)
            return result
        except _Unwell as exc:
            return exc.result
        except CircuitBreakerError as exc:
            if isinstance(exc.__cause__, _Unwell):  # this call failed and tripped the breaker
                return exc.__cause__.result
            return None

    async def _after(self, dispatch: Dispatch, result: Result | None) -> None:
        now = self.clock()
        if isinstance(result, Accepted):
            attempt = Attempt(
                self.provider, dispatch.round, now, Outcome.ACCEPTED, None, result.message_id
            )
            await self.router.status.put(
                StatusUpdate(
                    dispatch.mail_id,
                    Status.SENT,
                    now,
                    provider=self.provider,
                    provider_message_id=result.message_id,
                    attempt=attempt,
                )
            )
            log.info("mail.sent", message_id=result.message_id)
            return
        retry_after: float | None = None
        if result is None:
            attempt = Attempt(self.provider, dispatch.round, now, Outcome.SKIPPED, "circuit open")
            log.info("mail.skipped", reason="circuit open")
        else:
            assert isinstance(result, Transient | Misconfigured | Rejected)
            attempt = Attempt(self.provider, dispatch.round, now, result.outcome, result.reason)
            if isinstance(result, Transient):
                retry_after = result.retry_after
                log.warning("provider.transient", status=result.status, reason=result.reason)
            elif isinstance(result, Misconfigured):
                log.error("provider.misconfigured", status=result.status, reason=result.reason)
            else:
                log.info("provider.rejected", status=result.status, reason=result.reason)
        step = next_step(
            self.router.chain,
            dispatch,
            rejected_now=isinstance(result, Rejected),
            retry_after=retry_after,
            now=now,
            retry=self.retry,
        )
        if isinstance(step, GiveUp):
            await self.router.status.put(
                StatusUpdate(
                    dispatch.mail_id, Status.FAILED, now, reason=step.reason, attempt=attempt
                )
            )
            log.warning("mail.failed", reason=step.reason)
            return
        await self.router.status.put(
            StatusUpdate(dispatch.mail_id, Status.SENDING, now, attempt=attempt)
        )
        if isinstance(step, Forward):
            log.info("mail.failover", to=self.router.chain[step.dispatch.hop])
            await self.router.dispatch(step.dispatch)
        elif isinstance(step, Retry):
            log.info("mail.retry_scheduled", delay=round(step.delay, 3), round=step.dispatch.round)
            await self.router.retry.put(RetryLater(step.dispatch, now + step.delay))
