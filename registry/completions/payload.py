"""The upstream request for a rendered prompt, and the facts derived from it. Pure functions.

The registry always streams from the backend (``stream_options.include_usage``),
also for callers that want one JSON answer: that measures time to first token
for every completion and lets the first-token timeout apply everywhere. It also
asks for ``continuous_usage_stats`` (vLLM puts the usage so far in every chunk), so
a completion cut short by a failure or by its caller is still charged for what
the backend generated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from registry.configs.schemas import SamplingParams
from registry.lib.errors import FieldError
from registry.lib.hashing import content_sha256

# Config params copied into the request as they are; ``extra`` is merged last.
SAMPLING_KEYS = tuple(name for name in SamplingParams.__struct_fields__ if name != "extra")
# Template tokens a chat template adds around each message (role markers, separators), generously.
_TOKENS_PER_MESSAGE = 8
_TOKENS_PER_PROMPT = 8


@dataclass(frozen=True, slots=True)
class Overrides:
    """What a caller may change per request: never raise cost or loosen the config's limits."""

    max_tokens: int | None = None
    seed: int | None = None
    user: str | None = None


def override_problems(params: Mapping[str, Any], overrides: Overrides) -> list[FieldError]:
    configured = params.get("max_tokens")
    if overrides.max_tokens is not None and configured is not None and overrides.max_tokens > configured:
        return [FieldError("max_tokens", f"may only lower the config's max_tokens ({configured})")]
    return []


def build_payload(
    *,
    model: str,
    text: str | None,
    messages: Sequence[Mapping[str, str]] | None,
    params: Mapping[str, Any],
    overrides: Overrides,
) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model}
    if messages is not None:
        payload["messages"] = [
            {"role": m["role"], "content": m["content"], **({"name": m["name"]} if m.get("name") is not None else {})}
            for m in messages
        ]
    else:
        payload["prompt"] = text or ""
    for key in SAMPLING_KEYS:
        if params.get(key) is not None:
            payload[key] = params[key]
    payload.update(params.get("extra") or {})
    if overrides.max_tokens is not None:
        payload["max_tokens"] = overrides.max_tokens
    if overrides.seed is not None:
        payload["seed"] = overrides.seed
    if overrides.user is not None:
        payload["user"] = overrides.user
    payload["stream"] = True
    # The usage at the end, and (vLLM) the usage so far in every chunk.
    payload["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return payload


def named_turns(messages: list[dict[str, str]], names: Sequence[str | None]) -> list[dict[str, str]]:
    """``messages`` with the caller's turns (the last ``len(names)`` of them) given their participants' names, as
    vLLM's chat messages take them (the OpenAI door passes them on); a None name leaves its turn unnamed."""
    if names:
        for message, name in zip(messages[len(messages) - len(names) :], names, strict=True):
            if name is not None:
                message["name"] = name
    return messages


def turn_text(role: str, content: str, name: str | None = None) -> str:
    """A chat turn as one line of text: ``role: content``, or ``role (name): content`` for a named participant.

    What the semantic cache embeds, a model guard reads and a usage record keeps: a name is read by the model
    with its message, so two requests told apart only by their names are two requests."""
    return f"{role}: {content}" if name is None else f"{role} ({name}): {content}"


def upstream_path(payload: Mapping[str, Any]) -> str:
    return "/v1/chat/completions" if "messages" in payload else "/v1/completions"


def token_upper_bound(payload: Mapping[str, Any]) -> int:
    """At least as many tokens as the prompt can have: one per UTF-8 byte, plus template tokens.

    Byte-level tokenizers (BPE, SentencePiece with byte fallback) never make a
    token out of less than one byte, so a prompt under the limit by this bound
    fits without asking the backend to count.
    """
    if "messages" in payload:
        # A message's participant name (the OpenAI door passes it on) is read by the model too.
        return _TOKENS_PER_PROMPT + sum(
            _TOKENS_PER_MESSAGE + len(m["content"].encode()) + len(m.get("name", "").encode())
            for m in payload["messages"]
        )
    return _TOKENS_PER_PROMPT + len(str(payload.get("prompt", "")).encode())


def context_problem(prompt_tokens: int, max_tokens: int | None, limit: int) -> str | None:
    """Why the request does not fit the context window, or None."""
    wanted = prompt_tokens + (max_tokens or 0)
    if prompt_tokens >= limit or wanted > limit:
        extra = f" plus max_tokens {max_tokens}" if max_tokens else ""
        return f"the prompt has {prompt_tokens} tokens{extra}; the model's context holds {limit}"
    return None


def is_deterministic(payload: Mapping[str, Any]) -> bool:
    """Greedy decoding or a fixed seed: the same request gives the same answer, so it may be cached."""
    return payload.get("temperature") == 0 or payload.get("seed") is not None


def cache_key(*, prompt: str, version: int, config: str, config_version: int, payload: Mapping[str, Any]) -> str:
    """Exact-match key: the versions and the full request (rendered prompt, params), not the end user."""
    request = {k: v for k, v in payload.items() if k not in ("user", "stream", "stream_options")}
    return content_sha256({"prompt": [prompt, version], "config": [config, config_version], "request": request})
