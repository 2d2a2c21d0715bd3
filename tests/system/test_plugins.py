"""Providers are plugins: the entry point group ``mailman.providers`` adds one from outside.

``tests/support/acme_plugin`` is a third party's package as pip would leave
it (a module and its ``.dist-info`` naming the entry point); the process tests
put it on ``PYTHONPATH`` and run Mailman as production does.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import aiohttp
import pytest

from mailman.config import ConfigError, ProviderPlugin, load, parse, provider_plugins, setting
from mailman.config.plugins import GROUP, discover
from mailman.providers.outbox import OutboxClient, OutboxConfig
from mailman.system import make_client

from ..conftest import eventually
from ..support.processes import ROOT, mailman_process

PLUGINS = ROOT / "tests" / "support" / "acme_plugin"
ACME = "tests.support.acme_plugin.acme_mailman:plugin"
BUILT_IN = ("mailgun", "outbox", "postmark", "resend", "sendgrid", "ses", "smtp-relay")


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name, value, GROUP)


def taken_by_mailman(key: str) -> bool:
    return key in {"MAILMAN_PORT", "--port"}


def _settings(env: str) -> type:
    from dataclasses import make_dataclass

    field = setting(None, env=env, parse=parse.text_or_default, help="a setting")
    return make_dataclass("Settings", [("value", str | None, field)], frozen=True)


def _outbox(settings: object, timeout: float) -> OutboxClient:
    return OutboxClient(OutboxConfig())


#: Plugins of the clash tests, found by their entry points' values.
port_thief = ProviderPlugin("thief", _settings("MAILMAN_PORT"), _outbox)
acme_twin = ProviderPlugin("twin", _settings("ACME_SPOOL"), _outbox)
not_a_plugin = object()
misnamed = ProviderPlugin("other", _settings("MISNAMED_X"), _outbox)
HERE = "tests.system.test_plugins"


def test_mailmans_own_providers_come_through_the_entry_point_group() -> None:
    """Every built-in provider is found through ``mailman.providers``, none broken."""
    found = provider_plugins()
    assert set(BUILT_IN) <= set(found.names)
    assert not found.broken
    assert all(found.usable[name].name == name for name in BUILT_IN)


def test_a_third_partys_plugin_is_found_with_its_settings() -> None:
    """A plugin's entry point gives its name, settings class and client factory."""
    found = discover([entry("acme", ACME)], taken_by_mailman)
    assert found.names == ("acme",) and not found.broken
    assert found.usable["acme"].settings.__name__ == "AcmeSettings"


@pytest.mark.parametrize(
    ("entries", "name", "why"),
    [
        ([entry("gone", "no_such_module_anywhere:plugin")], "gone", "ModuleNotFoundError"),
        ([entry("odd", f"{HERE}:not_a_plugin")], "odd", "not a ProviderPlugin"),
        ([entry("name", f"{HERE}:misnamed")], "name", "calls itself 'other'"),
        ([entry("Bad_Name", ACME)], "Bad_Name", "lower-case letters"),
        ([entry("a-name-longer-than-16", ACME)], "a-name-longer-than-16", "at most 16"),
        ([entry("thief", f"{HERE}:port_thief")], "thief", "MAILMAN_PORT is already one of"),
        (
            [entry("acme", ACME), entry("twin", f"{HERE}:acme_twin")],
            "twin",
            "ACME_SPOOL is already the acme provider's",
        ),
        (
            [entry("acme", ACME), entry("acme", f"{HERE}:acme_twin")],
            "acme",
            "named by two plugins",
        ),
    ],
)
def test_a_plugin_that_cannot_be_used_is_broken_with_the_reason(
    entries: list[EntryPoint], name: str, why: str
) -> None:
    """A plugin that does not import, is no plugin, is misnamed or clashes is kept out, with
    the reason; the others stay usable."""
    found = discover(entries, taken_by_mailman)
    assert name not in found.usable
    assert why in found.broken[name]


def test_the_same_distribution_found_twice_is_one_plugin() -> None:
    """An entry point seen twice with the same value (a package on the path twice) is one."""
    found = discover([entry("acme", ACME), entry("acme", ACME)], taken_by_mailman)
    assert found.names == ("acme",) and not found.broken


def test_built_in_providers_are_configured_through_their_plugins(tmp_path: Path) -> None:
    """The chain's entries carry their plugin's checked settings and the plugin makes the
    client: the outbox with its directory."""
    config = load([], {"MAILMAN_PROVIDERS": "outbox", "MAILMAN_OUTBOX_DIR": str(tmp_path)})
    (outbox,) = config.providers
    assert outbox.settings == OutboxConfig(tmp_path)
    client = make_client(outbox, 1.0)
    assert isinstance(client, OutboxClient) and client.name == "outbox"


def test_a_client_factory_that_makes_no_provider_client_is_a_configuration_error() -> None:
    """A plugin whose factory returns something else fails at start, naming the provider."""
    (outbox,) = load([], {"MAILMAN_PROVIDERS": "outbox"}).providers
    wrong = ProviderPlugin("outbox", OutboxConfig, lambda settings, timeout: object())
    with pytest.raises(ConfigError, match="outbox provider's plugin made a object"):
        make_client(type(outbox)("outbox", outbox.settings, wrong), 1.0)


def test_an_unknown_provider_names_the_installed_ones() -> None:
    """A chain naming no installed plugin is refused with the names it could use."""
    with pytest.raises(ConfigError, match=r"unknown provider.*acme; known: mailgun, outbox"):
        load([], {"MAILMAN_PROVIDERS": "acme"})


def plugin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose Python finds the third party's packages."""
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "MAILMAN_STORE": f"sqlite:///{tmp_path / 'm.db'}", **extra}


async def test_a_third_partys_provider_sends_through_the_chain(tmp_path: Path) -> None:
    """With the plugin installed, MAILMAN_PROVIDERS=acme sends each mail through it, the
    history names it, and a broken plugin not in the chain is one warning."""
    spool = tmp_path / "acme.jsonl"
    env = plugin_env(tmp_path, MAILMAN_PROVIDERS="acme", ACME_SPOOL=str(spool))
    async with (
        mailman_process(env, tmp_path / "mailman.log") as child,
        aiohttp.ClientSession() as http,
    ):
        body = {"to": ["ann@example.com"], "from": "a@example.com", "subject": "Hi", "content": "x"}
        async with http.post(f"{child.url}/mail/send", json=body) as resp:
            assert resp.status == 201
            mail_id = (await resp.json())["mail"]["id"]

        async def sent() -> bool:
            async with http.get(f"{child.url}/mail/{mail_id}") as resp:
                return bool((await resp.json())["mail"]["status"] == "sent")

        await eventually(sent, what="the mail sent through acme")
        async with http.get(f"{child.url}/mail/{mail_id}") as resp:
            (attempt,) = (await resp.json())["mail"]["attempts"]
        assert attempt["provider"] == "acme"
        lines = [json.loads(line) for line in spool.read_text().splitlines()]
        assert lines == [{"mail_id": mail_id, "to": ["ann@example.com"], "subject": "Hi"}]
        (broken,) = child.events("provider.plugin_broken")
        assert broken["provider"] == "broken" and "acme's SDK is not installed" in broken["why"]


async def run_mailman(env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailman",
        *argv,
        cwd=ROOT,
        env={**os.environ, **env, "MAILMAN_LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_plugins_settings_are_in_the_help_and_the_docs_table(tmp_path: Path) -> None:
    """``mailman --help`` and the generated settings table list the plugin's own setting."""
    env = plugin_env(tmp_path)
    code, out, _ = await run_mailman(env, "--help")
    assert code == 0
    assert "ACME_SPOOL" in out and "acme" in out
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from mailman.config.docs import table; print(table())",
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
    )
    table, _ = await proc.communicate()
    assert "| `acme.spool` | `ACME_SPOOL` |" in table.decode()


async def test_a_broken_plugin_in_the_chain_stops_the_start_with_its_reason(
    tmp_path: Path,
) -> None:
    """Naming a plugin that cannot be loaded is exit 2 and one line that says why."""
    code, _, err = await run_mailman(plugin_env(tmp_path, MAILMAN_PROVIDERS="broken,outbox"))
    assert code == 2
    (line,) = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert line["event"] == "config.invalid"
    assert "names broken, whose plugin cannot be used" in line["detail"]
    assert "acme's SDK is not installed" in line["detail"]
