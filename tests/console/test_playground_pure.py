"""The playground's pure parts: the form an input schema builds, reading it back, and a streamed delta as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.completions.controller import CompletionController
from registry.completions.schemas import DeltaEvent
from registry.console.playground import SideEvent
from registry.console.playground_controller import COMPLETE_SCOPE, PlaygroundController, stream_fragment
from registry.console.playground_form import merged_fields, parse_variables, variable_fields, variables_for

CASES = Path(__file__).parent / "cases"
FIELD_CASES = json.loads((CASES / "playground_fields.json").read_text())
VARIABLE_CASES = json.loads((CASES / "playground_variables.json").read_text())


@pytest.mark.parametrize(("schema", "expected"), [c[1:] for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
def test_each_property_gets_the_input_its_type_needs(schema: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    fields = variable_fields(schema)
    shown = ("name", "kind", "required", "label", "initial")
    assert [{key: getattr(f, key) for key in shown} for f in fields] == expected


@pytest.mark.parametrize(
    ("schema", "submitted", "variables", "problems"),
    [c[1:] for c in VARIABLE_CASES],
    ids=[c[0] for c in VARIABLE_CASES],
)
def test_the_form_reads_back_as_json_values(
    schema: dict[str, Any], submitted: dict[str, str], variables: dict[str, Any], problems: list[list[str]]
) -> None:
    read, unreadable = parse_variables(variable_fields(schema), submitted)
    assert read == variables
    assert [[p.field, p.message] for p in unreadable] == problems


def test_two_versions_share_one_form_and_each_gets_the_variables_it_takes() -> None:
    closed = {"properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    open_ = {"properties": {"a": {"type": "integer"}, "b": {"type": "string"}}, "required": ["b"]}
    fields = merged_fields([closed, open_])
    assert [(f.name, f.kind, f.required) for f in fields] == [("a", "textarea", True), ("b", "textarea", True)]
    assert variables_for(closed, {"a": "x", "b": "y"}) == {"a": "x"}
    assert variables_for(open_, {"a": "x", "b": "y"}) == {"a": "x", "b": "y"}


def test_a_streamed_delta_is_escaped_text_in_its_column() -> None:
    hostile = "</span><script>alert('delta')</script><span slot=\"b\">"
    fragment = stream_fragment(None, SideEvent("a", "delta", DeltaEvent(text=hostile)))
    assert fragment.startswith('<span slot="a">')
    assert fragment.endswith("</span>")
    assert "<script>" not in fragment
    assert fragment.count("<span") == 1


def test_a_run_needs_the_scope_of_the_completion_api() -> None:
    assert CompletionController.complete.opt["scope"] == COMPLETE_SCOPE
    assert PlaygroundController.run.opt["scope"] == COMPLETE_SCOPE
