"""Model-graded guards: the classifier's structured answer, asked for and read.

The classifier is a prompt in the registry with its own config; it runs on the registry's own
completion path (budget, breaker, retries, usage, cost) with ``VERDICT_FORMAT`` as its
``response_format``, so vLLM's structured output makes its answer this JSON object. Its template
may use ``text`` (what is checked) and ``stage`` (``input`` or ``output``); it is given those it uses.
Its request names no unit, so no experiment or rollout routes it; its record and cached answer still belong
to the guarded request's unit (``ClassifierCompletions``), since what it read is that unit's text, and it keeps
text (record, caches) only where the guarded request's prompt does too (the stricter ``store_io`` of the two).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from registry.completions.schemas import CompleteRequest, CompletionOut
from registry.guards.engine import Guard, Stage, Verdict
from registry.lib.errors import RegistryError
from registry.prompts.catalog import PromptCatalog

VERDICT_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "guard_verdict",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "flagged": {"type": "boolean"},
                "category": {"type": "string", "maxLength": 40},
                "reason": {"type": "string", "maxLength": 200},
            },
            "required": ["flagged", "category", "reason"],
            "additionalProperties": False,
        },
    },
}


def parse_verdict(text: str) -> Verdict | None:
    """The classifier's ``{"flagged": bool, "category": str, "reason": str}``; None when it is not that."""
    try:
        answer = msgspec.json.decode(text.strip())
    except (msgspec.DecodeError, RecursionError):  # nested too deep: msgspec raises RecursionError
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("flagged"), bool):
        return None
    category, reason = answer.get("category", ""), answer.get("reason", "")
    if not isinstance(category, str) or not isinstance(reason, str):
        return None
    return Verdict(answer["flagged"], category, reason)


def classifier_variables(used: set[str], text: str, stage: str) -> dict[str, Any]:
    offered = {"text": text, "stage": stage}
    return {name: value for name, value in offered.items() if name in used}


class ClassifierAnswerError(RegistryError):
    """A model guard's classifier answered something that is not its verdict."""

    status_code = 502
    type = "guard_classifier_answer"
    title = "Guard classifier answer unreadable"


CompletePrompt = Callable[[str, CompleteRequest], Awaitable[CompletionOut]]


async def classify(catalog: PromptCatalog, complete: CompletePrompt, guard: Guard, text: str, stage: Stage) -> Verdict:
    """Run ``guard``'s classifier prompt on ``text`` through ``complete`` (the completion path); its verdict."""
    assert guard.prompt is not None  # a model guard names its prompt (registry.guards.specs)
    label = None if guard.version is not None else (guard.label or "production")
    resolution = await catalog.resolve(guard.prompt, version=guard.version, label=label)
    request = CompleteRequest(
        variables=classifier_variables(set(resolution.version.compiled.variables), text, stage),
        version=guard.version,
        label=label,  # type: ignore[arg-type]
    )
    answer = await complete(guard.prompt, request)
    verdict = parse_verdict(answer.text)
    if verdict is None:
        raise ClassifierAnswerError(f"the classifier's answer is not a verdict: {answer.text[:200]!r}")
    return verdict
