"""Client for prompt-registry: fetch, render and complete prompts, with a cache that never fails your app.

Example::

    from prompt_registry_client import RegistryClient

    with RegistryClient("http://registry:8000", api_key="prk_...") as registry:
        rendered = registry.render("support/summarize", {"ticket": "..."}, unit="user-42")
        registry.track("user-42", "resolved")

The modules ``templating`` (the sandboxed renderer), ``assignment`` (GrowthBook-compatible
variant assignment) and ``webhooks`` (signature checks) are public too; the service itself
uses them, so local results match the service's.
"""

from prompt_registry_client._async_client import AsyncRegistryClient
from prompt_registry_client._client import RegistryClient
from prompt_registry_client._config import BatchPolicy, CachePolicy, RetryPolicy
from prompt_registry_client._core import encode_name
from prompt_registry_client._errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PromptNotFound,
    RateLimited,
    RegistryError,
    RenderFailed,
    ServiceUnavailable,
    Unauthorized,
    ValidationFailed,
    VariablesInvalid,
)
from prompt_registry_client._models import (
    Comparison,
    Completion,
    CompletionBackend,
    CompletionDone,
    CompletionEvent,
    CompletionFallback,
    CompletionMetadata,
    ConfigInfo,
    Effect,
    Experiment,
    ExperimentAssignment,
    ExperimentResults,
    FallbackTemplate,
    Labels,
    MetricResult,
    ModelConfig,
    Prompt,
    RenderedPrompt,
    TextDelta,
    Usage,
    Variant,
    VariantMetric,
    VariantUnits,
)
from prompt_registry_client._streams import AsyncCompletionStream, CompletionStream
from prompt_registry_client.templating import (
    ChatMessage,
    CompiledPrompt,
    RenderError,
    RenderLimits,
    TemplateProblemError,
    VariablesInvalidError,
    compile_prompt,
)
from prompt_registry_client.webhooks import SIGNATURE_HEADER, verify_signature

__version__ = "0.2.0"

__all__ = [
    "SIGNATURE_HEADER",
    "AsyncCompletionStream",
    "AsyncRegistryClient",
    "BadRequest",
    "BatchPolicy",
    "CachePolicy",
    "ChatMessage",
    "Comparison",
    "CompiledPrompt",
    "Completion",
    "CompletionBackend",
    "CompletionDone",
    "CompletionEvent",
    "CompletionFallback",
    "CompletionMetadata",
    "CompletionStream",
    "ConfigInfo",
    "Conflict",
    "Effect",
    "Experiment",
    "ExperimentAssignment",
    "ExperimentResults",
    "FallbackTemplate",
    "Forbidden",
    "Labels",
    "MetricResult",
    "ModelConfig",
    "NotFound",
    "Prompt",
    "PromptNotFound",
    "RateLimited",
    "RegistryClient",
    "RegistryError",
    "RenderError",
    "RenderFailed",
    "RenderLimits",
    "RenderedPrompt",
    "RetryPolicy",
    "ServiceUnavailable",
    "TemplateProblemError",
    "TextDelta",
    "Unauthorized",
    "Usage",
    "ValidationFailed",
    "VariablesInvalid",
    "VariablesInvalidError",
    "Variant",
    "VariantMetric",
    "VariantUnits",
    "__version__",
    "compile_prompt",
    "encode_name",
    "verify_signature",
]
