"""Errors of the completions domain, each with a stable problem ``type``.

Errors of the upstream (httpx exceptions, vLLM error bodies) are translated
into these in ``upstream.py``, where they enter.
"""

from __future__ import annotations

from typing import Any

from registry.lib.errors import InvalidInputError, RateLimitedError, RegistryError, ServiceUnavailableError


class UpstreamError(RegistryError):
    """A completion backend failed; ``retryable`` failures may be retried or sent to a fallback."""

    retryable = False  # a connection error, 429 or 503 before any token: the same request may succeed
    counts_against_breaker = True  # says the backend is unhealthy (not a refusal or overload)
    retry_after: float | None = None  # what the backend asked for (429/503 Retry-After)
    about_backend = True  # False: the request's own deadline ran out first; the breaker learns nothing from it
    # What the backend reported spending before it failed (a chunk's usage before the first token: the prompt it
    # read); charged to the request as any attempt's tokens are.
    input_tokens = 0
    output_tokens = 0


class UpstreamTimeoutError(UpstreamError):
    """The backend did not connect, send a first token, or finish within its timeout."""

    status_code = 504
    type = "upstream_timeout"
    title = "Upstream timeout"


class UpstreamUnavailableError(UpstreamError):
    """The backend could not be reached, failed, or sent a malformed answer; retry shortly."""

    status_code = 502
    type = "upstream_unavailable"
    title = "Upstream unavailable"


class UpstreamBadRequestError(UpstreamError):
    """The backend refused the request as invalid (often a sampling parameter of the model config)."""

    status_code = 422
    type = "upstream_bad_request"
    title = "Upstream refused the request"
    counts_against_breaker = False


class ContextLengthExceededError(InvalidInputError):
    """The rendered prompt plus ``max_tokens`` does not fit the model's context window."""

    type = "context_length_exceeded"
    title = "Context length exceeded"


class CircuitOpenError(ServiceUnavailableError):
    """The backend failed repeatedly; requests are refused until a probe succeeds (see Retry-After)."""

    type = "circuit_open"
    title = "Circuit open"


class BackendBusyError(ServiceUnavailableError):
    """The backend's concurrency limit and waiting queue are full; retry after ``Retry-After`` seconds."""

    type = "backend_busy"
    title = "Backend busy"


class OverBudgetError(RateLimitedError):
    """The API key used up its monthly token or cost budget."""

    type = "over_budget"
    title = "Over budget"


class BudgetHeldError(OverBudgetError):
    """The key's completions in flight hold what is left of its budget: another may run when one has ended (same
    problem type; an evaluation run waits for that instead of failing)."""


class NoModelConfigError(InvalidInputError):
    """The prompt version links no model config, so there is nothing to run it with."""

    type = "no_model_config"
    title = "No model config"


class BackendNotConfiguredError(RegistryError):
    """The model config names a backend this deployment does not configure (REGISTRY_BACKENDS)."""

    status_code = 503
    type = "backend_not_configured"
    title = "Backend not configured"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        # Every raise site ends with what to do: the fix is the deployment's setting, not the request.
        super().__init__(f"{detail}; {CONFIGURE_BACKENDS}", **kwargs)


CONFIGURE_BACKENDS = (
    'add it to REGISTRY_BACKENDS (JSON, e.g. {"local": {"url": "http://127.0.0.1:8001"}}) and restart the service'
)
