"""The suppression endpoints: a tenant's list of addresses its mails never go to.

A key sees and edits its own tenant's list; an admin key lists every tenant's and may
name one (``tenant``). Providers' events add to the list by themselves (a hard bounce,
a complaint, an unsubscribe: ``store.events``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import time
from collections.abc import Mapping
from http import HTTPStatus
from urllib.parse import urlencode

import orjson
from aiohttp import web

from mailman.config.logging import get_logger
from mailman.core.model import SuppressionReason
from mailman.core.schemas import ADDRESS_FORMAT
from mailman.core.suppression import MAX_ADDRESS
from mailman.core.unsubscribe import GROUP, group_problem
from mailman.core.validation import FieldError
from mailman.intake.auth import Principal
from mailman.intake.guard import guarded
from mailman.intake.keys import TENANT, Scope
from mailman.store import EVERY_GROUP, Suppression, SuppressionQuery

from . import CONFIG, STORE
from .auth import PRINCIPAL, requires
from .contract import Answer, Body, Paging, Param, operation, problem
from .errors import BAD_REQUEST, FORBIDDEN, NOT_FOUND, Problem, note
from .mail import json_response, read_mail_json
from .models.suppressions import (
    TENANT_PATTERN,
    NewSuppression,
    SuppressionAnswer,
    SuppressionList,
    bare_address,
    shown,
)

log = get_logger("mailman.http")

routes = web.RouteTableDef()

#: The document's format for a cursor of this listing: only what a page's ``next`` gave out.
CURSOR_FORMAT = "suppression-cursor"
#: GET /suppressions' pages: 100 by default, 1,000 at most.
PAGING = Paging(default=100, maximum=1000, cursor_format=CURSOR_FORMAT)

#: ``?group=``: one unsubscribe group's (empty: those for every mail).
GROUP_SCHEMA = {"type": "string", "pattern": f"^({GROUP.pattern})?$"}

#: ``?tenant=``: whose list an admin key names.
TENANT_PARAM = Param(
    "tenant",
    "query",
    {"type": "string", "pattern": TENANT_PATTERN},
    "Whose list (admin keys only; another key may name only its own tenant)",
)


def _bad_query(errors: list[FieldError]) -> Problem:
    return Problem(
        HTTPStatus.BAD_REQUEST,
        "The query is not valid; see errors.",
        type=BAD_REQUEST,
        errors=errors,
    )


def _tenant(principal: Principal, named: str | None) -> str | None:
    """The tenant a request is about: the one named (admins; a key may name its own), the
    key's own otherwise; None: every tenant's (an admin naming none, for a listing)."""
    if named is None:
        return principal.tenant_filter
    if not TENANT.fullmatch(named):
        raise _bad_query([FieldError("tenant", "is not a tenant name")])
    if not principal.sees(named):
        raise Problem(
            HTTPStatus.FORBIDDEN,
            "Only an admin key may name another tenant.",
            type=FORBIDDEN,
        )
    return named


def _encode_cursor(s: Suppression) -> str:
    raw = orjson.dumps([s.tenant, s.address, s.group])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str, str] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value):
        return (value[0], value[1], value[2])
    return None


def _list_query(principal: Principal, params: Mapping[str, str]) -> SuppressionQuery:
    """The listing GET /suppressions names; 400 naming every bad parameter."""
    errors: list[FieldError] = []
    limit = PAGING.limit(params, errors)
    reason = None
    if "reason" in params:
        try:
            reason = SuppressionReason(params["reason"])
        except ValueError:
            errors.append(FieldError("reason", f"must be one of {', '.join(SuppressionReason)}"))
    group = params.get("group")
    if group:  # empty: the every-mail ones
        problem = group_problem(group)
        if problem is not None:
            errors.append(FieldError("group", problem))
    after = None
    if "cursor" in params:
        after = _decode_cursor(params["cursor"])
        if after is None:
            errors.append(FieldError("cursor", "is not a cursor this service gave out"))
    if errors:
        raise _bad_query(errors)
    tenant = _tenant(principal, params.get("tenant"))
    return SuppressionQuery(tenant=tenant, limit=limit, reason=reason, group=group, after=after)


@routes.get("/suppressions")
@requires(Scope.READ)
@operation(
    "listSuppressions",
    "The tenant's suppressed addresses, by address, a page at a time",
    description="Needs `read` (or `send`); admin keys list every tenant's, or the one "
    "`tenant` names.",
    parameters=(
        Param("reason", "query", {"type": "string", "enum": [r.value for r in SuppressionReason]}),
        Param(
            "group",
            "query",
            GROUP_SCHEMA,
            "Only this unsubscribe group's; empty: only those for every mail",
        ),
        TENANT_PARAM,
        *PAGING.params,
    ),
    answers={
        200: Answer("A page; `next` is absent on the last one", SuppressionList),
        400: problem("A bad query parameter (see errors)"),
        403: problem("A key that is not an admin named another tenant"),
    },
)
async def list_suppressions(request: web.Request) -> web.Response:
    query = _list_query(request[PRINCIPAL], request.query)
    store = request.app[STORE]
    page = await guarded(
        store,
        request.app[CONFIG].store_timeout,
        store.list_suppressions(dataclasses.replace(query, limit=query.limit + 1)),
    )
    body: SuppressionList = {"suppressions": [shown(s) for s in page[: query.limit]]}
    if len(page) > query.limit:
        kept = {
            k: v for k, v in request.query.items() if k in ("reason", "group", "tenant", "limit")
        }
        kept["cursor"] = _encode_cursor(page[query.limit - 1])
        body["next"] = f"/suppressions?{urlencode(kept)}"
    return json_response(body)


@routes.post("/suppressions")
@requires(Scope.SEND)
@operation(
    "addSuppression",
    "Suppress an address for the tenant: no mail of it goes there (needs `send`)",
    description="Every mail accepted from now on, and every mail not yet handed to a "
    "provider, drops the address; a mail left with no visible recipient ends `suppressed`. "
    "Adding an address already on the list keeps it as it is (200).",
    body=Body.json(NewSuppression, example={"address": "ann@example.com", "reason": "manual"}),
    answers={
        201: Answer("Added", SuppressionAnswer),
        200: Answer("Already on the list: as it was", SuppressionAnswer),
        400: problem("Malformed JSON or a bad body encoding"),
        403: problem("A key that is not an admin named another tenant"),
        413: problem("The body is too large"),
        415: problem("Not application/json in UTF-8"),
        422: problem("Invalid fields (see errors): address, reason, tenant or an unknown one"),
    },
)
async def add_suppression(request: web.Request) -> web.Response:
    new = NewSuppression.read(await read_mail_json(request))
    tenant = _tenant(request[PRINCIPAL], new.tenant)
    if tenant is None:  # an admin naming none: its own key's tenant
        tenant = request[PRINCIPAL].tenant
    store = request.app[STORE]
    timeout = request.app[CONFIG].store_timeout
    group = new.group or EVERY_GROUP
    wanted = Suppression(tenant, new.address, new.reason, "api", time.time(), group=group)
    added = await guarded(store, timeout, store.add_suppressions([wanted]))
    kept = await guarded(store, timeout, store.suppression(tenant, new.address, group))
    note(request, tenant=tenant)
    if added:
        log.info(
            "suppression.added", tenant=tenant, reason=new.reason.value, source="api", group=group
        )
    answer: SuppressionAnswer = {"suppression": shown(kept or wanted)}
    return json_response(answer, status=HTTPStatus.CREATED if added else HTTPStatus.OK)


@routes.delete("/suppressions/{address}")
@requires(Scope.SEND)
@operation(
    "removeSuppression",
    "Take an address off the tenant's list, every group's or one's (needs `send`)",
    parameters=(
        Param(
            "address",
            "path",
            {"type": "string", "format": ADDRESS_FORMAT, "maxLength": MAX_ADDRESS},
            "The address (any case)",
        ),
        Param(
            "group",
            "query",
            GROUP_SCHEMA,
            "Only this unsubscribe group's suppression; empty: only the one for every mail; "
            "absent: every one of the address",
        ),
        TENANT_PARAM,
    ),
    answers={
        204: Answer("Removed: mails go to it again"),
        400: problem("The address is not one (see errors), or a bad tenant"),
        403: problem("A key that is not an admin named another tenant"),
        404: problem("The address is not on the list"),
    },
)
async def remove_suppression(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    tenant = _tenant(principal, request.query.get("tenant"))
    if tenant is None:
        tenant = principal.tenant
    try:
        address = bare_address(request.match_info["address"])
    except ValueError as exc:
        raise _bad_query([FieldError("address", str(exc))]) from None
    group = request.query.get("group")
    if group:
        problem = group_problem(group)
        if problem is not None:
            raise _bad_query([FieldError("group", problem)])
    store = request.app[STORE]
    removed = await guarded(
        store, request.app[CONFIG].store_timeout, store.remove_suppression(tenant, address, group)
    )
    if not removed:
        raise Problem(
            HTTPStatus.NOT_FOUND, "The address is not on the tenant's list.", type=NOT_FOUND
        )
    note(request, tenant=tenant)
    log.info("suppression.removed", tenant=tenant, source="api")
    return web.Response(status=HTTPStatus.NO_CONTENT)
