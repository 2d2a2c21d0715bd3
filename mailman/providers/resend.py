"""Resend (``POST /emails``, JSON, Bearer key, an ``Idempotency-Key`` per mail).

Success is ``200`` ``{"id": "<uuid>"}``. Errors are JSON ``{"statusCode",
"name", "message"}``. See the provider API notes (providers.md).

Every request for a mail carries ``Idempotency-Key: <mail id>`` and a body
built from the mail alone, byte for byte the same at every attempt. Resend
keeps a key 24 hours: the same key and body answer the first request's id and
send nothing. So:

- a lost answer (``Unknown``) is checked by ``lookup`` asking again: it posts
  the same request once more. Resend answers the id of the mail it took
  (``TAKEN``, nothing sent again); had the first request never reached it,
  this request sends the mail, once, and it is ``TAKEN`` all the same. Either
  way Resend holds exactly one copy;
- ``409 concurrent_idempotent_requests`` (the first request under the key is
  still being handled: a slow Resend, or a lost answer asked about too soon)
  is ``InProgress``, an ``Unknown``: that request may yet take the mail, so it
  must not go to the next provider as a plain failure would. Asked about, it
  says "ask again" (``Found.ask_again_in``): the mail waits and Resend is asked
  again once that request is done, which answers its id;
- ``409 invalid_idempotent_request`` (the key was used with another body) is
  ``Rejected``: Resend will not take this mail under its key for 24 hours.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mailman.config import ProviderPlugin, Secret, parse, required, setting
from mailman.core.model import Attachment, Check, Disposition, Mail

from . import (
    Accepted,
    Answer,
    Found,
    HttpClient,
    Misconfigured,
    Rejected,
    Result,
    Transient,
    Unknown,
    classify,
    formatted_address,
    parse_retry_after,
    redact,
    shorten,
)

#: How long Resend keeps an idempotency key.
KEY_KEPT_SECONDS = 24 * 3600.0
#: Past this age of an attempt, its key may be gone: ``lookup`` would send a second copy.
LOOKUP_WINDOW_SECONDS = KEY_KEPT_SECONDS - 3600.0
#: The tag that carries the mail id (events find the mail by it).
MAIL_ID_TAG = "mail_id"
#: The longest tag name or value Resend takes.
MAX_TAG = 256
#: What Resend refuses in a tag name or value: anything but ASCII letters, digits, ``_``, ``-``.
_TAG_FORBIDDEN = re.compile(r"[^A-Za-z0-9_-]")
#: Resend's ``name`` of a 409 whose first request is still in flight.
CONCURRENT = "concurrent_idempotent_requests"
#: Seconds before asking again after that 409, unless it says (``Retry-After``).
IN_PROGRESS_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class InProgress(Unknown):
    """``409 concurrent_idempotent_requests``: Resend is still handling an earlier
    request under the mail's key, which may take the mail. Not sent here; whether
    Resend took it is known once that request is done (``retry_after`` seconds)."""

    retry_after: float = IN_PROGRESS_RETRY_SECONDS


#: The provider's name in the chain.
NAME = "resend"


@dataclass(frozen=True, slots=True)
class ResendConfig:
    api_key: Secret = setting(
        env="RESEND_API_KEY",
        parse=parse.secret,
        help="Resend key; without one Resend is left out of the chain, with a warning",
        doc="Resend key. Without one, Resend is left out of the chain, with a warning at start",
    )
    base_url: str = setting(
        "https://api.resend.com", env="RESEND_BASE_URL", parse=parse.base_url, help="Resend's API"
    )


class ResendClient(HttpClient):
    """Sends mail through Resend over pooled keep-alive connections."""

    title = "Resend"

    def __init__(self, config: ResendConfig, timeout: float) -> None:
        super().__init__(NAME, timeout)
        self._config = config
        self._url = f"{config.base_url.rstrip('/')}/emails"

    async def send(self, mail: Mail) -> Result:
        return await self._post(mail, self._timeouts)

    async def _post(self, mail: Mail, timeouts: aiohttp.ClientTimeout) -> Result:
        """The mail's request under its key, within ``timeouts``."""
        key = self._config.api_key.reveal()
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Idempotency-Key": mail.id,
        }
        answer = await self.post(self._url, orjson.dumps(body(mail)), headers, key, timeouts)
        if not isinstance(answer, Answer):
            return answer
        if 200 <= answer.status < 300:
            return Accepted(message_id=_message_id(answer.body))
        name, message = _error(answer.body)
        reason = redact(f"{name}: {message}" if name else message, key)
        if answer.status == 409 and name == CONCURRENT:
            wait = parse_retry_after(answer.header("Retry-After"), cap=60.0)
            return InProgress(
                shorten(reason),
                IN_PROGRESS_RETRY_SECONDS if wait is None else wait,
            )
        return classify(answer.status, reason, answer.header("Retry-After"))

    async def lookup(self, mail: Mail, since: float) -> Found:
        """Asks Resend by sending the same request again under the mail's key: Resend
        answers the id it gave the first time and sends nothing (``TAKEN``). Had the
        first never reached it, this one sends the mail: ``TAKEN`` too, one copy.
        The first still in progress (409 concurrent): ``CANNOT`` with ``ask_again_in``.
        Past the key's 24 hours, or without an answer, ``CANNOT``."""
        if time.time() - since > LOOKUP_WINDOW_SECONDS:
            return Found(Check.CANNOT, reason=KEY_EXPIRED)
        result = await self._post(mail, self._ask_timeouts)
        if isinstance(result, Accepted):
            return Found(Check.TAKEN, message_id=result.message_id)
        if isinstance(result, InProgress):
            return Found(
                Check.CANNOT,
                reason=f"asked again under its key: {result.reason}",
                ask_again_in=result.retry_after,
            )
        if isinstance(result, Unknown):
            return Found(Check.CANNOT, reason=f"asked again under its key: {result.reason}")
        assert isinstance(result, Transient | Misconfigured | Rejected)
        status = f"HTTP {result.status}: " if result.status else ""
        return Found(Check.CANNOT, reason=f"asked again under its key: {status}{result.reason}")


#: Why an attempt older than Resend's key window cannot be checked.
KEY_EXPIRED = (
    "the attempt is older than Resend keeps an Idempotency-Key (24 h): asking again "
    "could send a second copy"
)


def body(mail: Mail) -> dict[str, Any]:
    """The ``POST /emails`` body for ``mail``: built from the mail alone, so every
    attempt sends the same bytes (Resend refuses a key reused with another body)."""
    out: dict[str, Any] = {
        "from": formatted_address(mail.sender),
        "to": [formatted_address(a) for a in mail.to],
        "subject": mail.subject,
    }
    if mail.cc:
        out["cc"] = [formatted_address(a) for a in mail.cc]
    if mail.bcc:
        out["bcc"] = [formatted_address(a) for a in mail.bcc]
    if mail.reply_to is not None:
        out["reply_to"] = formatted_address(mail.reply_to)
    if mail.text:
        out["text"] = mail.text
    if mail.html:
        out["html"] = mail.html
    out["headers"] = {**dict(mail.sent_headers), "Message-ID": mail.message_id}
    if mail.attachments:
        out["attachments"] = [attachment(a) for a in mail.attachments]
    out["tags"] = tags(mail)
    return out


def attachment(file: Attachment) -> dict[str, str]:
    """One of Resend's ``attachments``: base64 content as stored, name and type; an
    inline file also its ``content_id`` (the HTML's ``cid:``)."""
    out = {"filename": file.filename, "content": file.content, "content_type": file.content_type}
    if file.disposition is Disposition.INLINE and file.content_id is not None:
        out["content_id"] = file.content_id
    return out


def tag_text(text: str) -> str:
    """``text`` as Resend takes it in a tag: each other character as ``_``, at most 256."""
    return _TAG_FORBIDDEN.sub("_", text)[:MAX_TAG] or "_"


def tags(mail: Mail) -> list[dict[str, str]]:
    """Resend's ``tags``: the mail id (``mail_id``) first, then each metadata pair, then
    each tag (value ``true``); characters Resend refuses become ``_``; a name already
    given is left out."""
    pairs = [(MAIL_ID_TAG, mail.id)]
    pairs += [(tag_text(k), tag_text(v)) for k, v in mail.metadata]
    pairs += [(tag_text(t), "true") for t in mail.tags]
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name not in seen:
            seen.add(name)
            out.append({"name": name, "value": value})
    return out


def _message_id(raw: bytes) -> str:
    """The ``id`` of a success body ("" if there is none)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(data["id"]) if isinstance(data, dict) and data.get("id") else ""


def _error(raw: bytes) -> tuple[str, str]:
    """``(name, message)`` of a Resend error body; ``("", text)`` if it is not one."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "", text
    if isinstance(data, dict) and data.get("message"):
        return str(data.get("name") or ""), str(data["message"])
    return "", text


#: The entry point ``resend`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME, ResendConfig, ResendClient, required("api_key"), summary="Resend Emails API"
)
