"""The playground's pure parts: the form an input schema builds, reading it back, and a streamed delta as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from registry.auth.principal import Principal
from registry.completions.controller import CompletionController
from registry.completions.schemas import DeltaEvent
from registry.console.controller import console_template_config
from registry.console.playground import PlaygroundView, Selection, Side, SideEvent
from registry.console.playground_controller import COMPLETE_SCOPE, PlaygroundController, may_run, stream_fragment
from registry.console.playground_form import merged_fields, parse_variables, variable_fields, variables_for
from registry.console.sessions import Viewer

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


def viewer(*scopes: str) -> Viewer:
    return Viewer(Principal(key_id=1, public_id="abcdefghijkm", name="someone", scopes=frozenset(scopes)), csrf="c")


@pytest.mark.parametrize(
    ("scopes", "offered"),
    [(("read",), True), (("admin",), True), (("write", "promote", "analyze"), False)],
    ids=["read, as the completion API", "admin", "every scope but read"],
)
def test_run_is_offered_only_to_keys_the_completion_api_would_serve(scopes: tuple[str, ...], offered: bool) -> None:
    assert may_run(viewer(*scopes)) is offered
    side = Side(key="a", version=1, state="draft", kind="text", schema={}, own_config=None)
    view = PlaygroundView("p", Selection(version=1), [], [], [side], [])
    environment = console_template_config().engine_instance.engine
    page = environment.get_template("playground.html").render(
        viewer=viewer(*scopes),
        path="/console/prompts/p/playground",
        view=view,
        values={},
        max_tokens="",
        problems={},
        renders=None,
        runs=None,
        marker=None,
        can_run=may_run(viewer(*scopes)),
        run_id="r",
        notice=None,
        section="playground",
    )
    assert ("/playground/run" in page) is offered
    assert ">Render</button>" in page
