"""Reading request bodies at the HTTP edge: size limit, content encodings, stalled clients.

The server runs aiohttp with ``auto_decompress=False`` (see ``actors.server``):
the body arrives as sent and is decoded here, chunk by chunk, so that

- ``Content-Encoding: gzip`` (or ``x-gzip``) and ``deflate`` (zlib-wrapped, or
  raw deflate) are decoded, ``identity`` (or none) taken as is; any other
  coding, or a list of several, is a 415 naming the accepted ones;
- the size limit applies to the decoded body (and to the bytes on the wire):
  decoding stops one byte past the limit, so a small gzip bomb is a 413, never
  a large allocation;
- a body that does not decode is a 400, never a 500;
- a body that sends nothing for ``idle_timeout`` seconds is a 408, and the
  connection is closed (``Connection: close``);
- a client that disconnects mid-body raises ``ClientGone``, which the
  request-id middleware logs once at info level;
- the body is charged to the process's in-flight budget (``intake.budget``)
  before it is read: its ``Content-Length`` at once, a chunked or encoded one
  as it arrives; past the budget (or past the caller's half of it) a 503 with
  ``Retry-After``, before the rest is read. ``budgeting``'s middleware gives the
  bytes back once the answer is ready.
"""

from __future__ import annotations

import asyncio
import json
import zlib
from dataclasses import dataclass
from http import HTTPStatus

import orjson
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from mailman.config.logging import get_logger
from mailman.core.validation import BODY_FIELD, FieldError
from mailman.intake.budget import Budget, Hold, OverBudget, owner_of

from .auth import PRINCIPAL
from .errors import (
    BAD_REQUEST,
    DUPLICATE_KEY,
    MALFORMED_JSON,
    OVER_BUDGET,
    TIMEOUT,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    Problem,
)

#: The content codings a request body may use (the value of a 415's ``Accept-Encoding``).
ACCEPTED_ENCODINGS = "gzip, deflate"
_IDENTITY = frozenset({"", "identity"})
_GZIP = frozenset({"gzip", "x-gzip"})
_DEFLATE = "deflate"

log = get_logger("mailman.http")


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """What one request's body may take: ``max_bytes`` (decoded, and on the wire), and
    ``idle_timeout`` seconds with nothing arriving (None: no limit). The app's are the
    config's (``MAILMAN_MAX_BODY_BYTES``, ``MAILMAN_BODY_IDLE_TIMEOUT``), bound by
    ``create_app`` into ``budgeting``'s middleware."""

    max_bytes: int
    idle_timeout: float | None = None


@dataclass(slots=True)
class Holding:
    """What a request holds of ``budget`` (None: none to hold): its ``Hold`` once its body
    is being read; and the ``limits`` its body is read within."""

    budget: Budget | None = None
    limits: BodyLimits | None = None
    hold: Hold | None = None


#: Set on every request by ``budgeting``'s middleware: a key found, where a key looked up
#: before the body is read is a miss (a ``KeyError`` raised and caught inside
#: ``request.get``: 2.4 % of an accept's event loop by py-spy, 0.9 % found).
HOLDING = web.RequestKey("budget_holding", Holding)


class ClientGone(ConnectionResetError):
    """The client closed the connection before its request body was complete."""


def _too_large(limit: int) -> Problem:
    return Problem(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        f"The request body is larger than the limit of {limit} bytes.",
        type=TOO_LARGE,
    )


def _undecodable(coding: str, why: str) -> Problem:
    return Problem(
        HTTPStatus.BAD_REQUEST,
        f"The body is not valid {coding} data: {why}.",
        type=BAD_REQUEST,
    )


class Decoder:
    """Decodes one ``gzip`` or ``deflate`` body incrementally, never past ``limit`` bytes."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        #: Decoded bytes so far.
        self.size = 0
        #: The first bytes of a deflate body, until there are two to look at.
        self._head = b""
        self._zlib: zlib._Decompress | None = None

    def _new(self, first: bytes) -> zlib._Decompress:
        if self.coding == _DEFLATE:
            # RFC 9110 deflate is zlib-wrapped; some clients send raw deflate.
            # A zlib stream starts with a 16-bit header: method 8, a multiple of 31.
            wrapped = first[0] & 0x0F == 8 and (first[0] << 8 | first[1]) % 31 == 0
            return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip

    def feed(self, data: bytes) -> list[bytes]:
        """The decoded bytes of the next chunk; 413 past the limit, 400 if it does not decode."""
        if self._zlib is None and self.coding == _DEFLATE and len(self._head + data) < 2:
            self._head += data
            return []
        data, self._head = self._head + data, b""
        out: list[bytes] = []
        while data:
            if self._zlib is None:
                self._zlib = self._new(data)
            elif self._zlib.eof:
                if self.coding == _DEFLATE:
                    raise _undecodable(self.coding, "data after the end of the stream")
                self._zlib = self._new(data)  # the next member of a multi-member gzip
            try:
                # At most one byte past the limit: enough to know it is too large.
                part = self._zlib.decompress(data, self.limit - self.size + 1)
            except zlib.error as exc:
                raise _undecodable(self.coding, str(exc)) from None
            self.size += len(part)
            if self.size > self.limit:
                raise _too_large(self.limit)
            if part:
                out.append(part)
            # Input zlib could not take for lack of output room, or the start of
            # the next gzip member.
            data = self._zlib.unconsumed_tail or self._zlib.unused_data
        return out

    def finish(self) -> None:
        """400 unless the stream ended where the body did (an empty body stays empty)."""
        if self._head or (self._zlib is not None and not self._zlib.eof):
            raise _undecodable(self.coding, "the stream is truncated")


def _coding(request: web.Request) -> str:
    """The body's content coding, lower-cased; 415 unless it is one we decode."""
    given = ",".join(request.headers.getall(hdrs.CONTENT_ENCODING, ()))
    coding = given.strip().lower()
    if coding in _IDENTITY or coding in _GZIP or coding == _DEFLATE:
        return "gzip" if coding in _GZIP else coding or "identity"
    raise Problem(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        f"Content-Encoding {given.strip()!r} is not supported; "
        f"send the body as is, or with one of: {ACCEPTED_ENCODINGS}.",
        type=UNSUPPORTED_MEDIA_TYPE,
        headers={hdrs.ACCEPT_ENCODING: ACCEPTED_ENCODINGS},
    )


async def _next_chunk(request: web.Request, idle_timeout: float | None) -> bytes:
    """The next piece of the raw body (b"" at its end); 408 after ``idle_timeout`` of silence."""
    content = request.content
    try:
        # What already arrived needs no timer (a small body comes with its headers).
        buffered = content.read_nowait()
        if buffered or content.at_eof():
            return buffered
    except Exception:
        pass
    try:
        async with asyncio.timeout(idle_timeout):
            return await request.content.readany()
    except TimeoutError:
        raise Problem(
            HTTPStatus.REQUEST_TIMEOUT,
            f"The request body stalled: nothing arrived for {idle_timeout:g} s.",
            type=TIMEOUT,
            # The rest of the body may never come: the connection cannot carry
            # another request (the request-id middleware closes it).
            headers={hdrs.CONNECTION: "close"},
        ) from None
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ClientGone(str(exc) or type(exc).__name__) from exc
        # The framing itself is broken (a bad chunked encoding...): no way to
        # find where the next request would start.
        raise Problem(
            HTTPStatus.BAD_REQUEST,
            f"The request body is malformed: {exc}",
            type=BAD_REQUEST,
            headers={hdrs.CONNECTION: "close"},
        ) from None


def _over_budget(request: web.Request, exc: OverBudget) -> Problem:
    log.warning(
        "budget.refused",
        path=request.path,
        whole=exc.whole,
        wanted=exc.wanted,
        limit=exc.limit if exc.whole else exc.owner_limit,
    )
    whose = "this service's" if exc.whole else "this caller's share of the"
    return Problem(
        HTTPStatus.SERVICE_UNAVAILABLE,
        f"The body would pass {whose} memory for bodies in flight; nothing was read or "
        "stored. Try again after Retry-After.",
        type=OVER_BUDGET,
        headers={hdrs.RETRY_AFTER: str(exc.retry_after), hdrs.CONNECTION: "close"},
    )


def _hold(request: web.Request, holding: Holding | None) -> Hold | None:
    """The request's hold on the budget, made on first use (owner: the caller's key, or
    its address); None without a budget (an app without ``budgeting``'s middleware:
    nothing would give it back)."""
    if holding is None:
        return None
    hold = holding.hold
    if hold is None:
        budget = holding.budget
        if budget is None:
            return None
        principal = request.get(PRINCIPAL)
        hold = budget.hold(owner_of(principal.key_id if principal else None, request.remote))
        holding.hold = hold
    return hold


def _charge(request: web.Request, hold: Hold | None, nbytes: int) -> None:
    if hold is not None:
        try:
            hold.reserve(nbytes)
        except OverBudget as exc:
            raise _over_budget(request, exc) from None


def budgeting(budget: Budget, limits: BodyLimits) -> Middleware:
    """The middleware that lets the request's body reader hold some of ``budget`` and read
    within ``limits``, and gives back what it held once the answer is ready (bound by
    ``create_app``)."""

    @web.middleware
    async def budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        holding = request[HOLDING] = Holding(budget, limits)
        try:
            return await handler(request)
        finally:
            if holding.hold is not None:
                holding.hold.release()

    return budget_middleware


async def read_body(request: web.Request, limits: BodyLimits | None = None) -> bytes:
    """The decoded request body, read within ``limits``: the app's (``budgeting``'s,
    from the config) unless given.

    415 for a content coding other than gzip, deflate or identity; 400 if it
    does not decode; 413 beyond ``max_bytes`` (decoded, or on the wire);
    408 if nothing arrives for ``idle_timeout`` seconds (None: wait forever);
    ``ClientGone`` if the client disconnects first; 503 past the in-flight budget.
    """
    try:
        holding: Holding | None = request[HOLDING]
    except KeyError:  # an app without ``budgeting``'s middleware
        holding = None
    if limits is None:
        limits = None if holding is None else holding.limits
        if limits is None:
            raise RuntimeError("read_body: no limits given, and none bound by budgeting")
    limit, idle_timeout = limits.max_bytes, limits.idle_timeout
    coding = _coding(request)
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    hold = _hold(request, holding)
    _charge(request, hold, length or 0)
    decoder = None if coding == "identity" else Decoder(coding, limit)
    parts: list[bytes] = []
    received = 0
    while chunk := await _next_chunk(request, idle_timeout):
        received += len(chunk)
        if received > limit:  # chunked, or more than Content-Length announced
            raise _too_large(limit)
        if decoder is None:
            parts.append(chunk)
        else:
            parts += decoder.feed(chunk)
        _charge(request, hold, max(received, decoder.size if decoder else 0))
        if request.content.at_eof():  # all of it (a small body comes in one piece)
            break
    if decoder is not None:
        decoder.finish()
    return b"".join(parts)


def decode_json(raw: bytes) -> object:
    """``raw`` as JSON; a 400 problem if it is not JSON (``malformed-json``) or if an
    object in it names a key twice (``duplicate-key``, naming the key and where it is).

    orjson parses (it decides what is JSON, and is fast), and like most parsers keeps
    the last of a repeated key without a word; ``has_duplicate_key`` finds one.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Problem(
            HTTPStatus.BAD_REQUEST, f"The body is not valid JSON: {exc}", type=MALFORMED_JSON
        ) from None
    if has_duplicate_key(raw, value):
        field = duplicate_key(raw)
        raise Problem(
            HTTPStatus.BAD_REQUEST,
            f"The body gives {field} more than once: give each key of an object once.",
            type=DUPLICATE_KEY,
            errors=[FieldError(field, "is given more than once")],
        )
    return value


def has_duplicate_key(raw: bytes, value: object) -> bool:
    """Whether the JSON text ``raw``, which orjson parsed into ``value``, repeats a key in
    one of its objects.

    Outside its strings, JSON has a colon after each key and nowhere else. A colon in a
    string is written as itself or as the escape ``\\u003a``; without such an escape, the
    colons of ``raw`` count the keys written and the colons in strings, and more than
    ``value`` holds means a repeat. What ``value`` holds is counted the same way in its
    own text written again by orjson, which writes each key once and every colon as
    itself (about 1 µs for a 500-byte mail), up to ``RECOUNT_MAX_BYTES``; a larger body
    (files) is counted by a walk of the parsed values, without a second copy of its text:
    10 ms for 10 MiB of files, where reading the text again with a parser that reports
    repeats costs 30 ms (docs/http-api.md). With such an escape, the standard library's
    scanner reads the text again instead.
    """
    if not isinstance(value, dict | list):
        return False  # a scalar has no keys
    if b"\\" in raw and b"\\u003" in raw:  # maybe an escaped colon: count the hard way
        try:
            _DUPLICATE_SCAN.decode(raw.decode("utf-8"))
        except _Duplicate:
            return True
        except ValueError:  # what orjson took and the stdlib does not: nothing to compare
            return False
        return False
    if len(raw) <= RECOUNT_MAX_BYTES:
        try:
            held = orjson.dumps(value).count(b":")
        except TypeError:  # nested deeper than orjson writes (its JSONEncodeError too): walk it
            pass
        else:
            return raw.count(b":") > held
    keys, colons = _keys_and_colons(value)
    return raw.count(b":") - colons > keys


#: The largest body whose parsed value ``has_duplicate_key`` writes again to count its
#: colons (a walk of the values counts a larger one: no second copy of its text).
RECOUNT_MAX_BYTES = 64 * 1024


def _keys_and_colons(value: object) -> tuple[int, int]:
    """The keys of every object in ``value``, and the colons in its keys and strings."""
    keys = colons = 0
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        node = pop()
        if type(node) is dict:
            keys += len(node)
            for key, item in node.items():
                colons += key.count(":")
                kind = type(item)
                if kind is str:
                    colons += item.count(":")
                elif kind is dict or kind is list:
                    push(item)
        elif type(node) is list:
            for item in node:
                kind = type(item)
                if kind is str:
                    colons += item.count(":")
                elif kind is dict or kind is list:
                    push(item)
    return keys, colons


class _Duplicate(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, object]]) -> None:
    """An object's pairs; raises ``_Duplicate`` if a key repeats (nothing is built)."""
    if len(pairs) > 1 and len({key for key, _ in pairs}) != len(pairs):
        raise _Duplicate


_DUPLICATE_SCAN = json.JSONDecoder(object_pairs_hook=_refuse_duplicates)


class _Seen(dict[str, object]):
    """An object as parsed, and the first key it repeats (None: none)."""

    repeated: str | None = None


def _mark_duplicates(pairs: list[tuple[str, object]]) -> _Seen:
    seen = _Seen()
    for key, value in pairs:
        if key in seen and seen.repeated is None:
            seen.repeated = key
        seen[key] = value
    return seen


def duplicate_key(raw: bytes) -> str:
    """The first repeated key of ``raw`` (known to have one), named as the API names
    fields: ``to``, ``attachments[0].filename``."""
    tree = json.loads(raw, object_pairs_hook=_mark_duplicates)
    stack: list[tuple[str, object]] = [("", tree)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Seen):
            if node.repeated is not None:
                return f"{path}.{node.repeated}" if path else node.repeated
            stack += [(f"{path}.{k}" if path else k, v) for k, v in reversed(node.items())]
        elif isinstance(node, list):
            stack += [(f"{path}[{i}]", v) for i, v in reversed(list(enumerate(node)))]
    return BODY_FIELD
