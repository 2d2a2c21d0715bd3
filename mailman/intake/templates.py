"""Templates at acceptance, for every entry point: find the tenant's template, render it
with the caller's data, refuse what does not render (``ValidationFailed`` naming the field).

The rendered subject and bodies are the mail: they are validated like any submitted mail,
stored and sent, so a failover carries them to any provider.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from mailman.config import Config
from mailman.config.logging import get_logger
from mailman.core.model import TemplateUse
from mailman.core.templates import (
    MAX_NAME,
    Budget,
    Parts,
    RenderedMail,
    RenderFailed,
    TemplateSyntaxError,
    name_problem,
    parse_parts,
    render_mail,
    version_problem,
)
from mailman.core.validation import FieldError, ValidationFailed
from mailman.store import Store, TemplateRecord

from .guard import guarded

log = get_logger("mailman.intake")

#: Parsed templates kept per process (by id and version: a version never changes).
_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Rendered:
    """A mail's parts rendered from a template, and which template and version."""

    mail: RenderedMail
    used: TemplateUse


def syntax_error(exc: TemplateSyntaxError) -> FieldError:
    """The field error a template that does not parse is answered with."""
    return FieldError(exc.part or "template", f"is not a valid template: {exc}")


class Renderer:
    """Finds and renders a tenant's templates (one per process side that accepts mail)."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        self._parsed: OrderedDict[tuple[str, int], Parts] = OrderedDict()

    async def find(
        self,
        tenant: str,
        ref: object,
        version: object = None,
        *,
        field: str = "template",
        version_field: str = "template_version",
    ) -> TemplateRecord:
        """The tenant's template ``ref`` (id or name) at ``version`` (None: the latest);
        ``ValidationFailed`` naming ``field`` if there is none."""
        errors = []
        if (problem := name_problem(ref)) is not None:
            errors.append(FieldError(field, problem))
        if version is not None and (problem := version_problem(version)) is not None:
            errors.append(FieldError(version_field, problem))
        if errors:
            raise ValidationFailed(errors)
        assert isinstance(ref, str) and (version is None or isinstance(version, int))
        store = self.store
        found = await guarded(
            store, self.config.store_timeout, store.template(tenant, ref, version)
        )
        if found is None:
            latest = None
            if version is not None:
                timeout = self.config.store_timeout
                latest = await guarded(store, timeout, store.template(tenant, ref))
            if latest is not None:
                raise ValidationFailed(
                    [FieldError(version_field, f"template {ref!r} has no version {version}")]
                )
            raise ValidationFailed([FieldError(field, f"there is no template {ref!r}")])
        return found

    def parts(self, template: TemplateRecord) -> Parts:
        key = (template.id, template.version)
        parts = self._parsed.get(key)
        if parts is None:
            try:
                parts = parse_parts(template.subject, template.html, template.text)
            except TemplateSyntaxError as exc:  # stored before a stricter parser: say so
                raise ValidationFailed([syntax_error(exc)]) from None
            self._parsed[key] = parts
            if len(self._parsed) > _CACHE_SIZE:
                self._parsed.popitem(last=False)
        else:
            self._parsed.move_to_end(key)
        return parts

    def render(
        self, template: TemplateRecord, data: object, *, data_field: str = "data"
    ) -> Rendered:
        """``template`` rendered with ``data`` (an object); ``ValidationFailed`` naming
        ``data_field`` for data that is not an object or misses a printed variable, and
        ``template`` for a rendering over the time or size allowed."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValidationFailed([FieldError(data_field, "must be an object")])
        budget = Budget(
            chars=self.config.max_body_bytes, seconds=self.config.template_render_seconds
        )
        try:
            mail = render_mail(self.parts(template), data, budget)
        except RenderFailed as exc:
            log.debug("template.refused", template=template.id, reason=exc.reason)
            if exc.missing:
                message = "misses what the template prints: " + ", ".join(exc.missing)
                raise ValidationFailed([FieldError(data_field, message)]) from None
            raise ValidationFailed(
                [FieldError("template", f"does not render: {exc.reason}")]
            ) from None
        used = TemplateUse(id=template.id, name=template.name, version=template.version)
        return Rendered(mail=mail, used=used)


__all__ = ["MAX_NAME", "Rendered", "Renderer", "name_problem", "syntax_error", "version_problem"]
