"""SendGrid v3 Mail Send (``POST /v3/mail/send``, JSON, Bearer key).

Success is ``202`` with an empty body and the message id in ``X-Message-Id``.
Errors are JSON ``{"errors": [{"message", "field", "help"}]}``, except that a
``413`` may be an HTML page. See the provider API notes (providers.md).

A failure before the request could reach SendGrid (no connection) is
``Transient``; one after it may have (no answer in time, the connection lost
before the answer) is ``Unknown``: SendGrid may have taken the mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from mailman.config import ProviderPlugin, Secret, parse, required, setting
from mailman.core.model import Address, Attachment, Check, Mail, SuppressionReason

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
    redact,
)

#: Characters SendGrid refuses in a recipient's name.
_NAME_FORBIDDEN = str.maketrans({";": " ", ",": " "})


#: The provider's name in the chain.
NAME = "sendgrid"


@dataclass(frozen=True, slots=True)
class SendGridConfig:
    api_key: Secret = setting(
        env="SENDGRID_API_KEY",
        parse=parse.secret,
        help="SendGrid key; without one SendGrid is left out of the chain, with a warning",
        doc="SendGrid key. Without one, SendGrid is left out of the chain, with a warning at start",
    )
    base_url: str = setting(
        "https://api.sendgrid.com",
        env="SENDGRID_BASE_URL",
        parse=parse.base_url,
        help="SendGrid's API; EU subusers: https://api.eu.sendgrid.com",
        doc="SendGrid's API. EU subusers: `https://api.eu.sendgrid.com`",
    )


class SendGridClient(HttpClient):
    """Sends mail through SendGrid over pooled keep-alive connections."""

    title = "SendGrid"

    def __init__(self, config: SendGridConfig, timeout: float) -> None:
        super().__init__(NAME, timeout)
        self._config = config
        self._url = f"{config.base_url.rstrip('/')}/v3/mail/send"

    async def send(self, mail: Mail) -> Result:
        key = self._config.api_key.reveal()
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        answer = await self.post(self._url, orjson.dumps(body(mail)), headers, key)
        if not isinstance(answer, Answer):
            return answer
        if 200 <= answer.status < 300:
            return Accepted(message_id=answer.header("X-Message-Id") or "")
        reason = redact(_error_reason(answer.body), key)
        return classify(answer.status, reason, answer.header("Retry-After"))

    async def lookup(self, mail: Mail, since: float) -> Found:
        return Found(Check.CANNOT, reason=LOOKUP_UNAVAILABLE)

    async def suppression_list(self) -> list[Listed]:
        """Bounces, spam reports and global unsubscribes (``GET /v3/suppression/...``:
        JSON arrays of ``{"email", "created", ...}``, paged by ``limit``/``offset``)."""
        key = self._config.api_key.reveal()
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        base = self._config.base_url.rstrip("/")
        found: list[Listed] = []
        for path, reason in SUPPRESSION_LISTS:
            for page in range(MAX_LIST_PAGES):
                params = {"limit": str(LIST_PAGE), "offset": str(page * LIST_PAGE)}
                items = await self.get_json(f"{base}{path}", headers, key, params)
                if not isinstance(items, list):
                    raise ListUnavailable(f"{NAME}: {path} did not answer a list")
                found += [
                    Listed(str(i["email"]), reason)
                    for i in items
                    if isinstance(i, dict) and isinstance(i.get("email"), str)
                ]
                if len(items) < LIST_PAGE:
                    break
        return found


#: SendGrid's suppression lists and what each means here.
SUPPRESSION_LISTS = (
    ("/v3/suppression/bounces", SuppressionReason.BOUNCE),
    ("/v3/suppression/spam_reports", SuppressionReason.COMPLAINT),
    ("/v3/suppression/unsubscribes", SuppressionReason.UNSUBSCRIBE),
)
#: Entries per page of a SendGrid suppression list (its most).
LIST_PAGE = 500


#: Why a SendGrid send whose answer was lost cannot be checked.
LOOKUP_UNAVAILABLE = (
    "SendGrid has no lookup by Message-ID (its Email Activity API is a paid add-on "
    "and searches by SendGrid's own message id, which a lost answer never gave us)"
)


def body(mail: Mail) -> dict[str, Any]:
    """The Mail Send JSON body for ``mail``: one personalization, no repeated address."""
    seen: set[str] = set()

    def recipients(addresses: tuple[Address, ...]) -> list[dict[str, str]]:
        out = []
        for address in addresses:
            folded = address.email.casefold()
            if folded in seen:
                continue
            seen.add(folded)
            name = " ".join(address.name.translate(_NAME_FORBIDDEN).split())
            out.append(Address(address.email, name).as_json())
        return out

    personalization: dict[str, Any] = {"to": recipients(mail.to)}
    for field, addresses in (("cc", mail.cc), ("bcc", mail.bcc)):
        kept = recipients(addresses)
        if kept:
            personalization[field] = kept
    out: dict[str, Any] = {
        "personalizations": [personalization],
        "from": mail.sender.as_json(),
        "subject": mail.subject,
    }
    if mail.reply_to is not None:
        out["reply_to"] = mail.reply_to.as_json()
    content = []
    if mail.text:
        content.append({"type": "text/plain", "value": mail.text})
    if mail.html:
        content.append({"type": "text/html", "value": mail.html})
    if content:
        out["content"] = content
    out["headers"] = {**dict(mail.sent_headers), "Message-ID": mail.message_id}
    if mail.tags:
        out["categories"] = list(mail.tags)
    out["custom_args"] = {**dict(mail.metadata), "mail_id": mail.id}
    if mail.attachments:
        out["attachments"] = [attachment(a) for a in mail.attachments]
    return out


def attachment(file: Attachment) -> dict[str, str]:
    """One of SendGrid's ``attachments``: the base64 content as stored, the file's name,
    type and disposition, and for an inline file its ``content_id`` (which SendGrid
    requires for one, and writes as its ``Content-ID``)."""
    out = {
        "content": file.content,
        "filename": file.filename,
        "type": file.content_type,
        "disposition": file.disposition.value,
    }
    if file.content_id is not None:
        out["content_id"] = file.content_id
    return out


def _error_reason(raw: bytes) -> str:
    """The joined ``errors[].message`` of a SendGrid error body, or its text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return text
    if isinstance(data, dict) and isinstance(data.get("errors"), list):
        messages = [
            str(e["message"]) for e in data["errors"] if isinstance(e, dict) and e.get("message")
        ]
        if messages:
            return "; ".join(messages)
    return text


#: The entry point ``sendgrid`` of the group ``mailman.providers`` (pyproject.toml).
plugin = ProviderPlugin(
    NAME, SendGridConfig, SendGridClient, required("api_key"), summary="SendGrid v3 Mail Send"
)
