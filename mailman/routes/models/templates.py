"""The template endpoints' bodies: ``POST /templates`` and ``PUT /templates/{ref}``, a
template as shown, and the list."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from mailman.core import templates
from mailman.core.validation import (
    FieldError,
    ValidationFailed,
)

from .common import Time, validation_failed

_PART = "Handlebars: {{name}} (HTML-escaped in html), {{{raw}}}, {{#if}}, {{#each}}..."


#: At least one of html and text, not empty.
_A_BODY: list[JsonValue] = [
    {"required": [name], "properties": {name: {"type": "string", "minLength": 1}}}
    for name in ("html", "text")
]


def _object(data: Any) -> Any:
    if not isinstance(data, dict):
        raise PydanticCustomError("not_an_object", "must be a JSON object")
    return data


class TemplateVersionBody(BaseModel):
    """``PUT /templates/{ref}``: the template's next version. At least one of ``html``
    and ``text``; each part must parse (a syntax error is a 422 naming the part, the line
    and the column)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="TemplateVersion",
        json_schema_extra={"anyOf": _A_BODY},
    )

    subject: Annotated[
        str | None, Field(description=f"The subject template ({_PART}); null: the default")
    ] = None
    html: Annotated[str | None, Field(description=f"The HTML body's template ({_PART})")] = None
    text: Annotated[str | None, Field(description="The plain-text body's template")] = None

    @model_validator(mode="before")
    @classmethod
    def _whole(cls, data: Any) -> Any:
        return _object(data)

    @classmethod
    def read(cls, body: object) -> TemplateVersionBody:
        """What ``body`` (decoded JSON) says, every part parsed; ``ValidationFailed``
        naming what is wrong."""
        try:
            model = cls.model_validate(body)
        except ValidationError as exc:
            raise _failed(exc) from None
        model.check()
        return model

    def check(self) -> None:
        """Each part parses, and there is a body."""
        errors: list[FieldError] = []
        if not (self.html or self.text):
            errors.append(FieldError("html", "give html or text (or both), not empty"))
        for name in ("subject", "html", "text"):
            source = getattr(self, name)
            if source is None:
                continue
            try:
                templates.parse(source, name)
            except templates.TemplateSyntaxError as exc:
                errors.append(FieldError(name, f"is not a valid template: {exc}"))
        if errors:
            raise ValidationFailed(errors)


class TemplateBody(TemplateVersionBody):
    """``POST /templates``: a new template (its version 1), named."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, title="NewTemplate", json_schema_extra={"anyOf": _A_BODY}
    )

    name: Annotated[
        str,
        Field(
            description="Unique among the tenant's templates; what POST /mail/send's "
            "template (and SendGrid's template_id, Mailgun's template) names",
            min_length=1,
            max_length=templates.MAX_NAME,
            pattern="^[A-Za-z0-9._-]+$",
        ),
    ]

    @classmethod
    def read(cls, body: object) -> TemplateBody:
        try:
            model = cls.model_validate(body)
        except ValidationError as exc:
            raise _failed(exc) from None
        model.check()
        return model


def _failed(exc: ValidationError) -> ValidationFailed:
    return validation_failed(
        exc, {"string_pattern_mismatch": "may hold only ASCII letters, digits, '.', '_' and '-'"}
    )


class TemplateLinks(TypedDict):
    self: str


class TemplateShown(TypedDict):
    """One version of a template: its parts as written."""

    id: Annotated[str, Field(description="The template's id, the same for every version")]
    name: str
    version: Annotated[int, Field(ge=1)]
    subject: str | None
    html: str | None
    text: str | None
    created_at: Annotated[Time, Field(description="When this version was made")]
    links: list[TemplateLinks]


class TemplateAnswer(TypedDict):
    """A template, at one version."""

    template: TemplateShown


class TemplateListed(TypedDict):
    id: str
    name: str
    version: Annotated[int, Field(description="Its latest version")]
    created_at: Time
    links: list[TemplateLinks]


class TemplateList(TypedDict):
    """The caller's tenant's templates, by name, each at its latest version."""

    templates: list[TemplateListed]
