"""``mailman suppressions list|add|remove|import``: by hand, from a CSV, and from each
provider's own list through its API (the fakes serve those lists as the providers do,
paged, SES's SigV4-signed)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from pathlib import Path

import pytest

from mailman.cli import main
from mailman.store import SuppressionQuery
from mailman.store.sqlite import SQLiteStore

from ..conftest import sqlite_store
from ..support.fake_postmark import FakePostmark
from ..support.fake_ses import FakeSes
from ..support.fakes import FakeMailgun, FakeSendGrid


def run(env: Mapping[str, str], *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["suppressions", *argv], dict(env), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def arun(env: Mapping[str, str], *argv: str) -> tuple[int, str, str]:
    """``run`` in a thread: the fakes answer on this test's event loop."""
    return await asyncio.to_thread(run, env, *argv)


def kept(url: str, tenant: str = "acme") -> list[tuple[str, str, str]]:
    """The tenant's list as (address, reason, source)."""

    async def read() -> list[tuple[str, str, str]]:
        async with SQLiteStore(url.removeprefix("sqlite:///")) as store:
            found = await store.list_suppressions(SuppressionQuery(tenant, 10_000))
        return [(s.address, s.reason.value, s.source) for s in found]

    return asyncio.run(read())


async def akept(url: str, tenant: str = "acme") -> list[tuple[str, str, str]]:
    return await asyncio.to_thread(kept, url, tenant)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"MAILMAN_STORE": sqlite_store(tmp_path / "mailman.db")}


def test_add_list_and_remove(env: dict[str, str]) -> None:
    """add keeps the address lower-cased with its reason (source cli); list shows it by
    tenant; remove takes it off, and a second remove says it is not there (exit 1)."""
    assert run(env, "add", "Ann@Example.com", "--tenant", "acme", "--reason", "complaint")[0] == 0
    assert run(env, "add", "bob@example.com", "--tenant", "beta")[0] == 0
    code, out, _ = run(env, "list")
    assert code == 0
    rows = [line.split()[:5] for line in out.splitlines()]
    assert rows == [
        ["TENANT", "ADDRESS", "REASON", "GROUP", "SOURCE"],
        ["acme", "ann@example.com", "complaint", "*", "cli"],
        ["beta", "bob@example.com", "manual", "*", "cli"],
    ]
    assert len(run(env, "list", "--tenant", "acme", "--reason", "manual")[1].splitlines()) == 1
    assert run(env, "remove", "ANN@example.com", "--tenant", "acme")[0] == 0
    code, _, err = run(env, "remove", "ann@example.com", "--tenant", "acme")
    assert code == 1 and "not on acme's list" in err


def test_group_adds_lists_and_removes_one_groups_suppression(env: dict[str, str]) -> None:
    """--group keeps the suppression for that unsubscribe group; list --group shows only
    its (--group '' only the every-mail ones); remove --group takes only it off; a bad
    group is exit 2."""
    assert run(env, "add", "ann@example.com", "--tenant", "acme", "--group", "newsletter")[0] == 0
    assert run(env, "add", "ann@example.com", "--tenant", "acme")[0] == 0
    rows = [line.split()[3] for line in run(env, "list", "--group", "newsletter")[1].splitlines()]
    assert rows == ["GROUP", "newsletter"]
    rows = [line.split()[3] for line in run(env, "list", "--group", "")[1].splitlines()]
    assert rows == ["GROUP", "*"]
    assert (
        run(env, "remove", "ann@example.com", "--tenant", "acme", "--group", "newsletter")[0] == 0
    )
    assert (
        run(env, "remove", "ann@example.com", "--tenant", "acme", "--group", "newsletter")[0] == 1
    )
    assert kept(env["MAILMAN_STORE"]) == [("ann@example.com", "manual", "cli")]
    code, _, err = run(env, "add", "bob@example.com", "--tenant", "acme", "--group", "a b")
    assert code == 2 and "--group" in err


def test_add_refuses_what_is_no_address(env: dict[str, str]) -> None:
    """A display name or no address at all: exit 2, one line saying so, nothing kept."""
    for bad in ("Ann <ann@example.com>", "nobody"):
        code, _, err = run(env, "add", bad, "--tenant", "acme")
        assert code == 2 and err.startswith("mailman suppressions: ") and err.count("\n") == 1
    assert kept(env["MAILMAN_STORE"]) == []


def test_import_reads_a_csv_with_or_without_a_header(env: dict[str, str], tmp_path: Path) -> None:
    """Rows are address[,reason]: a header row and blank rows are skipped, a row without a
    reason takes --reason, an address already there is counted, not changed."""
    with_header = tmp_path / "with.csv"
    with_header.write_text("email,reason\nAnn@example.com,bounce\n\nbob@example.com\n")
    bare = tmp_path / "bare.csv"
    bare.write_text("cy@example.com,unsubscribe\nann@example.com,complaint\n")
    code, _, err = run(env, "import", str(with_header), "--tenant", "acme", "--reason", "manual")
    assert code == 0 and err.startswith("2 added")
    code, _, err = run(env, "import", str(bare), "--tenant", "acme")
    assert code == 0 and err.startswith("1 added to acme's list, 1 there already")
    assert kept(env["MAILMAN_STORE"]) == [
        ("ann@example.com", "bounce", "import:csv"),
        ("bob@example.com", "manual", "import:csv"),
        ("cy@example.com", "unsubscribe", "import:csv"),
    ]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ann@example.com,bored\n", "line 1: reason 'bored' is not one of"),
        ("address\nann@example.com\nnot-an-address\n", "line 3: 'not-an-address'"),
        ("ann@example.com,bounce,extra\n", "line 1: expected address[,reason]"),
    ],
)
def test_import_refuses_a_bad_csv_naming_the_line(
    env: dict[str, str], tmp_path: Path, text: str, says: str
) -> None:
    """A bad reason, a bad address or a third column: exit 2 naming the line, nothing kept."""
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, _, err = run(env, "import", str(path), "--tenant", "acme")
    assert code == 2 and says in err
    assert kept(env["MAILMAN_STORE"]) == []


async def test_import_from_sendgrid_pages_through_its_three_lists(
    env: dict[str, str], sendgrid: FakeSendGrid
) -> None:
    """Bounces (501: two pages of 500), spam reports and global unsubscribes come in with
    their reasons, source import:sendgrid; the key is sent as SendGrid wants it."""
    sendgrid.suppressions = {
        "bounces": [
            {
                "created": 1700000000,
                "email": f"b{n:03}@example.com",
                "reason": "550",
                "status": "5.1.1",
            }
            for n in range(501)
        ],
        "spam_reports": [{"created": 1700000000, "email": "Spam@example.com", "ip": "10.0.0.1"}],
        "unsubscribes": [{"created": 1700000000, "email": "gone@example.com"}],
    }
    env |= {"SENDGRID_API_KEY": sendgrid.api_key, "SENDGRID_BASE_URL": sendgrid.base_url}
    code, _, err = await arun(env, "import", "--from", "sendgrid", "--tenant", "acme")
    assert code == 0, err
    assert err.startswith("503 added")
    found = {a: (r, s) for a, r, s in await akept(env["MAILMAN_STORE"])}
    assert found["b500@example.com"] == ("bounce", "import:sendgrid")
    assert found["spam@example.com"] == ("complaint", "import:sendgrid")
    assert found["gone@example.com"] == ("unsubscribe", "import:sendgrid")
    assert sendgrid.list_requests[:2] == [
        "/v3/suppression/bounces?limit=500&offset=0",
        "/v3/suppression/bounces?limit=500&offset=500",
    ]


async def test_import_from_mailgun_follows_paging_next(
    env: dict[str, str], mailgun: FakeMailgun
) -> None:
    """The domain's bounces (1001: two pages of 1000, then an empty one), complaints and
    unsubscribes, following paging.next."""
    mailgun.suppressions = {
        "bounces": [
            {"address": f"b{n:04}@example.com", "code": "550", "error": "No such user"}
            for n in range(1001)
        ],
        "complaints": [{"address": "spam@example.com", "created_at": "Fri, 21 Oct 2011"}],
        "unsubscribes": [{"address": "gone@example.com", "tags": ["*"]}],
    }
    env |= {
        "MAILGUN_API_KEY": mailgun.api_key,
        "MAILGUN_DOMAIN": mailgun.domain,
        "MAILGUN_BASE_URL": mailgun.base_url,
    }
    code, _, err = await arun(env, "import", "--from", "mailgun", "--tenant", "acme")
    assert code == 0, err
    found = {a: r for a, r, _ in await akept(env["MAILMAN_STORE"])}
    assert len(found) == 1003
    assert (found["b1000@example.com"], found["spam@example.com"]) == ("bounce", "complaint")
    assert found["gone@example.com"] == "unsubscribe"
    bounces = [r for r in mailgun.list_requests if "/bounces" in r]
    assert len(bounces) == 3 and "page=next&address=b0999@example.com" in bounces[1]


async def test_import_from_postmark_reads_the_streams_dump(
    env: dict[str, str], postmark: FakePostmark
) -> None:
    """The stream's dump: HardBounce a bounce, SpamComplaint a complaint, a recipient's
    ManualSuppression an unsubscribe, one made by the customer manual."""
    postmark.suppressions["outbound"] = [
        {
            "EmailAddress": "hard@example.com",
            "SuppressionReason": "HardBounce",
            "Origin": "Recipient",
        },
        {
            "EmailAddress": "spam@example.com",
            "SuppressionReason": "SpamComplaint",
            "Origin": "Recipient",
        },
        {
            "EmailAddress": "gone@example.com",
            "SuppressionReason": "ManualSuppression",
            "Origin": "Recipient",
        },
        {
            "EmailAddress": "ops@example.com",
            "SuppressionReason": "ManualSuppression",
            "Origin": "Customer",
        },
    ]
    env |= {"POSTMARK_SERVER_TOKEN": postmark.server_token, "POSTMARK_BASE_URL": postmark.base_url}
    code, _, err = await arun(env, "import", "--from", "postmark", "--tenant", "acme")
    assert code == 0, err
    assert [(a, r) for a, r, _ in await akept(env["MAILMAN_STORE"])] == [
        ("gone@example.com", "unsubscribe"),
        ("hard@example.com", "bounce"),
        ("ops@example.com", "manual"),
        ("spam@example.com", "complaint"),
    ]
    assert postmark.list_requests == ["/message-streams/outbound/suppressions/dump"]


async def test_import_from_ses_follows_next_token_signed(env: dict[str, str], ses: FakeSes) -> None:
    """The account's list (1001 entries: two pages), each request SigV4-signed, NextToken
    sent back as SES gave it (base64 with + / =)."""
    ses.suppressed = [
        {"EmailAddress": f"s{n:04}@example.com", "Reason": "BOUNCE" if n % 2 else "COMPLAINT"}
        for n in range(1001)
    ]
    env |= {"SES_REGION": ses.region, "SES_ENDPOINT_URL": ses.base_url}
    code, _, err = await arun(env, "import", "--from", "ses", "--tenant", "acme")
    assert code == 0, err
    found = {a: r for a, r, _ in await akept(env["MAILMAN_STORE"])}
    assert len(found) == 1001
    assert (found["s0999@example.com"], found["s1000@example.com"]) == ("bounce", "complaint")
    assert len(ses.list_requests) == 2 and "NextToken=" in ses.list_requests[1]


async def test_import_says_why_a_provider_list_cannot_be_read(
    env: dict[str, str], sendgrid: FakeSendGrid
) -> None:
    """A refused key: exit 1 with SendGrid's status, the key never shown, nothing kept;
    a provider not configured here: exit 2."""
    env |= {"SENDGRID_API_KEY": "SG.wrong-key-secret", "SENDGRID_BASE_URL": sendgrid.base_url}
    code, out, err = await arun(env, "import", "--from", "sendgrid", "--tenant", "acme")
    assert code == 1 and "HTTP 401" in err and "wrong-key-secret" not in out + err
    code, _, err = await arun(env, "import", "--from", "mailgun", "--tenant", "acme")
    assert code == 2 and "mailgun is not configured" in err
    assert await akept(env["MAILMAN_STORE"]) == []
