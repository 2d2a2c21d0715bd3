"""Any SMTP server as a provider (``smtp-relay``), through aiosmtplib.

The message is the outbox's ``render`` of the mail (our ``Message-ID``, no
``Bcc:`` header); the envelope says who gets it: ``MAIL FROM`` the sender's
address, ``RCPT TO`` every address of To, Cc and Bcc. ``SMTP_RELAY_URL``
picks the security (``config.urls.parse_smtp_relay_url``): ``smtp+starttls://``
requires STARTTLS, ``smtps://`` is TLS from the first byte, ``smtp://`` is
plain. Certificates are checked against the system trust store
(``ssl.create_default_context``, which honours ``SSL_CERT_FILE``).

Connections are kept and reused from mail to mail, at most
``max_connections`` at once; one a server closed while idle is noticed at
``MAIL FROM`` (nothing sent yet) and replaced once.

How an attempt ends (``docs/provider-smtp-relay.md`` has the table):

- ``250`` after the message: ``Accepted``, the id the server's queue id
  (``queued as X``, ``id=X``) or else our ``Message-ID``.
- A ``4xx`` reply anywhere: ``Transient``. A ``5xx`` to ``MAIL FROM``,
  ``RCPT TO`` or the message: ``Rejected`` (``530`` there: ``Misconfigured``).
- Some recipients refused: the transaction is reset and nothing is sent,
  ``Transient`` if one refusal was ``4xx``, else ``Rejected`` naming the
  refused fields (``to[1]``, ``bcc[0]``): a mail never reaches part of its
  recipients while recorded as sent.
- Authentication refused (``535``, ``530``, no common mechanism), STARTTLS
  not offered, a certificate that does not verify: ``Misconfigured``.
- No connection, a TLS handshake that fails otherwise, no greeting: ``Transient``.
- No answer, or the connection lost, once ``DATA`` was sent: ``Unknown``
  (the server may hold the mail; a relay offers no lookup).

The password, and the URL holding it, never appear in a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.errors
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiosmtplib

from mailman.config import (
    ProviderPlugin,
    Secret,
    parse,
    parse_smtp_relay_url,
    setting,
)
from mailman.core.model import Mail

from . import Accepted, Misconfigured, ProviderClient, Rejected, Result, Transient, Unknown, shorten
from .outbox import render

#: Where a server's ``250`` names the id it queued the mail under (Postfix, Exim...).
_QUEUE_ID = re.compile(r"(?:queued as|\bid=)\s*<?([!-;=?-~]+?)>?(?:[\s,;]|$)", re.IGNORECASE)
#: Auth replies that say the credentials (or the need for them) are wrong.
_AUTH_CODES = (530, 534, 535, 538)


class _Stale(Exception):
    """A kept connection the server closed while it was idle (nothing was sent)."""


#: The provider's name in the chain.
NAME = "smtp-relay"


@dataclass(frozen=True, slots=True)
class SmtpRelayConfig:
    """Any SMTP server as a provider (``providers.smtp_relay``)."""

    url: Secret = setting(
        env="SMTP_RELAY_URL",
        parse=parse.secret,
        help="the SMTP relay: smtp+starttls://user:pass@host:587, smtps://user:pass@host:465 or "
        "smtp://host:25; without one smtp-relay is left out of the chain, with a warning",
        doc="the SMTP relay: `smtp+starttls://user:pass@host:587` (STARTTLS required), "
        "`smtps://user:pass@host:465` (implicit TLS) or `smtp://host:25` (plain: credentials "
        "only on loopback). The password is never logged. See [SMTP relay](provider-smtp-relay.md)",
    )
    max_connections: int = setting(
        4,
        env="SMTP_RELAY_MAX_CONNECTIONS",
        minimum=1,
        help="connections to the relay at once, each reused from mail to mail",
    )


class SmtpRelayClient(ProviderClient):
    """Sends mail through one SMTP server over a few kept connections."""

    def __init__(self, config: SmtpRelayConfig, timeout: float) -> None:
        self.name = NAME
        self._url = config.url.reveal()
        self._target = parse_smtp_relay_url(self._url)
        self._timeout = timeout
        self._max = config.max_connections
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        if self._tls is None:
            # The system trust store (SSL_CERT_FILE honoured); hostnames checked.
            self._tls = ssl.create_default_context()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await conn.quit(timeout=min(self._timeout, 1.0))
            conn.close()

    async def send(self, mail: Mail) -> Result:
        if self._slots is None:
            await self.start()
        assert self._slots is not None
        try:
            # Megabytes of files take a while to encode: not on the event loop.
            data = await asyncio.to_thread(render, mail) if mail.attachments else render(mail)
        except (ValueError, email.errors.MessageError) as exc:
            return Rejected(f"cannot render mail as RFC 5322: {exc}")
        async with self._slots:
            for _ in range(2):
                conn = self._idle.pop() if self._idle else None
                reused = conn is not None
                if conn is None:
                    opened = await self._connect()
                    if isinstance(opened, Result):
                        return opened
                    conn = opened
                try:
                    result = await self._transaction(conn, mail, data, reused)
                except _Stale:
                    conn.close()
                    continue
                # aiosmtplib closes a connection that timed out or was lost (a late
                # reply must not answer the next mail's command): only one in step stays.
                if conn.is_connected:
                    self._idle.append(conn)
                else:
                    conn.close()
                return result
            return Transient("the relay closed two connections in a row before MAIL FROM")

    async def _connect(self) -> aiosmtplib.SMTP | Result:
        """A new connection, greeted, secured and authenticated; or why there is none."""
        target = self._target
        conn = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            use_tls=target.security == "tls",
            start_tls=target.security == "starttls",
            validate_certs=True,
            tls_context=self._tls,
            timeout=self._timeout,
        )
        try:
            await conn.connect()
        except BaseException as exc:
            conn.close()
            if not isinstance(exc, Exception):
                raise
            return self._connect_failure(exc)
        return conn

    def _connect_failure(self, exc: Exception) -> Result:
        where = f"{self._target.host}:{self._target.port}"
        if _certificate_failure(exc):
            return Misconfigured(self._redact(f"TLS certificate of {where}: {_describe(exc)}"))
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            if exc.code in _AUTH_CODES or exc.code >= 500:
                return Misconfigured(self._redact(f"authentication refused: {_reply(exc)}"))
            return Transient(self._redact(f"authentication: {_reply(exc)}"), exc.code)
        if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError):
            return Transient(
                f"connection error: no connection to {where} within {self._timeout:g}s"
            )
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            return Transient(
                self._redact(f"connection refused by {where}: {_reply(exc)}"), exc.code
            )
        if isinstance(exc, (aiosmtplib.SMTPConnectError, ConnectionError, TimeoutError, OSError)):
            return Transient(self._redact(f"connection error: {where}: {_describe(exc)}"))
        # STARTTLS not offered (smtp+starttls:// requires it), no common AUTH mechanism.
        return Misconfigured(self._redact(f"{where}: {_describe(exc)}"))

    async def _transaction(
        self, conn: aiosmtplib.SMTP, mail: Mail, data: bytes, reused: bool
    ) -> Result:
        """One mail on an open connection: MAIL FROM, RCPT TO each, DATA. Raises
        ``_Stale`` when a ``reused`` connection turns out closed before anything was sent."""
        addresses = [mail.sender.email, *(a.email for a in (*mail.to, *mail.cc, *mail.bcc))]
        utf8 = not all(a.isascii() for a in addresses)
        if utf8 and not conn.supports_extension("smtputf8"):
            return Rejected("the relay does not take non-ASCII addresses (no SMTPUTF8)")
        options = [f"SIZE={len(data)}"] if conn.supports_extension("size") else []
        if utf8:
            options.append("SMTPUTF8")
        if not data.isascii() and conn.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        encoding = "utf-8" if utf8 else "ascii"
        step = "MAIL FROM"
        try:
            await conn.mail(mail.sender.email, options=options, encoding=encoding)
            step = "RCPT TO"
            refused: list[tuple[str, aiosmtplib.SMTPRecipientRefused]] = []
            for label, address in _recipients(mail):
                try:
                    await conn.rcpt(address, encoding=encoding)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused.append((label, exc))
            if refused:
                await self._reset(conn)
                return self._refused(refused)
            step = "DATA"
            answer = await conn.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            if reused and step == "MAIL FROM" and exc.code == 421:
                raise _Stale from exc  # it timed the idle connection out
            await self._reset(conn)
            return self._reply_failure(step, exc)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError, TimeoutError, OSError) as exc:
            if step == "DATA":
                return Unknown(self._redact(f"no answer to the message: {_describe(exc)}"))
            if reused and step == "MAIL FROM" and not isinstance(exc, TimeoutError):
                raise _Stale from exc
            return Transient(self._redact(f"connection lost at {step}: {_describe(exc)}"))
        found = _QUEUE_ID.search(answer.message)
        return Accepted(message_id=found.group(1) if found else mail.message_id)

    def _reply_failure(self, step: str, exc: aiosmtplib.SMTPResponseException) -> Result:
        reason = self._redact(f"{step}: {_reply(exc)}")
        if 400 <= exc.code < 500:
            return Transient(reason, exc.code)
        if exc.code == 530:
            return Misconfigured(reason, exc.code)
        return Rejected(reason, exc.code)

    def _refused(self, refused: list[tuple[str, aiosmtplib.SMTPRecipientRefused]]) -> Result:
        """Some recipients were refused: nothing is sent (the transaction was reset)."""
        parts = "; ".join(f"{label}: {_reply(exc)}" for label, exc in refused)
        code = refused[0][1].code
        if any(400 <= exc.code < 500 for _, exc in refused):
            code = next(exc.code for _, exc in refused if 400 <= exc.code < 500)
            return Transient(self._redact(f"RCPT TO refused, nothing sent: {parts}"), code)
        if any(exc.code == 530 for _, exc in refused):
            return Misconfigured(self._redact(f"RCPT TO: {parts}"), 530)
        return Rejected(self._redact(f"RCPT TO refused, nothing sent: {parts}"), code)

    async def _reset(self, conn: aiosmtplib.SMTP) -> None:
        """RSET after a refusal, so the kept connection starts the next mail clean."""
        try:
            await conn.rset()
        except (aiosmtplib.SMTPException, OSError):
            conn.close()

    def _redact(self, text: str) -> str:
        for secret in (self._url, self._target.password):
            if secret:
                text = text.replace(secret, "[redacted]")
        return shorten(text)


def _recipients(mail: Mail) -> list[tuple[str, str]]:
    """Every envelope recipient with the field it came from (``to[0]``, ``bcc[1]``)."""
    fields = (("to", mail.to), ("cc", mail.cc), ("bcc", mail.bcc))
    return [
        (f"{name}[{i}]", a.email) for name, addresses in fields for i, a in enumerate(addresses)
    ]


def _certificate_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a certificate that did not verify."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {' '.join(exc.message.split())}"


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__
    detail = str(exc) or type(exc).__name__
    if cause is not None and str(cause) and str(cause) not in detail:
        detail = f"{detail} ({cause})"
    return detail


def _configure(settings: SmtpRelayConfig, env: Mapping[str, str]) -> SmtpRelayConfig | None:
    """The relay's URL (else smtp-relay is left out), checked at start: a bad one is a
    configuration error (exit 2), never a traceback at the first mail."""
    if settings.url is None:
        return None
    parse_smtp_relay_url(settings.url.reveal())
    return settings


#: The entry point ``smtp-relay`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME,
    SmtpRelayConfig,
    SmtpRelayClient,
    _configure,
    summary="any SMTP server (STARTTLS, implicit TLS or plain)",
)
