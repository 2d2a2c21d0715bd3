"""Accepting a mail, the same for every entry point.

``POST /mail/send``, the SendGrid- and Mailgun-compatible endpoints and the
SMTP actor each translate what their client sent into the body of
``POST /mail/send`` (a JSON object), then hand it to ``Intake.accept``:
back pressure, the caller's rate, validation, the callback URL's host,
idempotency, the commit, the hand-on. What is refused is raised as a
``Problem`` (status, detail, the fields at fault); each entry point words it
the way its clients expect (problem+json, SendGrid's or Mailgun's error
body, an SMTP reply). Nothing is answered as accepted before it is committed.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import orjson
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver

from mailman.actors.callbacks import binds_loopback, resolution_problem
from mailman.actors.messages import Dispatch, Mail, new_mail_id
from mailman.actors.store import Idempotency, IdempotencyMismatch, MailTooLarge, RateDecision, Store
from mailman.config import Config
from mailman.config.logging import get_logger

from . import Outbound
from .auth import Principal
from .backlog import RETRY_AFTER_SECONDS as BACKLOG_RETRY_AFTER
from .backlog import Backlog
from .errors import (
    BACKLOG_FULL,
    BAD_REQUEST,
    IDEMPOTENCY_IN_FLIGHT,
    IDEMPOTENCY_MISMATCH,
    RATE_LIMITED,
    TOO_LARGE,
    VALIDATION,
    Problem,
)
from .guard import guarded
from .validation import BODY_FIELD, CallbackRules, FieldError, ValidationFailed, parse_mail

log = get_logger("mailman.intake")

IDEMPOTENCY_KEY = "Idempotency-Key"
#: What a request whose key is still being committed is asked to wait.
IN_FLIGHT_RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class Accepted:
    """A mail committed for sending (or, on an idempotent repeat, the earlier one)."""

    mail: Mail
    #: The id that stands for the request: ``mail.id``, or an earlier mail's on a repeat.
    mail_id: str
    #: The caller's rate-limit headers (``RateLimit-*``), empty without a limit.
    rate_headers: dict[str, str]

    @property
    def replayed(self) -> bool:
        return self.mail_id != self.mail.id

    @property
    def recipients(self) -> int:
        mail = self.mail
        return len(mail.to) + len(mail.cc) + len(mail.bcc)


def invalid(errors: Sequence[FieldError]) -> Problem:
    """The 422 for a mail that is not valid."""
    return Problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The mail is not valid; see errors.",
        type=VALIDATION,
        errors=errors,
    )


def refused(exc: ValidationFailed) -> Problem:
    """The problem a ``ValidationFailed`` is answered with: 413 when it says the mail is
    too large (``status``), 422 otherwise."""
    if exc.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return Problem(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "The mail is too large; see errors.",
            type=TOO_LARGE,
            errors=exc.errors,
        )
    return invalid(exc.errors)


def idempotency_key_problem(key: str) -> Problem | None:
    """Why ``key`` cannot be an ``Idempotency-Key`` (1-255 printable ASCII); None if it can."""
    if 1 <= len(key) <= 255 and all(" " <= c <= "~" for c in key):
        return None
    return Problem(
        HTTPStatus.BAD_REQUEST,
        f"{IDEMPOTENCY_KEY} must be 1 to 255 printable ASCII characters.",
        type=BAD_REQUEST,
        errors=[FieldError(IDEMPOTENCY_KEY, "must be 1 to 255 printable ASCII characters")],
    )


def fingerprint(body: object) -> str:
    """A digest of a request body that ignores key order and spacing."""
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def rate_headers(rate: float, decision: RateDecision) -> dict[str, str]:
    return {
        "RateLimit-Limit": f"{rate:g}",
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset)),
    }


class Intake:
    """Rate, validate, commit and hand on a mail, for any entry point.

    One per process side that accepts mail (the HTTP app, the SMTP actor).
    ``backlog`` is the shared count of unsent mail (``routes.backlog``);
    ``resolver`` resolves callback hosts (the system's when None; tests set it).
    """

    def __init__(
        self,
        *,
        store: Store,
        outbound: Outbound,
        config: Config,
        backlog: Backlog,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.store = store
        self.outbound = outbound
        self.config = config
        self.backlog = backlog
        self.resolver = resolver
        #: (tenant, idempotency key hash) of the requests being committed now.
        self.inflight: set[tuple[str, str]] = set()

    def check_backlog(self) -> None:
        """503 while the backlog of unsent mail is full (nothing is stored then)."""
        backlog = self.backlog
        if backlog.full():
            raise Problem(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"{backlog.size} mails are waiting to be sent (the limit is {backlog.limit}); "
                "nothing was stored. Try again after Retry-After.",
                type=BACKLOG_FULL,
                headers={hdrs.RETRY_AFTER: str(BACKLOG_RETRY_AFTER)},
            )

    async def take_token(self, principal: Principal) -> dict[str, str]:
        """Charge one mail to the caller's bucket: its rate-limit headers; 429 when empty."""
        rate = principal.rate if principal.rate is not None else self.config.rate_limit
        if rate <= 0:
            return {}
        store = self.store
        bucket = f"key:{principal.key_id}" if principal.key_id else "anonymous"
        decision = await guarded(
            store, self.config.store_timeout, store.take_token(bucket, rate, time.time())
        )
        headers = rate_headers(rate, decision)
        if not decision.allowed:
            log.debug("mail.rate_limited", rate=rate)
            raise Problem(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"This API key may send {rate:g} mails per second; wait for Retry-After.",
                type=RATE_LIMITED,
                headers={**headers, hdrs.RETRY_AFTER: str(max(1, math.ceil(decision.retry_after)))},
            )
        return headers

    def parse(self, body: object, *, principal: Principal, request_id: str, now: float) -> Mail:
        """The mail ``body`` describes (``ValidationFailed`` if it is not valid)."""
        return parse_mail(
            body,
            mail_id=new_mail_id(now),
            default_subject=self.config.default_subject,
            now=now,
            tenant=principal.tenant,
            callbacks=self.callback_rules(principal),
            request_id=request_id,
        )

    async def accept(
        self,
        body: object,
        *,
        principal: Principal,
        request_id: str = "",
        idempotency_key: str | None = None,
        checked: bool = False,
    ) -> Accepted:
        """Commit the mail ``body`` describes and hand it on; ``Problem`` if refused.

        ``checked``: the caller already passed ``check_backlog`` and ``take_token``
        (an entry point that turns one request into several mails charges once each).
        """
        rate: dict[str, str] = {}
        if not checked:
            self.check_backlog()
            rate = await self.take_token(principal)
        try:
            mail = self.parse(body, principal=principal, request_id=request_id, now=time.time())
        except ValidationFailed as exc:
            log.debug("mail.invalid", fields=[e.field for e in exc.errors])
            raise refused(exc) from None
        return await self.keep(mail, body, idempotency_key=idempotency_key, rate_headers=rate)

    async def keep(
        self,
        mail: Mail,
        body: object,
        *,
        idempotency_key: str | None = None,
        rate_headers: dict[str, str] | None = None,
    ) -> Accepted:
        """Commit ``mail`` (``parse``'s of ``body``, which an ``Idempotency-Key`` is
        fingerprinted by) and hand it on; ``Problem`` if refused. For an entry point
        that validates several mails before it keeps any: each is parsed once."""
        try:
            if mail.callback_url is not None:
                await self._check_callback(mail.callback_url)
        except ValidationFailed as exc:
            log.debug("mail.invalid", fields=[e.field for e in exc.errors])
            raise refused(exc) from None
        idempotency = None
        if idempotency_key is not None:
            idempotency = Idempotency(
                key_hash=hashlib.sha256(idempotency_key.encode()).hexdigest(),
                fingerprint=fingerprint(body),
                expires_at=mail.created_at + self.config.idempotency_ttl,
            )
        try:
            mail_id = await self.commit(mail, idempotency)
        except MailTooLarge as exc:  # over the store's own limit (MySQL's max_allowed_packet)
            log.debug("mail.too_large_to_store", size=exc.size, limit=exc.limit)
            too_large = FieldError(BODY_FIELD, f"is too large for the store: {exc}")
            raise refused(
                ValidationFailed([too_large], status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            ) from None
        accepted = Accepted(mail=mail, mail_id=mail_id, rate_headers=rate_headers or {})
        if not accepted.replayed:
            await self.hand_on(mail)
        return accepted

    async def hand_on(self, mail: Mail) -> None:
        """Wake the senders for a committed mail (scheduled mails wait for their time, and
        are no part of the backlog till then)."""
        if mail.send_at is not None:
            return
        self.backlog.accepted()
        try:
            await self.outbound.dispatch(Dispatch(mail_id=mail.id, accepted_at=mail.created_at))
        except Exception:
            # The mail is committed: the relay (or recovery at the next start)
            # dispatches it, so the caller is still told it was accepted.
            log.exception("mail.dispatch_failed", mail_id=mail.id)

    def callback_rules(self, principal: Principal) -> CallbackRules:
        """What ``callback_url`` may be for this caller.

        Plain ``http`` only while the API runs open, which it does only with no key
        in the store and only on loopback (``actors.system.check_exposure``): the
        caller is then the anonymous principal, and the bind address says loopback.
        """
        config = self.config
        return CallbackRules(
            enabled=config.callbacks.secret is not None,
            allow_http=principal.key_id is None and binds_loopback(config.host),
            allow_private=config.callbacks.allow_private,
        )

    async def _check_callback(self, url: str) -> None:
        """Resolve the callback URL's host: ``ValidationFailed`` if an address is not public."""
        config = self.config.callbacks
        if config.allow_private:
            return
        problem = await resolution_problem(
            url, resolver=self.resolver, within=config.timeout_seconds
        )
        if problem is not None:
            raise ValidationFailed([FieldError("callback_url", problem)])

    async def commit(self, mail: Mail, idempotency: Idempotency | None) -> str:
        """Store the mail; the id that stands for this request (an earlier one's on a repeat)."""
        store, timeout = self.store, self.config.store_timeout
        if idempotency is None:
            return await guarded(store, timeout, store.add(mail))
        slot = (mail.tenant, idempotency.key_hash)
        if slot in self.inflight:
            raise Problem(
                HTTPStatus.CONFLICT,
                f"A request with this {IDEMPOTENCY_KEY} is still being processed; "
                "repeat it after Retry-After to get its answer.",
                type=IDEMPOTENCY_IN_FLIGHT,
                headers={hdrs.RETRY_AFTER: str(IN_FLIGHT_RETRY_AFTER)},
            )
        self.inflight.add(slot)
        try:
            return await guarded(store, timeout, store.add(mail, idempotency))
        except IdempotencyMismatch:
            raise Problem(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                f"This {IDEMPOTENCY_KEY} was already used with another request body.",
                type=IDEMPOTENCY_MISMATCH,
                errors=[FieldError(IDEMPOTENCY_KEY, "was used before with another body")],
            ) from None
        finally:
            self.inflight.discard(slot)
