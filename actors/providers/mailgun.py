"""Mailgun Messages API (``POST /v3/{domain}/messages``, form body, Basic auth).

Success is ``200`` ``{"id": "<...@domain>", "message": "Queued. Thank you."}``.
Errors are JSON ``{"message": ...}``, except ``401``, which is the plain text
``Forbidden``. See the provider API notes (providers.md).
"""

from __future__ import annotations

import base64

import aiohttp
import orjson

from config import MailgunConfig

from ..messages import Mail
from . import (
    Accepted,
    Misconfigured,
    ProviderClient,
    Result,
    Transient,
    classify,
    formatted_address,
    http_session,
)


class MailgunClient(ProviderClient):
    """Sends mail through Mailgun over one reused HTTP session."""

    def __init__(self, config: MailgunConfig, timeout: float) -> None:
        self.name = config.name
        self._config = config
        self._timeout = timeout
        self._url = f"{config.base_url.rstrip('/')}/v3/{config.domain}/messages"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            self._session = http_session(self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(self, mail: Mail) -> Result:
        if self._session is None:
            await self.start()
        assert self._session is not None
        key = self._config.api_key.reveal()
        try:
            async with self._session.post(
                self._url,
                data=aiohttp.FormData(form(mail)),
                headers={"Authorization": basic_auth("api", key)},
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                if 200 <= resp.status < 300:
                    return Accepted(message_id=_message_id(raw))
                reason = _redact(_error_reason(raw), key)
                return classify(resp.status, reason, resp.headers.get("Retry-After"))
        except TimeoutError:
            return Transient(f"timeout after {self._timeout:g}s")
        except aiohttp.InvalidURL:
            return Misconfigured(f"invalid Mailgun URL {self._url!r}")
        except (aiohttp.ClientError, OSError) as exc:
            return Transient(_redact(f"connection error: {_describe(exc)}", key))


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (``aiohttp.BasicAuth`` is deprecated in 3.14)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def form(mail: Mail) -> list[tuple[str, str]]:
    """The form fields for ``mail``; ``to``, ``cc`` and ``bcc`` repeat once per address.

    Pure: building the request needs nothing but the mail. Addresses are
    written as in a header (``formatted_address``): a non-ASCII name becomes
    RFC 2047 encoded-words of at most 75 characters.
    """
    fields = [("from", formatted_address(mail.sender))]
    fields += [("to", formatted_address(a)) for a in mail.to]
    fields += [("cc", formatted_address(a)) for a in mail.cc]
    fields += [("bcc", formatted_address(a)) for a in mail.bcc]
    fields.append(("subject", mail.subject))
    if mail.text:
        fields.append(("text", mail.text))
    if mail.html:
        fields.append(("html", mail.html))
    if mail.reply_to is not None:
        fields.append(("h:Reply-To", formatted_address(mail.reply_to)))
    fields.append(("h:Message-Id", mail.message_id))
    fields.append(("v:mail_id", mail.id))
    return fields


def _message_id(raw: bytes) -> str:
    """The ``id`` of a success body, angle brackets kept; "" if there is none."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(data["id"]) if isinstance(data, dict) and data.get("id") else ""


def _error_reason(raw: bytes) -> str:
    """The ``message`` of a Mailgun error body, or its text (401 is plain ``Forbidden``)."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return text
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return text


def _describe(exc: BaseException) -> str:
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _redact(text: str, key: str) -> str:
    return text.replace(key, "[redacted]") if key else text
