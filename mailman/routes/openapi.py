"""The contract: an OpenAPI 3.1 document for every endpoint, served at ``GET /openapi.json``.

Written by hand next to the routes; ``tests/system/test_openapi.py`` keeps the two in
step (every route documented, nothing documented that is not routed), and
schemathesis fuzzes the running service against it in CI.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from mailman.core.model import Check, EventKind, Outcome, Status
from mailman.core.validation import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_CONTENT_ID,
    MAX_FILENAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_METADATA_VALUE,
    MAX_SCHEDULE_SECONDS,
    MAX_TAG,
    MAX_TAGS,
)

from .compat_sendgrid import MAIL_IDS_HEADER as SENDGRID_MAIL_IDS
from .compat_sendgrid import MAX_PERSONALIZATIONS
from .compat_sendgrid import MESSAGE_ID_HEADER as SENDGRID_MESSAGE_ID
from .compat_sendgrid import PATH as SENDGRID_PATH
from .errors import IDEMPOTENCY_KEY
from .mail import DEFAULT_PAGE, IDEMPOTENT_REPLAYED, MAX_PAGE

routes = web.RouteTableDef()

_ULID = "^[0-9A-HJKMNP-TV-Z]{26}$"
_PROBLEM = "application/problem+json"
_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(description: str, media: str, schema: str, headers: tuple[str, ...]) -> dict[str, Any]:
    """An answer with a body of ``schema`` as ``media`` and the named ``headers``."""
    answer: dict[str, Any] = {
        "description": description,
        "content": {media: {"schema": _ref(schema)}},
    }
    if headers:
        answer["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return answer


def _problem(description: str, *headers: str) -> dict[str, Any]:
    """An error answer as problem details (RFC 9457)."""
    return _answer(description, _PROBLEM, "Problem", headers)


_STRING_OR_LIST = {
    "oneOf": [
        {"type": "string", "description": "one address, optionally with a display name"},
        {"type": "array", "items": {"type": "string"}},
    ]
}

_ADDRESS = {
    "type": "object",
    "required": ["email"],
    "properties": {"email": {"type": "string"}, "name": {"type": "string"}},
}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

_LINKS = {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}}

_STATUSES = [s.value for s in Status]

#: The headers of an accepted submission, beside its own: a repeat, and the caller's rate.
_ACCEPTED_HEADERS = {
    IDEMPOTENT_REPLAYED: {
        "schema": {"type": "string", "enum": ["true"]},
        "description": "Present on a repeat answered from the first",
    },
    **{
        name: {"$ref": f"#/components/headers/{name}"}
        for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")
    },
}

_COMMON_ERRORS = {
    "401": _problem("No key, or an unknown or revoked key", "WWW-Authenticate"),
    "403": _problem("The key lacks the scope this endpoint needs"),
    "503": _problem("The store does not answer; try again after Retry-After", "Retry-After"),
}

_MAIL_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The mail's id (a ULID), as POST /mail/send answered it",
    "schema": {"type": "string", "pattern": _ULID},
}

_MARK_ERRORS = {
    **_COMMON_ERRORS,
    "404": _problem("No such mail (or another tenant's)"),
    "409": _problem("The mail is final in the other status"),
}


def _webhook(provider: str, summary: str, body: dict[str, Any]) -> dict[str, Any]:
    """A provider's webhook (routes/webhooks.py): public, signed, 404 while its key is unset."""
    return {
        "post": {
            "operationId": f"{provider}Events",
            "summary": summary,
            "description": "For the provider, not for API clients: no API key, but signed.",
            "security": [],
            "requestBody": {"required": True, "content": {_JSON: {"schema": body}}},
            "responses": {
                "200": {
                    "description": "Handled: counts of the events kept, seen before, for "
                    "mails this service does not have, and skipped",
                    "content": {_JSON: {"schema": _ref("WebhookAnswer")}},
                },
                "400": _problem("Not JSON, or not the provider's event shape"),
                "401": {
                    **_problem("No signature"),
                    "headers": {
                        "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
                    },
                },
                "403": _problem("A signature that does not verify, or a stale timestamp"),
                "404": _problem("Off: no webhook key is configured for this provider"),
                "408": _problem("The request body stalled"),
                "413": _problem("The body is too large"),
                "415": _problem("A Content-Encoding other than gzip or deflate"),
                "503": _problem(
                    "The store does not answer; try again after Retry-After", "Retry-After"
                ),
            },
        }
    }


_SENDGRID_EVENTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["event"],
        "properties": {
            "event": {"type": "string"},
            "email": {"type": "string"},
            "timestamp": {"type": "integer"},
            "sg_event_id": {"type": "string"},
            "sg_message_id": {"type": "string"},
            "mail_id": {"type": "string", "description": "the custom_args Mailman sends"},
            "type": {"type": "string", "enum": ["bounce", "blocked"]},
            "reason": {"type": "string"},
            "response": {"type": "string"},
        },
    },
}

_MAILGUN_EVENT = {
    "type": "object",
    "required": ["signature", "event-data"],
    "properties": {
        "signature": {
            "type": "object",
            "required": ["timestamp", "token", "signature"],
            "properties": {
                "timestamp": {"type": "string"},
                "token": {"type": "string"},
                "signature": {"type": "string"},
            },
        },
        "event-data": {
            "type": "object",
            "required": ["event", "timestamp"],
            "properties": {
                "event": {"type": "string"},
                "timestamp": {"type": "number"},
                "recipient": {"type": "string"},
                "severity": {"type": "string", "enum": ["permanent", "temporary"]},
                "reason": {"type": "string"},
                "user-variables": {"type": "object"},
                "message": {"type": "object"},
            },
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Mailman",
        "version": "1",
        "description": (
            "Transactional mail through several providers with failover. Every /mail "
            "endpoint takes `Authorization: Bearer <key>` (made with `mailman keys create`); "
            "while the store holds no key at all, a loopback-only service is open. Every "
            "error is application/problem+json (RFC 9457). Every answer carries X-Request-Id."
        ),
    },
    "security": [{"bearerAuth": []}],
    "paths": {
        "/mail/send": {
            "post": {
                "operationId": "sendMail",
                "summary": "Submit a mail; committed to the store before the 201",
                "description": "Needs the `send` scope. Counts against the key's rate limit.",
                "parameters": [
                    {
                        "name": IDEMPOTENCY_KEY,
                        "in": "header",
                        "required": False,
                        "description": (
                            "1-255 printable ASCII characters, scoped to the tenant and kept "
                            "MAILMAN_IDEMPOTENCY_TTL_SECONDS (24 h by default). A repeat with "
                            "the same body answers the first answer again."
                        ),
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        _JSON: {
                            "schema": _ref("MailSubmission"),
                            "example": {
                                "to": ["Ann <ann@example.com>"],
                                "from": "Mailman <noreply@example.com>",
                                "subject": "Welcome",
                                "content": "Hello Ann, welcome aboard!",
                            },
                        }
                    },
                },
                "responses": {
                    "201": {
                        "description": "Accepted (or, with Idempotent-Replayed, accepted before)",
                        "headers": {
                            "Location": {
                                "required": True,
                                "schema": {"type": "string"},
                                "description": "The mail: /mail/{id}",
                            },
                            **_ACCEPTED_HEADERS,
                        },
                        "content": {_JSON: {"schema": _ref("Accepted")}},
                        "links": {
                            name: {
                                "operationId": operation,
                                "parameters": {"id": "$response.body#/mail/id"},
                            }
                            for name, operation in (
                                ("ShowMail", "showMail"),
                                ("MailStatus", "mailStatus"),
                                ("MarkSent", "markSent"),
                                ("MarkFailed", "markFailed"),
                            )
                        },
                    },
                    "400": _problem("Malformed JSON, a bad body encoding or Idempotency-Key"),
                    **_COMMON_ERRORS,
                    "408": _problem("The request body stalled"),
                    "409": _problem(
                        "A request with this Idempotency-Key is still being processed",
                        "Retry-After",
                    ),
                    "413": _problem(
                        "The body (decoded) is larger than MAILMAN_MAX_BODY_BYTES, or the "
                        f"attachments are over {MAX_ATTACHMENT_BYTES} bytes in all, decoded "
                        "(type too-large; errors names attachments)"
                    ),
                    "415": _problem("Not application/json in UTF-8, or an unknown encoding"),
                    "422": _problem("Invalid fields (see errors), or a reused Idempotency-Key"),
                    "429": _problem(
                        "Over the key's rate limit",
                        "Retry-After",
                        "RateLimit-Limit",
                        "RateLimit-Remaining",
                        "RateLimit-Reset",
                    ),
                    "503": _problem(
                        "The store does not answer, or the backlog of unsent mail is over "
                        "MAILMAN_BACKLOG_LIMIT (type backlog-full); nothing was stored, try "
                        "again after Retry-After",
                        "Retry-After",
                    ),
                },
            }
        },
        "/mail": {
            "get": {
                "operationId": "listMails",
                "summary": "The caller's mails, newest first, a page at a time",
                "description": "Needs `read` (or `send`); admin keys list every tenant's mails.",
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": _STATUSES},
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "description": "created at or after this RFC 3339 time",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "until",
                        "in": "query",
                        "description": "created before this RFC 3339 time",
                        "schema": {"type": "string", "format": "date-time"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": DEFAULT_PAGE,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "From the previous page's `next`; opaque",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page; `next` is absent on the last one",
                        "content": {_JSON: {"schema": _ref("MailList")}},
                    },
                    "400": _problem("A bad query parameter (see errors)"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/mail/{id}": {
            "get": {
                "operationId": "showMail",
                "summary": "The whole mail: what was submitted, status, provider, attempts",
                "parameters": [_MAIL_ID],
                "responses": {
                    "200": {
                        "description": "The mail",
                        "content": {_JSON: {"schema": _ref("MailDetail")}},
                    },
                    **_COMMON_ERRORS,
                    "404": _problem("No such mail (or another tenant's)"),
                },
            }
        },
        "/mail/{id}/status": {
            "get": {
                "operationId": "mailStatus",
                "summary": "The mail's status",
                "parameters": [_MAIL_ID],
                "responses": {
                    "200": {
                        "description": "The status",
                        "content": {_JSON: {"schema": _ref("StatusAnswer")}},
                    },
                    **_COMMON_ERRORS,
                    "404": _problem("No such mail (or another tenant's)"),
                },
            }
        },
        "/mail/{id}/retry": {
            "post": {
                "operationId": "retryMail",
                "summary": "Send a failed mail again: a new round, the same id (needs `send`)",
                "description": "The mail goes back to `queued`; its history stays. "
                "409 unless the mail is `failed`.",
                "parameters": [_MAIL_ID],
                "responses": {
                    "202": {
                        "description": "Queued again",
                        "content": {_JSON: {"schema": _ref("StatusAnswer")}},
                    },
                    **_COMMON_ERRORS,
                    "404": _problem("No such mail (or another tenant's)"),
                    "409": _problem("The mail is not failed"),
                },
            }
        },
        "/mail/{id}/sent": {
            "post": {
                "operationId": "markSent",
                "summary": "Mark a mail sent by hand (bookkeeping; needs `admin`)",
                "parameters": [_MAIL_ID],
                "responses": {
                    "200": {
                        "description": "Moved, or already sent",
                        "content": {_JSON: {"schema": _ref("StatusAnswer")}},
                    },
                    **_MARK_ERRORS,
                },
            }
        },
        "/mail/{id}/failed": {
            "post": {
                "operationId": "markFailed",
                "summary": "Mark a mail failed by hand (bookkeeping; needs `admin`)",
                "parameters": [_MAIL_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        _JSON: {
                            "schema": {
                                "type": "object",
                                "properties": {"reason": {"type": "string"}},
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "Moved, or already failed",
                        "content": {_JSON: {"schema": _ref("StatusAnswer")}},
                    },
                    "400": _problem("Malformed JSON or a bad body encoding"),
                    **_MARK_ERRORS,
                    "408": _problem("The request body stalled"),
                    "413": _problem("The body is too large"),
                    "415": _problem("Not application/json"),
                    "422": _problem("reason is not a string, or the body not an object"),
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "For load balancers: the store answers",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Healthy",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "properties": {"status": {"const": "ok"}},
                                }
                            }
                        },
                    },
                    "503": _problem("The store does not answer", "Retry-After"),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process serves (it looks at nothing else)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Alive",
                        "content": {_JSON: {"schema": _ref("Health")}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the store answers, the broker answers where this "
                "process uses one, and at least one provider's breaker is not open",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Ready",
                        "content": {
                            _JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "checks"],
                                    "properties": {
                                        "status": {"const": "ready"},
                                        "checks": _ref("ReadyChecks"),
                                    },
                                }
                            }
                        },
                    },
                    "503": {
                        "description": "Not ready; not_ready names what",
                        "content": {
                            _PROBLEM: {
                                "schema": {
                                    "allOf": [
                                        _ref("Problem"),
                                        {
                                            "type": "object",
                                            "required": ["not_ready", "checks"],
                                            "properties": {
                                                "not_ready": {
                                                    "type": "array",
                                                    "items": {
                                                        "enum": ["store", "broker", "providers"]
                                                    },
                                                },
                                                "checks": _ref("ReadyChecks"),
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text format 0.0.4): HTTP figures of the API "
                "processes, delivery figures read from the store",
                "security": [],
                "responses": {
                    "200": {
                        "description": "The metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/webhooks/sendgrid": _webhook(
            "sendgrid",
            "SendGrid's Event Webhook: ECDSA-signed (X-Twilio-Email-Event-Webhook-Signature "
            "and -Timestamp headers) arrays of events",
            _SENDGRID_EVENTS,
        ),
        "/webhooks/mailgun": _webhook(
            "mailgun", "A Mailgun webhook: one HMAC-signed event", _MAILGUN_EVENT
        ),
    },
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key from `mailman keys create` (mm_...)",
            }
        },
        "headers": {
            "Retry-After": {
                "required": True,
                "description": "Seconds to wait before trying again",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "WWW-Authenticate": {
                "required": True,
                "description": "The Bearer challenge",
                "schema": {"type": "string"},
            },
            "RateLimit-Limit": {
                "description": "The key's mails per second (also its burst)",
                "schema": {"type": "string"},
            },
            "RateLimit-Remaining": {
                "description": "Mails the key may send at once right now",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "RateLimit-Reset": {
                "description": "Seconds until the key's bucket is full again",
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
        },
        "schemas": {
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"const": "ok"}},
            },
            "ReadyChecks": {
                "type": "object",
                "required": ["store", "broker", "providers"],
                "properties": {
                    "store": {"enum": ["ok", "unreachable"]},
                    "broker": {"enum": ["ok", "unreachable", "not-used"]},
                    "providers": {
                        "type": "object",
                        "description": "each provider's breaker state, as a call would meet it",
                        "additionalProperties": {
                            "enum": ["closed", "open", "half_open", "unknown"]
                        },
                    },
                },
            },
            "WebhookAnswer": {
                "type": "object",
                "required": ["recorded", "duplicate", "unknown", "skipped"],
                "properties": {
                    k: {"type": "integer", "minimum": 0}
                    for k in ("recorded", "duplicate", "unknown", "skipped")
                },
            },
            "MailSubmission": {
                "type": "object",
                "required": ["to", "from"],
                "properties": {
                    "to": _STRING_OR_LIST,
                    "cc": _STRING_OR_LIST,
                    "bcc": _STRING_OR_LIST,
                    "from": {"type": "string"},
                    "reply_to": {"type": "string"},
                    "subject": {"type": "string"},
                    "content": {"type": "string", "description": "plain text (same as text)"},
                    "text": {"type": "string"},
                    "html": {"type": "string"},
                    "callback_url": {
                        "type": "string",
                        "maxLength": 2048,
                        "description": "Where each change of the mail's status is POSTed, "
                        "signed (Mailman-Signature). https, to a public address; needs "
                        "MAILMAN_CALLBACK_SECRET on the server (README: Status callbacks)",
                    },
                    "headers": {
                        "type": "object",
                        "maxProperties": MAX_HEADERS,
                        "additionalProperties": {"type": "string", "maxLength": MAX_HEADER_VALUE},
                        "description": "Custom headers: names X-... (not X-SG-, X-SMTPAPI, "
                        "X-Mailgun- or X-Mailman-), values printable ASCII",
                    },
                    "tags": {
                        "type": "array",
                        "maxItems": MAX_TAGS,
                        "items": {"type": "string", "minLength": 1, "maxLength": MAX_TAG},
                        "description": "SendGrid categories, Mailgun o:tag; no duplicates",
                    },
                    "metadata": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "string",
                            "maxLength": MAX_METADATA_VALUE,
                        },
                        "description": "String map (SendGrid custom_args, Mailgun v: "
                        "variables); keys of A-Z a-z 0-9 _ . -, mail_id reserved",
                    },
                    "attachments": {
                        "type": "array",
                        "maxItems": MAX_ATTACHMENTS,
                        "items": _ref("AttachmentSubmission"),
                        "description": f"Files, at most {MAX_ATTACHMENT_BYTES} bytes in all "
                        "(decoded); over that the answer is 413",
                    },
                    "send_at": {
                        "type": "string",
                        "format": "date-time",
                        "description": "When to send (RFC 3339 with its offset, at most "
                        f"{MAX_SCHEDULE_SECONDS // 3600} hours ahead): the mail waits "
                        "'scheduled' till then; a time already past sends at once",
                    },
                },
            },
            "AttachmentSubmission": {
                "type": "object",
                "required": ["filename", "content"],
                "properties": {
                    "filename": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_FILENAME,
                        "description": "No path, no control characters, no double quote",
                    },
                    "content": {
                        "type": "string",
                        "minLength": 1,
                        "contentEncoding": "base64",
                        "description": "The file's bytes, standard base64 (padding optional, "
                        "no line breaks)",
                    },
                    "content_type": {
                        "type": "string",
                        "description": "type/subtype without parameters, not multipart/* or "
                        "message/*; default: guessed from filename, else "
                        "application/octet-stream",
                    },
                    "disposition": {"enum": ["attachment", "inline"], "default": "attachment"},
                    "content_id": {
                        "type": "string",
                        "maxLength": MAX_CONTENT_ID + 2,
                        "description": "Required for inline (the HTML's cid:...), refused for "
                        "attachment; A-Z a-z 0-9 ! $ * + = _ ~ . @ -, surrounding <> dropped",
                    },
                },
            },
            "AttachmentShown": {
                "type": "object",
                "description": "A file as GET /mail/{id} shows it: never its content",
                "required": ["filename", "content_type", "disposition", "size"],
                "properties": {
                    "filename": {"type": "string"},
                    "content_type": {"type": "string"},
                    "disposition": {"enum": ["attachment", "inline"]},
                    "content_id": {"type": "string"},
                    "size": {"type": "integer", "minimum": 1, "description": "bytes, decoded"},
                },
            },
            "Accepted": {
                "type": "object",
                "required": ["mail"],
                "properties": {
                    "mail": {
                        "type": "object",
                        "required": ["id", "status", "links"],
                        "properties": {
                            "id": {"type": "string"},
                            "status": {"enum": ["queued", "scheduled"]},
                            "links": _LINKS,
                        },
                    }
                },
            },
            "StatusAnswer": {
                "type": "object",
                "required": ["mail"],
                "properties": {
                    "mail": {
                        "type": "object",
                        "required": ["id", "status", "links"],
                        "properties": {
                            "id": {"type": "string"},
                            "status": {"type": "string", "enum": _STATUSES},
                            "links": _LINKS,
                        },
                    }
                },
            },
            "MailList": {
                "type": "object",
                "required": ["mails"],
                "properties": {
                    "mails": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "status", "created_at", "links"],
                            "properties": {
                                "id": {"type": "string"},
                                "status": {"type": "string", "enum": _STATUSES},
                                "created_at": {"type": "string", "format": "date-time"},
                                "links": _LINKS,
                            },
                        },
                    },
                    "next": {"type": "string", "description": "The next page's path"},
                },
            },
            "MailDetail": {
                "type": "object",
                "required": ["mail"],
                "properties": {
                    "mail": {
                        "type": "object",
                        "required": [
                            "id",
                            "status",
                            "created_at",
                            "updated_at",
                            "submitted",
                            "attempts",
                            "links",
                        ],
                        "properties": {
                            "id": {"type": "string"},
                            "status": {"type": "string", "enum": _STATUSES},
                            "provider": {"type": ["string", "null"]},
                            "provider_message_id": {"type": ["string", "null"]},
                            "reason": {"type": ["string", "null"]},
                            "created_at": {"type": "string", "format": "date-time"},
                            "updated_at": {"type": "string", "format": "date-time"},
                            "submitted": {
                                "type": "object",
                                "required": ["from", "to", "subject"],
                                "properties": {
                                    "from": _ADDRESS,
                                    "to": {"type": "array", "items": _ADDRESS},
                                    "cc": {"type": "array", "items": _ADDRESS},
                                    "bcc": {"type": "array", "items": _ADDRESS},
                                    "reply_to": _ADDRESS,
                                    "subject": {"type": "string"},
                                    "text": {"type": "string"},
                                    "html": {"type": "string"},
                                    "callback_url": {"type": "string"},
                                    "headers": _STRING_MAP,
                                    "tags": {"type": "array", "items": {"type": "string"}},
                                    "metadata": _STRING_MAP,
                                    "attachments": {
                                        "type": "array",
                                        "items": _ref("AttachmentShown"),
                                    },
                                    "send_at": {"type": "string", "format": "date-time"},
                                },
                            },
                            "attempts": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["provider", "round", "at", "outcome"],
                                    "properties": {
                                        "provider": {"type": "string"},
                                        "round": {"type": "integer"},
                                        "at": {"type": "string", "format": "date-time"},
                                        "outcome": {
                                            "type": "string",
                                            "description": "pending: the call is in "
                                            "flight; unknown: no answer (a timeout, or "
                                            "the process died mid-call): the provider "
                                            "may have taken the mail",
                                            "enum": [o.value for o in Outcome],
                                        },
                                        "reason": {"type": ["string", "null"]},
                                        "message_id": {"type": ["string", "null"]},
                                        "checked": {
                                            "description": "for an unknown attempt: what "
                                            "asking the provider found (null: not asked)",
                                            "type": ["string", "null"],
                                            "enum": [*(c.value for c in Check), None],
                                        },
                                    },
                                },
                            },
                            "events": {
                                "description": "what the provider reported after taking "
                                "the mail (its webhooks), oldest first",
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["provider", "event", "at"],
                                    "properties": {
                                        "provider": {"type": "string"},
                                        "event": {
                                            "type": "string",
                                            "enum": [k.value for k in EventKind],
                                        },
                                        "at": {"type": "string", "format": "date-time"},
                                        "bounce": {
                                            "type": ["string", "null"],
                                            "enum": ["hard", "soft", None],
                                        },
                                        "reason": {"type": ["string", "null"]},
                                        "recipient": {"type": ["string", "null"]},
                                    },
                                },
                            },
                            "links": _LINKS,
                        },
                    }
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "errors": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "message"],
                            "properties": {
                                "field": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}

# --- the dashboard (routes/dashboard.py) -----------------------------------------------

_COUNT = {"type": "integer", "minimum": 0}
_WHEN = {"type": "string", "format": "date-time"}
_BREAKER = {"enum": ["closed", "open", "half_open", "unknown"]}

DOCUMENT["paths"]["/dashboard"] = {
    "get": {
        "operationId": "dashboard",
        "summary": "The dashboard page (HTML, inline script and SVG); it holds no figures: "
        "its script reads /dashboard/data with the admin key typed into it",
        "security": [],
        "responses": {
            "200": {
                "description": "The page",
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    }
}
DOCUMENT["paths"]["/dashboard/data"] = {
    "get": {
        "operationId": "dashboardData",
        "summary": "What the dashboard shows, read from the store (needs `admin`): providers "
        "and their breakers, mails by status, provider calls per minute, the latest failures",
        "description": "No mail content: ids, statuses, providers, outcomes, reasons, times "
        "and counts. The same whichever process answers.",
        "responses": {
            "200": {
                "description": "The figures",
                "content": {_JSON: {"schema": _ref("DashboardData")}},
            },
            **_COMMON_ERRORS,
        },
    }
}
DOCUMENT["components"]["schemas"]["DashboardData"] = {
    "type": "object",
    "required": [
        "generated_at",
        "providers",
        "mails",
        "backlog",
        "outbox",
        "dead_letters",
        "throughput",
        "failures",
    ],
    "properties": {
        "generated_at": _WHEN,
        "providers": {
            "type": "array",
            "description": "the provider chain in order, then providers only seen in attempts",
            "items": {
                "type": "object",
                "required": ["name", "in_chain", "breaker", "window", "attempts", "retries"],
                "properties": {
                    "name": {"type": "string"},
                    "in_chain": {"type": "boolean"},
                    "breaker": _BREAKER,
                    "window": {
                        "type": "object",
                        "description": "calls started in the chart's minutes",
                        "required": ["accepted", "failed"],
                        "properties": {"accepted": _COUNT, "failed": _COUNT},
                    },
                    "attempts": {
                        "type": "object",
                        "description": "every attempt kept, by outcome (pending: in flight)",
                        "required": [o.value for o in Outcome],
                        "properties": {o.value: _COUNT for o in Outcome},
                    },
                    "retries": _COUNT,
                },
            },
        },
        "mails": {
            "type": "object",
            "required": _STATUSES,
            "properties": {s: _COUNT for s in _STATUSES},
        },
        "backlog": _COUNT,
        "outbox": _COUNT,
        "dead_letters": _COUNT,
        "throughput": {
            "type": "object",
            "required": ["minutes", "per_minute"],
            "properties": {
                "minutes": _COUNT,
                "per_minute": {
                    "type": "array",
                    "description": "oldest first; the last is the current minute (UTC)",
                    "items": {
                        "type": "object",
                        "required": ["minute", "accepted", "failed"],
                        "properties": {"minute": _WHEN, "accepted": _COUNT, "failed": _COUNT},
                    },
                },
            },
        },
        "failures": {
            "type": "object",
            "required": ["mails", "attempts"],
            "properties": {
                "mails": {
                    "type": "array",
                    "description": "the newest failed mails, newest first",
                    "items": {
                        "type": "object",
                        "required": ["id", "provider", "reason", "at"],
                        "properties": {
                            "id": {"type": "string"},
                            "provider": {"type": ["string", "null"]},
                            "reason": {"type": ["string", "null"]},
                            "at": _WHEN,
                        },
                    },
                },
                "attempts": {
                    "type": "array",
                    "description": "the newest provider calls that did not get the mail "
                    "taken (transient, misconfigured, rejected, unknown), newest first",
                    "items": {
                        "type": "object",
                        "required": ["mail_id", "provider", "round", "outcome", "reason", "at"],
                        "properties": {
                            "mail_id": {"type": "string"},
                            "provider": {"type": "string"},
                            "round": _COUNT,
                            "outcome": {
                                "enum": [
                                    o.value
                                    for o in (
                                        Outcome.TRANSIENT,
                                        Outcome.MISCONFIGURED,
                                        Outcome.REJECTED,
                                        Outcome.UNKNOWN,
                                    )
                                ]
                            },
                            "reason": {"type": ["string", "null"]},
                            "at": _WHEN,
                        },
                    },
                },
            },
        },
    },
}

# --- the Mailgun-compatible endpoint (routes/compat_mailgun.py) -------------------------

_MAILGUN_ERROR = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string", "description": "Names the form field"}},
}


def _mailgun_error(description: str, *headers: str) -> dict[str, Any]:
    """An error answer in Mailgun's shape, ``{"message": ...}``."""
    return _answer(description, _JSON, "MailgunError", headers)


_ADDRESSES = {
    "oneOf": [
        {"type": "string", "description": "one address, or several separated by commas"},
        {"type": "array", "items": {"type": "string"}, "description": "repeated fields"},
    ]
}
_MAILGUN_FIELDS: dict[str, Any] = {
    "from": {"type": "string"},
    "to": _ADDRESSES,
    "cc": _ADDRESSES,
    "bcc": _ADDRESSES,
    "subject": {"type": "string"},
    "text": {"type": "string"},
    "html": {"type": "string"},
    "o:tag": {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "maxItems": MAX_TAGS, "items": {"type": "string"}},
        ]
    },
    "o:deliverytime": {
        "type": "string",
        "description": "RFC 2822 date (e.g. 'Thu, 13 Oct 2011 18:02:00 +0000'), at most "
        f"{MAX_SCHEDULE_SECONDS // 3600} hours ahead: the mail waits 'scheduled'",
    },
    "o:testmode": {
        "enum": ["yes", "no", "true", "false"],
        "description": "yes: validated and answered 200, nothing stored or sent",
    },
    "h:Reply-To": {"type": "string"},
}
_MAILGUN_FORM = {
    "type": "object",
    "required": ["from", "to"],
    "properties": _MAILGUN_FIELDS,
    "additionalProperties": {"type": "string"},
    "description": "Mailgun's Messages API form. Also h:X-<Name> (custom headers) and "
    "v:<name> (metadata). Ignored: o:tracking, o:tracking-clicks, o:tracking-opens, "
    "o:dkim... Refused (400): template, t:*, recipient-variables, amp-html, other o: "
    "options, h: headers other than Reply-To and X-.",
}
_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}

DOCUMENT["components"]["securitySchemes"]["mailgunBasic"] = {
    "type": "http",
    "scheme": "basic",
    "description": "Mailgun's auth: user `api`, password a Mailman key",
}
DOCUMENT["components"]["schemas"]["MailgunError"] = _MAILGUN_ERROR
DOCUMENT["paths"]["/v3/{domain}/messages"] = {
    "post": {
        "operationId": "mailgunSendMessage",
        "summary": "Mailgun-compatible: send a message as Mailgun's Messages API takes it",
        "description": "Change a Mailgun app's base URL to Mailman's and its key to a "
        "Mailman key (needs `send`). Answers as Mailgun does: 200 with the mail's "
        "Message-ID as id (the Mailman id is the part before @) and errors as "
        '{"message": ...}.',
        "security": [{"mailgunBasic": []}, {"bearerAuth": []}],
        "parameters": [
            {
                "name": "domain",
                "in": "path",
                "required": True,
                "description": "Any sending domain: Mailman has none (it is logged)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$"},
            },
            {
                "name": IDEMPOTENCY_KEY,
                "in": "header",
                "required": False,
                "description": "As for POST /mail/send: a repeat answers the first answer",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "allOf": [
                            _MAILGUN_FORM,
                            {
                                "type": "object",
                                "properties": {
                                    "attachment": _FILES,
                                    "inline": {
                                        **_FILES,
                                        "description": "Inline files; the HTML refers to "
                                        "each as cid:<file name>",
                                    },
                                },
                            },
                        ]
                    }
                },
                "application/x-www-form-urlencoded": {"schema": _MAILGUN_FORM},
            },
        },
        "responses": {
            "200": {
                "description": "Queued (or, with o:testmode=yes, checked and dropped)",
                "headers": {
                    "Location": {
                        "schema": {"type": "string"},
                        "description": "The mail: /mail/{id} (absent in test mode)",
                    },
                    **_ACCEPTED_HEADERS,
                },
                "content": {
                    _JSON: {
                        "schema": {
                            "type": "object",
                            "required": ["id", "message"],
                            "properties": {
                                "id": {
                                    "type": "string",
                                    "description": "<mail id@sender's domain>, the Message-ID",
                                },
                                "message": {"const": "Queued. Thank you."},
                            },
                        }
                    }
                },
            },
            "400": _mailgun_error(
                "An invalid message, a field Mailman cannot honour, a form that does not "
                "parse, a bad Idempotency-Key or one reused with another form"
            ),
            "401": {
                "description": "No key, or an unknown or revoked key (Mailgun's plain text)",
                "headers": {
                    "WWW-Authenticate": {
                        "required": True,
                        "schema": {"const": 'Basic realm="MG API"'},
                    }
                },
                "content": {"text/plain": {"schema": {"const": "Forbidden"}}},
            },
            "403": _mailgun_error("The key lacks the send scope"),
            "408": _mailgun_error("The request body stalled"),
            "409": _mailgun_error(
                "A request with this Idempotency-Key is still being processed", "Retry-After"
            ),
            "413": _mailgun_error("The body or the files are too large"),
            "415": _mailgun_error("Not a form, or an unknown Content-Encoding"),
            "429": _mailgun_error(
                "Over the key's rate limit",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ),
            "503": _mailgun_error(
                "The store does not answer, or the backlog is full; nothing was stored, "
                "try again after Retry-After",
                "Retry-After",
            ),
        },
    }
}

# --- the SendGrid-compatible endpoint (routes/compat_sendgrid.py) ------------------------

_SENDGRID_ERRORS = {
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["message", "field", "help"],
                "properties": {
                    "message": {"type": "string"},
                    "field": {
                        "type": ["string", "null"],
                        "description": "The field at fault as a SendGrid path, e.g. "
                        "personalizations.0.to.1.email (null: the request as a whole)",
                    },
                    "help": {"type": "null"},
                },
            },
        }
    },
}


def _sendgrid_error(description: str, *headers: str) -> dict[str, Any]:
    """An error answer in SendGrid's shape, ``{"errors": [{message, field, help}]}``."""
    return _answer(description, _JSON, "SendGridErrors", headers)


_SENDGRID_EMAIL = {
    "type": "object",
    "required": ["email"],
    "properties": {
        "email": {"type": "string", "description": "The address alone"},
        "name": {"type": "string"},
    },
}
_SENDGRID_EMAILS = {"type": "array", "items": _SENDGRID_EMAIL}
_UNIX_TIME = {"type": "integer", "minimum": 0, "description": "Unix time, whole seconds"}

DOCUMENT["components"]["schemas"]["SendGridErrors"] = _SENDGRID_ERRORS
DOCUMENT["components"]["schemas"]["SendGridMail"] = {
    "type": "object",
    "description": "SendGrid's v3 Mail Send body, as far as Mailman honours it. Refused with "
    "a 400 naming the field: template_id, sections, asm, ip_pool_name, batch_id, "
    "personalizations[].dynamic_template_data and substitutions, any enabled mail_settings "
    "but sandbox_mode, any other field. tracking_settings is ignored.",
    "required": ["personalizations", "from"],
    "properties": {
        "personalizations": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_PERSONALIZATIONS,
            "description": "Each personalization is one Mailman mail; its fields override "
            "the message's (headers and custom_args are merged over them)",
            "items": {
                "type": "object",
                "required": ["to"],
                "properties": {
                    "to": {**_SENDGRID_EMAILS, "minItems": 1},
                    "cc": _SENDGRID_EMAILS,
                    "bcc": _SENDGRID_EMAILS,
                    "from": _SENDGRID_EMAIL,
                    "subject": {"type": "string"},
                    "headers": _STRING_MAP,
                    "custom_args": _STRING_MAP,
                    "send_at": _UNIX_TIME,
                },
            },
        },
        "from": _SENDGRID_EMAIL,
        "reply_to": _SENDGRID_EMAIL,
        "reply_to_list": {
            **_SENDGRID_EMAILS,
            "maxItems": 1,
            "description": "One address at most (Mailman keeps one reply-to)",
        },
        "subject": {"type": "string"},
        "content": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "value"],
                "properties": {
                    "type": {"enum": ["text/plain", "text/html"]},
                    "value": {"type": "string", "minLength": 1},
                },
            },
        },
        "attachments": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["content", "filename"],
                "properties": {
                    "content": {"type": "string", "contentEncoding": "base64"},
                    "filename": {"type": "string"},
                    "type": {"type": "string"},
                    "disposition": {"enum": ["attachment", "inline"]},
                    "content_id": {"type": "string"},
                },
            },
        },
        "categories": {"type": "array", "items": {"type": "string"}, "description": "Tags"},
        "custom_args": {**_STRING_MAP, "description": "Metadata"},
        "headers": {**_STRING_MAP, "description": "X- headers only"},
        "send_at": _UNIX_TIME,
        "mail_settings": {
            "type": "object",
            "properties": {
                "sandbox_mode": {
                    "type": "object",
                    "properties": {"enable": {"type": "boolean"}},
                    "description": "enable: checked, answered 200, nothing stored or sent",
                }
            },
        },
        "tracking_settings": {"type": "object", "description": "Ignored"},
    },
}
DOCUMENT["paths"][SENDGRID_PATH] = {
    "post": {
        "operationId": "sendgridMailSend",
        "summary": "SendGrid-compatible: send as SendGrid's v3 Mail Send takes it",
        "description": "Point a SendGrid SDK's host at Mailman and give it a Mailman key "
        "(needs `send`). Each personalization is one mail; all are checked before any is "
        "stored. Counts one mail per personalization against the key's rate. Answers as "
        "SendGrid does: 202 with X-Message-Id, errors as "
        '{"errors": [{"message", "field", "help"}]}.',
        "parameters": [
            {
                "name": IDEMPOTENCY_KEY,
                "in": "header",
                "required": False,
                "description": "As for POST /mail/send: a repeat of the same request answers "
                "the same mails; another request with the key is a 400",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                _JSON: {
                    "schema": _ref("SendGridMail"),
                    "example": {
                        "personalizations": [{"to": [{"email": "ann@example.com"}]}],
                        "from": {"email": "noreply@example.com", "name": "Shop"},
                        "subject": "Welcome",
                        "content": [{"type": "text/plain", "value": "Hello Ann"}],
                    },
                }
            },
        },
        "responses": {
            "200": {"description": "Sandbox mode: checked, nothing stored or sent (no body)"},
            "202": {
                "description": "Accepted: one mail per personalization (no body)",
                "headers": {
                    SENDGRID_MESSAGE_ID: {
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "The (first) mail's Mailman id: GET /mail/{id}",
                    },
                    SENDGRID_MAIL_IDS: {
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "Every mail's id, comma-separated, in order",
                    },
                    **_ACCEPTED_HEADERS,
                },
            },
            "400": _sendgrid_error(
                "Invalid fields, a field Mailman cannot honour, malformed JSON, a bad "
                "Idempotency-Key or one reused with another request; nothing was stored"
            ),
            "401": _sendgrid_error("No key, or an unknown or revoked key", "WWW-Authenticate"),
            "403": _sendgrid_error("The key lacks the send scope"),
            "405": _sendgrid_error("Any method but POST"),
            "408": _sendgrid_error("The request body stalled"),
            "409": _sendgrid_error(
                "A request with this Idempotency-Key is still being processed", "Retry-After"
            ),
            "413": _sendgrid_error("The body or the attachments are too large"),
            "415": _sendgrid_error("An unknown Content-Encoding"),
            "429": _sendgrid_error(
                "Over the key's rate limit (one token per personalization)",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ),
            "503": _sendgrid_error(
                "The store does not answer, or the backlog is full; try again after "
                "Retry-After (X-Mailman-Ids names any mails already stored)",
                "Retry-After",
            ),
        },
    }
}

_BODY = orjson.dumps(DOCUMENT)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document (no key needed)."""
    return web.Response(body=_BODY, content_type=_JSON)
