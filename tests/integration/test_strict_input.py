"""Nothing a caller sends is quietly dropped or quietly chosen (issue 18, strict input).

Unknown fields are refused naming each, a key given twice in one JSON object is a 400,
bidirectional controls and invisible characters are refused in subjects and display
names at every entry point, the drop-in endpoints answer every error in their provider's
shape, Mailgun names an address it cannot read, and a hand-marked failure's reason is
bounded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.core.validation import MAX_REASON
from mailman.routes import body, create_app
from mailman.routes.body import decode_json
from mailman.routes.compat_mailgun import render
from mailman.routes.errors import Problem
from mailman.store import Store
from mailman.system import embedded

from ..support.api import VALID, Client, CountingOutbound, client_factory, problem
from .test_smtp import in_thread, mails_in, message, smtp_config, transaction

JSON = {"Content-Type": "application/json"}
MAILGUN = "/v3/example.com/messages"
SENDGRID = "/v3/mail/send"

#: Every character refused in a subject or a display name beyond the controls: the
#: bidirectional embeddings, overrides and isolates, and the invisible ones.
DECEPTIVE = [
    *map(chr, range(0x202A, 0x202F)),
    *map(chr, range(0x2066, 0x206A)),
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
]
DECEPTIVE_IDS = [f"U+{ord(c):04X}" for c in DECEPTIVE]


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound) -> Client:
    return await client_factory(aiohttp_client, store, outbound, Config())()


async def nothing_kept(store: Store, outbound: CountingOutbound) -> None:
    assert await store.unfinished() == []
    assert outbound.dispatched == []


def sendgrid_body(**changes: Any) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": "ann@example.com", "name": "Ann"}]}],
        "from": {"email": "shop@example.com", "name": "Shop"},
        "subject": "Welcome",
        "content": [{"type": "text/plain", "value": "Hello Ann"}],
        **changes,
    }


def mailgun_form(**changes: str) -> dict[str, str]:
    return {
        "from": "Shop <shop@example.com>",
        "to": "Ann <ann@example.com>",
        "subject": "Welcome",
        "text": "Hello Ann",
        **changes,
    }


# --- unknown fields ------------------------------------------------------------------


async def test_unknown_fields_are_a_422_naming_each(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """Cc, attachment and callbackUrl (the issue's) are each named, with the field meant,
    and nothing is stored; they used to be dropped and the mail sent without them."""
    body = {**VALID, "Cc": "bob@example.com", "attachment": "x", "callbackUrl": "https://x.io"}
    resp = await client.post("/mail/send", data=orjson.dumps(body), headers=JSON)
    errors = {e["field"]: e["message"] for e in (await problem(resp, 422))["errors"]}
    assert errors == {
        "Cc": "is not a known field: did you mean cc?",
        "attachment": "is not a known field: did you mean attachments?",
        "callbackUrl": "is not a known field: did you mean callback_url?",
    }
    await nothing_kept(store, outbound)


async def test_an_unknown_field_of_a_file_is_a_422_naming_its_path(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """A file's unknown field (``size``, ``contentType``) is named with the file's path."""
    files = [
        {"filename": "a.txt", "content": "QQ=="},
        {"filename": "b.txt", "content": "QQ==", "size": 1, "contentType": "text/plain"},
    ]
    resp = await client.post(
        "/mail/send", data=orjson.dumps({**VALID, "attachments": files}), headers=JSON
    )
    errors = {e["field"]: e["message"] for e in (await problem(resp, 422))["errors"]}
    assert errors == {
        "attachments[1].size": "is not a known field: leave it out, or check its spelling",
        "attachments[1].contentType": "is not a known field: did you mean content_type?",
    }
    await nothing_kept(store, outbound)


async def test_unknown_fields_past_the_named_ones_are_counted(client: Client) -> None:
    """Thousands of unknown fields are named up to a bound, then counted: the answer stays
    small."""
    body = {**VALID, **{f"x{i}": i for i in range(5000)}}
    resp = await client.post("/mail/send", data=orjson.dumps(body), headers=JSON)
    errors = (await problem(resp, 422))["errors"]
    assert len(errors) == 21
    assert errors[-1] == {"field": "body", "message": "has 4980 more unknown fields"}


async def test_mark_failed_refuses_an_unknown_field_and_a_long_reason(
    client: Client, store: Store
) -> None:
    """POST /mail/{id}/failed: an unknown field is a 422 naming it; a reason of 1,001
    characters a 422 naming reason (it was stored as is); 1,000 is fine."""
    resp = await client.post("/mail/send", data=orjson.dumps(VALID), headers=JSON)
    mail_id = (await resp.json())["mail"]["id"]
    url = f"/mail/{mail_id}/failed"
    resp = await client.post(url, data=orjson.dumps({"reason": "x", "why": "y"}), headers=JSON)
    assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["why"]
    resp = await client.post(url, data=b"null", headers=JSON)
    assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["body"]
    long = {"reason": "r" * (MAX_REASON + 1)}
    resp = await client.post(url, data=orjson.dumps(long), headers=JSON)
    assert (await problem(resp, 422))["errors"] == [
        {"field": "reason", "message": f"must be at most {MAX_REASON} characters"}
    ]
    assert (await store.load(mail_id)) is not None
    assert (await store.get(mail_id)).reason is None  # type: ignore[union-attr]
    resp = await client.post(url, data=orjson.dumps({"reason": "r" * MAX_REASON}), headers=JSON)
    assert resp.status == 200, await resp.text()
    assert (await store.get(mail_id)).reason == "r" * MAX_REASON  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ip_pool": "x"}, "ip_pool"),
        ({"from": {"email": "shop@example.com", "nmae": "Shop"}}, "from.nmae"),
        ({"content": [{"type": "text/plain", "value": "Hi", "charset": "x"}]}, "content.0.charset"),
        (
            {"personalizations": [{"to": [{"email": "a@example.com", "Name": "A"}]}]},
            "personalizations.0.to.0.Name",
        ),
        (
            {"mail_settings": {"sandbox_mode": {"enable": False, "on": 1}}},
            "mail_settings.sandbox_mode.on",
        ),
    ],
    ids=["top", "from", "content", "personalization address", "sandbox_mode"],
)
async def test_sendgrid_refuses_unknown_fields_in_its_shape(
    client: Client, store: Store, outbound: CountingOutbound, changes: dict[str, Any], field: str
) -> None:
    """An unknown field anywhere in a SendGrid body is SendGrid's 400 naming its path."""
    resp = await client.post(SENDGRID, data=orjson.dumps(sendgrid_body(**changes)), headers=JSON)
    assert resp.status == 400
    assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    await nothing_kept(store, outbound)


# --- duplicate keys ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (
            b'{"to": "ann@example.com", "to": "evil@example.net", "from": "s@example.com",'
            b' "content": "Hi"}',
            "to",
        ),
        (
            b'{"to": "ann@example.com", "from": "s@example.com", "content": "Hi",'
            b' "attachments": [{"filename": "a.txt", "content": "QQ==", "filename": "a.exe"}]}',
            "attachments[0].filename",
        ),
        (
            b'{"to": "ann@example.com", "from": "s@example.com", "content": "Hi",'
            b' "metadata": {"k": "1", "k": "2"}}',
            "metadata.k",
        ),
    ],
    ids=["top", "in a file", "in metadata"],
)
async def test_a_key_given_twice_is_a_400_naming_it(
    client: Client, store: Store, outbound: CountingOutbound, raw: bytes, field: str
) -> None:
    """A key twice in one object (the last used to win: to ann, then to evil) is a 400
    naming the key and where it is; nothing is stored."""
    resp = await client.post("/mail/send", data=raw, headers=JSON)
    body = await problem(resp, 400)
    assert body["type"].endswith("/duplicate-key")
    assert body["errors"] == [{"field": field, "message": "is given more than once"}]
    await nothing_kept(store, outbound)


async def test_sendgrid_refuses_a_key_given_twice_in_its_shape(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """A repeated key in a personalization is SendGrid's 400 with the SendGrid path."""
    raw = orjson.dumps(sendgrid_body()).replace(
        b'"to":[', b'"to":[{"email":"evil@example.net"}],"to":[', 1
    )
    resp = await client.post(SENDGRID, data=raw, headers=JSON)
    assert resp.status == 400 and resp.content_type == "application/json"
    assert [e["field"] for e in (await resp.json())["errors"]] == ["personalizations.0.to"]
    await nothing_kept(store, outbound)


async def test_mark_failed_refuses_a_key_given_twice(client: Client) -> None:
    """POST /mail/{id}/failed reads its body through the same parser: reason twice is a 400."""
    resp = await client.post("/mail/send", data=orjson.dumps(VALID), headers=JSON)
    mail_id = (await resp.json())["mail"]["id"]
    raw = b'{"reason": "a", "reason": "b"}'
    resp = await client.post(f"/mail/{mail_id}/failed", data=raw, headers=JSON)
    assert (await problem(resp, 400))["errors"][0]["field"] == "reason"


@pytest.mark.parametrize(
    ("raw", "repeats"),
    [
        (b'{"a": "x:y", "b:c": "12:00", "d" : [1, {"e" :"::"}]}', False),
        (b'{"a": "x:y", "a" : "12:00"}', True),
        (b'{"s": "a\\u003ab", "t": "\\u003A"}', False),
        # An escaped colon must not hide a repeat by evening out the count.
        (b'{"s": "a\\u003ab", "t": 1, "t": 2}', True),
        (b'[{"k": 1}, {"k": 2}, [{"k": {"k": 1}}]]', False),
        (b'[[{"k": {"j": 1, "j": 2}}]]', True),
        (b'{"x": "\\\\u003a", "y": 1, "y": 1}', True),
    ],
    ids=["colons", "repeat", "escaped", "escaped repeat", "same key apart", "deep", "backslash"],
)
def test_repeats_are_found_however_the_colons_are_written(raw: bytes, repeats: bool) -> None:
    """Colons in keys and strings, spaces around them and escaped colons neither hide a
    repeated key nor make one up."""
    if repeats:
        with pytest.raises(Problem):
            decode_json(raw)
    else:
        decode_json(raw)


def test_the_parser_finds_duplicates_at_any_depth_and_only_there() -> None:
    """Nested objects in lists are searched; the same key in two objects is no duplicate."""
    assert decode_json(b'[{"a": 1}, {"a": 2}]') == [{"a": 1}, {"a": 2}]
    with pytest.raises(Problem) as caught:
        decode_json(b'{"x": [{"a": 1}, {"b": {"c": 1, "c": 1}}]}')
    assert caught.value.errors[0].field == "x[1].b.c"


# --- bidirectional and invisible characters ---------------------------------------


@pytest.mark.parametrize("char", DECEPTIVE, ids=DECEPTIVE_IDS)
@pytest.mark.parametrize(
    ("place", "field"),
    [
        (lambda c: {"subject": f"Invoice{c} for Ann"}, "subject"),
        (lambda c: {"from": f"Bank{c} <s@example.com>"}, "from"),
        (lambda c: {"to": ["ann@example.com", f'"Bo{c}b" <bob@example.com>']}, "to[1]"),
        (lambda c: {"cc": [f"C{c}y <cy@example.com>"]}, "cc[0]"),
        (lambda c: {"bcc": f"D{c} <d@example.com>"}, "bcc[0]"),
        (lambda c: {"reply_to": f"Help{c} <help@example.com>"}, "reply_to"),
    ],
    ids=["subject", "from", "to", "cc", "bcc", "reply_to"],
)
async def test_the_api_refuses_deceptive_characters_in_header_text(
    client: Client, store: Store, outbound: CountingOutbound, char: str, place: Any, field: str
) -> None:
    """Each bidirectional control and invisible character is a 422 naming the subject or
    the address whose display name holds it."""
    body = {**VALID, **place(char)}
    resp = await client.post("/mail/send", data=orjson.dumps(body), headers=JSON)
    errors = (await problem(resp, 422))["errors"]
    assert [e["field"] for e in errors] == [field]
    assert f"U+{ord(char):04X}" in errors[0]["message"]
    await nothing_kept(store, outbound)


@pytest.mark.parametrize("char", ["\u202e", "\u2066", "\u200b", "\ufeff"])
async def test_the_marks_and_the_body_still_take_such_text(client: Client, char: str) -> None:
    """Right-to-left text keeps its marks (U+200E, U+200F), and a body may hold anything."""
    body = {**VALID, "subject": "\u05e9\u05dc\u05d5\u05dd\u200f!", "content": f"Hi{char}Ann"}
    resp = await client.post("/mail/send", data=orjson.dumps(body), headers=JSON)
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("char", ["\u202e", "\u2067", "\u200d", "\u2060"])
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (lambda c: {"subject": f"Hi{c}"}, "subject"),
        (lambda c: {"from": {"email": "shop@example.com", "name": f"Sh{c}op"}}, "from.name"),
        (
            lambda c: {"personalizations": [{"to": [{"email": "a@example.com", "name": c}]}]},
            "personalizations.0.to.0.name",
        ),
    ],
    ids=["subject", "from name", "to name"],
)
async def test_sendgrid_refuses_deceptive_characters(
    client: Client, char: str, changes: Any, field: str
) -> None:
    """On the SendGrid endpoint: a 400 naming the SendGrid path."""
    body = sendgrid_body(**changes(char))
    resp = await client.post(SENDGRID, data=orjson.dumps(body), headers=JSON)
    assert resp.status == 400
    errors = (await resp.json())["errors"]
    assert [e["field"] for e in errors] == [field]
    assert f"U+{ord(char):04X}" in errors[0]["message"]


@pytest.mark.parametrize("char", ["\u202e", "\u2069", "\u200c", "\ufeff"])
@pytest.mark.parametrize(
    ("changes", "name"),
    [
        (lambda c: {"subject": f"Hi{c}"}, "'subject'"),
        (lambda c: {"to": f"Ann{c} <ann@example.com>"}, "'to'"),
        (lambda c: {"from": f"Sh{c}op <shop@example.com>"}, "'from'"),
    ],
    ids=["subject", "to name", "from name"],
)
async def test_mailgun_refuses_deceptive_characters(
    client: Client, store: Store, char: str, changes: Any, name: str
) -> None:
    """On the Mailgun endpoint: a 400 whose message names the form field and the character."""
    resp = await client.post(MAILGUN, data=mailgun_form(**changes(char)))
    assert resp.status == 400
    said = (await resp.json())["message"]
    assert said.startswith(name) and f"U+{ord(char):04X}" in said
    assert await store.unfinished() == []


@pytest.mark.parametrize("char", ["\u202e", "\u200b"])
async def test_smtp_refuses_deceptive_characters_naming_the_field(
    tmp_path: Path, char: str
) -> None:
    """By SMTP: a Subject or a From name holding one is a 550 naming the field; nothing is
    stored."""
    async with embedded(smtp_config(tmp_path)) as mailman:
        msg = message(f"Invoice{char} for Ann")
        code, reply = await in_thread(transaction, mailman.smtp_port, msg, ["ann@example.com"])
        assert code == 550
        said = "must not contain bidirectional control or invisible characters"
        assert f"subject: {said} (U+{ord(char):04X})" in reply
        named = message()
        named.replace_header("From", f"Sh{char}op <shop@example.com>")
        code, reply = await in_thread(transaction, mailman.smtp_port, named, ["ann@example.com"])
        assert code == 550
        assert "from: must not contain bidirectional control" in reply
        assert await mails_in(mailman.store) == 0


# --- the drop-in endpoints' error shapes --------------------------------------------


async def test_mailgun_names_an_address_it_cannot_read(
    client: Client, store: Store, outbound: CountingOutbound
) -> None:
    """to=ann@ is a 400 naming that address (it said "'to' parameter is missing"), also
    beside a good one, which would otherwise have been the only recipient."""
    for to in ("ann@", "ann@, bob@example.com"):
        resp = await client.post(MAILGUN, data=mailgun_form(to=to))
        assert resp.status == 400
        assert await resp.json() == {"message": "'to' parameter is not a valid address: 'ann@'"}
    resp = await client.post(MAILGUN, data=mailgun_form(to="a@example.com, , b@example.com"))
    assert resp.status == 200, await resp.text()


async def test_mailgun_paths_answer_405_and_404_in_mailguns_shape(client: Client) -> None:
    """GET on the messages path is Mailgun's 405 (JSON message, Allow: POST), not
    problem+json; so is a 404 under it and at any /v3/ path a Basic-auth client calls."""
    resp = await client.get(MAILGUN)
    assert resp.status == 405 and resp.content_type == "application/json"
    assert resp.headers["Allow"] == "POST"
    assert set(await resp.json()) == {"message"}
    resp = await client.post(f"{MAILGUN}/extra", data=mailgun_form())
    assert resp.status == 404 and resp.content_type == "application/json"
    assert set(await resp.json()) == {"message"}
    resp = await client.get("/v3/domains", headers={"Authorization": "Basic YXBpOng="})
    assert resp.status == 404 and set(await resp.json()) == {"message"}


async def test_sendgrid_paths_answer_405_and_404_in_sendgrids_shape(client: Client) -> None:
    """GET /v3/mail/send is SendGrid's 405; a 404 under /v3/ (a Bearer client) is SendGrid's."""
    resp = await client.get(SENDGRID)
    assert resp.status == 405 and resp.content_type == "application/json"
    assert resp.headers["Allow"] == "POST"
    assert (await resp.json())["errors"][0]["message"]
    for path in (f"{SENDGRID}/extra", "/v3/templates"):
        resp = await client.get(path, headers={"Authorization": "Bearer x"})
        assert resp.status == 404 and resp.content_type == "application/json"
        assert set((await resp.json())["errors"][0]) == {"message", "field", "help"}


async def test_mailmans_own_paths_keep_problem_json(client: Client) -> None:
    """Outside /v3/ an unknown path and a wrong method are still problem+json."""
    await problem(await client.get("/nowhere"), 404)
    await problem(await client.put("/mail/send"), 405)


async def test_a_mailgun_401_from_the_middleware_shape_is_plain_forbidden() -> None:
    """A 401 raised outside the handler under Mailgun's paths is its plain Forbidden."""
    answer = render(Problem(401, "The API key is unknown or revoked."))
    assert answer.status == 401 and answer.text == "Forbidden"
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="MG API"'
    answer = render(Problem(413, "too large"))
    assert answer.status == 413 and orjson.loads(answer.body) == {"message": "too large"}  # type: ignore[arg-type]


@pytest.mark.parametrize("action", ["sent", "retry"])
async def test_sent_and_retry_refuse_a_body_with_fields(
    client: Client, store: Store, action: str
) -> None:
    """POST /mail/{id}/sent and /retry take no fields: one is a 422 naming it (it was
    ignored), and the mail is left as it was; an empty object or no body is fine."""
    resp = await client.post("/mail/send", data=orjson.dumps(VALID), headers=JSON)
    mail_id = (await resp.json())["mail"]["id"]
    before = await store.load(mail_id)
    url = f"/mail/{mail_id}/{action}"
    resp = await client.post(url, data=orjson.dumps({"reason": "by hand"}), headers=JSON)
    assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["reason"]
    assert await store.load(mail_id) == before
    for other in (b"null", b"[]", b'"x"'):
        resp = await client.post(url, data=other, headers=JSON)
        assert [e["field"] for e in (await problem(resp, 422))["errors"]] == ["body"]
    if action == "sent":
        resp = await client.post(url, data=b"{}", headers=JSON)
        assert resp.status == 200, await resp.text()
        resp = await client.post(url)
        assert resp.status == 200, await resp.text()


async def test_a_middlewares_refusal_is_in_the_paths_shape(
    aiohttp_client: AiohttpClient, store: Store, outbound: CountingOutbound
) -> None:
    """A refusal a middleware raises (a byte budget's 413, a 429) is answered in the
    provider's shape under its path, with its headers, and as problem+json elsewhere."""

    @web.middleware
    async def refuse(request: web.Request, handler: Any) -> web.StreamResponse:
        raise Problem(429, "Slow down.", headers={"Retry-After": "3"})

    app = create_app(store=store, outbound=outbound, config=Config())
    app.middlewares.append(refuse)
    client = await aiohttp_client(app)
    resp = await client.post(SENDGRID, data=orjson.dumps(sendgrid_body()), headers=JSON)
    assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    assert await resp.json() == {"errors": [{"message": "Slow down.", "field": None, "help": None}]}
    resp = await client.post(MAILGUN, data=mailgun_form())
    assert (resp.status, resp.headers["Retry-After"]) == (429, "3")
    assert await resp.json() == {"message": "Slow down."}
    assert (await problem(await client.get("/mail"), 429))["detail"] == "Slow down."


def _object_text(pairs: list[tuple[str, object]]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


_KEYS = st.text(alphabet="ab:", max_size=3)
_VALUES = st.one_of(st.integers(), st.text(alphabet="x: ", max_size=4), st.lists(st.integers()))


@given(
    objects=st.lists(st.lists(st.tuples(_KEYS, _VALUES), max_size=4), min_size=1, max_size=3),
    nested=st.booleans(),
    walked=st.booleans(),
)
def test_a_repeat_is_found_exactly_when_an_object_repeats_a_key(
    objects: list[list[tuple[str, object]]], nested: bool, walked: bool
) -> None:
    """Objects whose keys and strings hold colons, alone or inside another: a repeat is
    found exactly when one object names a key twice, by the count of the text written
    again and by the walk of the values alike."""
    texts = [_object_text(pairs) for pairs in objects]
    raw = (
        ("[" + ", ".join(texts) + "]") if not nested else ('{"outer": [' + ", ".join(texts) + "]}")
    )
    repeats = any(len({k for k, _ in pairs}) != len(pairs) for pairs in objects)
    limit = -1 if walked else body.RECOUNT_MAX_BYTES
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(body, "RECOUNT_MAX_BYTES", limit)
        found = body.has_duplicate_key(raw.encode(), orjson.loads(raw))
    assert found is repeats


def test_a_repeat_is_found_in_a_large_body_and_deeper_than_orjson_writes() -> None:
    """A body over the recount's limit, and one nested deeper than orjson writes again,
    are walked: a repeat in either is found, and none is made up."""
    files = "x" * (body.RECOUNT_MAX_BYTES + 1)
    large = f'{{"a": "{files}", "b": {{"c": 1, "c": 2}}}}'.encode()
    assert body.has_duplicate_key(large, orjson.loads(large))
    clean = f'{{"a": "{files}", "b": {{"c": 1, "d": 2}}}}'.encode()
    assert not body.has_duplicate_key(clean, orjson.loads(clean))
    deep = b"[" * 300 + b'{"k": 1, "k": 2}' + b"]" * 300
    assert body.has_duplicate_key(deep, orjson.loads(deep))
    flat = b"[" * 300 + b'{"k": 1, "j": 2}' + b"]" * 300
    assert not body.has_duplicate_key(flat, orjson.loads(flat))
