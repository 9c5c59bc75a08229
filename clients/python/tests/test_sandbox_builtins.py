"""Every built-in filter and test of the sandbox, rendered with ordinary and with hostile arguments.

Cases live in ``cases/builtins.json`` as ``[id, "filter" | "test", name, "ordinary" | "hostile",
template, variables, {"text": expected} | {"error": reason}]``. A filter or test that Jinja adds
in a new release fails ``test_every_builtin_has_an_ordinary_and_a_hostile_case`` until it gets
a size estimate in the sandbox and cases here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from prompt_registry_client.templating import _SANDBOX as SANDBOX
from prompt_registry_client.templating import (
    FILTER_SIZES,
    TEST_SIZES,
    RenderError,
    RenderLimits,
    compile_prompt,
)

ROWS = json.loads((Path(__file__).parent / "cases" / "builtins.json").read_text())
# A generous wall-time budget, so the count-based limits decide even on a busy machine.
LIMITS = RenderLimits(timeout_seconds=30.0)


@pytest.mark.parametrize(("template", "variables", "expected"), [r[4:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_builtin(template: str, variables: dict[str, Any], expected: dict[str, str]) -> None:
    compiled = compile_prompt("text", template=template, input_schema={"additionalProperties": True})
    if "error" in expected:
        with pytest.raises(RenderError) as caught:
            compiled.render(variables, LIMITS)
        assert caught.value.reason == expected["error"], str(caught.value)
    else:
        assert compiled.render(variables, LIMITS) == expected["text"]


@pytest.mark.parametrize(("family", "names"), [("filter", SANDBOX.filters), ("test", SANDBOX.tests)])
def test_every_builtin_has_an_ordinary_and_a_hostile_case(family: str, names: dict[str, Any]) -> None:
    covered = {(name, kind) for _, fam, name, kind, *_ in ROWS if fam == family}
    missing = sorted(
        f"{name} ({kind})" for name in names for kind in ("ordinary", "hostile") if (name, kind) not in covered
    )
    assert not missing, f"{family}s without a case: {', '.join(missing)}"


def test_every_jinja_builtin_has_a_size_estimate() -> None:
    """None is dropped silently: a Jinja upgrade that adds one must size it here first."""
    jinja = ImmutableSandboxedEnvironment()
    assert set(jinja.filters) == set(FILTER_SIZES) == set(SANDBOX.filters)
    assert set(jinja.tests) == set(TEST_SIZES) == set(SANDBOX.tests)


def test_join_of_a_lazy_iterable_joins_every_item() -> None:
    """Sizing a ``str.join`` lists its items once; the join itself must still see them all."""
    compiled = compile_prompt("text", template="{{ ', '.join(items|map('upper')) }}")
    assert compiled.render({"items": ["a", "b"]}) == "A, B"
