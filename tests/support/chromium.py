"""Headless Chromium (Debian's ``chromium``) for the dashboard tests.

``dump_dom`` loads a page, lets its scripts run for a budget of *virtual* time
(Chromium pauses that clock while a fetch is in flight, so the budget is not a
race with the server) and returns the DOM as it then is. ``Browser`` drives one
tab over the DevTools protocol, with aiohttp's WebSocket client, for what needs
typing (the admin key). ``Dom`` reads a dumped page back.

Without Chromium the tests are skipped locally, but with ``CI=true`` they fail
(``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import pytest

from ..conftest import eventually
from .kafka_broker import in_ci

#: Flags for a headless run as root in a container, without a desktop session.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    """The Chromium executable; skips the test without one (fails it in CI)."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = "no chromium to run the dashboard in (apt-get install -y chromium)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


async def dump_dom(url: str, profile: Path, *, budget_ms: int = 3000) -> str:
    """The DOM of ``url`` after its scripts ran for ``budget_ms`` of virtual time."""
    proc = await asyncio.create_subprocess_exec(
        chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode()


class Browser:
    """One headless Chromium tab, driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Self:
        self.profile.mkdir(parents=True, exist_ok=True)
        with (self.profile / "chromium.log").open("wb") as log:
            self._proc = await asyncio.create_subprocess_exec(
                chromium(),
                *FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        try:
            await self._connect()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _connect(self) -> None:
        # Chromium writes the port it chose, then the browser's path, into this file.
        active = self.profile / "DevToolsActivePort"
        await eventually(
            lambda: active.exists() and len(active.read_text().split()) >= 2,
            within=30,
            what="chromium's DevTools port",
        )
        port = active.read_text().split()[0]
        self._http = aiohttp.ClientSession()
        async with self._http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        (page,) = [t for t in targets if t["type"] == "page"]
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method; its result (events that arrive meanwhile are dropped)."""
        assert self._ws is not None
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = await asyncio.wait_for(self._ws.receive(), 30)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            answer = json.loads(message.data)
            if answer.get("id") != call_id:
                continue
            assert "error" not in answer, answer["error"]
            result: dict[str, Any] = answer["result"]
            return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await eventually(
            lambda: self.evaluate("document.readyState === 'complete'"),
            within=30,
            what=f"{url} to load",
        )

    async def type(self, selector: str, text: str) -> None:
        """Focus the element and type ``text`` into it as keyboard input."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def dom(self) -> Dom:
        return Dom.parse(await self.evaluate("document.documentElement.outerHTML"))


# --- reading a page back ---------------------------------------------------------------

_VOID = frozenset(
    [
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    ]
)


@dataclass(eq=False)
class Node:
    """An element of a parsed page."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        """Elements below (and including) this one with ``tag`` and these attributes
        (``data_status="sent"`` is ``data-status``, ``class_`` is ``class``; None: any value)."""
        wanted = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag)
            and all(k in n.attrs and (v is None or n.attrs[k] == v) for k, v in wanted.items())
        ]

    def one(self, tag: str | None = None, **attrs: str | None) -> Node:
        (found,) = self.all(tag, **attrs)
        return found

    def by_id(self, element_id: str) -> Node:
        return self.one(id=element_id)

    @property
    def hidden(self) -> bool:
        return "hidden" in self.attrs


class Dom(HTMLParser):
    """A parsed page: ``Dom.parse(html).root``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._stack = [self.root]

    @classmethod
    def parse(cls, page: str) -> Dom:
        dom = cls()
        dom.feed(page)
        dom.close()
        return dom

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)

    def all(self, tag: str | None = None, **attrs: str | None) -> list[Node]:
        return self.root.all(tag, **attrs)

    def one(self, tag: str | None = None, **attrs: str | None) -> Node:
        return self.root.one(tag, **attrs)

    def by_id(self, element_id: str) -> Node:
        return self.root.by_id(element_id)
