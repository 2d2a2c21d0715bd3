"""Tenants' templates in the store, versioned.

Part of the store contract (``test_store``): each test runs on every backend.
"""

from __future__ import annotations

import asyncio

from mailman.store import Store, TemplateRecord

from . import test_store as contract

# The contract's fixtures: every test here runs on SQLite and on a fresh MySQL database.
make_store, store = contract.make_store, contract.store
mysql_server, mysql_url = contract.mysql_server, contract.mysql_url


def template(
    id_: str = "T1", tenant: str = "acme", name: str = "welcome", html: str = "<p>{{name}}</p>"
) -> TemplateRecord:
    return TemplateRecord(id_, tenant, name, 1, "Hi {{name}}", html, None, 1000.0)


async def test_a_template_is_found_by_id_or_name_and_its_latest_version_is_the_default(
    store: Store,
) -> None:
    """Version 1 is stored; a new version becomes the default; any version is kept."""
    assert await store.add_template(template())
    v2 = await store.add_template_version(
        "acme", "welcome", subject="Hello {{name}}", html=None, text="{{name}}", at=1001.0
    )
    assert v2 == TemplateRecord(
        "T1", "acme", "welcome", 2, "Hello {{name}}", None, "{{name}}", 1001.0
    )
    assert await store.template("acme", "welcome") == v2
    assert await store.template("acme", "T1") == v2
    assert await store.template("acme", "T1", 1) == template()
    assert await store.template("acme", "welcome", 3) is None
    v3 = await store.add_template_version("acme", "T1", subject="s", html="h", text=None, at=1002.0)
    assert v3 is not None and v3.version == 3


async def test_templates_are_each_tenants_own(store: Store) -> None:
    """A name is unique within a tenant only; another tenant neither sees nor changes it."""
    assert await store.add_template(template())
    assert not await store.add_template(template("T2"))  # the same name again
    assert await store.add_template(template("T3", tenant="beta"))
    assert await store.template("beta", "T1") is None
    assert (
        await store.add_template_version("beta", "T1", subject="x", html=None, text=None, at=1.0)
        is None
    )
    assert not await store.delete_template("beta", "T1")
    found = await store.template("beta", "welcome")
    assert found is not None and found.id == "T3"


async def test_the_list_holds_each_templates_latest_version_by_name(store: Store) -> None:
    """One entry per template, its latest version, in name order."""
    await store.add_template(template("T1", name="welcome"))
    await store.add_template(template("T2", name="receipt"))
    await store.add_template(template("T9", tenant="beta", name="other"))
    await store.add_template_version("acme", "welcome", subject="s", html=None, text=None, at=2.0)
    listed = await store.templates("acme")
    assert [(t.name, t.version) for t in listed] == [("receipt", 1), ("welcome", 2)]


async def test_delete_removes_every_version_and_frees_the_name(store: Store) -> None:
    """After DELETE no version is found; the name starts again at version 1."""
    await store.add_template(template())
    await store.add_template_version("acme", "welcome", subject="s", html=None, text=None, at=2.0)
    assert await store.delete_template("acme", "welcome")
    assert await store.template("acme", "T1", 1) is None
    assert await store.templates("acme") == []
    assert not await store.delete_template("acme", "welcome")
    assert await store.add_template(template("T5"))
    again = await store.template("acme", "welcome")
    assert again is not None and (again.id, again.version) == ("T5", 1)


async def test_concurrent_new_versions_get_distinct_numbers(store: Store) -> None:
    """Versions added at once are numbered one after the other, none lost."""
    await store.add_template(template())
    added = await asyncio.gather(
        *(
            store.add_template_version(
                "acme", "welcome", subject=str(n), html=None, text=None, at=2.0
            )
            for n in range(8)
        )
    )
    assert sorted(a.version for a in added if a is not None) == list(range(2, 10))
