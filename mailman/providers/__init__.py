"""Provider clients: one per mail provider, all behind one small interface.

A call to a provider ends in one of four typed results, and the failure
policy follows from the type alone:

- ``Accepted``: the provider took the mail (2xx).
- ``Transient``: no connection (refused, DNS, connect timeout), 408, 429
  (``rate_limited``), 5xx. Fail over now, retry later; counted by the circuit breaker.
- ``Unknown``: no answer after the request may have gone out (a timeout
  once connected, a connection dropped before the answer). The provider
  may have the mail: it is asked before the mail is sent again (see
  ``ProviderClient.lookup``). Counted by the circuit breaker.
- ``Misconfigured``: 401/403 (and 402/404/405: a wrong key, account, domain
  or URL). Logged as an error, fail over; counted by the circuit breaker.
- ``Rejected``: 400/413/422 and other 4xx. This provider will never take this
  mail: fail over, not counted by the breaker (the provider is well).

A client may also read the provider's own suppression list (``suppression_list``), for
``mailman suppressions import``.
"""

from __future__ import annotations

import abc
import email.utils
import io
import itertools
import math
import re
import time
from dataclasses import dataclass
from email.charset import Charset
from typing import Any, ClassVar

import aiohttp
import orjson
import yarl

from mailman.core.model import Address, Check, Mail, Outcome, SuppressionReason

from .transport import Answer as Answer  # a send's answer, for the clients
from .transport import ConnectTimeout, Lost, NotSent, Transport, Unsendable
from .transport import describe as describe  # for the clients, callbacks and dead letters

#: Longest reason kept from a provider's error body.
MAX_REASON = 500
#: The longest RFC 2047 encoded-word (RFC 2047, section 2).
MAX_ENCODED_WORD = 75

_UTF8 = Charset("utf-8")
#: What makes a display name need quoting (``email.utils.formataddr``'s rule).
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_ESCAPES = re.compile(r'[\\"]')


@dataclass(frozen=True, slots=True)
class Result:
    outcome: ClassVar[Outcome]
    #: Whether this result says the provider is unwell (the breaker counts it).
    unwell: ClassVar[bool] = False


def escaped(text: str) -> str:
    """``text`` as it can be stored and logged: bytes that were not UTF-8 (aiohttp decodes
    a header's as lone surrogates) written as ``\\xNN``, other lone surrogates as
    ``\\udNNN``. A provider's odd but successful answer is recorded, not an error."""
    if text.isascii():
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Accepted(Result):
    #: The provider's id for the mail, ``escaped`` (a 2xx is a success, whatever its id).
    message_id: str
    outcome: ClassVar[Outcome] = Outcome.ACCEPTED

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_id", escaped(self.message_id))


@dataclass(frozen=True, slots=True)
class Transient(Result):
    reason: str
    status: int | None = None
    #: Seconds the provider asked us to wait (``Retry-After``), if it did.
    retry_after: float | None = None
    #: The provider said it is over its rate limit (a ``429``, SES throttling), rather
    #: than down: the sender's adaptive concurrency logs it so.
    rate_limited: bool = False
    outcome: ClassVar[Outcome] = Outcome.TRANSIENT
    unwell: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Unknown(Result):
    """No answer, after the request may have reached the provider: a read timeout, or
    the connection dropped once the request was sent. The provider may have taken
    the mail. Counted by the breaker (a provider this slow is unwell)."""

    reason: str
    outcome: ClassVar[Outcome] = Outcome.UNKNOWN
    unwell: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Found:
    """What a provider's records say about a mail (``ProviderClient.lookup``)."""

    check: Check
    #: The provider's id for the mail when it has it (``Check.TAKEN``), ``escaped``.
    message_id: str | None = None
    #: Why it could not be checked, for the history (``Check.CANNOT``).
    reason: str | None = None
    #: The provider is still handling a request for the mail (Resend's ``409
    #: concurrent_idempotent_requests``): it may yet take it, so rather than send the
    #: mail again, ask again in this many seconds (``Check.CANNOT`` meanwhile).
    ask_again_in: float | None = None

    def __post_init__(self) -> None:
        if self.message_id is not None:
            object.__setattr__(self, "message_id", escaped(self.message_id))


@dataclass(frozen=True, slots=True)
class Misconfigured(Result):
    reason: str
    status: int | None = None
    outcome: ClassVar[Outcome] = Outcome.MISCONFIGURED
    unwell: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Rejected(Result):
    reason: str
    status: int | None = None
    outcome: ClassVar[Outcome] = Outcome.REJECTED


@dataclass(frozen=True, slots=True)
class Listed:
    """An address on a provider's own suppression list, and why it is there."""

    address: str
    reason: SuppressionReason


class ListUnavailable(Exception):
    """The provider's suppression list could not be read; the message says why (never a
    key)."""


#: Pages of a provider's suppression list read at most (a list that never ends is a bug).
MAX_LIST_PAGES = 10_000


class ProviderClient(abc.ABC):
    """Sends one mail through one provider. ``send`` never raises for provider trouble."""

    #: The provider's name in the chain, in logs and in attempt history.
    name: str
    #: Seconds an ``unknown`` attempt with this provider waits for the provider's own
    #: event that it took the mail (SendGrid's ``processed``, SES's ``Send``) before the
    #: mail is sent again; 0: not waited for. Set where the provider's webhook is on
    #: (``MAILMAN_UNKNOWN_GRACE_SECONDS``); such an event settles the mail ``sent``.
    event_grace: float = 0.0
    #: Seconds a send's answer is still listened for once ``timeout`` has passed
    #: (``MAILMAN_LATE_ANSWER_SECONDS``; 0: not). The sender gives up on the call at
    #: ``timeout`` (``Unknown``: the breaker counts it) while the request goes on, and
    #: its late answer settles the attempt (``HttpClient.listen_late``).
    late_answer: float = 0.0
    #: Seconds a send may take before its answer counts as lost (0: the client's own).
    timeout: float = 0.0

    @abc.abstractmethod
    async def send(self, mail: Mail) -> Result:
        """Hand ``mail`` to the provider and say how that went."""

    async def lookup(self, mail: Mail, since: float) -> Found:
        """Whether this provider took ``mail`` (by its ``Message-ID``) at or after the
        unix time ``since``: asked before a mail whose attempt is ``unknown`` is sent
        again. Never raises; a provider with no way to ask says ``Check.CANNOT``."""
        return Found(Check.CANNOT, reason=f"{self.name} offers no lookup by Message-ID")

    async def suppression_list(self) -> list[Listed]:
        """Every address on the provider's own suppression list (its bounces, complaints,
        unsubscribes), read page by page; ``ListUnavailable`` if it cannot be read."""
        raise ListUnavailable(f"{self.name} offers no suppression list to import")

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections (one HTTP session per provider, reused)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Idempotent."""


class HttpClient(ProviderClient):
    """A provider behind an HTTP API. A send goes through ``post`` (the lean
    ``transport``: pooled keep-alive connections, one write per call); a lookup or a
    suppression list through one aiohttp session, opened on first use and reused."""

    #: The provider's name as its makers write it, for messages ("invalid SendGrid URL");
    #: its ``name`` if not given.
    title: ClassVar[str] = ""

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        #: The connections sends go over.
        self.transport = Transport()
        self.timeout = timeout
        self._timeout = timeout
        #: The timeouts of a send, and of a question (a lookup).
        self._timeouts = request_timeout(timeout)
        self._ask_timeouts = request_timeout(timeout)
        self._session: aiohttp.ClientSession | None = None

    def listen_late(self, seconds: float) -> None:
        """Let a send's request run ``seconds`` past the timeout, its connection still
        limited to the timeout's share: the sender stops waiting at the timeout, and an
        answer that comes in those seconds still says what became of the mail."""
        self.late_answer = seconds
        self._timeouts = aiohttp.ClientTimeout(
            total=self._timeout + seconds, connect=self._timeout * CONNECT_SHARE
        )

    async def start(self) -> None:
        if self._session is None:
            self._session = http_session(self._timeout)

    async def close(self) -> None:
        self.transport.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def post(
        self,
        url: str,
        body: bytes,
        headers: dict[str, str],
        secret: str,
        timeouts: aiohttp.ClientTimeout | None = None,
    ) -> Answer | Result:
        """The provider's answer to a POST of ``body`` to ``url`` within ``timeouts``
        (the send's, by default); if none came, what that means (``no_answer``), and
        ``Misconfigured`` for a URL or header that cannot be sent (never a ``secret``)."""
        timeouts = timeouts or self._timeouts
        assert timeouts.total is not None and timeouts.connect is not None
        try:
            return await self.transport.post(
                url, body, headers, total=timeouts.total, connect=timeouts.connect
            )
        except Unsendable as exc:
            title = self.title or self.name
            if exc.where == "url":
                return Misconfigured(f"invalid {title} URL {url!r}")
            return Misconfigured(f"{title} request not sent: {exc}")
        except (NotSent, Lost, TimeoutError, OSError) as exc:
            return no_answer(exc, timeouts, secret)

    async def session(self) -> aiohttp.ClientSession:
        """The session (``start`` first, if it has not run)."""
        if self._session is None:
            await self.start()
        assert self._session is not None
        return self._session

    async def get_json(
        self, url: str, headers: dict[str, str], secret: str, params: dict[str, str] | None = None
    ) -> Any:
        """The JSON a GET of ``url`` answers; ``ListUnavailable`` saying why not (the
        status and the provider's words, ``secret`` masked)."""
        session = await self.session()
        try:
            async with session.get(
                yarl.URL(url, encoded=True),  # as given: a provider's next page, a signed query
                headers=headers,
                params=params,
                allow_redirects=False,
                timeout=self._timeouts,
            ) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    said = shorten(raw.decode("utf-8", "replace"))
                    raise ListUnavailable(
                        redact(f"{self.name}: HTTP {resp.status}: {said}", secret)
                    )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ListUnavailable(redact(f"{self.name}: {describe(exc)}", secret)) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ListUnavailable(f"{self.name}: the answer is not JSON") from None


#: Parts larger than this go into aiohttp's form data (Mailgun's files) as a stream
#: (``io.BytesIO``): aiohttp warns that raw bytes this large may hold up the event loop.
#: Sends write their bodies through the transport, which takes bytes of any size.
STREAM_BODY_BYTES = 1024 * 1024


def streamed(data: bytes) -> bytes | io.BytesIO:
    """``data`` as a form part: as it is, or as a stream when it is large (files)."""
    return data if len(data) <= STREAM_BODY_BYTES else io.BytesIO(data)


def http_session(timeout: float) -> aiohttp.ClientSession:
    """The one session a provider client keeps: keep-alive connections, nothing per call
    that a provider API does not need (no cookie jar, no compressed answers to inflate).

    No cap of its own on connections (aiohttp's default is 100 in all): the sender's
    ``MAILMAN_SENDER_CONCURRENCY`` caps the calls in flight, and calls above a pool cap
    would wait inside aiohttp for a connection, their time counted against the timeout."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding",),
    )


#: Share of the provider timeout that getting a connection (a pooled one, or DNS,
#: TCP and TLS) may take. Below 1 so that its timeout fires before the total one
#: and raises ``ConnectionTimeoutError``: nothing was sent, unlike a total timeout.
CONNECT_SHARE = 0.5
#: Errors raised before any byte of the request was sent (aiohttp's connector
#: errors): the provider cannot have the mail. ``ClientConnectorError`` covers
#: DNS, refused, unreachable, TLS and proxy failures.
NOT_SENT = (
    aiohttp.ClientConnectorError,
    aiohttp.ConnectionTimeoutError,
    aiohttp.ServerFingerprintMismatch,
)


def request_timeout(total: float) -> aiohttp.ClientTimeout:
    """The timeouts of one call: ``total`` for all of it, a share for the connection."""
    return aiohttp.ClientTimeout(total=total, connect=total * CONNECT_SHARE)


def no_answer(exc: BaseException, timeouts: aiohttp.ClientTimeout, key: str) -> Result:
    """The result of a provider call that raised ``exc`` instead of answering.

    ``Transient`` when the request never left (``NOT_SENT``, the transport's
    ``NotSent``); otherwise ``Unknown``: a timeout after connecting, or the connection
    lost while sending or before the answer was read (the transport's ``Lost``;
    aiohttp's ``ServerDisconnectedError``, ``ClientOSError``, ``ClientPayloadError``,
    a malformed answer), so the provider may have the mail.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError | ConnectTimeout):
        return Transient(f"connection error: no connection within {timeouts.connect:g}s")
    said = str(exc) if isinstance(exc, NotSent | Lost) else describe(exc)  # ours say what
    if isinstance(exc, (*NOT_SENT, NotSent)):
        return Transient(redact(f"connection error: {said}", key))
    if isinstance(exc, TimeoutError):
        return Unknown(f"timeout after {timeouts.total:g}s waiting for the answer")
    return Unknown(redact(f"connection lost before the answer: {said}", key))


def redact(text: str, key: str) -> str:
    """``text`` with the API key masked (error bodies and driver messages may echo it)."""
    return text.replace(key, "[redacted]") if key else text


def classify(status: int, reason: str, retry_after: str | None = None) -> Result:
    """The result type of a non-2xx HTTP answer from a provider."""
    reason = shorten(reason) or f"HTTP {status}"
    if status in (408, 429) or status >= 500:
        return Transient(reason, status, parse_retry_after(retry_after), status == 429)
    if status in (401, 402, 403, 404, 405):
        return Misconfigured(reason, status)
    if 400 <= status < 500:
        return Rejected(reason, status)
    # 1xx/3xx: redirects are not followed; treat as a passing fault.
    return Transient(reason, status)


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


def parse_retry_after(
    value: str | None, now: float | None = None, cap: float = math.inf
) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), clamped to
    ``[0, cap]``; None when absent or unusable (not a number or date, NaN).

    ``inf``, ``1e400`` or a date in the year 9999 become ``cap``: the failover policy
    clamps again to ``MAILMAN_RETRY_CAP_SECONDS``, so no answer makes a mail wait
    longer than a backoff may, or fail because a wait ran past its retry window.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    if math.isnan(seconds):
        return None
    return min(cap, max(0.0, seconds))


def display_name_words(name: str) -> list[str]:
    """``name`` as the words of an RFC 5322 display name, ready for a header.

    An ASCII name is one word: itself, or a quoted-string if it holds a
    special (``"Doe, Ann"``). A non-ASCII name becomes RFC 2047 UTF-8
    encoded-words of at most 75 characters each. That is what
    ``email.utils.formataddr`` writes, except that it writes a single
    encoded-word however long the name.
    """
    if not name:
        return []
    if not name.isascii():
        words = _UTF8.header_encode_lines(name, itertools.repeat(MAX_ENCODED_WORD))
        return [w for w in words if w]
    if _SPECIALS.search(name):
        return ['"' + _ESCAPES.sub(r"\\\g<0>", name) + '"']
    return [name]


def formatted_address(address: Address) -> str:
    """``address`` as a header value: ``Ann <ann@example.com>``, ``"Doe, Ann" <...>``
    or the bare address, a non-ASCII name as encoded-words (see ``display_name_words``)."""
    words = display_name_words(address.name)
    return " ".join([*words, f"<{address.email}>"]) if words else address.email
