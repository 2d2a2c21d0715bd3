"""Templates through the API: /templates (versioned, per tenant) and POST /mail/send with
``template`` and ``data``, rendered at acceptance."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from pytest_aiohttp import AiohttpClient

from mailman.config import Config
from mailman.intake.keys import Scope, create_key
from mailman.store import Store

from ..support.api import Client, CountingOutbound, MakeClient, client_factory, problem

WELCOME: dict[str, Any] = {
    "name": "welcome",
    "subject": "Welcome, {{name}}",
    "html": "<p>Hello {{name}}</p>{{#each items}}<li>{{@index}}: {{title}}</li>{{/each}}"
    "{{#if coupon}}<b>{{{coupon}}}</b>{{else}}no coupon{{/if}}",
    "text": "Hello {{name}}",
}
MAIL: dict[str, Any] = {"from": "shop@example.com", "to": ["ann@example.com"]}


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, any_store: Store, outbound: CountingOutbound
) -> MakeClient:
    config = dataclasses.replace(Config(), key_cache_seconds=0.0)
    return client_factory(aiohttp_client, any_store, outbound, config)


@pytest.fixture
async def keys(any_store: Store) -> dict[str, str]:
    """A send-and-read key for each of two tenants."""
    out = {}
    for tenant in ("acme", "beta"):
        _, out[tenant] = await create_key(any_store, tenant=tenant, scopes=(Scope.SEND, Scope.READ))
    return out


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def call(
    client: Client, method: str, path: str, secret: str, body: object = None
) -> ClientResponse:
    headers = {"Authorization": f"Bearer {secret}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = orjson.dumps(body)
    return await client.request(method, path, data=data, headers=headers)


async def created(client: Client, secret: str, body: dict[str, Any] = WELCOME) -> dict[str, Any]:
    resp = await call(client, "POST", "/templates", secret, body)
    assert resp.status == 201, await resp.text()
    answer: dict[str, Any] = (await resp.json())["template"]
    return answer


async def test_a_template_is_created_versioned_read_listed_and_deleted(
    client: Client, keys: dict[str, str]
) -> None:
    """POST gives version 1 and an id; PUT adds version 2, the default; any version is
    read by id or name; DELETE removes every version."""
    acme = keys["acme"]
    first = await created(client, acme)
    assert (first["name"], first["version"], first["subject"]) == (
        "welcome",
        1,
        "Welcome, {{name}}",
    )
    resp = await call(client, "PUT", "/templates/welcome", acme, {"text": "Hi {{name}}"})
    assert resp.status == 200, await resp.text()
    second = (await resp.json())["template"]
    assert (second["id"], second["version"], second["html"]) == (first["id"], 2, None)
    latest = await (await call(client, "GET", f"/templates/{first['id']}", acme)).json()
    assert latest["template"]["version"] == 2
    old = await (await call(client, "GET", "/templates/welcome?version=1", acme)).json()
    assert old["template"]["html"] == WELCOME["html"]
    await created(client, acme, {"name": "receipt", "text": "Paid"})
    listed = (await (await call(client, "GET", "/templates", acme)).json())["templates"]
    assert [(t["name"], t["version"]) for t in listed] == [("receipt", 1), ("welcome", 2)]
    assert (await call(client, "DELETE", "/templates/welcome", acme)).status == 204
    await problem(await call(client, "GET", "/templates/welcome?version=1", acme), 404)
    await problem(await call(client, "DELETE", "/templates/welcome", acme), 404)


async def test_a_template_that_does_not_parse_is_refused_naming_the_part_and_place(
    client: Client, keys: dict[str, str]
) -> None:
    """A syntax error is a 422 naming the part, the line and the column; nothing is stored."""
    body = {"name": "bad", "subject": "Hi {{name", "html": "<p>\n  {{#if vip}}VIP</p>"}
    answer = await problem(await call(client, "POST", "/templates", keys["acme"], body), 422)
    errors = {e["field"]: e["message"] for e in answer["errors"]}
    assert "line 1, column 4" in errors["subject"]
    assert "line 2, column 3" in errors["html"]
    unknown = {"name": "bad", "text": "{{formatDate when 'x'}}"}
    answer = await problem(await call(client, "POST", "/templates", keys["acme"], unknown), 422)
    assert answer["errors"][0]["field"] == "text" and "formatDate" in answer["errors"][0]["message"]
    await problem(await call(client, "GET", "/templates/bad", keys["acme"]), 404)


async def test_names_are_unique_within_a_tenant_and_fields_are_checked(
    client: Client, keys: dict[str, str]
) -> None:
    """The same name twice is a 409; a bad name, an unknown field or no body a 422."""
    await created(client, keys["acme"])
    await problem(await call(client, "POST", "/templates", keys["acme"], WELCOME), 409)
    await created(client, keys["beta"])  # another tenant's namespace
    bad = {"name": "no spaces", "html": "x", "colour": "red"}
    answer = await problem(await call(client, "POST", "/templates", keys["acme"], bad), 422)
    assert {e["field"] for e in answer["errors"]} == {"name", "colour"}
    answer = await problem(
        await call(client, "PUT", "/templates/welcome", keys["acme"], {"subject": "x"}), 422
    )
    assert answer["errors"][0]["field"] == "html"


async def test_another_tenants_template_is_neither_seen_nor_used(
    client: Client, keys: dict[str, str]
) -> None:
    """beta's key finds nothing of acme's, by name or id, and cannot send with it."""
    template = await created(client, keys["acme"])
    beta = keys["beta"]
    for ref in ("welcome", template["id"]):
        await problem(await call(client, "GET", f"/templates/{ref}", beta), 404)
        await problem(await call(client, "PUT", f"/templates/{ref}", beta, {"text": "x"}), 404)
        await problem(await call(client, "DELETE", f"/templates/{ref}", beta), 404)
    assert (await (await call(client, "GET", "/templates", beta)).json()) == {"templates": []}
    body = {**MAIL, "template": "welcome", "data": {"name": "Ann"}}
    answer = await problem(await call(client, "POST", "/mail/send", beta, body), 422)
    assert answer["errors"][0]["field"] == "template"


async def send(client: Client, secret: str, **fields: Any) -> ClientResponse:
    return await call(client, "POST", "/mail/send", secret, {**MAIL, **fields})


async def test_a_mail_is_rendered_at_acceptance_and_stored_rendered(
    client: Client, keys: dict[str, str]
) -> None:
    """subject, html and text are the template's rendered with data, values HTML-escaped
    in html only ({{{raw}}} not); GET /mail/{id} names the template and version."""
    template = await created(client, keys["acme"])
    data = {
        "name": "Ann & <Bob>",
        "items": [{"title": "Tea"}, {"title": "Cake"}],
        "coupon": "<i>SAVE</i>",
    }
    resp = await send(client, keys["acme"], template="welcome", data=data)
    assert resp.status == 201, await resp.text()
    mail_id = (await resp.json())["mail"]["id"]
    shown = (await (await call(client, "GET", f"/mail/{mail_id}", keys["acme"])).json())["mail"]
    submitted = shown["submitted"]
    assert submitted["subject"] == "Welcome, Ann & <Bob>"
    assert submitted["text"] == "Hello Ann & <Bob>"
    assert submitted["html"] == (
        "<p>Hello Ann &amp; &lt;Bob&gt;</p><li>0: Tea</li><li>1: Cake</li><b><i>SAVE</i></b>"
    )
    assert submitted["template"] == {"id": template["id"], "name": "welcome", "version": 1}


async def test_an_older_version_is_sent_when_named(client: Client, keys: dict[str, str]) -> None:
    """template_version renders that version; without it, the latest."""
    acme = keys["acme"]
    await created(client, acme, {"name": "n", "text": "one {{x}}"})
    await call(client, "PUT", "/templates/n", acme, {"text": "two {{x}}"})
    texts = []
    for version in (1, None):
        resp = await send(client, acme, template="n", template_version=version, data={"x": 1})
        mail_id = (await resp.json())["mail"]["id"]
        shown = await (await call(client, "GET", f"/mail/{mail_id}", acme)).json()
        texts.append(shown["mail"]["submitted"]["text"])
    assert texts == ["one 1", "two 1"]
    answer = await problem(await send(client, acme, template="n", template_version=7), 422)
    assert answer["errors"][0]["field"] == "template_version"


async def test_a_version_the_document_allows_is_looked_up_and_one_past_it_named(
    client: Client, keys: dict[str, str]
) -> None:
    """The highest version the document allows (GET /templates/{ref}'s ``version`` and the
    mail's ``template_version`` alike) is a 404 when it does not exist, never a 400; one
    past it is a 400 or 422 naming the version."""
    acme = keys["acme"]
    await created(client, acme, {"name": "n", "text": "one {{x}}"})
    document = await (await client.get("/openapi.json")).json()
    parameters = document["paths"]["/templates/{ref}"]["get"]["parameters"]
    (param,) = (p for p in parameters if p["name"] == "version")
    highest = param["schema"]["maximum"]
    await problem(await call(client, "GET", f"/templates/n?version={highest}", acme), 404)
    for raw in (str(highest + 1), "10237575558", "0"):
        answer = await problem(await call(client, "GET", f"/templates/n?version={raw}", acme), 400)
        assert answer["errors"][0]["field"] == "version"
    answer = await problem(
        await send(client, acme, template="n", template_version=highest + 1, data={"x": 1}), 422
    )
    assert answer["errors"][0]["field"] == "template_version"


async def test_missing_variables_are_a_422_naming_each(
    client: Client, keys: dict[str, str]
) -> None:
    """Every variable printed but not in data is named; a condition on a missing one is not."""
    await created(client, keys["acme"])
    resp = await send(client, keys["acme"], template="welcome", data={"items": [{"x": 1}]})
    answer = await problem(resp, 422)
    [error] = answer["errors"]
    assert error["field"] == "data"
    assert "name" in error["message"] and "title" in error["message"]
    assert "coupon" not in error["message"]


async def test_what_the_template_renders_is_not_given_with_it(
    client: Client, keys: dict[str, str]
) -> None:
    """subject, content, text or html beside template is a 422 naming each; data without
    template too."""
    await created(client, keys["acme"])
    resp = await send(client, keys["acme"], template="welcome", subject="x", html="y", data={})
    answer = await problem(resp, 422)
    assert {e["field"] for e in answer["errors"]} == {"subject", "html"}
    answer = await problem(await send(client, keys["acme"], content="x", data={"a": 1}), 422)
    assert [e["field"] for e in answer["errors"]] == ["data"]
    answer = await problem(await send(client, keys["acme"], template="welcome", data=[1]), 422)
    assert [e["field"] for e in answer["errors"]] == ["data"]


async def test_a_template_that_explodes_is_refused_quickly(
    client: Client, keys: dict[str, str]
) -> None:
    """Loops nested over the data to no end, or output past the size limit, are a 422
    within the render time limit, not a hung worker."""
    loops = (
        "{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}."
        "{{/each}}{{/each}}{{/each}}{{/each}}"
    )
    await created(client, keys["acme"], {"name": "boom", "text": loops})
    started = time.monotonic()
    resp = await send(client, keys["acme"], template="boom", data={"a": list(range(400))})
    answer = await problem(resp, 422)
    assert time.monotonic() - started < 5
    assert answer["errors"][0]["field"] == "template"
    assert "does not render" in answer["errors"][0]["message"]
