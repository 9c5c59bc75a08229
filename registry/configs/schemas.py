from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.configs.models import ModelConfigVersion
from registry.guards.specs import Guards
from registry.lib.promotion import State
from registry.lib.schema import Input, Output, ResourceName
from registry.lib.versioned_schemas import Label, VersionNumber

BackendName = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*(?!\n)$")]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Price = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]
CommitMessage = Annotated[str, msgspec.Meta(max_length=1000)]

# Keys that the service sets itself on every upstream request.
RESERVED_EXTRA_KEYS = frozenset(
    {
        "model",
        "messages",
        "prompt",
        "stream",
        "stream_options",
        "n",
        "user",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        # vLLM reads it before max_tokens: the config's limit, a caller's lower one and the context check miss it.
        "max_completion_tokens",
        # Sequences generated beyond those returned cost what no usage reports (and vLLM does not stream them).
        "best_of",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
    }
)


class JsonSchemaFormat(Input):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+(?!\n)$")]
    schema: dict[str, Any]
    strict: bool = True


class ResponseFormat(Input):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingParams(Input):
    """OpenAI-compatible sampling parameters, as vLLM accepts them; ``extra`` passes vLLM-only ones."""

    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=-1, le=100_000)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    stop: (
        Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=256)]], msgspec.Meta(max_length=16)] | None
    ) = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2, le=2)] | None = None
    response_format: ResponseFormat | None = None
    extra: Annotated[dict[str, Any], msgspec.Meta(max_length=32)] = msgspec.field(default_factory=dict)


class ConfigRef(Input):
    """A model config version to link: by number, or by label resolved when the link is made."""

    name: ResourceName
    version: VersionNumber | None = None
    label: Label | None = None


class CreateConfigVersion(Input):
    backend: BackendName
    model: ModelName
    params: SamplingParams = msgspec.field(default_factory=SamplingParams)
    input_price_per_mtok: Price = 0.0
    output_price_per_mtok: Price = 0.0
    max_context_tokens: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] | None = None
    fallback: ConfigRef | None = None
    guards: Guards = msgspec.field(default_factory=list)
    commit_message: CommitMessage = ""


class FallbackOut(Output):
    """The config version used instead when this one's backend fails (pinned when the version was made)."""

    config: str
    version: int


class ConfigVersionOut(Output):
    config: str
    version: int
    state: State
    backend: str
    model: str
    params: dict[str, Any]
    input_price_per_mtok: float
    output_price_per_mtok: float
    max_context_tokens: int | None
    fallback: FallbackOut | None
    guards: list[dict[str, Any]]
    commit_message: str
    author: str
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, name: str, version: ModelConfigVersion) -> ConfigVersionOut:
        return cls(
            config=name,
            version=version.number,
            state=State(version.state),
            backend=version.backend,
            model=version.model,
            params=version.params,
            input_price_per_mtok=version.input_price_per_mtok,
            output_price_per_mtok=version.output_price_per_mtok,
            max_context_tokens=version.max_context_tokens,
            fallback=FallbackOut(config=version.fallback.config.name, version=version.fallback.number)
            if version.fallback
            else None,
            guards=version.guards or [],
            commit_message=version.commit_message,
            author=version.author,
            sha256=version.content_sha256,
            created_at=version.created_at,
        )


class ConfigVersionPage(Output):
    items: list[ConfigVersionOut]
    next_cursor: str | None


class FieldChange(Output):
    field: str
    before: Any
    after: Any


class ConfigDiff(Output):
    config: str
    from_version: int
    to_version: int
    changes: list[FieldChange]
