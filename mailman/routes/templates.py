"""The template endpoints: a tenant's Handlebars templates, versioned (``docs/templates.md``).

Each key works on its own tenant's templates (an admin key too: a template is rendered
for the tenant that sends the mail). Writing needs ``send``, reading ``read``.
"""

from __future__ import annotations

import time
from http import HTTPStatus

from aiohttp import web

from mailman.config.logging import get_logger
from mailman.core.clock import iso_time
from mailman.core.ids import new_id
from mailman.core.templates import MAX_VERSION, version_problem
from mailman.core.validation import FieldError, ValidationFailed
from mailman.intake.guard import guarded
from mailman.intake.keys import Scope
from mailman.store import Store, TemplateRecord

from . import CONFIG, STORE
from .auth import PRINCIPAL, requires
from .contract import Answer, Body, Param, operation, problem
from .errors import BAD_REQUEST, NOT_FOUND, STATUS_CONFLICT, VALIDATION, Problem, note
from .mail import json_response, read_mail_json
from .models.templates import (
    TemplateAnswer,
    TemplateBody,
    TemplateList,
    TemplateListed,
    TemplateVersionBody,
)

log = get_logger("mailman.http")

routes = web.RouteTableDef()

#: A template in a path: its id, or its name.
REF = Param(
    "ref",
    "path",
    {"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[A-Za-z0-9._-]+$"},
    "The template's id or its name",
)
VERSION = Param(
    "version",
    "query",
    {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
    "A version; missing: the latest",
)
UNKNOWN = problem("No such template (or another tenant's)")
_BODY_ANSWERS = {
    400: problem("Malformed JSON or a bad body encoding"),
    408: problem("The request body stalled"),
    413: problem("The body is larger than MAILMAN_MAX_BODY_BYTES"),
    415: problem("Not application/json in UTF-8"),
    422: problem(
        "Invalid fields (see errors): a part that does not parse is named, with the line "
        "and column of the error"
    ),
}
_EXAMPLE = {
    "name": "welcome",
    "subject": "Welcome, {{name}}",
    "html": "<p>Hello {{name}}!</p>{{#if coupon}}<p>Your code: {{coupon}}</p>{{/if}}",
    "text": "Hello {{name}}!",
}


def _store(request: web.Request) -> tuple[Store, float]:
    return request.app[STORE], request.app[CONFIG].store_timeout


def _unknown() -> Problem:
    return Problem(
        HTTPStatus.NOT_FOUND, "There is no template with this id or name.", type=NOT_FOUND
    )


def _invalid(exc: ValidationFailed) -> Problem:
    return Problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "The template is not valid; see errors.",
        type=VALIDATION,
        errors=exc.errors,
    )


def shown(template: TemplateRecord) -> TemplateAnswer:
    return {
        "template": {
            "id": template.id,
            "name": template.name,
            "version": template.version,
            "subject": template.subject,
            "html": template.html,
            "text": template.text,
            "created_at": iso_time(template.created_at),
            "links": [{"self": f"/templates/{template.id}?version={template.version}"}],
        }
    }


@routes.post("/templates")
@requires(Scope.SEND)
@operation(
    "createTemplate",
    "Store a new template, its version 1 (needs `send`)",
    description="Each part is parsed: a syntax error is a 422 naming the part, the line and "
    "the column. Names are unique within the tenant.",
    body=Body.json(TemplateBody, example=_EXAMPLE),
    answers={
        201: Answer("Stored", TemplateAnswer),
        409: problem("The tenant has a template of this name (type status-conflict)"),
        **_BODY_ANSWERS,
    },
)
async def create_template(request: web.Request) -> web.Response:
    try:
        body = TemplateBody.read(await read_mail_json(request))
    except ValidationFailed as exc:
        raise _invalid(exc) from None
    tenant = request[PRINCIPAL].tenant
    now = time.time()
    record = TemplateRecord(
        new_id(now), tenant, body.name, 1, body.subject, body.html, body.text, now
    )
    store, timeout = _store(request)
    if not await guarded(store, timeout, store.add_template(record)):
        raise Problem(
            HTTPStatus.CONFLICT,
            f"There is a template named {body.name!r} already: PUT /templates/{body.name} "
            "adds a version of it.",
            type=STATUS_CONFLICT,
        )
    note(request, template=record.id)
    log.info("template.created", template=record.id, version=1)
    return json_response(
        shown(record),
        status=HTTPStatus.CREATED,
        headers={"Location": f"/templates/{record.id}"},
    )


@routes.get("/templates")
@requires(Scope.READ)
@operation(
    "listTemplates",
    "The caller's tenant's templates, by name, each at its latest version",
    answers={200: Answer("The templates", TemplateList)},
)
async def list_templates(request: web.Request) -> web.Response:
    store, timeout = _store(request)
    found = await guarded(store, timeout, store.templates(request[PRINCIPAL].tenant))
    listed: list[TemplateListed] = [
        {
            "id": t.id,
            "name": t.name,
            "version": t.version,
            "created_at": iso_time(t.created_at),
            "links": [{"self": f"/templates/{t.id}"}],
        }
        for t in found
    ]
    answer: TemplateList = {"templates": listed}
    return json_response(answer)


def _version(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None:
        return None
    version = int(raw) if raw.isdigit() and len(raw) <= len(str(MAX_VERSION)) else 0
    if (problem := version_problem(version)) is not None:
        raise Problem(
            HTTPStatus.BAD_REQUEST,
            "The query is not valid; see errors.",
            type=BAD_REQUEST,
            errors=[FieldError("version", problem)],
        )
    return version


@routes.get("/templates/{ref}")
@requires(Scope.READ)
@operation(
    "showTemplate",
    "A template at its latest version, or at ?version=",
    parameters=(REF, VERSION),
    answers={
        200: Answer("The template", TemplateAnswer),
        400: problem("A bad version"),
        404: UNKNOWN,
    },
)
async def show_template(request: web.Request) -> web.Response:
    version = _version(request)
    store, timeout = _store(request)
    found = await guarded(
        store,
        timeout,
        store.template(request[PRINCIPAL].tenant, request.match_info["ref"], version),
    )
    if found is None:
        raise _unknown()
    return json_response(shown(found))


@routes.put("/templates/{ref}")
@requires(Scope.SEND)
@operation(
    "updateTemplate",
    "Add a version of a template, which becomes its latest (needs `send`)",
    description="Earlier versions stay and can still be sent with (template_version). Each "
    "part is parsed: a syntax error is a 422 naming the part, the line and the column.",
    parameters=(REF,),
    body=Body.json(TemplateVersionBody),
    answers={200: Answer("The new version", TemplateAnswer), 404: UNKNOWN, **_BODY_ANSWERS},
)
async def update_template(request: web.Request) -> web.Response:
    try:
        body = TemplateVersionBody.read(await read_mail_json(request))
    except ValidationFailed as exc:
        raise _invalid(exc) from None
    store, timeout = _store(request)
    added = await guarded(
        store,
        timeout,
        store.add_template_version(
            request[PRINCIPAL].tenant,
            request.match_info["ref"],
            subject=body.subject,
            html=body.html,
            text=body.text,
            at=time.time(),
        ),
    )
    if added is None:
        raise _unknown()
    note(request, template=added.id)
    log.info("template.updated", template=added.id, version=added.version)
    return json_response(shown(added))


@routes.delete("/templates/{ref}")
@requires(Scope.SEND)
@operation(
    "deleteTemplate",
    "Remove a template, every version (needs `send`)",
    description="Mails already accepted keep what was rendered; afterwards the name is free.",
    parameters=(REF,),
    answers={204: Answer("Removed"), 404: UNKNOWN},
)
async def delete_template(request: web.Request) -> web.Response:
    store, timeout = _store(request)
    ref = request.match_info["ref"]
    if not await guarded(store, timeout, store.delete_template(request[PRINCIPAL].tenant, ref)):
        raise _unknown()
    log.info("template.deleted", template=ref)
    return web.Response(status=HTTPStatus.NO_CONTENT)
