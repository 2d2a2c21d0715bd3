"""The contract as an OpenAPI 3.1 document, served at ``GET /openapi.json``.

Generated, not written: each path and method from the app's routes, everything else an
endpoint says from its handler's ``@operation`` (``routes.contract``), and the schemas
from the models of the bodies (``routes.models``, ``core.submission.Submission``) by
pydantic. A route without ``@operation`` is an error, so the document names exactly the
routes. Built once per app, when first asked for. ``tests/system/test_openapi.py`` runs
schemathesis against the running service with it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import orjson
from aiohttp import hdrs, web
from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from .auth import scope_of
from .contract import (
    AUTH_ANSWERS,
    BEARER,
    JSON,
    SECURITY_SCHEMES,
    SHARED_HEADERS,
    Answer,
    Header,
    Operation,
    Param,
    declared,
    operation,
)

routes = web.RouteTableDef()

DESCRIPTION = (
    "Transactional mail through several providers with failover. Every /mail "
    "endpoint takes `Authorization: Bearer <key>` (made with `mailman keys create`); "
    "while the store holds no key at all, a loopback-only service is open. Every "
    "error is application/problem+json (RFC 9457). Every answer carries X-Request-Id."
)

_COMPONENTS = "#/components/schemas/"

Mode = Literal["validation", "serialization"]


class _Generator(GenerateJsonSchema):
    """pydantic's JSON Schema without a title on every field."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: Any) -> JsonSchemaValue:
        """A field's schema, and its default unless that is null (left out is left out)."""
        out = super().default_schema(schema)
        if "default" in out and out["default"] is None:
            del out["default"]
        return out


class _Schemas:
    """The bodies' JSON Schemas, generated together so that they share their components."""

    def __init__(self, wanted: Iterator[tuple[Any, Mode]]) -> None:
        pairs = list(dict.fromkeys(wanted))
        refs, defs = TypeAdapter.json_schemas(
            [(model, mode, TypeAdapter(model)) for model, mode in pairs],
            ref_template=_COMPONENTS + "{model}",
            schema_generator=_Generator,
        )
        names = _names(defs.get("$defs", {}))
        self.components = {names[key]: _tidy(schema) for key, schema in defs["$defs"].items()}
        self.components = _renamed(self.components, names)
        self._refs = {key: _renamed(schema, names) for key, schema in refs.items()}

    def ref(self, model: Any, mode: Mode) -> dict[str, Any]:
        return dict(self._refs[(model, mode)])


def _names(defs: Mapping[str, Any]) -> dict[str, str]:
    """Each component's name: its title (a model may set one), else the name pydantic gave."""
    return {key: str(schema.get("title", key)) for key, schema in defs.items()}


def _tidy(schema: dict[str, Any]) -> dict[str, Any]:
    """A component without its title (its name says it)."""
    return {k: v for k, v in schema.items() if k != "title"}


def _renamed(value: Any, names: Mapping[str, str]) -> Any:
    """``value`` with each ``$ref`` to a component under the component's name."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(_COMPONENTS):
                key = v.removeprefix(_COMPONENTS)
                v = _COMPONENTS + names.get(key, key)
            out[k] = _renamed(v, names)
        return out
    if isinstance(value, list):
        return [_renamed(v, names) for v in value]
    return value


def _models(op: Operation, scope_needed: bool) -> Iterator[tuple[Any, Mode]]:
    if op.body is not None:
        for model in op.body.models.values():
            yield model, "validation"
    for answer in _answers(op, scope_needed).values():
        if answer.model is not None:
            yield answer.model, "serialization"


def _answers(op: Operation, scope_needed: bool) -> dict[int, Answer]:
    answers = {**AUTH_ANSWERS, **op.answers} if scope_needed else dict(op.answers)
    return dict(sorted(answers.items()))


def _header(header: Header) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if header.required:
        out["required"] = True
    if header.description is not None:
        out["description"] = header.description
    out["schema"] = dict(header.schema)
    return out


def _answer(answer: Answer, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    headers: dict[str, Any] = {
        name: {"$ref": f"#/components/headers/{name}"} for name in answer.shared
    }
    headers.update({str(name): _header(h) for name, h in answer.headers.items()})
    if headers:
        out["headers"] = headers
    if answer.model is not None:
        out["content"] = {answer.media: {"schema": schemas.ref(answer.model, "serialization")}}
    elif answer.schema is not None:
        out["content"] = {answer.media: {"schema": dict(answer.schema)}}
    if answer.links:
        out["links"] = {
            name: {"operationId": link.operation_id, "parameters": dict(link.parameters)}
            for name, link in answer.links.items()
        }
    return out


def _parameter(param: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": param.name, "in": param.where}
    if param.required or param.where == "path":
        out["required"] = True
    if param.description is not None:
        out["description"] = param.description
    out["schema"] = dict(param.schema)
    return out


def _operation(op: Operation, scope_needed: bool, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.id, "summary": op.summary}
    if op.description is not None:
        out["description"] = op.description
    if op.security is not None:
        out["security"] = [dict(s) for s in op.security]
    elif not scope_needed:
        out["security"] = []  # public
    if op.parameters:
        out["parameters"] = [_parameter(p) for p in op.parameters]
    if op.body is not None:
        content: dict[str, Any] = {}
        for media, model in op.body.models.items():
            content[media] = {"schema": schemas.ref(model, "validation")}
            if op.body.example is not None and media == JSON:
                content[media]["example"] = dict(op.body.example)
        out["requestBody"] = {"required": op.body.required, "content": content}
    out["responses"] = {
        str(status): _answer(answer, schemas)
        for status, answer in _answers(op, scope_needed).items()
    }
    return out


def _operations(app: web.Application) -> Iterator[tuple[str, str, Operation, bool]]:
    """Each route's method, path, contract, and whether it needs a key."""
    for route in app.router.routes():
        if route.method in (hdrs.METH_HEAD, hdrs.METH_ANY) or route.resource is None:
            continue  # HEAD is GET's; any-method routes answer 405 for the others
        path = route.resource.canonical
        op = declared(route.handler)
        if op is None:
            raise LookupError(f"{route.method} {path} has no @operation")
        yield route.method.lower(), path, op, scope_of(route.handler) is not None


def document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes."""
    operations = list(_operations(app))
    schemas = _Schemas(pair for _, _, op, needed in operations for pair in _models(op, needed))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op, needed in operations:
        paths.setdefault(path, {})[method] = _operation(op, needed, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Mailman", "version": "1", "description": DESCRIPTION},
        "security": [{BEARER: []}],
        "paths": paths,
        "components": {
            "securitySchemes": {name: dict(s) for name, s in SECURITY_SCHEMES.items()},
            "headers": {name: _header(h) for name, h in SHARED_HEADERS.items()},
            "schemas": dict(sorted(schemas.components.items())),
        },
    }


#: Each app's document, as served (built at its first request).
_SERVED: weakref.WeakKeyDictionary[web.Application, bytes] = weakref.WeakKeyDictionary()


@routes.get("/openapi.json")
@operation(
    "openapi",
    "This document",
    answers={200: Answer("OpenAPI 3.1", schema={"type": "object"})},
)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (no key needed)."""
    body = _SERVED.get(request.app)
    if body is None:
        body = _SERVED[request.app] = orjson.dumps(document(request.app))
    return web.Response(body=body, content_type=JSON)
