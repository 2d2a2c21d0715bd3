"""The SMTP server actor: apps that send by SMTP (Django, Rails, Laravel, cron jobs) get
Mailman's failover by pointing their SMTP host, port and password at it.

aiosmtpd's protocol, served by the running event loop (``loop.create_server``;
aiosmtpd's ``Controller`` runs a loop in a thread of its own and is not used).
A transaction, and what is answered:

- ``AUTH PLAIN`` or ``AUTH LOGIN``: the password is a Mailman key with the
  ``send`` scope; the user name is ignored (send ``api``, or anything). An
  unknown or revoked key, or one without ``send``, is ``535 5.7.8``; a store
  that does not answer ``454 4.7.0``. The key is never logged. With a
  certificate configured, STARTTLS is offered and AUTH is refused before it
  (``538 5.7.11``); without one AUTH works in the clear (terminate TLS in
  front, or keep it on a private network).
- ``MAIL FROM``: once the store holds a key, a client that has not
  authenticated gets ``530 5.7.0 Authentication required``. While it holds
  none, SMTP is open like the API, which ``actors.system.check_exposure``
  allows on loopback only.
- ``RCPT TO``: each address checked as the API checks one (``553 5.1.3``); at
  most ``MAX_RECIPIENTS`` (``452 4.5.3``).
- ``DATA``: over the size limit (``SIZE`` in the EHLO answer) ``552 5.3.4``.
  Otherwise the mail becomes the body of ``POST /mail/send`` (``actors.mime``)
  and is accepted as one (``routes.intake``: back pressure, the key's rate,
  validation, the commit, waking the relay). ``250 2.0.0 Ok: queued as <id>``
  is answered only once the mail is committed; ``GET /mail/<id>`` knows it.

Refusals: a mail that is not valid ``550`` (``5.1.7`` for the sender,
``5.1.3`` for a recipient, ``5.6.0`` for the rest), one line per field at
fault, named as the API names it (``from``, ``to[0]``, ``headers.X-Name``,
``attachments[1].filename``...); too large ``552 5.3.4``; rate-limited, backlog
full, store unavailable or anything unexpected ``451 4.3.0`` (transient: the
client tries again; nothing was stored).

A commit whose outcome is unknown (MySQL: the answer to ``COMMIT`` was lost) is
never a plain "nothing was stored": the reply names the mail's id, which
``GET /mail/<id>`` settles (404: never stored). It is ``451 4.3.0`` when the
mail has a ``Message-ID`` (a retry is deduplicated by it: never sent twice), and
``554 5.3.0`` when it has none (a retry could send it twice; the client should
check the id instead).

The door: at most ``max_connections`` connections at once and
``max_connections_per_ip`` from one client address (more get ``421 4.7.0``
and are closed); a connection that sends nothing for ``idle_timeout``
seconds, or (once the store holds a key) has not authenticated within
``auth_timeout`` seconds of connecting, gets ``421 4.4.2`` and is closed; a
failed AUTH is answered after ``auth_failure_delay`` seconds, doubled with
each failure on the connection (8 times at most), holding up that
connection only. Mails are charged to the process's in-flight budget
(``intake.budget``): ``MAIL FROM ... SIZE=`` reserves at once, ``DATA``
grows as it arrives; past the budget (or the sender's half of it)
``452 4.3.1`` (at ``MAIL``, or at the end of ``DATA``, whose bytes were
discarded as they came).

Stopping: the listener closes, mails being committed finish (within
``shutdown_timeout``), the connections left get ``421 4.3.2`` and are closed.
Every ``421`` is written before the close on asyncio's loop and on uvloop
(whose transports are not ``asyncio.WriteTransport``s: no ``isinstance``
check may stand in the way of the write).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, AnyStr, cast

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from mailman.config import Config, tls_server_context
from mailman.config.logging import get_logger
from mailman.config.settings import SmtpConfig
from mailman.core.mime import message_id, submission_values
from mailman.core.validation import MAX_RECIPIENTS, ValidationFailed, parse_address
from mailman.intake.accept import Accepted, Intake, Outbound
from mailman.intake.auth import BadKey, Keyring, MissingScope, NoKey, Principal, authenticate
from mailman.intake.backlog import Backlog, refresher
from mailman.intake.budget import Budget, Hold, OverBudget, owner_of
from mailman.intake.instruments import HttpMetrics
from mailman.intake.keys import Scope
from mailman.intake.load import Load
from mailman.intake.refusals import KeyInFlight, KeyReused, RateLimited, Refused
from mailman.store import OutcomeUnknown, Store, StoreUnavailable

from .lifecycle import Actor

log = get_logger("mailman.smtp")

#: The greeting's software name (aiosmtpd's own would name itself and its version).
IDENT = "Mailman ESMTP"
#: Mails larger than this are translated in a worker thread, not in the event loop.
THREAD_BYTES = 256 * 1024
#: Reply lines listing the fields at fault, at most (SMTP replies should stay short).
MAX_REPLY_LINES = 10
#: Characters of one reply line's text, at most (RFC 5321: 512 with the code and CRLF).
MAX_REPLY_TEXT = 400

TEMPORARY = "451 4.3.0"
#: Mails are deduplicated by their Message-ID, as by an ``Idempotency-Key`` of this prefix.
MESSAGE_ID_KEY = "smtp:"
AUTH_SUCCESS = "235 2.7.0 Authentication successful"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_TEMPORARY = "454 4.7.0 Temporary authentication failure: try again later"
#: Past the in-flight budget (RFC 3463 4.3.1: mail system full).
NO_ROOM = "452 4.3.1 Insufficient system storage; try again later"
TOO_MANY = "421 4.7.0 Too many connections; try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address; try again later"
IDLE = "421 4.4.2 Idle too long; closing the connection"
NO_AUTH = "421 4.4.2 No authentication in time; closing the connection"
SHUTTING_DOWN = "421 4.3.2 Mailman is shutting down; try again later"
#: A failed AUTH's delay grows to at most this many times ``auth_failure_delay``.
AUTH_DELAY_CAP = 8

_REQUEST_PREFIX = secrets.token_hex(8)
_REQUESTS = itertools.count(1)


def _request_id() -> str:
    return f"smtp-{_REQUEST_PREFIX}{next(_REQUESTS):012x}"


def _reply_text(text: str) -> str:
    """``text`` fit for a reply line: printable ASCII, one line, not too long."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return printable[:MAX_REPLY_TEXT]


def _reply(code: str, lines: Sequence[str]) -> str:
    """A (multi-line) reply: ``550-5.6.0 first``, ..., ``550 5.6.0 last``."""
    basic, _, enhanced = code.partition(" ")
    texts = [_reply_text(line) for line in lines[:MAX_REPLY_LINES]] or ["Refused"]
    out = [f"{basic}-{enhanced} {text}" for text in texts[:-1]]
    out.append(f"{basic} {enhanced} {texts[-1]}")
    return "\r\n".join(out)


def _enhanced(field: str) -> str:
    """The enhanced status code (RFC 3463) of a refused field."""
    if field == "from":
        return "5.1.7"  # bad sender's mailbox address syntax
    if field.partition("[")[0] in ("to", "cc", "bcc"):
        return "5.1.3"  # bad destination mailbox address syntax
    return "5.6.0"  # other media error


def refusal(refused: Refused | ValidationFailed) -> str:
    """The SMTP reply to a mail the intake refused."""
    if isinstance(refused, ValidationFailed):
        lines = [f"{e.field}: {e.message}" for e in refused.errors]
        if refused.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            return _reply("552 5.3.4", ["The mail is too large; nothing was stored:", *lines])
        errors = refused.errors
        code = f"550 {_enhanced(errors[0].field) if errors else '5.6.0'}"
        return _reply(code, ["The mail is not valid; nothing was stored:", *lines])
    later = f" in {refused.retry_after} s" if refused.retry_after else " later"
    if isinstance(refused, RateLimited):
        return f"{TEMPORARY} Rate limited: this key sends too fast. Try again{later}"
    if isinstance(refused, KeyInFlight):  # the same Message-ID is being committed right now
        return f"{TEMPORARY} This mail is being taken already. Try again{later}"
    if isinstance(refused, KeyReused):
        return _reply("550 5.6.0", ["This Message-ID was taken before with another mail"])
    return f"{TEMPORARY} Mailman cannot take mail now; nothing was stored. Try again{later}"


def say_and_close(transport: asyncio.BaseTransport | None, reply: str) -> None:
    """Write ``reply`` and close ``transport`` (after what is buffered is sent).

    No ``isinstance(transport, asyncio.WriteTransport)``: uvloop's transports are not
    subclasses of asyncio's, and such a check silently skipped the write there."""
    if transport is None or transport.is_closing():
        return
    with contextlib.suppress(Exception):
        cast(asyncio.WriteTransport, transport).write(reply.encode() + b"\r\n")
    transport.close()


def _size(mail_options: Sequence[str]) -> int:
    """The ``SIZE=`` a client declared at ``MAIL FROM`` (0: none; aiosmtpd checked it)."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


def _peer(session: Session) -> str | None:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class SmtpHandler:
    """aiosmtpd's handler: the AUTH, MAIL, RCPT and DATA hooks (one, shared by every
    connection of the actor)."""

    def __init__(
        self,
        *,
        intake: Intake,
        keyring: Keyring,
        metrics: HttpMetrics | None = None,
        load: Load | None = None,
    ) -> None:
        self.intake = intake
        self.keyring = keyring
        self.metrics = metrics
        #: This process's requests in flight (a mail counts from DATA's end to its reply).
        self.load = load or Load()
        #: Mails being translated or committed now; ``idle`` is set while there are none.
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self._tasks: set[asyncio.Task[str]] = set()
        #: The connections' AUTH-deadline checks (kept from the garbage collector).
        self.background: set[asyncio.Task[None]] = set()

    # --- AUTH ---------------------------------------------------------------------

    def counted(self, stage: str, reply: str | None) -> str | None:
        """``reply``, counted in ``mailman_smtp_replies_total`` by stage and code."""
        if self.metrics is not None and reply is not None:
            self.metrics.smtp_reply(stage, reply[:3])
        return reply

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: Envelope, args: list[str]
    ) -> str | None:
        """AUTH PLAIN and LOGIN against the store's keys; None when already answered.
        A refusal (535) comes after a delay that grows with each one on the connection."""
        reply = await self._auth(server, session, args)
        if reply is not None and reply.startswith("535") and isinstance(server, SmtpProtocol):
            await server.auth_failed()
        return self.counted("auth", reply)

    async def _auth(self, server: SMTP, session: Session, args: list[str]) -> str | None:
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            password = await self._plain(server, args)
        elif mechanism == "LOGIN":
            password = await self._login(server, args)
        else:
            return "504 5.5.4 Unrecognized authentication type"
        if not isinstance(password, bytes):
            return password  # a reply; None: aiosmtpd answered (the client gave up...)
        try:
            principal = await authenticate(self.keyring, _key(password), Scope.SEND)
        except BadKey:
            log.info("smtp.auth_refused", why="unknown_key", peer=_peer(session))
            return "535 5.7.8 Authentication credentials invalid: unknown or revoked key"
        except MissingScope:
            log.info("smtp.auth_refused", why="no_send_scope", peer=_peer(session))
            return "535 5.7.8 Authentication credentials invalid: the key lacks the send scope"
        except StoreUnavailable:
            log.warning("smtp.auth_unavailable", peer=_peer(session))
            return AUTH_TEMPORARY
        session.authenticated = True
        session.auth_data = principal  # type: ignore[assignment]  # typed None, holds anything
        return AUTH_SUCCESS

    async def _plain(self, server: SMTP, args: list[str]) -> bytes | str | None:
        """The password of ``AUTH PLAIN`` (RFC 4616); else a reply, or None if answered."""
        if len(args) == 1:
            blob = await server.challenge_auth("")
            if not isinstance(blob, bytes):
                return None
        else:
            decoded = _b64(args[1])
            if decoded is None:
                return "501 5.5.2 Cannot decode base64"
            blob = decoded
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            return "501 5.5.2 Cannot split the PLAIN value (authzid NUL user NUL password)"
        return parts[2]

    async def _login(self, server: SMTP, args: list[str]) -> bytes | str | None:
        """The password of ``AUTH LOGIN`` (the user name is asked for, and ignored)."""
        if len(args) == 1:
            user = await server.challenge_auth(server.AuthLoginUsernameChallenge)
            if not isinstance(user, bytes):
                return None
        elif _b64(args[1]) is None:
            return "501 5.5.2 Cannot decode base64"
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return None
        return password

    # --- MAIL, RCPT -------------------------------------------------------------

    async def principal(self, session: Session) -> Principal | str:
        """Who sends: the key given with AUTH, or (while no key exists) the anonymous
        caller; else the reply refusing the command."""
        if session.authenticated and isinstance(session.auth_data, Principal):
            return session.auth_data
        try:
            return await authenticate(self.keyring, None, Scope.SEND)
        except NoKey:
            return AUTH_REQUIRED
        except StoreUnavailable:
            return f"{TEMPORARY} Mailman's store is unavailable; try again later"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        principal = await self.principal(session)
        if isinstance(principal, str):
            return principal
        # Room for the declared size now; without SIZE, DATA grows it as it arrives.
        if isinstance(server, SmtpProtocol) and not server.reserve(principal, _size(mail_options)):
            return self.counted("mail", NO_ROOM) or NO_ROOM
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return f"452 4.5.3 Too many recipients: at most {MAX_RECIPIENTS} a mail"
        try:
            parse_address(address)
        except ValueError as exc:
            return f"553 5.1.3 {_reply_text(str(exc))}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    # --- DATA -------------------------------------------------------------------

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await self._data(session, envelope)
        self.counted("data", reply)
        return reply

    async def _data(self, session: Session, envelope: Envelope) -> str:
        principal = await self.principal(session)
        if isinstance(principal, str):
            return principal
        raw = envelope.original_content or b""
        sender = envelope.mail_from
        recipients = tuple(envelope.rcpt_tos)
        self.busy += 1
        self.idle.clear()
        self.load.enter()
        task = asyncio.create_task(self._deliver(raw, sender, recipients, principal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A client that hangs up does not cancel a commit half-way: the mail is
        # stored or not, and the count of busy mails stays right.
        return await asyncio.shield(task)

    async def _accept(
        self, raw: bytes, body: dict[str, Any], principal: Principal, request_id: str
    ) -> Accepted:
        """Accept the mail, once per ``Message-ID``: a client (or a relaying MTA) that sends
        a mail again because it never got the ``250`` gets the first mail's id back, and
        nothing is sent twice. The same ``Message-ID`` on another mail is a new mail."""
        msgid = message_id(raw)
        key = None if msgid is None else MESSAGE_ID_KEY + msgid
        try:
            return await self.intake.accept(
                body, principal=principal, request_id=request_id, idempotency_key=key
            )
        except KeyReused:
            if key is None:
                raise
        log.info("smtp.message_id_reused", request_id=request_id)
        # Backlog and rate were charged by the first try.
        return await self.intake.accept(
            body, principal=principal, request_id=request_id, checked=True
        )

    async def _deliver(
        self, raw: bytes, sender: str | None, recipients: tuple[str, ...], principal: Principal
    ) -> str:
        """Translate, accept, and the reply that says how it went."""
        request_id = _request_id()
        started = time.perf_counter()
        try:
            if len(raw) > THREAD_BYTES:
                body = await asyncio.to_thread(
                    submission_values, raw, mail_from=sender, recipients=recipients
                )
            else:
                body = submission_values(raw, mail_from=sender, recipients=recipients)
            accepted = await self._accept(raw, body, principal, request_id)
        except (Refused, ValidationFailed) as refused:
            return self._refused(refused, request_id)
        except StoreUnavailable as exc:
            log.warning("smtp.store_unavailable", request_id=request_id, error=str(exc))
            return f"{TEMPORARY} The store is unavailable; nothing was stored. Try again later"
        except OutcomeUnknown as exc:
            return outcome_unknown(exc, deduplicated=message_id(raw) is not None)
        except Exception:
            log.exception("smtp.failed", request_id=request_id)
            return f"{TEMPORARY} Mailman could not take the mail; nothing was stored. Try again"
        finally:
            self.load.leave()
            self.busy -= 1
            if self.busy == 0:
                self.idle.set()
        log.info(
            "smtp.replayed" if accepted.replayed else "smtp.accepted",
            mail_id=accepted.mail_id,
            recipients=accepted.recipients,
            tenant=principal.tenant,
            bytes=len(raw),
            request_id=request_id,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return f"250 2.0.0 Ok: queued as {accepted.mail_id}"

    def _refused(self, refused: Refused | ValidationFailed, request_id: str) -> str:
        reply = refusal(refused)
        invalid = refused if isinstance(refused, ValidationFailed) else None
        log.info(
            "smtp.refused",
            code=int(reply[:3]),
            why=type(refused).__name__,
            fields=[e.field for e in invalid.errors] if invalid is not None else [],
            request_id=request_id,
        )
        return reply

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if isinstance(server, SmtpProtocol):
            server.release()
        return "250 2.0.0 OK"

    async def handle_exception(self, error: Exception) -> str:
        """An error in aiosmtpd's command handling: a transient reply, no internals."""
        log.error("smtp.error", error=type(error).__name__, exc_info=error)
        return "451 4.3.0 Internal error; try again later"


def outcome_unknown(exc: OutcomeUnknown, *, deduplicated: bool) -> str:
    """The reply to a mail whose commit's outcome is unknown: never "nothing was stored".

    Transient (451) only when a retry cannot send it twice (its Message-ID
    deduplicates it); otherwise permanent (554), so that no MTA retries it blindly.
    """
    mail_id = exc.mail_id or "unknown"
    log.warning("smtp.outcome_unknown", mail_id=mail_id, deduplicated=deduplicated)
    check = f"the store's answer was lost: mail {mail_id} may be stored and sent"
    if deduplicated:
        return f"{TEMPORARY} Outcome unknown: {check}; a retry (same Message-ID) is sent once"
    return f"554 5.3.0 Outcome unknown: {check}; GET /mail/{mail_id} says (404: never stored)"


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _key(raw: bytes) -> str:
    """The key a client sent as its password (never logged)."""
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


class SmtpProtocol(SMTP):
    """aiosmtpd's protocol (one per connection), known to its server for the stop, with
    the door's limits (connections, per address, timeouts, AUTH delay), the in-flight
    budget, and enhanced status codes on aiosmtpd's own size refusals."""

    def __init__(
        self,
        handler: SmtpHandler,
        *,
        connections: set[SmtpProtocol],
        by_address: dict[str, int],
        settings: SmtpConfig,
        budget: Budget,
        **kwargs: Any,
    ):
        super().__init__(handler, **kwargs)
        self.handler = handler
        self.connections = connections
        self.by_address = by_address
        self.settings = settings
        self.budget = budget
        self.counted = handler.counted
        #: Turned away at connect (too many connections): aiosmtpd never ran on it.
        self.turned_away = False
        #: The client's address, once counted in ``by_address``.
        self.address: str | None = None
        #: What the transaction holds of the in-flight budget.
        self.hold: Hold | None = None
        self.auth_failures = 0
        #: Bytes last arrived, connection opened (loop time); the auth deadline passed
        #: with the door open (no key in the store): no more checks.
        self._last = 0.0
        self._opened = 0.0
        self._door_open = False
        #: A mail being committed, or a failed AUTH's delay: not idle.
        self._busy = False

    # --- the door -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self in self.connections:  # again after STARTTLS
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        reply = None
        if len(self.connections) >= self.settings.max_connections:
            reply = TOO_MANY
        elif self.by_address.get(address, 0) >= self.settings.max_connections_per_ip:
            reply = TOO_MANY_FROM_YOU
        if reply is not None:
            self.turned_away = True
            log.warning(
                "smtp.too_many_connections",
                peer=address,
                per_address=reply is TOO_MANY_FROM_YOU,
                limit=self.settings.max_connections
                if reply is TOO_MANY
                else self.settings.max_connections_per_ip,
            )
            self.counted("connect", reply)
            say_and_close(transport, reply)
            return
        self.address = address
        self.by_address[address] = self.by_address.get(address, 0) + 1
        self._opened = self._last = self.loop.time()
        super().connection_made(transport)
        self.connections.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self.turned_away:
            return
        self.connections.discard(self)
        self.release()
        if self.address is not None:
            left = self.by_address.get(self.address, 0) - 1
            if left > 0:
                self.by_address[self.address] = left
            else:
                self.by_address.pop(self.address, None)
            self.address = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        self._last = self.loop.time()
        super().data_received(data)

    # aiosmtpd's timer closed silently after ``timeout`` without a command; this one
    # says 421, counts bytes (a long DATA is not idle), and has the AUTH deadline.
    def _reset_timeout(self, duration: float | None = None) -> None:
        self._last = self.loop.time()
        if self._timeout_handle is None:
            self._arm()

    def _awaiting_auth(self) -> bool:
        session = self.session
        return not self._door_open and not (session is not None and session.authenticated)

    def _arm(self) -> None:
        deadline = self._last + self.settings.idle_timeout
        if self._awaiting_auth():
            deadline = min(deadline, self._opened + self.settings.auth_timeout)
        self._timeout_handle = self.loop.call_at(deadline, self._timeout_cb)

    def _timeout_cb(self) -> None:
        now = self.loop.time()
        if self.transport is None:
            return
        if self._awaiting_auth() and now >= self._opened + self.settings.auth_timeout:
            self._door_open = True  # checked once: the task below decides
            self._timeout_handle = self.loop.call_at(
                now + self.settings.idle_timeout, self._timeout_cb
            )
            task = self.loop.create_task(self._auth_deadline())
            self.handler.background.add(task)
            task.add_done_callback(self.handler.background.discard)
            return
        if now >= self._last + self.settings.idle_timeout:
            if not self._busy:
                self.close_with(IDLE, "smtp.idle_timeout")
                return
            self._last = now  # committing a mail, or delaying a refusal: not idle
        self._arm()

    async def _auth_deadline(self) -> None:
        """The connection has not authenticated in time: 421 if the door needs AUTH."""
        session = self.session
        if session is None or session.authenticated:
            return
        answer = await self.handler.principal(session)
        if answer == AUTH_REQUIRED and not session.authenticated:
            self.close_with(NO_AUTH, "smtp.auth_timeout")

    def close_with(self, reply: str, event: str) -> None:
        """Say ``reply`` (a 421) and close."""
        log.info(event, peer=self.address)
        self.counted("timeout", reply)
        say_and_close(self.transport, reply)

    async def auth_failed(self) -> None:
        """Wait before the refusal: ``auth_failure_delay``, doubled per failure, capped."""
        self.auth_failures += 1
        base = self.settings.auth_failure_delay
        delay = min(base * 2 ** (self.auth_failures - 1), base * AUTH_DELAY_CAP)
        if delay > 0:
            self._busy = True
            try:
                await asyncio.sleep(delay)
            finally:
                self._busy = False

    # --- the budget ---------------------------------------------------------------

    def reserve(self, principal: Principal, size: int) -> bool:
        """A new hold for this transaction (the last one's is given back), with room for
        ``size`` bytes; False if there is none."""
        self.release()
        self.hold = self.budget.hold(owner_of(principal.key_id, self.address))
        return self._charge(size)

    def _charge(self, size: int) -> bool:
        if self.hold is None:
            self.hold = self.budget.hold(owner_of(None, self.address))
        try:
            self.hold.reserve(size)
        except OverBudget as exc:
            log.warning("budget.refused", smtp=True, whole=exc.whole, peer=self.address)
            return False
        return True

    def release(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.release()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, charging the budget as lines arrive (and discarding them past
        it or past the size limit, answering at the end: RFC 5321 4.2.5)."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            refusal = await self._read_data(envelope)
            if refusal is None:
                self._busy = True
                try:
                    status = await self._call_handler_hook("DATA")
                finally:
                    self._busy = False
            else:
                status = self.counted("data", refusal) or refusal
        finally:
            self.release()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push(status)

    async def _read_data(self, envelope: Envelope) -> str | None:
        """The mail into ``envelope``; else the reply refusing it (its bytes discarded)."""
        limit = self.data_size_limit
        lines: list[bytes] = []
        size = 0
        partial = False  # the last piece read ended mid-line
        refusal: str | None = None
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                refusal = refusal or "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)"
                line = await self._reader.read(exc.consumed)
            if not partial and line == b".\r\n":
                break
            size += len(line)
            at_start = not partial
            partial = not line.endswith(b"\r\n")
            if refusal is None and limit and size > limit:
                refusal = f"552 5.3.4 The mail is larger than the limit of {limit} bytes"
            if refusal is None and not self._charge(size):
                refusal = NO_ROOM
            if refusal is not None:
                lines.clear()
                continue
            lines.append(line[1:] if at_start and line.startswith(b".") else line)
        raw = b"".join(lines)
        lines.clear()
        envelope.content = envelope.original_content = raw
        return refusal

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str) and status.startswith("552 Error:"):
            limit = self.data_size_limit
            await super().push(f"552 5.3.4 The mail is larger than the limit of {limit} bytes")
            return
        await super().push(status)

    def goodbye(self) -> None:
        """Say 421 and close the connection (Mailman is stopping)."""
        self.counted("stop", SHUTTING_DOWN)
        say_and_close(self.transport, SHUTTING_DOWN)

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            cast(asyncio.WriteTransport, transport).abort()


class SmtpServer(Actor):
    """Listens for SMTP clients; binds in ``start`` (after storage and mailboxes are ready).

    ``port``: the one to bind (``config.smtp.port`` when None; 0: any free one);
    once started, the one bound. ``tls_port`` likewise, for implicit TLS (with a
    certificate only).
    """

    def __init__(
        self,
        *,
        store: Store,
        outbound: Outbound,
        config: Config,
        port: int | None = None,
        tls_port: int | None = None,
        metrics: HttpMetrics | None = None,
        budget: Budget | None = None,
        load: Load | None = None,
    ) -> None:
        super().__init__("smtp")
        smtp = config.smtp
        self.config = config
        self.store = store
        self.host = smtp.host or config.host
        self.port = port if port is not None else smtp.port or 0
        self.max_bytes = smtp.max_bytes or config.max_body_bytes
        self.stop_timeout = config.shutdown_timeout + 5.0
        self.keyring = Keyring(store, ttl=config.key_cache_seconds, timeout=config.store_timeout)
        self.backlog = Backlog(config.backlog_limit)
        intake = Intake(store=store, outbound=outbound, config=config, backlog=self.backlog)
        self.handler = SmtpHandler(intake=intake, keyring=self.keyring, metrics=metrics, load=load)
        self.connections: set[SmtpProtocol] = set()
        #: Connections open now, by client address.
        self.by_address: dict[str, int] = {}
        #: Bytes of mails in flight (shared with the API of this process).
        self.budget = budget or Budget(config.max_inflight_bytes)
        self.tls: ssl.SSLContext | None = None
        #: The name in the greeting (aiosmtpd's default asks DNS, once per connection).
        self.hostname = socket.gethostname() or "mailman"
        #: The implicit-TLS port (``config.smtp.tls_port`` when None), once bound the one
        #: bound; None: none.
        self.tls_port: int | None = tls_port if tls_port is not None else smtp.tls_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._tls_server: asyncio.Server | None = None
        self._stack = contextlib.AsyncExitStack()

    def _protocol(self, *, implicit: bool = False) -> SmtpProtocol:
        """A connection's protocol: STARTTLS when a certificate is there; on the
        implicit-TLS port the connection is TLS already (no STARTTLS, AUTH at once)."""
        return SmtpProtocol(
            self.handler,
            connections=self.connections,
            by_address=self.by_address,
            settings=self.config.smtp,
            budget=self.budget,
            data_size_limit=self.max_bytes,
            hostname=self.hostname,
            ident=IDENT,
            tls_context=None if implicit else self.tls,
            # AUTH needs TLS when TLS is there; without a certificate it works in the clear.
            auth_require_tls=self.tls is not None and not implicit,
            loop=self._loop,
        )

    async def setup(self) -> None:
        # aiosmtpd logs each command (addresses too) at info: keep its warnings only.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        smtp = self.config.smtp
        if smtp.tls_cert is not None and smtp.tls_key is not None:
            self.tls = tls_server_context(smtp.tls_cert, smtp.tls_key)  # read at each start
        self._loop = asyncio.get_running_loop()
        await self._stack.enter_async_context(
            contextlib.asynccontextmanager(refresher)(self.backlog, self.store)
        )
        self._server = await self._loop.create_server(
            self._protocol,
            self.host,
            self.port,
            # --reuse-port: several smtp processes on one machine share the port.
            reuse_port=self.config.reuse_port or None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        if self.tls_port is not None and self.tls is not None:
            self._tls_server = await self._loop.create_server(
                lambda: self._protocol(implicit=True),
                self.host,
                self.tls_port,
                ssl=self.tls,
                reuse_port=self.config.reuse_port or None,
            )
            self.tls_port = int(self._tls_server.sockets[0].getsockname()[1])
        log.info(
            "smtp.listening",
            host=self.host,
            port=self.port,
            starttls=self.tls is not None,
            tls_port=self.tls_port if self._tls_server is not None else None,
            max_bytes=self.max_bytes,
        )

    async def run(self) -> None:
        """Write the keys' last use every few seconds until stopped."""
        every = max(self.config.key_cache_seconds, 1.0)
        while not self.stopping.is_set():
            await self.rest(every)
            try:
                await self.keyring.flush()
            except Exception as exc:  # the store may be down a while: next time
                log.warning("smtp.keys_flush_failed", error=type(exc).__name__)

    async def teardown(self) -> None:
        server, self._server = self._server, None
        tls_server, self._tls_server = self._tls_server, None
        try:
            if tls_server is not None:
                tls_server.close()
            if server is not None:
                server.close()
                # Mails being committed finish and get their answer; then the rest go.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.handler.idle.wait(), self.config.shutdown_timeout)
                for connection in list(self.connections):
                    connection.goodbye()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.wait_closed(), 1.0)
                for connection in list(self.connections):
                    connection.abort()
                log.info("smtp.stopped")
            with contextlib.suppress(Exception):
                await self.keyring.flush()
        finally:
            await self._stack.aclose()
