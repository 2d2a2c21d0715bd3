"""What acceptance reads without a store trip: keys, tenants' settings, suppressions.

Each cache answers from memory while it is fresh (``known``, ``known_any``) and says
None when the store must be asked, so that a mail of a known tenant is accepted with
no coroutine beyond its commit.
"""

from __future__ import annotations

from pathlib import Path

from mailman.core.model import SuppressionReason, Unsubscribe
from mailman.intake.auth import Keyring
from mailman.intake.tenants import Suppressing, TenantChains
from mailman.store import ApiKey, Suppression
from mailman.store.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    """A SQLite store that counts the reads the caches make."""

    reads = 0

    async def tenant_chains(self) -> dict[str, str]:
        self.reads += 1
        return await super().tenant_chains()

    async def has_suppressions(self, tenant: str) -> bool:
        self.reads += 1
        return await super().has_suppressions(tenant)

    async def any_keys(self) -> bool:
        self.reads += 1
        return await super().any_keys()


async def test_tenant_settings_are_known_while_fresh(tmp_path: Path) -> None:
    """A tenant's chain and default group are known from memory until the TTL passes
    (then None: read them again); no tenant has neither, without any read."""
    now = [0.0]
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        await store.set_tenant_chain("acme", "mailgun", 0.0)
        await store.set_tenant_unsubscribe("acme", Unsubscribe(group="news"), 0.0)
        chains = TenantChains(store, ttl=2.0, clock=lambda: now[0])
        assert chains.known("") == (None, None)
        assert chains.known("acme") is None  # never read
        assert store.reads == 0
        chain, group = await chains.settings("acme")
        assert chain == "mailgun" and group is not None and group.group == "news"
        assert chains.known("acme") == (chain, group)
        assert chains.known("beta") == (None, None)
        assert store.reads == 1
        now[0] = 2.0
        assert chains.known("acme") is None  # stale
        await chains.settings("acme")
        assert store.reads == 2


async def test_a_tenants_suppressing_is_known_until_one_is_added_here(tmp_path: Path) -> None:
    """Whether a tenant suppresses any address is known after the first ask, until the
    TTL passes or a suppression is added through this store."""
    now = [0.0]
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        suppressing = Suppressing(store, ttl=5.0, clock=lambda: now[0])
        assert suppressing.known("acme") is None
        assert await suppressing.any("acme") is False
        assert suppressing.known("acme") is False
        assert store.reads == 1
        gone = Suppression("acme", "gone@example.com", SuppressionReason.MANUAL, "api", 1.0)
        await store.add_suppressions([gone])
        assert suppressing.known("acme") is None  # added here: ask again
        assert await suppressing.any("acme") is True
        assert suppressing.known("acme") is True
        now[0] = 5.0
        assert suppressing.known("acme") is None


async def test_whether_any_key_exists_is_known_until_the_ttl(tmp_path: Path) -> None:
    """``known_any`` answers from memory after ``any_keys`` asked, and None once the TTL
    has passed (no key yet) or with no TTL; once a key exists it stays known."""
    store = CountingStore(str(tmp_path / "m.db"))
    async with store:
        keyring = Keyring(store, ttl=60.0)
        assert keyring.known_any() is None
        assert await keyring.any_keys() is False
        assert keyring.known_any() is False
        assert Keyring(store, ttl=0.0).known_any() is None
        expired = Keyring(store, ttl=-1.0)
        await expired.any_keys()
        assert expired.known_any() is None
        await store.create_key(
            ApiKey(id="k1", tenant="t", scopes=("send",), rate=None, created_at=1.0), "h"
        )
        fresh = Keyring(store, ttl=60.0)
        assert await fresh.any_keys() is True
        assert fresh.known_any() is True
