"""Templates rendered by Mailman: Handlebars, the language of SendGrid's dynamic templates
and Mailgun's templates, rendered here so that the rendered mail is what is stored, sent
and carried by failover to any provider.

The language is dotpromptz-handlebars' (a pure-Python Handlebars that takes
Handlebars.js 4.7 as its spec): ``{{name}}`` (HTML-escaped in ``html``), ``{{{raw}}}``,
``{{#if}}``/``{{else}}``, ``{{#unless}}``, ``{{#each}}`` (``@index``, ``@first``...),
``{{#with}}``, ``{{lookup}}``, comments, ``~`` whitespace control, inline partials;
and the helpers of SendGrid's dynamic templates (``equals``, ``notEquals``,
``greaterThan``, ``lessThan``, ``and``, ``or``, ``length``, ``insert``) and Mailgun's
(``equal``). What the library leaves to its caller is done here, with no I/O:

- A syntax error names its place (line and column): the library says what, not where.
- A variable that is printed but not given is an error naming it (every one of them),
  not an empty string: a mail saying "Dear ," is not what the caller meant.
  (``{{#if x}}``, ``{{#each x}}`` and a helper's arguments may name what is not given:
  that is what they are for.)
- Rendering is bounded in time and in size: the parsed template is instrumented so that
  every block body and every printed value passes a ``Budget`` check. A template that
  loops over its data to no end or grows past the size allowed is stopped, not waited for.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dotpromptz_handlebars import (
    Block,
    HelperOptions,
    InlinePartial,
    Mustache,
    Partial,
    PartialBlock,
    SafeString,
    StrictModeError,
    Text,
)
from dotpromptz_handlebars import Node as _Node

# The library's parser and renderer: its Handlebars class compiles and renders through
# these two, but keeps the parsed nodes to itself, and they are instrumented here.
from dotpromptz_handlebars._render import compile_template, render_program

#: The parts of a template, in the order they are rendered and reported.
PARTS = ("subject", "html", "text")
#: The deepest nesting of blocks a template may have (the library's own default is 100
#: levels, which the instrumentation below doubles).
MAX_DEPTH = 200
#: The most missing variables one error names.
MAX_NAMED = 20
#: The longest template name (or id).
MAX_NAME = 128

_BUILTIN_BLOCKS = frozenset({"if", "unless", "each", "with"})
#: The instrumentation's own helpers (no template may call them).
_TICK, _OUT, _SECTION = "__mailman_tick", "__mailman_out", "__mailman_section"


class TemplateSyntaxError(ValueError):
    """A template that does not parse: ``message`` says what, ``line`` and ``column``
    (1-based) where, when the place could be found."""

    def __init__(self, message: str, line: int | None, column: int | None, part: str = "") -> None:
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{message}{where}")
        self.part = part
        self.message = message
        self.line = line
        self.column = column


class RenderFailed(ValueError):
    """Rendering refused: ``missing`` names the variables printed but not given; else
    ``reason`` says why (too large, too slow, a helper's error)."""

    def __init__(self, reason: str, missing: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


class _Stop(Exception):
    """Raised inside rendering when the budget is spent: unwinds the library's frames."""


@dataclass
class Budget:
    """What one mail's rendering may spend: ``chars`` characters of output (all parts
    together) and ``seconds`` of time. Shared by the parts of one mail."""

    chars: int
    seconds: float
    clock: Callable[[], float] = time.monotonic
    spent: int = 0
    missing: list[str] = field(default_factory=list)
    _deadline: float | None = None

    def start(self) -> None:
        if self._deadline is None:
            self._deadline = self.clock() + self.seconds

    def spend(self, chars: int) -> None:
        self.spent += chars
        if self.spent > self.chars:
            raise _Stop(f"the rendered mail is over {self.chars} characters")
        if self._deadline is not None and self.clock() > self._deadline:
            raise _Stop(f"rendering took over {self.seconds:g} s")

    def miss(self, path: str) -> None:
        if path not in self.missing and len(self.missing) < MAX_NAMED:
            self.missing.append(path)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a template's name or id; None if it can."""
    if not isinstance(name, str):
        return "must be a string"
    if not 1 <= len(name) <= MAX_NAME:
        return f"must be 1 to {MAX_NAME} characters"
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in name):
        return "may hold only ASCII letters, digits, '.', '_' and '-'"
    return None


#: The highest version number asked for (nine digits: what Mailgun's ``t:version`` takes,
#: and well inside both stores' integer columns).
MAX_VERSION = 999_999_999


def version_problem(version: object) -> str | None:
    """Why ``version`` cannot be a template's version number; None if it can."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        return f"must be a whole number from 1 to {MAX_VERSION}"
    return None


# --- parsing, with the place of an error ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Compiled:
    """A parsed template, instrumented for ``render``."""

    source: str
    program: list[_Node]


def parse(source: str, part: str = "") -> Compiled:
    """The template ``source``, parsed; ``TemplateSyntaxError`` if it is not Handlebars
    (an unclosed tag or block, a stray closing tag, a bad path, an unknown helper)."""
    try:
        nodes = compile_template(source, max_depth=MAX_DEPTH)
    except (ValueError, RecursionError) as exc:
        line, column = _locate(source)
        raise TemplateSyntaxError(str(exc) or type(exc).__name__, line, column, part) from None
    unknown = _unknown_helper(nodes)
    if unknown is not None:
        line, column = _place(source, _find_tag(source, unknown))
        raise TemplateSyntaxError(f'unknown helper "{unknown}"', line, column, part)
    return Compiled(source, _instrument(nodes))


_TAG = re.compile(r"\{\{(\{\{|\{|!--|)")


def _place(source: str, offset: int | None) -> tuple[int | None, int | None]:
    if offset is None:
        return None, None
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


def _find_tag(source: str, name: str) -> int | None:
    match = re.search(r"\{\{[{#~^&]*\s*" + re.escape(name) + r"[\s}~]", source)
    return None if match is None else match.start()


def _tags(source: str) -> list[tuple[int, str, int]]:
    """Each tag's offset, body and end; an unclosed one is (offset, "", -1)."""
    found: list[tuple[int, str, int]] = []
    i = 0
    while True:
        match = _TAG.search(source, i)
        if match is None:
            return found
        start = match.start()
        if start > 0 and source[start - 1] == "\\":
            i = start + 2
            continue
        opener = match.group(1)
        closer = {"{{": "}}}}", "{": "}}}", "!--": "--}}"}.get(opener, "}}")
        end = source.find(closer, match.end())
        if end < 0:
            found.append((start, "", -1))
            return found
        body = source[match.end() : end].strip("~ \t\r\n")
        found.append((start, "" if opener else body, end + len(closer)))
        i = end + len(closer)


def _locate(source: str) -> tuple[int | None, int | None]:
    """Where ``source`` stops being a template: the first tag that is not closed, closes
    what is not open, or does not parse alone; the block left open at the end."""
    stack: list[tuple[str, int]] = []
    for start, body, end in _tags(source):
        if end < 0:
            return _place(source, start)
        if body.startswith(("#", "^")):
            words = body[1:].lstrip(">*").split()
            name = words[0] if words else ""
            if name == "inline":
                name = "inline"
            stack.append((name, start))
            probe = "{{" + body + "}}{{/" + name + "}}"
        elif body.startswith("/"):
            name = body[1:].strip()
            if not stack or stack[-1][0] != name:
                return _place(source, start)
            stack.pop()
            continue
        elif body == "else" or body.startswith("else "):
            if not stack:
                return _place(source, start)
            probe = "{{#if x}}{{" + body + "}}{{/if}}"
        elif body.startswith("!"):
            continue
        else:
            probe = source[start:end]
        try:
            compile_template(probe, max_depth=MAX_DEPTH)
        except (ValueError, RecursionError):
            return _place(source, start)
    if stack:
        return _place(source, stack[-1][1])
    return None, None


# --- helpers --------------------------------------------------------------------------------


def _block(condition: bool, options: HelperOptions) -> Any:
    """A comparison helper: its body if ``condition``, else its ``{{else}}``; as an
    inline call (``{{#if (equals a b)}}``), the truth itself."""
    if not options.is_block:
        return condition
    return options.fn() if condition else options.inverse()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(test: Callable[[float, float], bool]) -> Callable[[list[Any], HelperOptions], Any]:
    def helper(args: list[Any], options: HelperOptions) -> Any:
        a, b = (_number(v) for v in [*args, None, None][:2])
        return _block(a is not None and b is not None and test(a, b), options)

    return helper


def _equals(args: list[Any], options: HelperOptions) -> Any:
    a, b = [*args, None, None][:2]
    return _block(a == b or (a is not None and b is not None and str(a) == str(b)), options)


def _not_equals(args: list[Any], options: HelperOptions) -> Any:
    a, b = [*args, None, None][:2]
    return _block(not (a == b or (a is not None and b is not None and str(a) == str(b))), options)


def _truthy(value: Any) -> bool:
    if value is None or value is False or value == "" or value == 0:
        return False
    return not (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 0)


def _and(args: list[Any], options: HelperOptions) -> Any:
    return _block(bool(args) and all(_truthy(a) for a in args), options)


def _or(args: list[Any], options: HelperOptions) -> Any:
    return _block(any(_truthy(a) for a in args), options)


def _length(args: list[Any], options: HelperOptions) -> Any:
    value = args[0] if args else None
    if isinstance(value, str | Sequence | Mapping):
        return len(value)
    return 0


def _insert(args: list[Any], options: HelperOptions) -> Any:
    """SendGrid's ``{{insert name "default=Customer"}}``: the value, or the default."""
    value = args[0] if args else None
    if value is None or value == "":
        for extra in args[1:]:
            if isinstance(extra, str) and extra.startswith("default="):
                return extra.removeprefix("default=")
        return ""
    return value


def _log(args: list[Any], options: HelperOptions) -> str:
    return ""  # the library's prints to stdout: a mail's data has no place there


#: The helpers a template may call, by name.
HELPERS: dict[str, Callable[[list[Any], HelperOptions], Any]] = {
    "equals": _equals,
    "equal": _equals,  # Mailgun's name
    "notEquals": _not_equals,
    "greaterThan": _compare(lambda a, b: a > b),
    "lessThan": _compare(lambda a, b: a < b),
    "and": _and,
    "or": _or,
    "length": _length,
    "insert": _insert,
    "lookup": lambda args, options: _lookup(args),
    "log": _log,
}


def _lookup(args: list[Any]) -> Any:
    collection, key = [*args, None, None][:2]
    if isinstance(collection, Mapping):
        return collection.get(key)
    if isinstance(collection, Sequence) and not isinstance(collection, str):
        try:
            index = int(key)
        except (TypeError, ValueError):
            return None
        return collection[index] if 0 <= index < len(collection) else None
    return None


def _unknown_helper(nodes: list[_Node]) -> str | None:
    """The first helper called that is none of ``HELPERS`` (the library finds it only
    when the call is rendered)."""
    for node in nodes:
        call: dict[str, Any] | None = None
        if isinstance(node, Mustache | Block):
            call = node.call
        if call is not None:
            name = call["name"]
            called = bool(call["args"] or call["hash"]) or call.get("literal")
            if (
                called
                and name not in HELPERS
                and not (isinstance(node, Block) and name in _BUILTIN_BLOCKS)
            ):
                return str(name)
            if name.startswith("__mailman"):
                return str(name)
        for inner in _children(node):
            found = _unknown_helper(inner)
            if found is not None:
                return found
    return None


def _children(node: _Node) -> list[list[_Node]]:
    if isinstance(node, Block):
        return [node.body, node.inverse]
    if isinstance(node, InlinePartial | PartialBlock):
        return [node.body]
    return []


# --- instrumentation ------------------------------------------------------------------------


def _call(name: str, *args: str) -> dict[str, Any]:
    return {"name": name, "args": list(args), "hash": {}, "params": [], "literal": False}


def _instrument(nodes: list[_Node]) -> list[_Node]:
    """``nodes`` with a budget check first (counting the body's own text) and each
    printed value wrapped in a block that counts its size and catches a missing variable."""
    out: list[_Node] = []
    text = 0
    for node in nodes:
        if isinstance(node, Text):
            text += len(node.value)
            out.append(node)
        elif isinstance(node, Mustache):
            out.append(Block(_call(_OUT), [node], []))
        elif isinstance(node, Block):
            block = Block(node.call, _instrument(node.body), _instrument(node.inverse))
            call = node.call
            section = (
                call["name"] not in _BUILTIN_BLOCKS
                and call["name"] not in HELPERS
                and not (call["args"] or call["hash"] or call.get("literal"))
            )
            out.append(Block(_call(_SECTION), [block], []) if section else block)
        elif isinstance(node, InlinePartial):
            out.append(InlinePartial(node.name, _instrument(node.body)))
        elif isinstance(node, PartialBlock):
            out.append(
                PartialBlock(node.name, _instrument(node.body), node.context_path, node.hash)
            )
        elif isinstance(node, Partial):
            out.append(Block(_call(_SECTION), [node], []))
        else:
            out.append(node)
    return [Mustache(_call(_TICK, str(text))), *out]


def _helpers(budget: Budget) -> dict[str, Callable[[list[Any], HelperOptions], Any]]:
    def tick(args: list[Any], options: HelperOptions) -> str:
        budget.spend(int(args[0]))
        return ""

    def out(args: list[Any], options: HelperOptions) -> SafeString:
        try:
            shown = options.fn()
        except StrictModeError as exc:
            budget.miss(exc.path)
            return SafeString("")
        budget.spend(len(shown))
        return shown

    def section(args: list[Any], options: HelperOptions) -> SafeString:
        try:
            return options.fn()
        except StrictModeError as exc:
            budget.miss(exc.path)
            return SafeString("")

    return {**HELPERS, _TICK: tick, _OUT: out, _SECTION: section}


def render(compiled: Compiled, data: Mapping[str, Any], *, html: bool, budget: Budget) -> str:
    """``compiled`` rendered with ``data``: HTML-escaped values if ``html``. A variable
    printed but not given is recorded in ``budget.missing`` (rendered empty); the caller
    refuses the mail if any is. ``RenderFailed`` past the budget or on a helper's error."""
    budget.start()
    try:
        return render_program(
            compiled.program,
            dict(data),
            data=None,
            helpers=_helpers(budget),
            partials={},
            escape_html=html,
            strict=True,
            max_depth=MAX_DEPTH,
        )
    except _Stop as exc:
        raise RenderFailed(str(exc)) from None
    except RecursionError:
        raise RenderFailed("the template nests or recurses too deeply") from None
    except (ValueError, TypeError) as exc:
        raise RenderFailed(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Parts:
    """A template's parts, parsed: its subject, HTML and plain-text bodies."""

    subject: Compiled | None
    html: Compiled | None
    text: Compiled | None


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str | None
    html: str | None
    text: str | None


def render_mail(parts: Parts, data: Mapping[str, Any], budget: Budget) -> RenderedMail:
    """Every part of a template rendered with ``data`` (HTML-escaped in ``html`` only);
    ``RenderFailed`` naming every missing variable, or past the budget."""
    rendered = {
        name: None if part is None else render(part, data, html=name == "html", budget=budget)
        for name, part in (("subject", parts.subject), ("html", parts.html), ("text", parts.text))
    }
    if budget.missing:
        missing = tuple(budget.missing)
        raise RenderFailed("variables not given: " + ", ".join(missing), missing)
    return RenderedMail(**rendered)


def parse_parts(subject: str | None, html: str | None, text: str | None) -> Parts:
    """The parts parsed; ``TemplateSyntaxError`` (its ``part`` named) from the first
    that does not parse."""
    return Parts(
        subject=None if subject is None else parse(subject, "subject"),
        html=None if html is None else parse(html, "html"),
        text=None if text is None else parse(text, "text"),
    )


__all__ = [
    "HELPERS",
    "MAX_NAME",
    "PARTS",
    "Budget",
    "Compiled",
    "Parts",
    "RenderFailed",
    "RenderedMail",
    "TemplateSyntaxError",
    "name_problem",
    "parse",
    "parse_parts",
    "render",
    "render_mail",
    "version_problem",
]
