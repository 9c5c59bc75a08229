"""OpenAI's request and response shapes, as far as the registry serves them.

Requests keep the API's rule that unknown fields are refused. The sampling fields
OpenAI's API has are known here so that sending one is answered by name: the model
config sets them, and a request may only lower ``max_tokens`` and set ``seed`` and
``user``, as on ``/complete``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from registry.completions.schemas import ConfigRun, EndUser
from registry.lib.schema import NO_NUL_PATTERN, Input, Output
from registry.prompts.schemas import ExperimentOut, UnitId

ModelRef = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=300,
        pattern=NO_NUL_PATTERN,
        description="`prompt:NAME` (production), `prompt:NAME@staging`, `prompt:NAME@3`, or `config:NAME` "
        "(`@LABEL`, `@N`) to send the messages to a model config as they are.",
        examples=["prompt:support/summarize", "config:fast@staging"],
    ),
]
Variables = Annotated[dict[str, Any], msgspec.Meta(max_length=1000)]
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# OpenAI fields that the model config sets; a request sending one is refused, naming it.
CONFIG_FIELDS = (
    "temperature",
    "top_p",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning_effort",
    "best_of",
    "echo",
    "suffix",
)


class TextPart(Input):
    type: Literal["text"]
    text: str


# OpenAI's name of a message's participant, passed on with the message (vLLM's chat messages take it too). No NUL,
# as for ``user``: the backend's chat template would get it, and no answer to it can be recorded as it was.
ParticipantName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        pattern=NO_NUL_PATTERN,
        description="The participant's name, told apart from others of the same role; passed to the model.",
    ),
]


class ChatMessage(Input):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], msgspec.Meta(max_length=100)]
    name: ParticipantName | None = None  # null is no name, as OpenAI's SDKs' types have it

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class StreamOptions(Input):
    include_usage: bool = False


class OpenAIRequest(Input):
    """What both endpoints take besides their input: the model to run and what the caller may set."""

    model: ModelRef
    variables: Variables = msgspec.field(default_factory=dict)
    unit: UnitId | None = None
    user: EndUser | None = None
    stream: bool | None = False  # null is false, as OpenAI's API (and its SDKs' types) have it
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    seed: Seed | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None
    # Set by the model config (CONFIG_FIELDS): accepted here only to be refused by name.
    temperature: Any = None
    top_p: Any = None
    stop: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    reasoning_effort: Any = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(OpenAIRequest):
    """``POST /v1/chat/completions``: the request's messages follow the prompt's (or are all, for a config)."""

    messages: Annotated[list[ChatMessage], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)


class TextCompletionRequest(OpenAIRequest):
    """``POST /v1/completions``: the request's prompt follows the rendered text (or is all, for a config)."""

    # null is no text, as OpenAI's API (and its SDKs' types) have it
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)] | None = ""
    best_of: Any = None
    echo: Any = None
    suffix: Any = None

    @property
    def text(self) -> str:
        if self.prompt is None:
            return ""
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class RegistryFacts(Output):
    """Which versions answered and what it cost; ``prompt`` and ``version`` are null for a ``config:`` model."""

    prompt: str | None
    version: int | None
    config: ConfigRun
    experiment: ExperimentOut | None
    fallback_used: bool
    cached: bool | Literal["semantic"]  # "semantic": the semantic cache answered, from a request ``similarity`` away
    cost: float | None = None  # known when the answer is complete
    similarity: float | msgspec.UnsetType = msgspec.UNSET  # a semantic cache hit's; absent otherwise


class Usage(Output):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Output, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(Output, kw_only=True):
    index: int
    finish_reason: str
    logprobs: None = None


class ChatChoice(Choice, kw_only=True):
    message: AssistantMessage


class TextChoice(Choice, kw_only=True):
    text: str


class Completion(Output, kw_only=True):
    """What both answers share: OpenAI's envelope, the usage and the registry's facts."""

    id: str
    created: int
    model: str
    usage: Usage
    registry: RegistryFacts


class ChatCompletion(Completion, kw_only=True):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class TextCompletion(Completion, kw_only=True):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]


class ModelOut(Output, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Output, kw_only=True):
    """OpenAI's model list, with the fields of its paged lists: ``?after=<last_id>`` reads on while ``has_more``."""

    object: Literal["list"] = "list"
    data: list[ModelOut]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None


class ErrorDetail(Output):
    message: str
    type: str  # the registry's problem type (``prompt_not_found``, ``over_budget``...)
    param: str | None
    code: str  # the problem type too, but model_not_found for a model there is no version of (errors.openai_code)
    problem: dict[str, Any]  # the RFC 9457 document the rest of the API answers with


class ErrorOut(Output):
    """OpenAI's error object, with the HTTP status the rest of the API gives the same problem."""

    error: ErrorDetail
