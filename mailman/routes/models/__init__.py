"""The API's bodies as typed models, one module per concept: what each request takes and
each answer holds. ``routes.openapi`` generates the document's schemas from them.

Answers are ``TypedDict`` models: a handler builds its answer as one, so mypy holds it to
the model, and serialising it costs what a plain dict costs (``orjson``) on the hot path;
pydantic reads the same model for the schema. Request bodies are pydantic ``BaseModel``s
(``core.submission.Submission`` for ``POST /mail/send``).
"""
