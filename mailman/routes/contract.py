"""Each endpoint's contract, declared once next to its handler: ``@operation(...)``.

The route decorator says the method and the path; ``@operation`` records everything else
the OpenAPI document says of the endpoint: its id and summary, who may call it, its
parameters, the model of its body, and its answers by status (each with its model, headers
and links). ``routes.openapi`` renders the document from an app's routes and these records,
so nothing is said twice. A handler marked ``@requires(scope)`` needs the document's key
(bearer) and answers 401, 403 and 503 as ``AUTH_ANSWERS`` say unless it says otherwise;
one without a scope is public unless ``security`` names how it authenticates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from mailman.core.validation import FieldError

from .errors import IDEMPOTENCY_KEY
from .models.common import Problem

JSON = "application/json"
PROBLEM = "application/problem+json"

#: The header on a repeat answered from the first answer (``Idempotency-Key``).
IDEMPOTENT_REPLAYED = "Idempotent-Replayed"

#: A security scheme's name, as ``components.securitySchemes`` names it.
BEARER = "bearerAuth"
MAILGUN_BASIC = "mailgunBasic"

#: The schemes, rendered under ``components.securitySchemes``.
SECURITY_SCHEMES: Mapping[str, Mapping[str, Any]] = {
    BEARER: {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `mailman keys create` (mm_...)",
    },
    MAILGUN_BASIC: {
        "type": "http",
        "scheme": "basic",
        "description": "Mailgun's auth: user `api`, password a Mailman key",
    },
}

_STRING: Mapping[str, Any] = {"type": "string"}
_SECONDS: Mapping[str, Any] = {"type": "string", "pattern": "^[0-9]+$"}


@dataclass(frozen=True, slots=True)
class Header:
    """A header of an answer."""

    description: str | None = None
    schema: Mapping[str, Any] = field(default_factory=lambda: _STRING)
    required: bool = False


#: Headers several answers carry: rendered once under ``components.headers``, and
#: referred to by name (``Answer.shared``).
SHARED_HEADERS: Mapping[str, Header] = {
    "Retry-After": Header("Seconds to wait before trying again", _SECONDS, required=True),
    "WWW-Authenticate": Header("The Bearer challenge", required=True),
    "RateLimit-Limit": Header("The key's mails per second (also its burst)"),
    "RateLimit-Remaining": Header("Mails the key may send at once right now", _SECONDS),
    "RateLimit-Reset": Header("Seconds until the key's bucket is full again", _SECONDS),
}
RATE_HEADERS: tuple[str, ...] = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")

#: An accepted submission's own header beside its rate (``RATE_HEADERS``): a repeat.
ACCEPTED_HEADERS: Mapping[str, Header] = {
    IDEMPOTENT_REPLAYED: Header(
        "Present on a repeat answered from the first", {"type": "string", "enum": ["true"]}
    ),
}


@dataclass(frozen=True, slots=True)
class Link:
    """An OpenAPI link: the operation an answer leads to, and where its parameters come from."""

    operation_id: str
    parameters: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """One status's answer: its body (a model, or a plain schema), headers and links."""

    description: str
    #: The body's model (a ``TypedDict``), or None: see ``schema``.
    model: Any = None
    #: A body without a model (text, HTML, a constant); None with no model: no body.
    schema: Mapping[str, Any] | None = None
    media: str = JSON
    #: Headers of ``SHARED_HEADERS``, by name.
    shared: tuple[str, ...] = ()
    #: Headers of this answer alone.
    headers: Mapping[str, Header] = field(default_factory=dict)
    links: Mapping[str, Link] = field(default_factory=dict)


def problem(description: str, *shared: str) -> Answer:
    """An error answer as problem details (RFC 9457), with the named shared headers."""
    return Answer(description, Problem, media=PROBLEM, shared=shared)


#: What every operation that needs a key may answer besides its own answers.
AUTH_ANSWERS: Mapping[int, Answer] = {
    401: problem("No key, or an unknown or revoked key", "WWW-Authenticate"),
    403: problem("The key lacks the scope this endpoint needs"),
    503: problem("The store does not answer; try again after Retry-After", "Retry-After"),
}


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter in the path, the query or a header."""

    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str | None = None
    required: bool = False


def idempotency_key(description: str) -> Param:
    """The optional ``Idempotency-Key`` header, as the intake takes it."""
    return Param(
        IDEMPOTENCY_KEY,
        "header",
        {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]*$"},
        description,
    )


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: its model for each media type it may come as."""

    models: Mapping[str, Any]
    required: bool = True
    example: Mapping[str, Any] | None = None

    @classmethod
    def json(cls, model: Any, *, required: bool = True, example: Any = None) -> Body:
        return cls({JSON: model}, required, example)


#: A security requirement: scheme names (``SECURITY_SCHEMES``) to their scopes.
Security = Mapping[str, list[str]]


@dataclass(frozen=True, slots=True)
class Operation:
    """What the document says of one endpoint, beside its method and path."""

    id: str
    summary: str
    answers: Mapping[int, Answer]
    description: str | None = None
    parameters: tuple[Param, ...] = ()
    body: Body | None = None
    #: How the caller authenticates, any one of them; None: as ``@requires`` says.
    security: tuple[Security, ...] | None = None


_ATTRIBUTE = "__mailman_operation__"
H = TypeVar("H", bound=Callable[..., object])


def operation(
    id: str,
    summary: str,
    *,
    answers: Mapping[int, Answer],
    description: str | None = None,
    parameters: tuple[Param, ...] = (),
    body: Body | None = None,
    security: tuple[Security, ...] | None = None,
) -> Callable[[H], H]:
    """Record the endpoint's contract on its handler (see the module's notes)."""
    recorded = Operation(id, summary, answers, description, parameters, body, security)

    def record(handler: H) -> H:
        setattr(handler, _ATTRIBUTE, recorded)
        return handler

    return record


def declared(handler: object) -> Operation | None:
    """The contract ``@operation`` recorded on ``handler``; None if there is none."""
    found = getattr(handler, _ATTRIBUTE, None)
    return found if isinstance(found, Operation) else None


@dataclass(frozen=True, slots=True)
class Paging:
    """A listing's pages: ``limit`` (1 to ``maximum``, ``default`` when not given) and an
    opaque ``cursor`` of ``cursor_format`` (each listing decodes its own)."""

    default: int
    maximum: int
    cursor_format: str

    @property
    def params(self) -> tuple[Param, Param]:
        """``limit`` and ``cursor``, as the document shows them."""
        return (
            Param(
                "limit",
                "query",
                {"type": "integer", "minimum": 1, "maximum": self.maximum, "default": self.default},
            ),
            Param(
                "cursor",
                "query",
                {"type": "string", "format": self.cursor_format},
                "From the previous page's `next`, as it is (opaque): nothing else is a cursor",
            ),
        )

    def limit(self, params: Mapping[str, str], errors: list[FieldError]) -> int:
        """The page size ``params`` ask for; a bad one is added to ``errors``."""
        raw = params.get("limit")
        if raw is None:
            return self.default
        if raw.isdigit() and 1 <= int(raw) <= self.maximum:
            return int(raw)
        errors.append(FieldError("limit", f"must be a whole number from 1 to {self.maximum}"))
        return self.default
