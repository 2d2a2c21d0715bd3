"""The sender actor: one class for every provider, the provider client injected.

It reads ``Dispatch`` messages from its provider's mailbox, calls the
provider through that provider's circuit breaker, reports the attempt to the
bookkeeper and hands the mail on: to the next provider at once (failover), to
the retry scheduler once every provider failed transiently, or gives up when
every provider rejected it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import structlog
from aiobreaker import CircuitBreaker, CircuitBreakerError

from config import RetryConfig

from .lifecycle import Actor
from .mailboxes import Delivery
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
        """Try one mail with this provider and hand it on. Idempotent for a sent mail.

        Logs one line per provider call (``provider.call``), with everything
        about it as fields: the hot path binds no context and logs nothing else.
        """
        loaded = await self.through_outage(
            self.store.unavailable, lambda: self.store.load(dispatch.mail_id), "load"
        )
        if loaded is None:
            log.error("mail.unknown", mail_id=dispatch.mail_id, provider=self.provider)
            return
        mail, status = loaded
        if status.terminal:
            log.info(
                "mail.already_final",
                mail_id=mail.id,
                provider=self.provider,
                status=status.value,
            )
            return
        started = time.perf_counter()
        result = await self._call(mail)
        await self._after(dispatch, result, time.perf_counter() - started)

    async def _call(self, mail: Mail) -> Result | None:
        """The provider's result, or None when its breaker is open (no call made).

        The breaker wraps the provider call alone: it counts only the
        provider's own answer. (The mail is already ``sending``: the relay's
        claim marked it.)
        """

        async def guarded() -> Result:
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

    async def _after(self, dispatch: Dispatch, result: Result | None, took: float) -> None:
        now = self.clock()
        line = {
            "mail_id": dispatch.mail_id,
            "provider": self.provider,
            "round": dispatch.round,
            "ms": round(took * 1000, 1),
        }
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
            log.info("provider.call", outcome="accepted", message_id=result.message_id, **line)
            return
        retry_after: float | None = None
        level = "info"
        if result is None:
            attempt = Attempt(self.provider, dispatch.round, now, Outcome.SKIPPED, "circuit open")
            line.update(outcome="skipped", reason="circuit open")
        else:
            assert isinstance(result, Transient | Misconfigured | Rejected)
            attempt = Attempt(self.provider, dispatch.round, now, result.outcome, result.reason)
            line.update(outcome=result.outcome.value, status=result.status, reason=result.reason)
            if isinstance(result, Transient):
                retry_after = result.retry_after
                level = "warning"
            elif isinstance(result, Misconfigured):
                level = "error"
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
            log.log(_LEVELS[level], "provider.call", then="failed", failed=step.reason, **line)
            return
        await self.router.status.put(
            StatusUpdate(dispatch.mail_id, Status.SENDING, now, attempt=attempt)
        )
        if isinstance(step, Forward):
            to = self.router.chain[step.dispatch.hop]
            log.log(_LEVELS[level], "provider.call", then="failover", to=to, **line)
            await self.router.dispatch(step.dispatch)
        elif isinstance(step, Retry):
            log.log(
                _LEVELS[level],
                "provider.call",
                then="retry",
                delay=round(step.delay, 3),
                next_round=step.dispatch.round,
                **line,
            )
            await self.router.retry.put(RetryLater(step.dispatch, now + step.delay))


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
