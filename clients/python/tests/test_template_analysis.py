"""What is refused when a template is saved: unsafe constructs (issue 17 item 5) and deep nesting (item 4).

Unsafe constructs are those the sandbox refuses at every render, so storing them only
defers the failure to production traffic. Deep nesting once reached Python's recursion
limit inside Jinja's parser or compiler (a 500); now it is a template problem with a line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prompt_registry_client.templating import (
    MAX_BLOCK_DEPTH,
    MAX_BRACKET_DEPTH,
    MAX_LOOP_DEPTH,
    MAX_TREE_DEPTH,
    RenderError,
    TemplateProblemError,
    compile_prompt,
    unsafe_constructs,
)

CASES = json.loads((Path(__file__).parent / "cases" / "unsafe_constructs.json").read_text())


@pytest.mark.parametrize(("source", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unsafe_constructs_name_line_and_construct(source: str, expected: list[tuple[int, str]]) -> None:
    found = unsafe_constructs(source)
    assert len(found) == len(expected), [p.describe() for p in found]
    for problem, (line, fragment) in zip(found, expected, strict=True):
        assert problem.line == line
        assert fragment in problem.message, problem.message
        assert problem.message.endswith("which the sandbox refuses")


def test_saving_refuses_what_rendering_would_refuse_and_says_where() -> None:
    messages = [{"role": "system", "content": "ok"}, {"role": "user", "content": "line\n{{ name.__class__ }}"}]
    with pytest.raises(TemplateProblemError) as caught:
        compile_prompt("chat", messages=messages, refuse_unsafe=True)
    (problem,) = caught.value.problems
    assert (problem.location, problem.line) == ("messages[1]", 2)
    assert "'name.__class__'" in problem.message


def test_stored_versions_still_compile_and_fail_only_when_rendered() -> None:
    """A version saved before the analysis existed keeps compiling, so the rest of its prompt keeps serving."""
    compiled = compile_prompt("text", template="{{ name.__class__ }}")
    with pytest.raises(RenderError) as caught:
        compiled.render({"name": "x"})
    assert caught.value.reason == "sandbox_violation"


def nested_brackets(depth: int) -> str:
    return "{{ " + "(" * depth + "x" + ")" * depth + " }}"


def nested_lists(depth: int) -> str:
    return "{{ " + "[" * depth + "x" + "]" * depth + " }}"


def nested_ifs(depth: int) -> str:
    return "{% if x %}" * depth + "y" + "{% endif %}" * depth


def nested_fors(depth: int) -> str:
    return "".join(f"{{% for i{n} in x %}}" for n in range(depth)) + "y" + "{% endfor %}" * depth


def nested_set_blocks(depth: int) -> str:
    return "".join(f"{{% set v{n} %}}" for n in range(depth)) + "y" + "{% endset %}" * depth


def chained_filters(length: int) -> str:
    return "{{ x" + "|trim" * length + " }}"


def chained_sums(length: int) -> str:
    return "{{ x" + " + 1" * length + " }}"


def chained_nots(length: int) -> str:
    return "{{ " + "not " * length + "x }}"


def nested_calls(depth: int) -> str:
    return "{{ " + "m(" * depth + "x" + ")" * depth + " }}"


AT_THE_LIMIT = {
    "brackets": nested_brackets(MAX_BRACKET_DEPTH),
    "lists": nested_lists(MAX_BRACKET_DEPTH),
    "calls": nested_calls(MAX_BRACKET_DEPTH),
    "ifs": nested_ifs(MAX_BLOCK_DEPTH),
    "fors": nested_fors(MAX_LOOP_DEPTH),
    "fors in ifs": "{% if x %}" * (MAX_BLOCK_DEPTH - MAX_LOOP_DEPTH)
    + nested_fors(MAX_LOOP_DEPTH)
    + "{% endif %}" * (MAX_BLOCK_DEPTH - MAX_LOOP_DEPTH),
    "set blocks": nested_set_blocks(MAX_BLOCK_DEPTH),
    "filters": chained_filters(MAX_TREE_DEPTH - 3),
    "sums": chained_sums(MAX_TREE_DEPTH - 3),
    "nots": chained_nots(MAX_TREE_DEPTH - 3),
}
TOO_DEEP = {
    "300 nested brackets": nested_brackets(300),
    "300 nested lists": nested_lists(300),
    "one bracket too many": nested_brackets(MAX_BRACKET_DEPTH + 1),
    "500 nested ifs": nested_ifs(500),
    "one if too many": nested_ifs(MAX_BLOCK_DEPTH + 1),
    "one loop too many": nested_fors(MAX_LOOP_DEPTH + 1),
    "500 nested set blocks": nested_set_blocks(500),
    "5,000 chained filters": chained_filters(5000),
    "one filter too many": chained_filters(MAX_TREE_DEPTH),
    "5,000 chained sums": chained_sums(5000),
    "5,000 nots": chained_nots(5000),
}


@pytest.mark.parametrize("source", AT_THE_LIMIT.values(), ids=AT_THE_LIMIT.keys())
def test_nesting_up_to_the_limit_compiles(source: str) -> None:
    compile_prompt("text", template=source, input_schema={"additionalProperties": True}, refuse_unsafe=True)


@pytest.mark.parametrize("source", TOO_DEEP.values(), ids=TOO_DEEP.keys())
@pytest.mark.parametrize("kind", ["text", "chat"])
def test_nesting_too_deep_is_a_template_problem(source: str, kind: str) -> None:
    if kind == "text":
        prompt: dict[str, Any] = {"template": "first line\n" + source}
    else:
        prompt = {"messages": [{"role": "system", "content": "ok"}, {"role": "user", "content": source}]}
    with pytest.raises(TemplateProblemError) as caught:
        compile_prompt(kind, **prompt, refuse_unsafe=True)  # type: ignore[arg-type]
    (problem,) = caught.value.problems
    assert problem.message.startswith("the template nests too deeply"), problem.message
    assert problem.location == ("template" if kind == "text" else "messages[1]")
    if kind == "text":
        assert problem.line == 2


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (nested_brackets(MAX_BRACKET_DEPTH + 5), " y "),
        (nested_ifs(MAX_BLOCK_DEPTH + 5), "y"),
        (chained_filters(MAX_TREE_DEPTH + 20), "y"),
    ],
    ids=["brackets", "ifs", "filters"],
)
def test_a_stored_version_past_the_bounds_still_compiles(source: str, expected: str) -> None:
    """The bounds apply when saving; a version stored before them keeps loading and rendering."""
    compiled = compile_prompt("text", template=source, input_schema={"additionalProperties": True})
    assert compiled.render({"x": " y "}) == expected


def test_past_pythons_recursion_limit_a_stored_template_is_still_a_template_problem() -> None:
    with pytest.raises(TemplateProblemError, match="nests too deeply"):
        compile_prompt("text", template=nested_brackets(300))
