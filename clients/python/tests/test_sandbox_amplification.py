"""Operations whose output can outgrow their inputs are sized before they run (issue 17 item 2).

Each payload once built hundreds of millions of characters before any size check ran
(``indent`` with a 20,000-character indent built 400 million in 12.6 s). Now each is
refused before it runs: the render fails with a limit, allocates little, and does
little work. Work is counted in Python calls (a profile hook), memory with tracemalloc;
no wall-clock bounds.
"""

from __future__ import annotations

import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prompt_registry_client.templating import RenderError, RenderLimits, compile_prompt

MEMORY_BOUND = 50 * 1024 * 1024
# A wall-time budget no test reaches, so only the sizes and counts decide.
LIMITS = RenderLimits(timeout_seconds=60.0)
# Work: a few Python calls per loop iteration or call the budget allows, however large the payload.
CALL_BOUND = 3 * LIMITS.max_iterations

PAYLOADS = {
    "indent with a long indent": "{{ ('a\n' * 20000)|indent('x' * 20000) }}",
    "tojson with a huge indent": "{{ ({'a': [{'b': [1, 2, 3]}]})|tojson(indent=100000) }}",
    "tojson with a long indent string": "{{ ({'a': [{'b': [1, 2, 3]}]})|tojson(indent='x' * 100000) }}",
    "wordwrap with a long wrapstring": "{{ ('aaaa ' * 20000)|wordwrap(10, wrapstring='x' * 20000) }}",
    "urlize with a long target": "{{ ('www.a.com ' * 20000)|urlize(target='x' * 20000) }}",
    "urlize with a long rel": "{{ ('www.a.com ' * 20000)|urlize(rel='x' * 20000) }}",
    "slice filled with a large string": "{{ [1]|slice(90000, fill_with='x' * 100000)|list }}",
    "batch filled with a large string": "{{ [1]|batch(90000, 'x' * 100000)|list }}",
    "printing a list repeating one large string": "{{ REPEATED }}",
    "tojson of a list repeating one large string": "{{ REPEATED|tojson }}",
    "string of a list repeating one large string": "{{ REPEATED|string }}",
    "concatenating a list repeating one large string": "{{ 'a' ~ REPEATED }}",
    "pprint of a list repeating one large string": "{{ REPEATED|pprint }}",
    "join of a list repeating one large string": "{{ REPEATED|join(',') }}",
    "escape of a list repeating one large string": "{{ REPEATED|e }}",
    "lower of a list repeating one large string": "{{ REPEATED|lower }}",
    "lower test of a list repeating one large string": "{{ REPEATED is lower }}",
    "printing a list literal repeating one large string": (
        "{% set s = 'x' * 100000 %}{{ [" + ", ".join(["s"] * 1000) + "] }}"
    ),
    "printf of one large string many times": "{{ '%(a)s' * 10000 % {'a': 'x' * 100000} }}",
    "format filter of one large string many times": "{{ ('%(a)s' * 10000)|format(a='x' * 100000) }}",
    "odd test formatting a width": "{{ '%999999999s' is odd }}",
    "round to a huge precision": "{{ 5|round(100000000, 'floor') }}",
    "round an integer to a huge negative precision": "{{ 5|round(-100000000) }}",
    "squaring a number": (
        "{% set ns = namespace(x=3) %}{% for i in range(64) %}{% set ns.x = ns.x * ns.x %}{% endfor %}"
    ),
    "sum of lists": "{{ ([['x'] * 1000] * 1000)|sum(start=[])|length }}",
    "a macro collecting a loop": (
        "{% macro m() %}{% for i in range(1000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}{{ m()|length }}"
    ),
    "a set block collecting a loop": "{% set s %}{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}{% endset %}",
    "a filter block collecting a loop": (
        "{% filter upper %}{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}{% endfilter %}"
    ),
    "a block called before it renders": (
        "{{ self.b()|length }}{% block b %}{% for i in range(99999) %}{{ 'z' * 1000 }}{% endfor %}{% endblock %}"
    ),
    "many large values never printed": "{% set l = [" + ", ".join(["'x' * 100000 ~ ''"] * 2000) + "] %}",
}  # fmt: skip
REPEATED = "([1]|batch(2000, 'x' * 100000)|first)"  # one list item per reference to the same string
PAYLOADS = {name: template.replace("REPEATED", REPEATED) for name, template in PAYLOADS.items()}


@contextmanager
def measured() -> Iterator[dict[str, int]]:
    """Peak traced memory and Python calls made inside the block (this thread only)."""
    figures = {"calls": 0, "peak": 0}

    def count(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call"):
            figures["calls"] += 1

    tracemalloc.start()
    sys.setprofile(count)
    try:
        yield figures
    finally:
        sys.setprofile(None)
        figures["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


@pytest.mark.parametrize("template", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_amplifying_payload_is_refused_before_it_builds(template: str) -> None:
    compiled = compile_prompt("text", template=template)
    with measured() as figures, pytest.raises(RenderError) as caught:
        compiled.render({}, LIMITS)
    assert caught.value.reason in ("output_too_large", "render_limit"), str(caught.value)
    assert figures["peak"] < MEMORY_BOUND, f"{figures['peak']:,} bytes"
    assert figures["calls"] < CALL_BOUND, f"{figures['calls']:,} calls"


def test_sum_of_many_lists_takes_linear_work() -> None:
    """Python's ``sum`` copies the growing list at every step: 50,000 one-item lists took 1.25e9 copies."""
    compiled = compile_prompt("text", template="{{ ([[1]] * 50000)|sum(start=[])|length }}")
    with measured() as figures:
        assert compiled.render({}, LIMITS) == "50000"
    assert figures["calls"] < CALL_BOUND


def test_benign_renders_succeed_while_payloads_are_refused_in_other_threads() -> None:
    hostile = [compile_prompt("text", template=t) for t in PAYLOADS.values()]
    benign = compile_prompt("text", template="Hello {{ name|title }}, {{ items|join(', ') }}")
    refused: list[str] = []

    def attack() -> None:
        for compiled in hostile:
            try:
                compiled.render({}, LIMITS)
            except RenderError as exc:
                refused.append(exc.reason)

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for thread in attackers:
        thread.start()
    answers = [benign.render({"name": "ann", "items": ["a", "b"]}, LIMITS) for _ in range(200)]
    for thread in attackers:
        thread.join()
    assert answers == ["Hello Ann, a, b"] * 200
    assert len(refused) == 2 * len(hostile)


# ----------------------------------------------------------------------------- property

SMALL_LIMITS = RenderLimits(max_output_chars=20_000, timeout_seconds=60.0, max_iterations=20_000)
LITERALS = st.sampled_from(
    ["'ab'", "'a\\nb\\n'", "'<x> & \"y\"'", "'www.a.com b@c.de'", "3", "2.5", "[1, 'a']", "{'k': 'v'}", "''", "name"]
)
AMPLIFIERS = st.sampled_from(["7", "1000", "100000", "'xxxxxxxxxx'", "'x' * 1000", "none"])
FILTERS: dict[str, Callable[[str], str]] = {
    "indent": lambda a: f"indent({a})",
    "tojson": lambda a: f"tojson(indent={a})",
    "wordwrap": lambda a: f"wordwrap(5, wrapstring={a})",
    "urlize": lambda a: f"urlize(target={a})",
    "slice": lambda a: f"slice(3, fill_with={a})|list",
    "batch": lambda a: f"batch(3, {a})|list",
    "center": lambda a: f"center({a})",
    "replace": lambda a: f"replace('a', {a})",
    "join": lambda a: f"join({a})",
    "list": lambda a: "list",
    "string": lambda a: "string",
    "e": lambda a: "e",
    "pprint": lambda a: "pprint",
    "urlencode": lambda a: "urlencode",
    "format": lambda a: f"format({a})",
    "truncate": lambda a: f"truncate({a})",
    "repeat": lambda a: f"list|map('string')|join|string * {a} if {a} is number else 'x'",
}
STEP = st.tuples(st.sampled_from(sorted(FILTERS)), AMPLIFIERS)


def expression(literal: str, steps: list[tuple[str, str]]) -> str:
    text = f"({literal})"
    for name, argument in steps:
        text = f"({text}|{FILTERS[name](f'({argument})')})"
    return text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(literal=LITERALS, steps=st.lists(STEP, min_size=1, max_size=4), twice=st.booleans())
def test_any_composition_stays_within_the_output_limit_and_memory(
    literal: str, steps: list[tuple[str, str]], twice: bool
) -> None:
    body = expression(literal, steps)
    template = "{{ " + body + " }}" + ("{{ " + body + " ~ " + body + " }}" if twice else "")
    compiled = compile_prompt("text", template=template, input_schema={"additionalProperties": True})
    with measured() as figures:
        try:
            rendered = compiled.render({"name": "ann"}, SMALL_LIMITS)
        except RenderError:
            rendered = ""
    assert len(rendered) <= SMALL_LIMITS.max_output_chars
    assert figures["peak"] < MEMORY_BOUND, f"{template}: {figures['peak']:,} bytes"
