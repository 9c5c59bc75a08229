"""The public API, pinned: a change here is a change for every app that uses the client."""

from __future__ import annotations

import inspect
from pathlib import Path

import prompt_registry_client
from prompt_registry_client import AsyncRegistryClient, Prompt, RegistryClient

EXPORTED = [
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

CONSTRUCTOR = (
    "(base_url: 'str | None' = None, api_key: 'str | None' = None, *, "
    "timeout: 'float | httpx.Timeout' = Timeout(connect=2.0, read=5.0, write=5.0, pool=5.0), "
    "completion_timeout: 'float | httpx.Timeout' = 120.0, retries: 'RetryPolicy | None' = None, "
    "cache: 'CachePolicy | None' = None, batches: 'BatchPolicy | None' = None, "
    "fallbacks: 'Mapping[str, FallbackTemplate] | None' = None, render_limits: 'RenderLimits | None' = None, "
    "headers: 'Mapping[str, str] | None' = None, transport: '{transport} | None' = None) -> 'None'"
)
SIGNATURES = {
    "get_prompt": (
        "(self, name: 'str', *, label: 'Label | None' = None, version: 'int | None' = None, "
        "unit: 'str | None' = None, fallback: 'FallbackTemplate | None' = None) -> 'Prompt'"
    ),
    "render": (
        "(self, name: 'str', variables: 'Mapping[str, Any] | None' = None, *, unit: 'str | None' = None, "
        "label: 'Label | None' = None, version: 'int | None' = None, fallback: 'FallbackTemplate | None' = None)"
        " -> 'RenderedPrompt'"
    ),
    "complete": (
        "(self, name: 'str', variables: 'Mapping[str, Any] | None' = None, *, unit: 'str | None' = None, "
        "label: 'Label | None' = None, version: 'int | None' = None, max_tokens: 'int | None' = None, "
        "seed: 'int | None' = None, user: 'str | None' = None, stream: 'bool' = False, "
        "fallback: 'CompletionFallback | None' = None) -> '{completion}'"
    ),
    "track": (
        "(self, unit: 'str', metric: 'str', value: 'float' = 1.0, *, experiment: 'str | None' = None, "
        "timestamp: 'datetime | None' = None, idempotency_key: 'str | None' = None) -> 'str'"
    ),
    "get_experiment": "(self, key: 'str') -> 'Experiment'",
    "experiment_results": "(self, key: 'str', *, phase: 'int | None' = None) -> 'ExperimentResults'",
    "flush": "(self) -> 'bool'",
}


def test_the_package_exports_exactly_its_public_api() -> None:
    assert prompt_registry_client.__all__ == EXPORTED
    assert all(hasattr(prompt_registry_client, name) for name in EXPORTED)


def test_both_clients_take_the_same_keyword_only_options() -> None:
    assert str(inspect.signature(RegistryClient.__init__)).replace("self, ", "") == CONSTRUCTOR.format(
        transport="httpx.BaseTransport"
    )
    assert str(inspect.signature(AsyncRegistryClient.__init__)).replace("self, ", "") == CONSTRUCTOR.format(
        transport="httpx.AsyncBaseTransport"
    )


def test_the_key_methods_have_the_same_signatures_on_both_clients() -> None:
    for client, completion in ((RegistryClient, "Completion | CompletionStream"), (AsyncRegistryClient, None)):
        for name, expected in SIGNATURES.items():
            wanted = expected.format(completion=completion or "Completion | AsyncCompletionStream")
            assert str(inspect.signature(getattr(client, name))) == wanted, f"{client.__name__}.{name}"
    assert inspect.iscoroutinefunction(AsyncRegistryClient.get_prompt)
    assert not inspect.iscoroutinefunction(AsyncRegistryClient.track), "tracking never waits"


def test_a_prompt_renders_itself() -> None:
    assert str(inspect.signature(Prompt.render)) == (
        "(self, variables: 'Mapping[str, Any] | None' = None, *, limits: 'RenderLimits | None' = None)"
        " -> 'RenderedPrompt'"
    )


def test_the_package_is_typed() -> None:
    assert Path(prompt_registry_client.__file__).with_name("py.typed").exists()


def test_the_async_client_has_every_method_of_the_sync_client_with_the_same_parameters() -> None:
    """``close`` is ``aclose``; a listing is an async iterator; every other call is awaited."""
    public = {name for name in dir(RegistryClient) if not name.startswith("_")}
    plain = {name for name in public if inspect.isfunction(getattr(RegistryClient, name))} - {"close", "track"}
    for name in sorted(plain):
        assert hasattr(AsyncRegistryClient, name), f"AsyncRegistryClient has no {name}"
        sync, asynchronous = (
            inspect.signature(getattr(client, name)) for client in (RegistryClient, AsyncRegistryClient)
        )
        assert asynchronous.parameters == sync.parameters, name
        returns = str(sync.return_annotation).replace("Iterator[", "AsyncIterator[")
        assert asynchronous.return_annotation == returns.replace("CompletionStream", "AsyncCompletionStream"), name
    assert {name for name in dir(AsyncRegistryClient) if not name.startswith("_")} == public - {"close"} | {"aclose"}
    assert inspect.iscoroutinefunction(AsyncRegistryClient.set_gate)
    assert inspect.isasyncgenfunction(AsyncRegistryClient.eval_run_events)
