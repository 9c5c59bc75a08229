"""What the clients return: small frozen objects, built from the service's JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from prompt_registry_client._errors import RenderFailed, VariablesInvalid
from prompt_registry_client.assignment import assign_experiment
from prompt_registry_client.templating import (
    ChatMessage,
    CompiledPrompt,
    RenderError,
    RenderLimits,
    VariablesInvalidError,
    compile_prompt,
)

if TYPE_CHECKING:
    import pandas

PromptKind = Literal["text", "chat"]
CacheHit = bool | Literal["semantic"]
"""Which cache answered a completion: False (none), True (the exact cache) or "semantic"."""
FallbackTemplate = str | Sequence[Mapping[str, str]] | Sequence[ChatMessage]
"""A caller's own template: text, or chat messages (``{"role": ..., "content": ...}``)."""


# --------------------------------------------------------------------------- prompts


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigInfo:
    """A model config version, as render and completion results name it."""

    name: str
    version: int
    model: str
    backend: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """The model config version a prompt version runs with, in full."""

    name: str
    version: int
    backend: str
    model: str
    params: Mapping[str, Any]
    input_price_per_mtok: float = 0.0
    output_price_per_mtok: float = 0.0
    max_context_tokens: int | None = None
    fallback: ModelConfig | None = None

    def info(self) -> ConfigInfo:
        return ConfigInfo(name=self.name, version=self.version, model=self.model, backend=self.backend)


@dataclass(frozen=True, slots=True)
class Labels:
    """The version numbers the labels point to (None: unset)."""

    production: int | None
    staging: int | None
    latest: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentAssignment:
    """The experiment a unit was routed through: ``variant`` is None when the unit is outside it."""

    key: str
    phase: int
    variant: str | None
    in_experiment: bool


@dataclass(frozen=True, kw_only=True)
class Prompt:
    """A prompt version, ready to render locally with the service's own sandbox.

    ``stale`` is set when the service could not be reached and a cached copy is served;
    ``fallback`` when the caller's fallback template is served instead (``version`` is then
    None). With a unit routed by a running experiment, ``experiment`` names it and
    ``variant_config`` the config its variant runs with, when that differs.

    Example::

        prompt = registry.get_prompt("support/summarize")
        rendered = prompt.render({"ticket": "The export button does nothing.", "max_words": 20})
        rendered.messages  # (ChatMessage(role='system', content='...'), ...)
    """

    name: str
    version: int | None
    state: str | None
    kind: PromptKind
    template: str | None
    messages: tuple[ChatMessage, ...] | None
    input_schema: Mapping[str, Any] | None
    variables: tuple[str, ...]
    config: ModelConfig | None
    labels: Labels | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    sha256: str | None = None
    experiment: ExperimentAssignment | None = None
    variant_config: ConfigInfo | None = None
    stale: bool = False
    fallback: bool = False
    _compiled: CompiledPrompt = field(repr=False, compare=False)

    def render(
        self, variables: Mapping[str, Any] | None = None, *, limits: RenderLimits | None = None
    ) -> RenderedPrompt:
        """Render locally: the same sandbox, input schema and limits as the service, so the same output.

        Raises ``VariablesInvalid`` (every problem in ``errors``) or ``RenderFailed``.
        """
        try:
            output = self._compiled.render(variables or {}, limits)
        except VariablesInvalidError as exc:
            errors = [
                {"field": f"variables.{p.field}" if p.field != "variables" else "variables", "message": p.message}
                for p in exc.problems
            ]
            raise VariablesInvalid(exc.detail, type="variables_invalid", errors=errors) from exc
        except RenderError as exc:
            raise RenderFailed(str(exc), type="render_failed", body={"reason": exc.reason}) from exc
        is_chat = isinstance(output, list)
        return RenderedPrompt(
            prompt=self.name,
            version=self.version,
            state=self.state,
            kind=self.kind,
            text=None if is_chat else str(output),
            messages=tuple(output) if isinstance(output, list) else None,
            config=self.variant_config or (self.config.info() if self.config else None),
            experiment=self.experiment,
            stale=self.stale,
            fallback=self.fallback,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedPrompt:
    """A rendered prompt and exactly what produced it (log ``prompt``, ``version`` and ``config``)."""

    prompt: str
    version: int | None
    state: str | None
    kind: PromptKind
    text: str | None
    messages: tuple[ChatMessage, ...] | None
    config: ConfigInfo | None
    experiment: ExperimentAssignment | None = None
    stale: bool = False
    fallback: bool = False

    def to_messages(self) -> list[dict[str, str]]:
        """OpenAI-style messages; a text prompt becomes one user message."""
        if self.messages is None:
            return [{"role": "user", "content": self.text or ""}]
        return [{"role": m.role, "content": m.content} for m in self.messages]


# --------------------------------------------------------------------------- completions


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionMetadata:
    """Which versions produce a completion: the first event of a stream."""

    prompt: str
    version: int
    config: ConfigInfo
    experiment: ExperimentAssignment | None
    fallback_used: bool  # the config's fallback ran, because its backend failed
    # True: the service's exact response cache answered; "semantic": its semantic cache, with the answer to a
    # request ``similarity`` (cosine, at or above the prompt's threshold) away; False: the model answered.
    cached: CacheHit
    similarity: float | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Text as the model generates it."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionDone:
    """The last event of a stream: how it ended and what it used."""

    finish_reason: str | None
    usage: Usage
    cost: float
    latency_ms: float
    ttft_ms: float | None


CompletionEvent = CompletionMetadata | TextDelta | CompletionDone


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """A whole completion, with the versions that made it and what it cost.

    ``fallback_used`` is set when a fallback answered: the config's own (its backend failed; ``config``
    names the fallback config), or the app's when the registry could not be reached (``config`` is then
    None, and so is ``version`` unless a cached copy of the prompt was rendered for the app's backend).
    """

    prompt: str
    version: int | None
    config: ConfigInfo | None
    experiment: ExperimentAssignment | None
    fallback_used: bool
    cached: CacheHit  # as in ``CompletionMetadata``
    text: str
    finish_reason: str | None
    usage: Usage
    cost: float
    latency_ms: float
    ttft_ms: float | None
    similarity: float | None = None  # a semantic cache hit's


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionBackend:
    """An OpenAI-compatible server the client calls itself when the registry cannot be reached.

    The prompt is rendered locally from the cached copy (or the client's fallback template) and
    sent to ``{url}/v1/chat/completions`` with ``model`` and ``params``; the registry's API key
    is never sent there, ``api_key`` is.

    Example::

        backend = CompletionBackend(url="http://vllm:8000", model="Qwen/Qwen2.5-0.5B-Instruct")
        registry.complete("greet", {"name": "Ada"}, fallback=backend).fallback_used
    """

    url: str
    model: str
    api_key: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # temperature, top_p, ...


CompletionFallback = CompletionBackend | Callable[[str, Mapping[str, Any]], "str | Awaitable[str]"]
"""What answers a completion when the registry cannot: a backend of the app's own, or a function of
``(prompt name, variables)`` that returns the text (the async client awaits it if it is a coroutine)."""


def fallback_completion(
    name: str,
    text: str,
    *,
    rendered: RenderedPrompt | None = None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    latency_ms: float,
) -> Completion:
    return Completion(
        prompt=name,
        version=rendered.version if rendered else None,
        config=None,
        experiment=rendered.experiment if rendered else None,
        fallback_used=True,
        cached=False,
        text=text,
        finish_reason=finish_reason,
        usage=usage or Usage(0, 0, 0),
        cost=0.0,
        latency_ms=latency_ms,
        ttft_ms=None,
    )


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    key: str
    prompt_version: int
    weight: float  # normalized: the weights of an experiment sum to 1
    config: ConfigInfo | None


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """An experiment's definition; ``assign`` routes a unit exactly as the service does.

    Example::

        experiment = registry.get_experiment("greet-tone")
        experiment.assign("user-42")  # ExperimentAssignment(key='greet-tone', phase=1, variant='warm', ...)
    """

    key: str
    prompt: str
    status: str
    phase: int
    variants: tuple[Variant, ...]
    forced_variants: Mapping[str, str]
    assignment: Mapping[str, Any]  # as GrowthBook SDKs take it
    raw: Mapping[str, Any] = field(repr=False, compare=False)  # the definition as the API returned it

    def variant(self, key: str) -> Variant:
        return next(v for v in self.variants if v.key == key)

    def assign(self, unit: str) -> ExperimentAssignment | None:
        """The unit's variant, or None when this experiment does not route it (stopped, or a draft)."""
        routed = self.route(unit)
        return routed[0] if routed else None

    def route(self, unit: str) -> tuple[ExperimentAssignment, bool] | None:
        """The assignment and whether it counts as an exposure (hashed; forced QA units do not).

        None unless the experiment runs: renders never route through a draft, as the service's do not
        (``POST /v1/experiments/{key}/preview`` shows a draft's variant to QA)."""
        if self.status != "running":
            return None
        result = assign_experiment(self.raw, unit)
        variant = self.variants[result.variation].key if result.variation >= 0 else None
        assignment = ExperimentAssignment(
            key=self.key, phase=self.phase, variant=variant, in_experiment=result.in_experiment
        )
        return assignment, result.hash_used


@dataclass(frozen=True, slots=True)
class VariantUnits:
    variant: str
    units: int
    expected_share: float
    observed_share: float


@dataclass(frozen=True, slots=True)
class Effect:
    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """A variant against the control (the first variant)."""

    absolute: Effect
    relative: Effect | None
    p_value: float
    p_value_adjusted: float
    significant: bool
    chance_to_beat_control: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantMetric:
    variant: str
    units: int
    mean: float
    std_dev: float
    ci_low: float
    ci_high: float
    vs_control: Comparison | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricResult:
    metric: str
    role: str  # primary, guardrail or secondary
    kind: str
    aggregation: str
    direction: str
    variants: tuple[VariantMetric, ...]


RESULT_COLUMNS = (
    "metric",
    "role",
    "variant",
    "units",
    "mean",
    "std_dev",
    "ci_low",
    "ci_high",
    "abs_diff",
    "abs_ci_low",
    "abs_ci_high",
    "rel_diff",
    "rel_ci_low",
    "rel_ci_high",
    "p_value",
    "p_value_adjusted",
    "significant",
    "chance_to_beat_control",
)


@dataclass(frozen=True, kw_only=True)
class ExperimentResults:
    """An experiment's results for one phase, as plain objects; ``rows()`` or ``to_pandas()`` for a table.

    Example::

        results = registry.experiment_results("greet-tone")
        if results.srm_flagged:
            ...  # the split is off: do not trust the numbers
        frame = results.to_pandas()  # one row per metric and variant (needs pandas)
    """

    experiment: str
    phase: int
    status: str
    units: int
    units_in_multiple_variants: int
    pending_units: int
    srm_p_value: float
    srm_flagged: bool
    variants: tuple[VariantUnits, ...]
    metrics: tuple[MetricResult, ...]
    computed_at: str
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per metric and variant (the control's comparison columns are None)."""
        rows = []
        for metric in self.metrics:
            for row in metric.variants:
                versus = row.vs_control
                absolute = versus.absolute if versus else None
                relative = versus.relative if versus else None
                values = (
                    metric.metric,
                    metric.role,
                    row.variant,
                    row.units,
                    row.mean,
                    row.std_dev,
                    row.ci_low,
                    row.ci_high,
                    absolute.estimate if absolute else None,
                    absolute.ci_low if absolute else None,
                    absolute.ci_high if absolute else None,
                    relative.estimate if relative else None,
                    relative.ci_low if relative else None,
                    relative.ci_high if relative else None,
                    versus.p_value if versus else None,
                    versus.p_value_adjusted if versus else None,
                    versus.significant if versus else None,
                    versus.chance_to_beat_control if versus else None,
                )
                rows.append(dict(zip(RESULT_COLUMNS, values, strict=True)))
        return rows

    def to_pandas(self) -> pandas.DataFrame:
        """``rows()`` as a DataFrame. pandas is optional: ``pip install prompt-registry-client[pandas]``."""
        try:
            import pandas
        except ImportError as exc:
            raise ImportError("to_pandas() needs pandas: pip install 'prompt-registry-client[pandas]'") from exc
        return pandas.DataFrame(self.rows(), columns=list(RESULT_COLUMNS))


# --------------------------------------------------------------------------- from JSON


def config_from_json(body: Mapping[str, Any] | None) -> ModelConfig | None:
    if body is None:
        return None
    return ModelConfig(
        name=body["name"],
        version=body["version"],
        backend=body["backend"],
        model=body["model"],
        params=body.get("params") or {},
        input_price_per_mtok=body.get("input_price_per_mtok", 0.0),
        output_price_per_mtok=body.get("output_price_per_mtok", 0.0),
        max_context_tokens=body.get("max_context_tokens"),
        fallback=config_from_json(body.get("fallback")),
    )


def info_from_json(body: Mapping[str, Any] | None) -> ConfigInfo | None:
    if body is None:
        return None
    return ConfigInfo(name=body["name"], version=body["version"], model=body["model"], backend=body.get("backend"))


def assignment_from_json(body: Mapping[str, Any] | None) -> ExperimentAssignment | None:
    if body is None:
        return None
    return ExperimentAssignment(
        key=body["key"], phase=body["phase"], variant=body.get("variant"), in_experiment=body["in_experiment"]
    )


def messages_from_json(body: Sequence[Mapping[str, str]] | None) -> tuple[ChatMessage, ...] | None:
    return tuple(ChatMessage(m["role"], m["content"]) for m in body) if body else None


def prompt_from_json(body: Mapping[str, Any]) -> Prompt:
    """A prompt from the resolve response (``GET /v1/prompts/{name}``)."""
    version = body["version"]
    kind: PromptKind = "chat" if version["kind"] == "chat" else "text"
    messages = messages_from_json(version.get("messages"))
    labels = body.get("labels") or {}
    return Prompt(
        name=body["name"],
        version=version["version"],
        state=version["state"],
        kind=kind,
        template=version.get("template"),
        messages=messages,
        input_schema=version.get("input_schema"),
        variables=tuple(version.get("variables") or ()),
        config=config_from_json(version.get("config")),
        labels=Labels(labels.get("production"), labels.get("staging"), labels.get("latest")),
        description=body.get("description", ""),
        tags=tuple(body.get("tags") or ()),
        sha256=version.get("sha256"),
        _compiled=compile_prompt(
            kind,
            template=version.get("template"),
            messages=version.get("messages"),
            input_schema=version.get("input_schema"),
        ),
    )


def fallback_prompt(name: str, template: FallbackTemplate) -> Prompt:
    """The caller's fallback as a prompt; it accepts any variables, since the real prompt's may differ."""
    if isinstance(template, str):
        kind: PromptKind = "text"
        messages: tuple[ChatMessage, ...] | None = None
        compiled = compile_prompt("text", template=template, input_schema={"additionalProperties": True})
    else:
        kind = "chat"
        messages = tuple(m if isinstance(m, ChatMessage) else ChatMessage(m["role"], m["content"]) for m in template)
        raw = [{"role": m.role, "content": m.content} for m in messages]
        compiled = compile_prompt("chat", messages=raw, input_schema={"additionalProperties": True})
    return Prompt(
        name=name,
        version=None,
        state=None,
        kind=kind,
        template=template if isinstance(template, str) else None,
        messages=messages,
        input_schema=None,
        variables=(),
        config=None,
        fallback=True,
        _compiled=compiled,
    )


def usage_from_json(body: Mapping[str, Any]) -> Usage:
    return Usage(body["input_tokens"], body["output_tokens"], body["total_tokens"])


def metadata_from_json(body: Mapping[str, Any]) -> CompletionMetadata:
    config = info_from_json(body["config"])
    assert config is not None
    return CompletionMetadata(
        prompt=body["prompt"],
        version=body["version"],
        config=config,
        experiment=assignment_from_json(body.get("experiment")),
        fallback_used=body["fallback_used"],
        cached=cache_hit_from_json(body["cached"]),
        similarity=body.get("similarity"),
    )


def cache_hit_from_json(value: Any) -> CacheHit:
    """``"semantic"`` as it is; any other cache the service may name later reads as True (a cache answered)."""
    if isinstance(value, bool) or value == "semantic":
        return cast("CacheHit", value)
    return bool(value)


def done_from_json(body: Mapping[str, Any]) -> CompletionDone:
    return CompletionDone(
        finish_reason=body.get("finish_reason"),
        usage=usage_from_json(body["usage"]),
        cost=body["cost"],
        latency_ms=body["latency_ms"],
        ttft_ms=body.get("ttft_ms"),
    )


def completion_from_json(body: Mapping[str, Any]) -> Completion:
    meta, done = metadata_from_json(body), done_from_json(body)
    return Completion(
        prompt=meta.prompt,
        version=meta.version,
        config=meta.config,
        experiment=meta.experiment,
        fallback_used=meta.fallback_used,
        cached=meta.cached,
        text=body["text"],
        finish_reason=done.finish_reason,
        usage=done.usage,
        cost=done.cost,
        latency_ms=done.latency_ms,
        ttft_ms=done.ttft_ms,
        similarity=meta.similarity,
    )


def experiment_from_json(body: Mapping[str, Any]) -> Experiment:
    return Experiment(
        key=body["key"],
        prompt=body["prompt"],
        status=body["status"],
        phase=body["phase"],
        variants=tuple(
            Variant(
                key=v["key"], prompt_version=v["prompt_version"], weight=v["weight"], config=info_from_json(v["config"])
            )
            for v in body["variants"]
        ),
        forced_variants=dict(body.get("forced_variants") or {}),
        assignment=body["assignment"],
        raw=body,
    )


def _effect(body: Mapping[str, Any] | None) -> Effect | None:
    if body is None:
        return None
    return Effect(body["estimate"], body["std_error"], body["ci_low"], body["ci_high"], body["p_value"])


def _comparison(body: Mapping[str, Any] | None) -> Comparison | None:
    if body is None:
        return None
    absolute = _effect(body["absolute"])
    assert absolute is not None
    return Comparison(
        absolute=absolute,
        relative=_effect(body.get("relative")),
        p_value=body["p_value"],
        p_value_adjusted=body["p_value_adjusted"],
        significant=body["significant"],
        chance_to_beat_control=body["chance_to_beat_control"],
    )


def results_from_json(body: Mapping[str, Any]) -> ExperimentResults:
    return ExperimentResults(
        experiment=body["experiment"],
        phase=body["phase"],
        status=body["status"],
        units=body["units"],
        units_in_multiple_variants=body["units_in_multiple_variants"],
        pending_units=body["pending_units"],
        srm_p_value=body["srm"]["p_value"],
        srm_flagged=body["srm"]["flagged"],
        variants=tuple(
            VariantUnits(v["variant"], v["units"], v["expected_share"], v["observed_share"]) for v in body["variants"]
        ),
        metrics=tuple(
            MetricResult(
                metric=m["metric"],
                role=m["role"],
                kind=m["kind"],
                aggregation=m["aggregation"],
                direction=m["direction"],
                variants=tuple(
                    VariantMetric(
                        variant=v["variant"],
                        units=v["units"],
                        mean=v["mean"],
                        std_dev=v["std_dev"],
                        ci_low=v["ci_low"],
                        ci_high=v["ci_high"],
                        vs_control=_comparison(v.get("vs_control")),
                    )
                    for v in m["variants"]
                ),
            )
            for m in body["metrics"]
        ),
        computed_at=str(body["computed_at"]),
        raw=body,
    )
