"""The shared rendering runtime: sandbox, limits, variable analysis and input schemas.

Cases live in JSON files beside this one so other implementations can reuse them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prompt_registry_client.templating import (
    ChatMessage,
    RenderError,
    RenderLimits,
    TemplateProblemError,
    VariablesInvalidError,
    compile_prompt,
    compile_validator,
    infer_input_schema,
    input_schema_problems,
    variable_problems,
)

CASES = Path(__file__).parent / "cases"
# A generous wall-time budget, so the count-based limits decide even on a busy machine.
LOADED_MACHINE_LIMITS = RenderLimits(timeout_seconds=5.0)


def cases(name: str) -> tuple[list[Any], list[str]]:
    rows = json.loads((CASES / name).read_text())
    return [row[1:] for row in rows], [row[0] for row in rows]


SANDBOX, SANDBOX_IDS = cases("sandbox.json")


@pytest.mark.parametrize(("template", "variables", "reason"), SANDBOX, ids=SANDBOX_IDS)
def test_hostile_templates_are_refused(template: str, variables: dict[str, Any], reason: str) -> None:
    compiled = compile_prompt("text", template=template, input_schema={"additionalProperties": True})
    with pytest.raises(RenderError) as caught:
        compiled.render(variables, LOADED_MACHINE_LIMITS)
    # The reason shows a count-based limit stopped it, not the wall-time budget (that would be render_timeout).
    assert caught.value.reason == reason, str(caught.value)


RENDER, RENDER_IDS = cases("render.json")


@pytest.mark.parametrize(("prompt", "variables", "expected"), RENDER, ids=RENDER_IDS)
def test_render(prompt: dict[str, Any], variables: dict[str, Any], expected: Any) -> None:
    kind = prompt.pop("kind")
    rendered = compile_prompt(kind, **prompt).render(variables)
    if kind == "chat":
        assert rendered == [ChatMessage(role, content) for role, content in expected]
    else:
        assert rendered == expected


INFERENCE, INFERENCE_IDS = cases("variables.json")


@pytest.mark.parametrize(("sources", "properties"), INFERENCE, ids=INFERENCE_IDS)
def test_inferred_schema(sources: dict[str, str], properties: dict[str, Any]) -> None:
    schema = infer_input_schema(sources)
    assert schema["properties"] == properties
    assert schema["required"] == sorted(properties)
    assert schema["additionalProperties"] is False


VALIDATION, VALIDATION_IDS = cases("input_schema.json")


@pytest.mark.parametrize(("schema", "variables", "problems"), VALIDATION, ids=VALIDATION_IDS)
def test_variable_validation(schema: dict[str, Any], variables: dict[str, Any], problems: list[list[str]]) -> None:
    found = variable_problems({"type": "object", **schema}, variables)
    assert sorted([p.field, p.message] for p in found) == sorted(problems)


SCHEMAS, SCHEMA_IDS = cases("schema_problems.json")


@pytest.mark.parametrize(("schema", "problems"), SCHEMAS, ids=SCHEMA_IDS)
def test_input_schema_subset(schema: dict[str, Any], problems: list[str]) -> None:
    assert input_schema_problems(schema) == problems


def test_missing_variable_is_an_error_not_an_empty_string() -> None:
    compiled = compile_prompt("text", template="Hello {{ name }}")
    with pytest.raises(VariablesInvalidError) as caught:
        compiled.render({})
    assert [(p.field, p.message) for p in caught.value.problems] == [("name", "is required")]


def test_undeclared_optional_variable_fails_strictly_at_render() -> None:
    compiled = compile_prompt("text", template="{{ a }}{{ b }}", input_schema={"properties": {"a": {}, "b": {}}})
    with pytest.raises(RenderError, match="'b' is undefined"):
        compiled.render({"a": 1})


def test_syntax_errors_name_line_and_location() -> None:
    with pytest.raises(TemplateProblemError) as caught:
        compile_prompt(
            "chat",
            messages=[
                {"role": "system", "content": "ok"},
                {"role": "user", "content": "line one\n{% if x %}never closed"},
            ],
        )
    (problem,) = caught.value.problems
    assert problem.location == "messages[1]"
    assert problem.line == 2
    assert "end of template" in problem.message


@pytest.mark.parametrize(
    "tag", ["{% include 'x' %}", "{% import 'x' as y %}", "{% extends 'x' %}", "{% from 'x' import y %}"]
)
def test_template_composition_tags_are_refused(tag: str) -> None:
    with pytest.raises(TemplateProblemError, match="not supported"):
        compile_prompt("text", template=tag)


def test_template_variables_must_be_declared_by_a_strict_schema() -> None:
    with pytest.raises(TemplateProblemError, match="uses variable 'b'"):
        compile_prompt("text", template="{{ a }} {{ b }}", input_schema={"properties": {"a": {}}})


def test_limits_are_configurable() -> None:
    compiled = compile_prompt("text", template="{{ text }}")
    with pytest.raises(RenderError) as caught:
        compiled.render({"text": "x" * 101}, RenderLimits(max_output_chars=100))
    assert caught.value.reason == "output_too_large"
    assert compiled.render({"text": "x" * 100}, RenderLimits(max_output_chars=100)) == "x" * 100


def test_render_timeout_bounds_wall_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock that reads 1 ms later each time: the render stops at its first reading past the 20 ms budget."""
    readings = itertools.count()
    monkeypatch.setattr("prompt_registry_client.templating.time.perf_counter", lambda: next(readings) / 1000)
    compiled = compile_prompt("text", template="{% for i in range(100000) %}{{ i|string|length }}{% endfor %}")
    with pytest.raises(RenderError) as caught:
        compiled.render({}, RenderLimits(timeout_seconds=0.02, max_iterations=10_000_000, max_output_chars=10_000_000))
    assert caught.value.reason == "render_timeout"
    assert next(readings) <= 25, "the render went on reading the clock long past its deadline"


@pytest.mark.parametrize(("schema", "variables", "problems"), VALIDATION, ids=VALIDATION_IDS)
def test_the_compiled_validator_agrees_with_the_interpreter(
    schema: dict[str, Any], variables: dict[str, Any], problems: list[list[str]]
) -> None:
    full = {"type": "object", **schema}
    assert compile_validator(full)(variables) == variable_problems(full, variables)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False) | st.text("ab", max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "n", "xs", "u"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(VALIDATION), value=JSON_VALUES)
def test_the_compiled_validator_agrees_on_arbitrary_values(case: list[Any], value: Any) -> None:
    schema = {"type": "object", **case[0]}
    assert compile_validator(schema)(value) == variable_problems(schema, value)
