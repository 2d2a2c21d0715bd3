"""Mailgun Messages API (``POST /v3/{domain}/messages``, form body, Basic auth).

Success is ``200`` ``{"id": "<...@domain>", "message": "Queued. Thank you."}``.
Errors are JSON ``{"message": ...}``, except ``401``, which is the plain text
``Forbidden``. See the provider API notes (providers.md).

A failure before the request could reach Mailgun (no connection) is
``Transient``; one after it may have (no answer in time, the connection lost
before the answer) is ``Unknown``. Mailgun uses the ``h:Message-Id`` we send
as the message's id, so ``lookup`` asks its Events API (``GET
/v3/{domain}/events``) for an ``accepted`` event with that id.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from mailman.config import SETTINGS, ConfigError, ProviderPlugin, Secret, parse, setting
from mailman.core.model import Check, Disposition, Mail, SuppressionReason

from . import (
    MAX_LIST_PAGES,
    Accepted,
    Answer,
    Found,
    HttpClient,
    Listed,
    ListUnavailable,
    Result,
    classify,
    describe,
    formatted_address,
    redact,
    shorten,
    streamed,
)

#: The most events one page holds (the Events API's maximum).
EVENTS_LIMIT = 300


#: The provider's name in the chain.
NAME = "mailgun"


@dataclass(frozen=True, slots=True)
class MailgunConfig:
    api_key: Secret = setting(
        env="MAILGUN_API_KEY",
        parse=parse.secret,
        help="Mailgun key; without one Mailgun is left out of the chain, with a warning",
        doc="Mailgun key. Without one, Mailgun is left out, with a warning",
    )
    domain: str = setting(
        env="MAILGUN_DOMAIN",
        parse=parse.stripped,
        help="your Mailgun sending domain (required with a key)",
    )
    base_url: str = setting(
        "https://api.mailgun.net",
        env="MAILGUN_BASE_URL",
        parse=parse.base_url,
        help="Mailgun's API; EU region: https://api.eu.mailgun.net",
        doc="Mailgun's API. EU region: `https://api.eu.mailgun.net`",
    )


class MailgunClient(HttpClient):
    """Sends mail through Mailgun over pooled keep-alive connections."""

    title = "Mailgun"

    def __init__(self, config: MailgunConfig, timeout: float) -> None:
        super().__init__(NAME, timeout)
        self._config = config
        base = f"{config.base_url.rstrip('/')}/v3/{config.domain}"
        self._url = f"{base}/messages"
        self._events_url = f"{base}/events"

    async def send(self, mail: Mail) -> Result:
        key = self._config.api_key.reveal()
        payload = request_body(mail)()
        headers = {"Authorization": basic_auth("api", key), "Content-Type": payload.content_type}
        answer = await self.post(self._url, await payload.as_bytes(), headers, key)
        if not isinstance(answer, Answer):
            return answer
        if 200 <= answer.status < 300:
            return Accepted(message_id=_message_id(answer.body))
        reason = redact(_error_reason(answer.body), key)
        return classify(answer.status, reason, answer.header("Retry-After"))

    async def lookup(self, mail: Mail, since: float) -> Found:
        """Whether Mailgun accepted ``mail``: an ``accepted`` event with its Message-ID
        at or after ``since`` (whole seconds, rounded down; the caller allows for clock
        skew). Any failure to ask is ``Check.CANNOT``.

        Mailgun's events can take a while to become searchable (its docs advise
        trusting a page only once its events are half an hour old), so a
        ``NOT_FOUND`` soon after the send is weaker than a ``TAKEN``.
        """
        session = await self.session()
        key = self._config.api_key.reveal()
        params = {
            "message-id": mail.message_id.strip("<>"),
            "begin": str(math.floor(since)) if math.isfinite(since) and since > 0 else "0",
            "ascending": "yes",
            "limit": str(EVENTS_LIMIT),
            "event": "accepted",
        }
        try:
            async with session.get(
                self._events_url,
                params=params,
                headers={"Authorization": basic_auth("api", key)},
                allow_redirects=False,
                timeout=self._ask_timeouts,
            ) as resp:
                raw = await resp.read()
                if not 200 <= resp.status < 300:
                    reason = shorten(redact(_error_reason(raw), key))
                    return _cannot(f"events search: HTTP {resp.status}: {reason}")
        except aiohttp.InvalidURL:
            return _cannot(f"invalid Mailgun URL {self._events_url!r}")
        except TimeoutError:
            return _cannot(f"events search: no answer within {self._ask_timeouts.total:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return _cannot(redact(f"events search: connection error: {describe(exc)}", key))
        return _found(raw, mail.message_id)

    async def suppression_list(self) -> list[Listed]:
        """The domain's bounces, complaints and unsubscribes (``GET /v3/{domain}/bounces``
        and so on: ``{"items": [{"address", ...}], "paging": {"next", ...}}``), following
        ``paging.next`` until a page has no items."""
        key = self._config.api_key.reveal()
        headers = {"Authorization": basic_auth("api", key)}
        base = f"{self._config.base_url.rstrip('/')}/v3/{self._config.domain}"
        found: list[Listed] = []
        for name, reason in SUPPRESSION_LISTS:
            url: str = f"{base}/{name}"
            params: dict[str, str] | None = {"limit": str(LIST_PAGE)}
            for _ in range(MAX_LIST_PAGES):
                page = await self.get_json(url, headers, key, params)
                items = page.get("items") if isinstance(page, dict) else None
                if not isinstance(items, list):
                    raise ListUnavailable(f"{NAME}: /{name} did not answer items")
                if not items:
                    break
                found += [
                    Listed(str(i["address"]), reason)
                    for i in items
                    if isinstance(i, dict) and isinstance(i.get("address"), str)
                ]
                following = (page.get("paging") or {}).get("next")
                if not isinstance(following, str) or not following.startswith(f"{base}/{name}"):
                    break  # no next page, or one elsewhere than this list: not followed
                url, params = following, None
        return found


#: Mailgun's suppression lists and what each means here.
SUPPRESSION_LISTS = (
    ("bounces", SuppressionReason.BOUNCE),
    ("complaints", SuppressionReason.COMPLAINT),
    ("unsubscribes", SuppressionReason.UNSUBSCRIBE),
)
#: Entries per page of a Mailgun suppression list (its most).
LIST_PAGE = 1000


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic ``Authorization`` value (``aiohttp.BasicAuth`` is deprecated in 3.14)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def form(mail: Mail) -> list[tuple[str, str]]:
    """The form fields for ``mail``; ``to``, ``cc``, ``bcc`` and ``o:tag`` repeat once
    per value; custom headers are ``h:<Name>``, metadata ``v:<key>``.

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
    fields += [(f"h:{name}", value) for name, value in mail.sent_headers]
    fields += [("o:tag", tag) for tag in mail.tags]
    fields += [(f"v:{key}", value) for key, value in mail.metadata]
    fields.append(("v:mail_id", mail.id))
    return fields


def request_body(mail: Mail) -> aiohttp.FormData:
    """The body of the send request: the ``form`` fields, url-encoded; with
    attachments ``multipart/form-data`` (which Mailgun requires for files), the
    same fields, then one file part per attachment: ``attachment`` parts, and
    ``inline`` parts for the inline files.

    Mailgun gives an inline part the ``Content-ID`` of its file name (the HTML
    refers to it as ``cid:<file name>``), so an inline part is named by the
    file's ``content_id``, not its ``filename``: the HTML's ``cid:`` references
    then hold through Mailgun as through SendGrid. Validation keeps content ids
    to characters that are safe in a file name.

    File names go out as they are, UTF-8 in a quoted string (as browsers send
    them; ``quote_fields=False``): aiohttp would otherwise percent-encode them
    (``logo%40example``), and Mailgun would take that for the name. Validation
    refuses the CR, LF and ``"`` that could break out of the quoted string.
    """
    if not mail.attachments:
        return aiohttp.FormData(form(mail))
    body = aiohttp.FormData(form(mail), quote_fields=False)
    for file in mail.attachments:
        inline = file.disposition is Disposition.INLINE and file.content_id is not None
        body.add_field(
            "inline" if inline else "attachment",
            streamed(file.decoded()),
            content_type=file.content_type,
            filename=file.content_id if inline and file.content_id else file.filename,
        )
    return body


def _message_id(raw: bytes) -> str:
    """The ``id`` of a success body, angle brackets kept; "" if there is none."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    return str(data["id"]) if isinstance(data, dict) and data.get("id") else ""


def _found(raw: bytes, message_id: str) -> Found:
    """What an events search answer says: ``TAKEN`` if it lists an ``accepted`` event,
    else ``NOT_FOUND``. The id is the event's message id, angle brackets put back
    (``message_id``, the one searched for, if the event has none)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _cannot("events search: the answer is not JSON")
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return _cannot("events search: the answer has no list of items")
    for item in items:
        if isinstance(item, dict) and item.get("event") == "accepted":
            found = _event_message_id(item)
            return Found(Check.TAKEN, message_id=f"<{found}>" if found else message_id)
    return Found(Check.NOT_FOUND)


def _event_message_id(item: dict[str, Any]) -> str:
    """``message.headers.message-id`` of an event ("" if it has none)."""
    message = item.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    value = headers.get("message-id") if isinstance(headers, dict) else None
    return value.strip("<>") if isinstance(value, str) else ""


def _cannot(reason: str) -> Found:
    return Found(Check.CANNOT, reason=reason)


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


def _configure(settings: MailgunConfig, env: Mapping[str, str]) -> MailgunConfig | None:
    """Mailgun needs its key (else it is left out) and, with it, the sending domain."""
    if settings.api_key is None:
        return None
    if not settings.domain:
        raise ConfigError(
            f"{SETTINGS['mailgun.api_key'].name} is set but "
            f"{SETTINGS['mailgun.domain'].name} is not"
        )
    return settings


#: The entry point ``mailgun`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME, MailgunConfig, MailgunClient, _configure, summary="Mailgun Messages API"
)
