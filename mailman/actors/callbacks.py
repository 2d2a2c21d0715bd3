"""Status callbacks: a mail's ``callback_url`` hears of every change of its status.

The store queues a callback in the same transaction as each status move of a
mail that has a ``callback_url`` (see ``actors.store.sql``, "status
callbacks"), so no move is missed whichever actor makes it. The ``Notifier``
(beside every sweeper) claims due callbacks under a lease, POSTs each one,
signed, and records the outcome: a ``2xx`` ends it; anything else (another
status, a redirect, a timeout, a refused address) tries it again after a
backoff, until ``window_seconds`` after it was queued. It never blocks
delivery: it is an actor of its own, and a failure only reschedules.

The signature (``SIGNATURE_HEADER``): ``t=<unix time>,v1=<hex>``, where the hex
is HMAC-SHA256, keyed with ``MAILMAN_CALLBACK_SECRET``, over ``"<t>."``
followed by the raw body: Stripe's scheme. ``verify`` checks one.

No server-side request forgery: a callback goes only to a public address.
``url_problem`` refuses a URL whose host is a loopback, private, link-local,
reserved or cloud metadata address, or names this machine (``localhost``);
``resolution_problem`` resolves the host at submission and refuses it if any
address it resolves to is one of those; at call time the ``GuardedResolver``
checks every address again before aiohttp connects, and aiohttp connects
only to the addresses it returned (no second lookup to rebind). Redirects
are not followed. ``MAILMAN_CALLBACK_ALLOW_PRIVATE=true`` lifts the address
rules (for a receiver on your own network).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from mailman.config import CallbackConfig
from mailman.core.backoff import capped_exponential
from mailman.core.callbacks import url_problem
from mailman.core.clock import iso_time
from mailman.intake.resolve import GuardedResolver, UnsafeDestination
from mailman.providers import describe
from mailman.store import CallbackDue, Store

from .lifecycle import Actor, owner_name

log = structlog.get_logger("mailman.callbacks")

#: The header that carries a callback's signature.
SIGNATURE_HEADER = "Mailman-Signature"
USER_AGENT = "Mailman-Callbacks/1"
#: How long a claimed callback belongs to one notifier beyond its call's timeout
#: (a notifier that died leaves it to another after that).
LEASE_MARGIN_SECONDS = 30.0
#: The most of a failed call's error kept with the callback.
MAX_ERROR = 500

# --- signatures -------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>." + body`` keyed with ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Mailman-Signature`` value: ``t=<timestamp>,v1=<signature>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, *, tolerance: float = 300.0, now: float | None = None
) -> bool:
    """Whether ``header`` signs ``body`` with ``secret``, made within ``tolerance`` seconds."""
    fields: dict[str, str] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, value)
    stamp = fields.get("t", "")
    if not stamp.isdigit() or "v1" not in fields:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), fields["v1"])


# --- the notifier -------------------------------------------------------------------------


def payload(callback: CallbackDue) -> dict[str, Any]:
    """What a callback POSTs (as JSON): the mail's status, or the event it tells of
    (``{"event": "unsubscribed", "address": ..., "group": ...}``)."""
    if callback.event is not None:
        return {
            "id": callback.id,
            "mail_id": callback.mail_id,
            **callback.event,
            "at": iso_time(callback.at),
        }
    return {
        "id": callback.id,
        "mail_id": callback.mail_id,
        "status": callback.status.value,
        "at": iso_time(callback.at),
        "reason": callback.reason,
        "provider": callback.provider,
    }


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: base doubling up to cap,
    less up to a fifth at random (callbacks to one receiver that is down spread out)."""
    return capped_exponential(base, cap, attempts) * random.uniform(0.8, 1.0)


class Notifier(Actor):
    """Sends due status callbacks, at most ``concurrency`` at once, never following redirects."""

    def __init__(
        self,
        *,
        store: Store,
        config: CallbackConfig,
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("notifier")
        if config.secret is None:
            raise ValueError("callbacks need a signing secret (MAILMAN_CALLBACK_SECRET)")
        self.store = store
        self.config = config
        self._secret = config.secret.reveal()
        self.owner = owner_name()
        self.lease_seconds = config.timeout_seconds + LEASE_MARGIN_SECONDS
        #: Calls in flight get this long to finish once the actor is asked to stop.
        self.grace = config.timeout_seconds
        self.stop_timeout = self.grace + 5.0
        self.clock = clock
        self._resolver = resolver
        self._http: aiohttp.ClientSession | None = None
        self._inflight: dict[asyncio.Task[None], CallbackDue] = {}

    async def setup(self) -> None:
        inner = self._resolver or ThreadedResolver()
        resolver = inner if self.config.allow_private else GuardedResolver(inner)
        connector = aiohttp.TCPConnector(resolver=resolver, limit=self.config.concurrency)
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
        )

    async def teardown(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                free = self.config.concurrency - len(self._inflight)
                claimed = await self._claim(free) if free > 0 else []
                for callback in claimed:
                    task = asyncio.create_task(self._deliver(callback), name="callback")
                    self._inflight[task] = callback
                    task.add_done_callback(self._inflight.pop)
                if claimed and len(claimed) == free:
                    continue  # more may be due: claim again once a slot is free
                await self._pause()
        finally:
            await self._drain()

    async def _claim(self, limit: int) -> list[CallbackDue]:
        try:
            return await self.store.claim_callbacks(
                self.owner, limit, self.lease_seconds, self.clock()
            )
        except self.store.unavailable as exc:  # an outage: the next look tries again
            log.warning("callbacks.claim_failed", error=type(exc).__name__)
            return []

    async def _pause(self) -> None:
        """Until the next look: ``interval_seconds``, or less once a full pool has a free slot."""
        if len(self._inflight) < self.config.concurrency:
            await self.rest(self.config.interval_seconds)
            return
        await asyncio.wait(
            set(self._inflight),
            timeout=self.config.interval_seconds,
            return_when=asyncio.FIRST_COMPLETED,
        )

    async def _drain(self) -> None:
        """Let calls in flight finish within ``grace``; cancel the rest and hand them back."""
        if not self._inflight:
            return
        left = dict(self._inflight)
        _, pending = await asyncio.wait(set(left), timeout=self.grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        now = self.clock()
        for task in pending:
            with contextlib.suppress(*self.store.unavailable):
                await self.store.callback_failed(left[task].id, "stopped before an answer", now)

    async def _deliver(self, callback: CallbackDue) -> None:
        try:
            await self._deliver_one(callback)
        except asyncio.CancelledError:
            raise
        except Exception:  # its lease runs out and it is tried again; the others go on
            log.exception("callback.crashed", mail_id=callback.mail_id)

    async def _deliver_one(self, callback: CallbackDue) -> None:
        started = time.monotonic()
        error, status = await self._post(callback)
        ms = round((time.monotonic() - started) * 1000, 1)
        now = self.clock()
        where = URL(callback.url).host
        fields = {"mail_id": callback.mail_id, "status": callback.status.value, "host": where}
        if error is None:
            await self.through_outage(
                self.store.unavailable,
                lambda: self.store.callback_done(callback.id, now),
                "callback_done",
            )
            log.info("callback.sent", **fields, http_status=status, ms=ms)
            return
        delay = backoff(
            callback.attempts, self.config.retry_base_seconds, self.config.retry_cap_seconds
        )
        if now + delay > callback.created_at + self.config.window_seconds:
            await self.through_outage(
                self.store.unavailable,
                lambda: self.store.callback_gave_up(callback.id, error, now),
                "callback_gave_up",
            )
            log.warning(
                "callback.gave_up", **fields, attempts=callback.attempts, error=error, ms=ms
            )
            return
        await self.through_outage(
            self.store.unavailable,
            lambda: self.store.callback_failed(callback.id, error, now + delay),
            "callback_failed",
        )
        log.warning(
            "callback.failed",
            **fields,
            attempts=callback.attempts,
            error=error,
            retry_in=round(delay, 2),
            ms=ms,
        )

    async def _post(self, callback: CallbackDue) -> tuple[str | None, int | None]:
        """POST one callback: (None, status) for a 2xx; otherwise (what went wrong, status)."""
        assert self._http is not None
        problem = url_problem(
            callback.url, allow_http=True, allow_private=self.config.allow_private
        )
        if problem is not None:
            return f"refused: the URL {problem}", None
        body = orjson.dumps(payload(callback))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(self._secret, int(self.clock()), body),
        }
        try:
            async with self._http.post(
                callback.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return None, resp.status
                return f"answered {resp.status}", resp.status
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, UnsafeDestination):
                return f"refused: {exc.os_error}", None
            return describe(exc)[:MAX_ERROR], None
        except TimeoutError:
            return f"no answer within {self.config.timeout_seconds:g} s", None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return describe(exc)[:MAX_ERROR], None
