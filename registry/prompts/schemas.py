from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.configs.models import ModelConfigVersion
from registry.configs.schemas import CommitMessage, ConfigRef, FieldChange
from registry.lib.promotion import State
from registry.lib.schema import NO_NUL_PATTERN, Input, Output
from registry.lib.versioned_schemas import Label, ResourceOut, UpdateResource, VersionNumber
from registry.prompts.models import Prompt, PromptVersion

Role = Literal["system", "user", "assistant", "tool", "developer"]


class MessageIn(Input):
    role: Role
    content: str


class CreatePromptVersion(Input):
    kind: Literal["text", "chat"]
    template: str | None = None
    messages: Annotated[list[MessageIn], msgspec.Meta(min_length=1, max_length=200)] | None = None
    input_schema: dict[str, Any] | None = None
    config: ConfigRef | None = None
    commit_message: CommitMessage = ""


class UpdatePrompt(UpdateResource):
    """``store_io``: keep the redacted rendered prompt and completion text of each completion."""

    store_io: bool | None = None


class PromptOut(ResourceOut):
    store_io: bool

    @classmethod
    def of_prompt(cls, prompt: Prompt) -> PromptOut:
        base = ResourceOut.of(prompt)
        return cls(**{f: getattr(base, f) for f in base.__struct_fields__}, store_io=prompt.store_io)


class LinkedConfig(Output):
    """The model config version a prompt version runs with, in full, so callers can use it."""

    name: str
    version: int
    backend: str
    model: str
    params: dict[str, Any]
    input_price_per_mtok: float
    output_price_per_mtok: float
    max_context_tokens: int | None
    fallback: LinkedConfig | None = None  # one hop: a fallback's own fallback is not followed
    guards: list[dict[str, Any]] = msgspec.field(default_factory=list)  # registry.guards.specs

    @classmethod
    def of(cls, version: ModelConfigVersion | None, *, with_fallback: bool = True) -> LinkedConfig | None:
        if version is None:
            return None
        return cls(
            name=version.config.name,
            version=version.number,
            backend=version.backend,
            model=version.model,
            params=version.params,
            input_price_per_mtok=version.input_price_per_mtok,
            output_price_per_mtok=version.output_price_per_mtok,
            max_context_tokens=version.max_context_tokens,
            fallback=cls.of(version.fallback, with_fallback=False) if with_fallback else None,
            guards=version.guards or [],
        )


class Message(Output):
    role: str
    content: str


class PromptVersionOut(Output):
    prompt: str
    version: int
    state: State
    kind: str
    template: str | None
    messages: list[Message] | None
    input_schema: dict[str, Any] | None
    variables: list[str]
    config: LinkedConfig | None
    commit_message: str
    author: str
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, prompt: str, version: PromptVersion, variables: list[str]) -> PromptVersionOut:
        return cls(
            prompt=prompt,
            version=version.number,
            state=State(version.state),
            kind=version.kind,
            template=version.template,
            messages=[Message(role=m["role"], content=m["content"]) for m in version.messages or []] or None,
            input_schema=version.input_schema,
            variables=variables,
            config=LinkedConfig.of(version.config_version),
            commit_message=version.commit_message,
            author=version.author,
            sha256=version.content_sha256,
            created_at=version.created_at,
        )


class PromptVersionPage(Output):
    items: list[PromptVersionOut]
    next_cursor: str | None


class Labels(Output):
    production: int | None
    staging: int | None
    latest: int | None


class ResolvedPromptOut(Output):
    """What apps fetch: the version's content, its config and where the labels point."""

    name: str
    description: str
    tags: list[str]
    labels: Labels
    version: PromptVersionOut


# Shared by the msgspec type and the resolve route's query parameter (Litestar's OpenAPI does not read msgspec.Meta).
UNIT_CONSTRAINTS: dict[str, Any] = {
    "min_length": 1,
    "max_length": 256,
    "pattern": NO_NUL_PATTERN,
    "description": "The unit (user, session) to assign.",
}
UnitId = Annotated[str, msgspec.Meta(**UNIT_CONSTRAINTS)]


class RenderRequest(Input):
    variables: Annotated[dict[str, Any], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=dict)
    label: Label | None = None
    version: VersionNumber | None = None
    unit: UnitId | None = None


class ExperimentOut(Output):
    """The experiment a unit was routed through, so callers can log it."""

    key: str
    phase: int
    variant: str | None
    in_experiment: bool


class ConfigUsed(Output):
    name: str
    version: int
    model: str


class RenderOut(Output):
    """The rendered prompt plus exactly which versions produced it, for the caller's logs."""

    prompt: str
    version: int
    state: State
    kind: str
    text: str | None
    messages: list[Message] | None
    config: ConfigUsed | None
    experiment: ExperimentOut | None = None


class PromptDiff(Output):
    prompt: str
    from_version: int
    to_version: int
    kind_changed: bool
    content_diff: str
    input_schema_changes: list[FieldChange]
    config_from: ConfigUsed | None
    config_to: ConfigUsed | None
    config_changes: list[FieldChange]
