"""The template renderer (``core.templates``): the language as SendGrid and Mailgun use it,
the place of a syntax error, missing variables, and the budget of time and size."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from mailman.core.templates import (
    Budget,
    Parts,
    RenderFailed,
    TemplateSyntaxError,
    parse,
    parse_parts,
    render,
    render_mail,
)


def rendered(source: str, data: dict[str, Any], *, html: bool = True, chars: int = 10**6) -> str:
    budget = Budget(chars=chars, seconds=60.0)
    out = render(parse(source), data, html=html, budget=budget)
    assert budget.missing == []
    return out


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("{{#equals plan 'pro'}}P{{else}}F{{/equals}}", {"plan": "pro"}, "P"),
        ("{{#equals n 3}}three{{/equals}}", {"n": "3"}, "three"),  # SendGrid compares loosely
        ("{{#equal plan 'pro'}}P{{else}}F{{/equal}}", {"plan": "free"}, "F"),  # Mailgun's name
        ("{{#notEquals a b}}differ{{/notEquals}}", {"a": 1, "b": 2}, "differ"),
        ("{{#greaterThan n 10}}big{{else}}small{{/greaterThan}}", {"n": 11}, "big"),
        ("{{#lessThan n 10}}small{{/lessThan}}", {"n": "9.5"}, "small"),
        ("{{#and a b}}both{{else}}not{{/and}}", {"a": 1, "b": 0}, "not"),
        ("{{#or a b}}one{{/or}}", {"a": "", "b": [1]}, "one"),
        ("{{length items}}", {"items": [1, 2, 3]}, "3"),
        ("{{insert nick 'default=friend'}}", {"nick": None}, "friend"),
        ("{{insert nick 'default=friend'}}", {"nick": "Al"}, "Al"),
        ("{{#if (equals a 'x')}}yes{{/if}}", {"a": "x"}, "yes"),
        ("{{#if a}}A{{else if b}}B{{else}}C{{/if}}", {"a": 0, "b": True}, "B"),
        ("{{#unless paid}}due{{/unless}}", {"paid": False}, "due"),
        ("{{#each xs}}{{@index}}{{this}}{{#unless @last}},{{/unless}}{{/each}}", {"xs": "ab"}, ""),
        (
            "{{#each xs}}{{@index}}{{this}}{{#unless @last}},{{/unless}}{{/each}}",
            {"xs": [7, 8]},
            "07,18",
        ),
        ("{{#each m}}{{@key}}={{this}};{{/each}}", {"m": {"a": 1, "b": 2}}, "a=1;b=2;"),
        (
            "{{#with user}}{{name}} of {{../team}}{{/with}}",
            {"user": {"name": "Ann"}, "team": "T"},
            "Ann of T",
        ),
        ("{{lookup xs 1}}", {"xs": ["a", "b"]}, "b"),
        ("a {{! a comment }} b", {}, "a  b"),
        (
            "{{#*inline 'row'}}<{{this}}>{{/inline}}{{#each xs}}{{> row}}{{/each}}",
            {"xs": [1, 2]},
            "<1><2>",
        ),
        (
            "{{x}} {{{x}}} {{&x}}",
            {"x": "<a href='u'>&</a>"},
            "&lt;a href&#x3D;&#x27;u&#x27;&gt;&amp;&lt;/a&gt; <a href='u'>&</a> <a href='u'>&</a>",
        ),
    ],
)
def test_the_language_and_the_helpers_of_sendgrid_and_mailgun(
    source: str, data: dict[str, Any], expected: str
) -> None:
    """Each construct and helper renders as Handlebars.js and SendGrid's templates do."""
    assert rendered(source, data) == expected


def test_values_are_escaped_in_html_only() -> None:
    """The subject and the text are not HTML: their values are not escaped."""
    parts = parse_parts("Hi {{n}}", "<p>{{n}}</p>", "Hi {{n}}")
    mail = render_mail(parts, {"n": "A & <B>"}, Budget(chars=1000, seconds=60.0))
    assert (mail.subject, mail.html, mail.text) == (
        "Hi A & <B>",
        "<p>A &amp; &lt;B&gt;</p>",
        "Hi A & <B>",
    )
    assert render_mail(Parts(None, None, parse("x")), {}, Budget(10, 60.0)).subject is None


@pytest.mark.parametrize(
    ("source", "line", "column"),
    [
        ("Hello {{name", 1, 7),
        ("a\nb {{#if x}}c", 2, 3),
        ("{{#if x}}a{{/each}}", 1, 11),
        ("{{#each xs}}\n  {{/if}}{{/each}}", 2, 3),
        ("ok\n\n   {{else}}", 3, 4),
        ("{{a}}\n{{b..c d}}", 2, 1),
        ("x\n{{formatDate when 'YYYY'}}", 2, 1),
        ("{{{raw}}", 1, 1),
        ("{{!-- never closed", 1, 1),
    ],
)
def test_a_syntax_error_says_where(source: str, line: int, column: int) -> None:
    """The line and column (1-based) of the tag at fault, or of the block left open."""
    with pytest.raises(TemplateSyntaxError) as caught:
        parse(source, "html")
    assert (caught.value.line, caught.value.column, caught.value.part) == (line, column, "html")
    assert f"line {line}, column {column}" in str(caught.value)


def test_an_escaped_tag_is_text() -> None:
    """\\{{ is two braces, not a tag (nothing to be missing, nothing to be wrong)."""
    assert rendered("\\{{name}} and {{x}}", {"x": 1}) == "{{name}} and 1"


def test_every_missing_variable_is_named_once() -> None:
    """Printed paths missing from the data are all recorded, each once, in order; tested
    ones are not; null counts as given."""
    budget = Budget(chars=1000, seconds=60.0)
    source = (
        "{{a}}{{b.c}}{{a}}{{#if d}}{{d}}{{/if}}{{#each xs}}{{title}}{{/each}}{{n}}{{#sec}}x{{/sec}}"
    )
    out = render(
        parse(source), {"b": {}, "xs": [{"title": "T"}, {}], "n": None}, html=True, budget=budget
    )
    assert budget.missing == ["a", "b.c", "title", "sec"]
    assert out == "T"
    with pytest.raises(RenderFailed) as caught:
        render_mail(Parts(parse("{{x}}"), None, parse("{{y}}{{x}}")), {}, Budget(100, 60.0))
    assert caught.value.missing == ("x", "y")


def test_the_size_budget_counts_every_character_as_it_renders() -> None:
    """Text and values count; one character past the budget stops the rendering."""
    source = "ab{{#each xs}}-{{this}}{{/each}}"
    data = {"xs": ["xyz", "<"]}
    out = rendered(source, data, chars=11)
    assert out == "ab-xyz-&lt;" and len(out) == 11
    with pytest.raises(RenderFailed, match="over 10 characters"):
        render(parse(source), data, html=True, budget=Budget(chars=10, seconds=60.0))


def test_the_time_budget_stops_loops_that_print_nothing() -> None:
    """Nested loops over the data with empty bodies still meet the clock at every turn."""
    ticks = itertools.count()
    budget = Budget(chars=10**9, seconds=100.0, clock=lambda: float(next(ticks)))
    loops = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{/each}}{{/each}}{{/each}}"
    with pytest.raises(RenderFailed, match="took over 100 s"):
        render(parse(loops), {"a": list(range(1000))}, html=False, budget=budget)
    assert next(ticks) < 110


def test_recursion_and_helpers_errors_are_refusals_not_crashes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A partial that includes itself, or a helper given what it cannot take, is a
    RenderFailed; the library's log helper prints nothing."""
    with pytest.raises(RenderFailed):
        render(
            parse("{{#*inline 'p'}}{{> p}}{{/inline}}{{> p}}"),
            {},
            html=True,
            budget=Budget(10**6, 60.0),
        )
    with pytest.raises(RenderFailed):
        render(parse("{{> nowhere}}"), {}, html=True, budget=Budget(10**6, 60.0))
    assert rendered("{{log 'secret'}}x", {}) == "x"
    assert capsys.readouterr().out == ""
