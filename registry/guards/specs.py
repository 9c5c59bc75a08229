"""What a config version says about its guards: the request schema and the checks msgspec cannot make.

A guard is part of a config version's immutable body (``guards`` beside ``params``). Problems
name the field as ``guards[i].field`` so a bad spec is a 422 that says where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
import regex

from registry.lib.errors import FieldError
from registry.lib.schema import Input, ResourceName
from registry.lib.versioned_schemas import Label, VersionNumber

GuardName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*(?!\n)$")]
GuardKind = Literal["deny_patterns", "pii", "injection", "delimiters", "model"]
GuardStage = Literal["input", "output", "both"]
GuardAction = Literal["block", "redact", "flag"]
PiiKind = Literal["email", "iban", "card", "ssn", "ip", "phone"]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]

MAX_GUARDS = 16
MAX_WINDOW = 4096


class GuardSpec(Input):
    """One guard of a config version.

    ``on``: what it checks (the request's input, the model's output, or both); ``action``: what a finding
    does (``block`` refuses with 422 ``content_blocked``, ``redact`` masks it, ``flag`` records it).
    ``patterns`` for ``deny_patterns``; ``detectors`` for ``pii`` (default: all); ``prompt`` (with
    ``version`` or ``label``, default production) names a ``model`` guard's classifier prompt, whose
    failure ``on_error`` decides. ``window``: characters of a stream held back for an output guard.
    """

    name: GuardName
    kind: GuardKind
    on: GuardStage = "input"
    action: GuardAction = "block"
    patterns: Annotated[list[Pattern], msgspec.Meta(max_length=64)] | None = None
    detectors: Annotated[list[PiiKind], msgspec.Meta(min_length=1, max_length=6)] | None = None
    prompt: ResourceName | None = None
    version: VersionNumber | None = None
    label: Label | None = None
    on_error: Literal["allow", "block"] | None = None
    window: Annotated[int, msgspec.Meta(ge=1, le=MAX_WINDOW)] | None = None


Guards = Annotated[list[GuardSpec], msgspec.Meta(max_length=MAX_GUARDS)]


def guard_problems(guards: Sequence[GuardSpec]) -> list[FieldError]:
    """What is wrong with ``guards`` beyond their types, each problem naming ``guards[i].field``."""
    problems: list[FieldError] = []
    seen: set[str] = set()
    for i, guard in enumerate(guards):
        at = f"guards[{i}]"

        def problem(field: str, message: str, at: str = at) -> None:
            problems.append(FieldError(f"{at}.{field}", message))

        if guard.name in seen:
            problem("name", f"another guard is named '{guard.name}'; names are unique in a config version")
        seen.add(guard.name)
        if guard.kind == "deny_patterns":
            if not guard.patterns:
                problem("patterns", "a deny_patterns guard needs at least one pattern")
            for j, pattern in enumerate(guard.patterns or []):
                try:
                    regex.compile(pattern)  # as the guard compiles it (``rules.compile_patterns``)
                except regex.error as exc:
                    problem(f"patterns[{j}]", f"not a valid regular expression: {exc}")
        elif guard.patterns is not None:
            problem("patterns", "only a deny_patterns guard has patterns")
        if guard.detectors is not None and guard.kind != "pii":
            problem("detectors", "only a pii guard has detectors")
        if guard.kind == "model":
            if guard.prompt is None:
                problem("prompt", "a model guard names its classifier prompt")
            if guard.action == "redact":
                problem("action", "a model guard's verdict has no spans to redact; use block or flag")
            if guard.version is not None and guard.label is not None:
                problem("version", "version and label are exclusive")
        else:
            for field in ("prompt", "version", "label", "on_error"):
                if getattr(guard, field) is not None:
                    problem(field, "only a model guard has this")
        if guard.kind == "delimiters" and guard.on != "input":
            problem("on", "delimiter escapes are in the request's variables: a delimiters guard is on input")
        if guard.window is not None and guard.on == "input":
            problem("window", "only an output guard holds back a stream")
    return problems


def guards_content(guards: Sequence[GuardSpec]) -> list[dict[str, Any]]:
    """The guards as stored and hashed: unset fields left out."""
    return [{k: v for k, v in msgspec.to_builtins(guard).items() if v is not None} for guard in guards]
