"""Accepting a mail, the same for every entry point.

``POST /mail/send``, the SendGrid- and Mailgun-compatible endpoints and the
SMTP actor each hand what their client sent to ``Intake``: back pressure,
the caller's rate, validation, the callback URL's host, the tenant's
suppressions (``suppress``), idempotency, the commit, the hand-on. What is
refused is raised as a ``Refused`` (``intake.refusals``) or the core's
``ValidationFailed``; each entry point
words it the way its clients expect (problem+json, SendGrid's or Mailgun's
error body, an SMTP reply). Nothing is answered as accepted before it is
committed.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Protocol

import orjson
from aiohttp.abc import AbstractResolver

from mailman.config import Config
from mailman.config.logging import get_logger
from mailman.core.callbacks import binds_loopback
from mailman.core.ids import new_id
from mailman.core.messages import Dispatch
from mailman.core.model import Mail, Status, TemplateUse, Unsubscribe
from mailman.core.records import fast_init
from mailman.core.submission import parse_mail
from mailman.core.suppression import drop, recipients
from mailman.core.unsubscribe import Ticket, link, sign
from mailman.core.validation import BODY_FIELD, CallbackRules, FieldError, ValidationFailed
from mailman.intake.resolve import resolution_problem
from mailman.store import (
    Idempotency,
    IdempotencyMismatch,
    MailTooLarge,
    OutcomeUnknown,
    Store,
    StoreUnavailable,
)

from .auth import Principal
from .backlog import RETRY_AFTER_SECONDS as BACKLOG_RETRY_AFTER
from .backlog import Backlog
from .guard import guarded
from .refusals import BacklogFull, KeyInFlight, KeyReused, Rate, RateLimited
from .templates import Renderer
from .tenants import Suppressing, TenantChains

log = get_logger("mailman.intake")

#: What a request whose key is still being committed is asked to wait.
IN_FLIGHT_RETRY_AFTER = 1
#: The fields of ``POST /mail/send`` that name a template and its data.
TEMPLATE_FIELDS = ("template", "template_version", "data")
#: What a template renders: a submission naming a template gives none of them.
RENDERED_FIELDS = ("subject", "content", "text", "html")


class Outbound(Protocol):
    """Where an accepted mail is handed on for sending (the relay's ``Nudge``, or a
    ``mailman.mailboxes.routing.Router``)."""

    async def dispatch(self, dispatch: Dispatch) -> None: ...


@fast_init
@dataclass(frozen=True, slots=True)
class Accepted:
    """A mail committed for sending (or, on an idempotent repeat, the earlier one)."""

    mail: Mail
    #: The id that stands for the request: ``mail.id``, or an earlier mail's on a repeat.
    mail_id: str
    #: The caller's rate limit after this mail; None without a limit.
    rate: Rate | None = None

    @property
    def replayed(self) -> bool:
        return self.mail_id != self.mail.id

    @property
    def recipients(self) -> int:
        mail = self.mail
        return len(mail.to) + len(mail.cc) + len(mail.bcc)


def idempotency_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an idempotency key (1-255 printable ASCII); None if it can."""
    if 1 <= len(key) <= 255 and all(" " <= c <= "~" for c in key):
        return None
    return "must be 1 to 255 printable ASCII characters"


def opts_out(values: object) -> bool:
    """Whether a submission's values say ``"unsubscribe": false``: no unsubscribe group,
    not even its tenant's default."""
    return isinstance(values, Mapping) and values.get("unsubscribe") is False


def fingerprint(values: object) -> str:
    """A digest of what a request asked for (a JSON body, or an entry point's submission
    values) that ignores key order and spacing; a file's bytes count as their base64."""
    dumped = orjson.dumps(values, option=orjson.OPT_SORT_KEYS, default=_base64)
    return hashlib.sha256(dumped).hexdigest()


def _base64(value: object) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} cannot be fingerprinted")


class Intake:
    """Rate, validate, commit and hand on a mail, for any entry point.

    One per process side that accepts mail (the HTTP app, the SMTP actor).
    ``backlog`` is the shared count of unsent mail (``intake.backlog``);
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
        #: Tenants' own provider chains, carried with each mail they accept.
        self.chains = TenantChains(
            store, ttl=config.key_cache_seconds, timeout=config.store_timeout
        )
        #: Which tenants suppress any address (a tenant with none skips the lookup).
        self.suppressing = Suppressing(
            store, ttl=config.key_cache_seconds, timeout=config.store_timeout
        )
        #: The tenants' templates, parsed once per version.
        self.renderer = Renderer(store, config)

    def check_backlog(self) -> None:
        """``BacklogFull`` while the backlog of unsent mail is full (nothing is stored then)."""
        backlog = self.backlog
        if backlog.full():
            raise BacklogFull(backlog.size, backlog.limit, BACKLOG_RETRY_AFTER)

    def rate_limit(self, principal: Principal) -> float:
        """The caller's rate limit (mails/s): its key's, else the service's; 0: none."""
        return principal.rate if principal.rate is not None else self.config.rate_limit

    async def take_token(self, principal: Principal) -> Rate | None:
        """Charge one mail to the caller's bucket: the caller's rate after it (None without
        a limit); ``RateLimited`` when the bucket is empty."""
        limit = self.rate_limit(principal)
        if limit <= 0:
            return None
        store = self.store
        bucket = f"key:{principal.key_id}" if principal.key_id else "anonymous"
        try:
            decision = await guarded(
                store, self.config.store_timeout, store.take_token(bucket, limit, time.time())
            )
        except OutcomeUnknown:
            # A token spent or not: no mail is stored yet, and a retry sends it once.
            raise StoreUnavailable("the store's answer to a rate token was lost") from None
        rate = Rate(limit, decision.remaining, decision.reset)
        if not decision.allowed:
            log.debug("mail.rate_limited", rate=limit)
            raise RateLimited(rate, max(1, math.ceil(decision.retry_after)))
        return rate

    def parse(self, body: object, *, principal: Principal, request_id: str, now: float) -> Mail:
        """The mail ``body`` describes (a decoded JSON body, or a ``Submission``'s values an
        entry point built: ``core.submission``); ``ValidationFailed`` if it is not valid."""
        mail = parse_mail(
            body,
            mail_id=new_id(now),
            default_subject=self.config.default_subject,
            now=now,
            tenant=principal.tenant,
            callbacks=self.callback_rules(principal),
            request_id=request_id,
        )
        return mail if mail.unsubscribe is None else self.signed(mail)

    def signed(self, mail: Mail) -> Mail:
        """``mail`` with its one-click unsubscribe link: signed for its one recipient, its
        group and its tenant, on ``MAILMAN_PUBLIC_URL``; ``ValidationFailed`` naming
        ``unsubscribe`` when this deployment has no public URL or no secret."""
        config, wanted = self.config, mail.unsubscribe
        assert wanted is not None
        if config.public_url is None or config.unsubscribe_secret is None:
            raise ValidationFailed(
                [
                    FieldError(
                        "unsubscribe",
                        "one-click unsubscribe is off here: the server needs "
                        "MAILMAN_PUBLIC_URL and MAILMAN_UNSUBSCRIBE_SECRET",
                    )
                ]
            )
        (address,) = recipients(mail)  # the submission's rule: one recipient
        ticket = Ticket(mail.tenant, address, wanted.group, mail.id)
        token = sign(config.unsubscribe_secret.reveal(), ticket)
        return replace(mail, unsubscribe=replace(wanted, url=link(config.public_url, token)))

    async def accept(
        self,
        body: object,
        *,
        principal: Principal,
        request_id: str = "",
        idempotency_key: str | None = None,
        checked: bool = False,
        own_subject: bool = False,
    ) -> Accepted:
        """Commit the mail ``body`` describes and hand it on; a ``Refused`` or
        ``ValidationFailed`` if refused.

        ``checked``: the caller already passed ``check_backlog`` and ``take_token``
        (an entry point that turns one request into several mails charges once each).
        ``own_subject``: a ``subject`` given with a ``template`` is the mail's (Mailgun's
        rule), not refused.
        """
        rate = None
        if not checked:
            self.check_backlog()
            rate = await self.take_token(principal)
        try:
            values, used = body, None
            if isinstance(body, Mapping) and body.get("template") is not None:
                values, used = await self.templated(body, principal.tenant, own_subject=own_subject)
            mail = self.parse(values, principal=principal, request_id=request_id, now=time.time())
        except ValidationFailed as exc:
            log.debug("mail.invalid", fields=[e.field for e in exc.errors])
            raise
        if used is not None:
            mail = replace(mail, template=used)
        return await self.keep(mail, body, idempotency_key=idempotency_key, rate=rate)

    async def templated(
        self, body: Mapping[str, object], tenant: str, *, own_subject: bool = False
    ) -> tuple[dict[str, object], TemplateUse]:
        """``body`` with its template rendered: ``subject``, ``html`` and ``text`` in place
        of ``template``, ``template_version`` and ``data``; ``ValidationFailed`` if the
        template is not there, does not render, or ``body`` also gives what it renders
        (``own_subject``: but its subject, which is kept)."""
        given = [
            name
            for name in RENDERED_FIELDS
            if body.get(name) is not None and not (own_subject and name == "subject")
        ]
        if given:
            raise ValidationFailed(
                [FieldError(n, "comes from the template: leave it out") for n in given]
            )
        renderer = self.renderer
        template = await renderer.find(tenant, body.get("template"), body.get("template_version"))
        rendered = renderer.render(template, body.get("data"))
        values = {k: v for k, v in body.items() if k not in TEMPLATE_FIELDS}
        for name in ("subject", "html", "text"):
            value = getattr(rendered.mail, name)
            if value is not None and not (name == "subject" and body.get("subject") is not None):
                values[name] = value
        return values, rendered.used

    async def keep(
        self,
        mail: Mail,
        body: object,
        *,
        idempotency_key: str | None = None,
        rate: Rate | None = None,
    ) -> Accepted:
        """Commit ``mail`` (``parse``'s of ``body``, which an idempotency key is
        fingerprinted by) and hand it on; a ``Refused`` or ``ValidationFailed`` if refused.
        For an entry point that validates several mails before it keeps any: each is
        parsed once."""
        try:
            if mail.callback_url is not None:
                await self._check_callback(mail.callback_url)
        except ValidationFailed as exc:
            log.debug("mail.invalid", fields=[e.field for e in exc.errors])
            raise
        chains = self.chains
        chain, default = chains.known(mail.tenant) or await chains.settings(mail.tenant)
        if chain is not None:
            mail = replace(mail, providers=chain)
        if default is not None and mail.unsubscribe is None and not opts_out(body):
            mail = self.defaulted(mail, default)
        if self.suppressing.known(mail.tenant) is not False:  # False: none, no store trip
            mail = await self.suppress(mail)
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
            raise ValidationFailed(
                [too_large], status=HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            ) from None
        accepted = Accepted(mail=mail, mail_id=mail_id, rate=rate)
        if not accepted.replayed:
            await self.hand_on(mail)
        return accepted

    def defaulted(self, mail: Mail, default: Unsubscribe) -> Mail:
        """``mail`` (which said nothing of ``unsubscribe``) of its tenant's default group,
        with its signed link. Not a mail to more than one recipient (to, cc and bcc
        together): it goes as it is, of no group (a 422 would refuse every such mail of
        the tenant). Without ``MAILMAN_PUBLIC_URL`` or ``MAILMAN_UNSUBSCRIBE_SECRET`` it is
        of the group (its unsubscribed addresses are skipped) without a link."""
        if len(mail.to) + len(mail.cc) + len(mail.bcc) != 1:
            log.debug("mail.unsubscribe_default_skipped", mail_id=mail.id, reason="recipients")
            return mail
        grouped = replace(mail, unsubscribe=default)
        if not self.config.unsubscribing:
            log.warning(
                "mail.unsubscribe_default_unsigned",
                mail_id=mail.id,
                tenant=mail.tenant,
                missing="MAILMAN_PUBLIC_URL or MAILMAN_UNSUBSCRIBE_SECRET",
            )
            return grouped
        return self.signed(grouped)

    async def suppress(self, mail: Mail) -> Mail:
        """``mail`` without the recipients its tenant suppresses, each named in
        ``Mail.suppressed``; with no visible recipient left it is stored ``suppressed``.
        (Checked again right before each provider call: ``Store.begin_attempt``.)"""
        store = self.store
        if not await self.suppressing.any(mail.tenant):
            return mail
        found = await guarded(
            store,
            self.config.store_timeout,
            store.suppressed_among(mail.tenant, recipients(mail), mail.group),
        )
        if not found:
            return mail
        kept = drop(mail, found)
        log.debug(
            "mail.recipients_suppressed",
            mail_id=mail.id,
            dropped=len(kept.suppressed) - len(mail.suppressed),
            visible=kept.visible,
        )
        return kept

    async def hand_on(self, mail: Mail) -> None:
        """Wake the senders for a committed mail (scheduled mails wait for their time, and
        are no part of the backlog till then; suppressed ones are never sent)."""
        if mail.first_status is not Status.QUEUED:
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
        in the store and only on loopback (``mailman.system.check_exposure``): the
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
        """Store the mail; the id that stands for this request (an earlier one's on a repeat).

        ``StoreUnavailable``: the mail was not stored (and never will be by this call).
        ``OutcomeUnknown`` naming ``mail.id``: it may have been; reading it settles it.
        """
        store = self.store
        slot = None
        if idempotency is not None:
            slot = (mail.tenant, idempotency.key_hash)
            if slot in self.inflight:
                raise KeyInFlight(IN_FLIGHT_RETRY_AFTER)
            self.inflight.add(slot)
        # One coroutine for both (a mail without a key is the common one).
        try:
            return await guarded(store, self.config.store_timeout, store.add(mail, idempotency))
        except OutcomeUnknown as exc:
            log.warning("mail.outcome_unknown", mail_id=mail.id, error=str(exc))
            raise OutcomeUnknown(str(exc), mail_id=mail.id) from None
        except IdempotencyMismatch as exc:
            raise KeyReused(exc.mail_id) from None
        finally:
            if slot is not None:
                self.inflight.discard(slot)
