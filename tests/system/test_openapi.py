"""The published contract: GET /openapi.json matches the routes, and the running service
keeps it under schemathesis with all its checks: valid requests taken, invalid ones
refused, no 5xx, every answer as documented."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from mailman.config import Config
from mailman.intake.keys import Scope, create_key
from mailman.routes import create_app
from mailman.routes.openapi import document
from mailman.store.sqlite import SQLiteStore

from ..conftest import provider_env
from ..support.fakes import FakeMailgun, FakeSendGrid, sendgrid_verification_key
from ..support.processes import ROOT, mailman_process

#: What holds the run to the rules the document says in words (tests/support).
HOOKS = "tests.support.schemathesis_hooks"
#: Every phase schemathesis has.
PHASES = ("Examples", "Coverage", "Fuzzing", "Stateful")


async def store_with_key(tmp_path: Path, scope: Scope) -> tuple[str, str]:
    """A store URL holding one key, and the key."""
    path = tmp_path / "mailman.db"
    async with SQLiteStore(str(path)) as store:
        _, secret = await create_key(store, tenant="fuzz", scopes=[scope])
    return f"sqlite:///{path}", secret


class _Outbound:
    async def dispatch(self, dispatch: object) -> None:
        return None


async def the_document(tmp_path: Path) -> dict[str, Any]:
    """The document of an app as ``create_app`` builds it."""
    async with SQLiteStore(str(tmp_path / "m.db")) as store:
        return document(create_app(store=store, outbound=_Outbound(), config=Config()))


async def test_document_names_exactly_the_routes(tmp_path: Path) -> None:
    """Every routed method and path is documented, and nothing is documented that is not routed."""
    async with SQLiteStore(str(tmp_path / "m.db")) as store:
        app = create_app(store=store, outbound=_Outbound(), config=Config())
        routed = {
            (route.method.lower(), route.resource.canonical)
            for route in app.router.routes()
            if route.method not in ("HEAD", "*") and route.resource is not None
        }
        paths = document(app)["paths"]
    documented = {(method, path) for path, item in paths.items() for method in item}
    assert routed == documented


def _objects(node: Any, schemas: dict[str, Any], seen: set[str]) -> list[dict[str, Any]]:
    """Every object schema (``type: object`` with properties) ``node`` holds or refers to."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.rsplit("/", 1)[-1] not in seen:
            seen.add(ref.rsplit("/", 1)[-1])
            found += _objects(schemas[ref.rsplit("/", 1)[-1]], schemas, seen)
        if node.get("type") == "object" and "properties" in node:
            found.append(node)
        for value in node.values():
            found += _objects(value, schemas, seen)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value, schemas, seen)
    return found


async def test_every_json_request_object_refuses_other_fields(tmp_path: Path) -> None:
    """Every object of Mailman's own JSON request bodies (nested ones too: files...) and of
    the SendGrid-compatible one says additionalProperties: false, or on purpose a schema for
    them (SendGrid's mail settings Mailman leaves alone); the providers' webhooks are theirs."""
    doc = await the_document(tmp_path)
    schemas = doc["components"]["schemas"]
    checked = 0
    for path, item in doc["paths"].items():
        for method, op in item.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None or path.startswith("/webhooks/"):
                continue
            for found in _objects(body["schema"], schemas, set()):
                checked += 1
                assert "additionalProperties" in found, (method, path, sorted(found["properties"]))
                if found["additionalProperties"] is not False:  # mail_settings and its others
                    assert set(found["properties"]) in ({"sandbox_mode"}, {"enable"}), path
    assert checked >= 8
    for name in ("MailSubmission", "MarkFailed", "SendGridMail", "Personalization"):
        assert schemas[name]["additionalProperties"] is False, name


async def test_a_route_without_a_contract_is_an_error(tmp_path: Path) -> None:
    """The document refuses an app with a route that declares no @operation."""

    async def undocumented(request: web.Request) -> web.Response:
        return web.Response()

    async with SQLiteStore(str(tmp_path / "m.db")) as store:
        app = create_app(store=store, outbound=_Outbound(), config=Config())
        app.router.add_get("/undocumented", undocumented)
        with pytest.raises(LookupError, match="GET /undocumented"):
            document(app)


async def test_every_protected_operation_documents_auth_errors(tmp_path: Path) -> None:
    """Every operation that needs a key documents 401 and 403; public ones declare no security."""
    for path, item in (await the_document(tmp_path))["paths"].items():
        for method, operation in item.items():
            if operation.get("security") == []:
                public = (
                    *("/health", "/healthz", "/readyz", "/metrics", "/openapi.json"),
                    *("/webhooks/sendgrid", "/webhooks/mailgun", "/webhooks/resend"),
                    "/webhooks/ses",
                    "/webhooks/postmark",
                    "/unsubscribe/{token}",  # signed links, for mail programs and browsers
                    "/dashboard",  # the page; its figures need an admin key
                )
                assert path in public, (method, path)
                continue
            assert {"401", "403", "503"} <= set(operation["responses"]), (method, path)


async def test_openapi_json_is_served_without_a_key(tmp_path: Path) -> None:
    """GET /openapi.json answers the document with no key, also once keys exist."""
    store_url, _ = await store_with_key(tmp_path, Scope.SEND)
    env = {
        "MAILMAN_STORE": store_url,
        "MAILMAN_OUTBOX_DIR": str(tmp_path / "outbox"),
        "MAILMAN_PROVIDERS": "outbox",
    }
    async with (
        mailman_process(env, tmp_path / "mailman.log") as proc,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"{proc.url}/openapi.json") as resp:
            assert resp.status == 200
            assert await resp.json() == await the_document(tmp_path)
        async with http.get(f"{proc.url}/mail") as resp:
            assert resp.status == 401


@pytest.mark.slow
async def test_schemathesis_finds_no_mismatch(tmp_path: Path) -> None:
    """schemathesis against the running service with an admin key, every check, valid and
    invalid data, every phase: no failure."""
    store_url, key = await store_with_key(tmp_path, Scope.ADMIN)
    async with FakeSendGrid() as sg, FakeMailgun() as mg:
        env = provider_env(
            sg,
            mg,
            MAILMAN_STORE=store_url,
            MAILMAN_OUTBOX_DIR=str(tmp_path / "outbox"),
            # The webhooks on, so that they answer as they do in use (not 404).
            MAILMAN_SENDGRID_WEBHOOK_PUBLIC_KEY=sendgrid_verification_key(
                ec.generate_private_key(ec.SECP256R1())
            ),
            MAILMAN_MAILGUN_WEBHOOK_SIGNING_KEY="fuzz-signing-key",
            MAILMAN_RESEND_WEBHOOK_SECRET="whsec_ZnV6ei1zaWduaW5nLXNlY3JldA==",
            # One-click unsubscribe on: mails may ask for it, /unsubscribe/ answers.
            MAILMAN_PUBLIC_URL="https://mail.example.com",
            MAILMAN_UNSUBSCRIBE_SECRET="fuzz-unsubscribe-secret",
        )
        async with mailman_process(env, tmp_path / "mailman.log") as proc:
            st = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{proc.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {key}",
                "--checks",
                "all",
                "--mode",
                "all",
                "--max-examples",
                "50",
                "--seed",
                "20261129",
                # One worker: with two, hypothesis's lambda-source reader inside
                # schemathesis sometimes fails in a thread race (an error of the
                # tool, not of the service).
                "--workers",
                "1",
                cwd=tmp_path,
                env={
                    **os.environ,
                    "NO_COLOR": "1",
                    "SCHEMATHESIS_HOOKS": HOOKS,
                    "PYTHONPATH": str(ROOT),
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
            )
            report, _ = await asyncio.wait_for(st.communicate(), 400)
            text = report.decode(errors="replace")
            print(text[-3000:])
            assert st.returncode == 0, text[-6000:]
            assert "passed" in text
            for phase in PHASES:
                assert f"✅  {phase}" in text, phase
            errors = [e for e in proc.events() if e.get("level") == "error"]
            assert errors == [], errors[:3]
            assert key not in proc.log.read_text()
