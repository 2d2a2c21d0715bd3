"""One-click unsubscribe (RFC 8058): the public URL a mail's ``List-Unsubscribe`` names.

``POST /unsubscribe/{token}`` (a mail program's one click, body
``List-Unsubscribe=One-Click``, or the confirmation page's button) suppresses the
token's address for the token's group, reason ``unsubscribe``, source ``one-click``,
and queues an ``unsubscribed`` callback to the mail's ``callback_url``; a repeat
changes nothing and answers the same. ``GET`` shows a small page with that button and
changes nothing: link scanners and previews fetch URLs. No API key: the token is
signed (``core.unsubscribe``); a forged or altered one is a 403 and nothing is kept.
Both are 404 while ``MAILMAN_UNSUBSCRIBE_SECRET`` is unset.
"""

from __future__ import annotations

import html
import time
from http import HTTPStatus

from aiohttp import web

from mailman.config.logging import get_logger
from mailman.core.model import SuppressionReason
from mailman.core.unsubscribe import MAX_TOKEN, PATH, Ticket, verify
from mailman.intake.guard import guarded
from mailman.store import Suppression

from . import CONFIG, STORE
from .contract import Answer, Body, Param, operation, problem
from .errors import FORBIDDEN, NOT_FOUND, Problem, note
from .models.unsubscribe import OneClickForm

log = get_logger("mailman.http")

routes = web.RouteTableDef()

#: Where a suppression made by a one-click unsubscribe comes from (its ``source``).
SOURCE = "one-click"
#: What RFC 8058's POST carries (form-encoded).
ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"
HTML = "text/html"
#: The pages load nothing, post only here, and keep the token out of any Referer.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex",
}

TOKEN = Param(
    "token",
    "path",
    {"type": "string", "maxLength": MAX_TOKEN, "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"},
    "The signed token of the mail's List-Unsubscribe URL",
    required=True,
)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.5rem 1rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def _page(title: str, body: str) -> web.Response:
    return web.Response(
        text=_PAGE.format(title=html.escape(title), body=body),
        content_type=HTML,
        headers=PAGE_HEADERS,
    )


def _ticket(request: web.Request) -> Ticket:
    """The token's ticket; 404 while the feature is off, 403 for a token not signed here."""
    secret = request.app[CONFIG].unsubscribe_secret
    if secret is None:
        raise Problem(
            HTTPStatus.NOT_FOUND,
            "One-click unsubscribe is off here (no MAILMAN_UNSUBSCRIBE_SECRET).",
            type=NOT_FOUND,
        )
    ticket = verify(secret.reveal(), request.match_info["token"])
    if ticket is None:
        note(request, unsubscribe="forged")
        raise Problem(
            HTTPStatus.FORBIDDEN,
            "This unsubscribe link is not one this service signed (altered or cut short?).",
            type=FORBIDDEN,
        )
    return ticket


_ANSWERS = {
    400: problem("Not valid HTTP (a path too long to be a link of this service)"),
    403: problem("A token this service did not sign (forged, altered or cut short)"),
    404: problem("Off: MAILMAN_UNSUBSCRIBE_SECRET is unset"),
}


@routes.get(PATH + "{token}")
@operation(
    "unsubscribePage",
    "The confirmation page of a one-click unsubscribe link: a button that POSTs",
    description="For the recipient's browser, not for API clients: no API key, the token "
    "is signed. Changes nothing (link scanners fetch URLs).",
    parameters=(TOKEN,),
    answers={
        200: Answer("The page", schema={"type": "string"}, media=HTML),
        **_ANSWERS,
    },
)
async def unsubscribe_page(request: web.Request) -> web.Response:
    ticket = _ticket(request)
    note(request, tenant=ticket.tenant)
    return _page(
        "Unsubscribe",
        f"<p>Stop mails of <strong>{html.escape(ticket.group)}</strong> to "
        f"<strong>{html.escape(ticket.address)}</strong>?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>',
    )


@routes.post(PATH + "{token}")
@operation(
    "unsubscribe",
    "One-click unsubscribe (RFC 8058): the token's address leaves the token's group",
    description="What mail programs POST (body `List-Unsubscribe=One-Click`), and the "
    "confirmation page's button. No API key: the token is signed. The address is "
    "suppressed for the group (reason `unsubscribe`, source `one-click`) and the mail's "
    "`callback_url` hears `unsubscribed`; a repeat changes nothing and answers the same.",
    parameters=(TOKEN,),
    body=Body({FORM: OneClickForm}, required=False),
    answers={
        200: Answer(
            "Unsubscribed (now or before): a page saying so", schema={"type": "string"}, media=HTML
        ),
        **_ANSWERS,
        503: problem("The store does not answer; try again after Retry-After", "Retry-After"),
    },
)
async def unsubscribe(request: web.Request) -> web.Response:
    ticket = _ticket(request)
    store = request.app[STORE]
    wanted = Suppression(
        ticket.tenant,
        ticket.address,
        SuppressionReason.UNSUBSCRIBE,
        SOURCE,
        time.time(),
        group=ticket.group,
    )
    added = await guarded(
        store, request.app[CONFIG].store_timeout, store.unsubscribe(wanted, ticket.mail_id)
    )
    note(request, tenant=ticket.tenant)
    if added:
        log.info(
            "suppression.added",
            tenant=ticket.tenant,
            reason=SuppressionReason.UNSUBSCRIBE.value,
            source=SOURCE,
            group=ticket.group,
            mail_id=ticket.mail_id,
        )
    return _page(
        "Unsubscribed",
        f"<p>{html.escape(ticket.address)} gets no more mails of "
        f"<strong>{html.escape(ticket.group)}</strong>.</p>",
    )
