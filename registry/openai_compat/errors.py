"""Errors of the OpenAI-compatible door, each with a stable problem ``type``."""

from __future__ import annotations

from registry.lib.errors import InvalidInputError, NotFoundError


class ModelNotFoundError(NotFoundError):
    """``model`` is not ``prompt:NAME`` or ``config:NAME``, optionally with ``@LABEL`` or ``@N``."""

    type = "model_not_found"
    title = "Model not found"


class PromptKindMismatchError(InvalidInputError):
    """A chat prompt runs on ``/v1/chat/completions``, a text prompt on ``/v1/completions``."""

    type = "prompt_kind_mismatch"
    title = "Prompt kind does not fit the endpoint"
