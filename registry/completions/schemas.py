from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

from registry.lib.schema import NO_NUL_PATTERN, Input, Output
from registry.lib.versioned_schemas import Label, VersionNumber
from registry.prompts.schemas import ExperimentOut, UnitId

# No NUL: the OpenAI door records it as the unit when none is given.
EndUser = Annotated[
    str, msgspec.Meta(min_length=1, max_length=256, pattern=NO_NUL_PATTERN, description="The end user, passed to vLLM.")
]


class CompleteRequest(Input):
    """Render a prompt and run it with its model config. Only lowering ``max_tokens``, a ``seed``
    and the end ``user`` may be set per request; everything else comes from the config version."""

    variables: Annotated[dict[str, Any], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=dict)
    label: Label | None = None
    version: VersionNumber | None = None
    unit: UnitId | None = None
    stream: bool = False
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    user: EndUser | None = None


class ConfigRun(Output):
    """The model config version that actually ran (the fallback's, when one was used)."""

    name: str
    version: int
    backend: str
    model: str


class UsageOut(Output):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class CompletionMeta(Output):
    """Which versions produced a completion; the first event of a stream."""

    prompt: str
    version: int
    config: ConfigRun
    experiment: ExperimentOut | None
    fallback_used: bool
    # true: the exact cache answered; "semantic": the semantic cache, from a request ``similarity`` away.
    cached: bool | Literal["semantic"]
    similarity: float | msgspec.UnsetType = msgspec.UNSET  # present on semantic hits only


class CompletionOut(CompletionMeta, kw_only=True):
    text: str
    finish_reason: str | None
    usage: UsageOut
    cost: float
    latency_ms: float
    ttft_ms: float | None


class DeltaEvent(Output):
    text: str


class DoneEvent(Output):
    """The last event of a stream: how it ended and what it used."""

    finish_reason: str | None
    usage: UsageOut
    cost: float
    latency_ms: float
    ttft_ms: float | None


UsageDimension = Literal["prompt", "version", "config", "config_version", "key", "day", "experiment", "variant"]


class UsageRow(Output):
    """One group: the dimensions grouped by are set, the others are null."""

    requests: int
    errors: int
    cached: int
    fallbacks: int
    input_tokens: int
    output_tokens: int
    cost: float
    mean_latency_ms: float | None
    mean_ttft_ms: float | None
    prompt: str | None = None
    version: int | None = None
    config: str | None = None
    config_version: int | None = None
    key: str | None = None
    day: date | None = None
    experiment: str | None = None
    variant: str | None = None


class UsageReport(Output):
    group_by: list[str]
    since: datetime
    until: datetime
    items: list[UsageRow]
    truncated: bool


MAX_MONTHLY_TOKENS = 2_147_483_647  # the budget table's column is a 32-bit integer


class SetBudget(Input):
    """Monthly limits (UTC calendar month); null removes a limit."""

    monthly_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_MONTHLY_TOKENS)] | None = None
    monthly_cost: Annotated[float, msgspec.Meta(ge=0)] | None = None


class BudgetOut(Output):
    key: str
    monthly_tokens: int | None
    monthly_cost: float | None
    used_tokens: int
    used_cost: float
    month_start: datetime


SimilarityThreshold = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        le=1,
        description="Cosine similarity at or above which a cached answer is served; see BENCHMARKS.md for the "
        "hit and wrong-hit rates it gives.",
    ),
]
VariableName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class SetSemanticCache(Input):
    """A prompt's semantic cache. ``exact_variables`` must be equal for a cached answer to be reused (an
    account id, a language); each must be a variable some version of the prompt uses."""

    enabled: bool
    threshold: SimilarityThreshold | None = None  # default: the measured default (similarity.DEFAULT_THRESHOLD)
    exact_variables: Annotated[list[VariableName], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)


class SemanticCacheOut(Output):
    prompt: str
    enabled: bool
    threshold: float
    exact_variables: list[str]
    backend_configured: bool  # false: REGISTRY_SEMANTIC_CACHE_BACKEND is unset, so nothing is cached yet
    updated_at: datetime | None
    updated_by: str | None
