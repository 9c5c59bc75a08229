"""Errors of the OpenAI-compatible door, each with a stable problem ``type``."""

from __future__ import annotations

from registry.lib.errors import InvalidInputError, NotFoundError

ECHOED_CHARS = 200  # of a model name (or the path naming it) that an error repeats


def echoed(text: str) -> str:
    """``text`` as an error repeats it: its first ``ECHOED_CHARS`` characters and an ellipsis when it is longer.

    A model's name is unbounded in ``GET /v1/models/{model}``, and the answer says it in its message, its
    problem's detail and its instance: a 5,000-character name made a 15 KB answer, 25 KB with the prompt's own
    "not found" detail quoting the name again.
    """
    return text if len(text) <= ECHOED_CHARS else text[:ECHOED_CHARS] + "\u2026"


class ModelNotFoundError(NotFoundError):
    """``model`` is not ``prompt:NAME`` or ``config:NAME``, optionally with ``@LABEL`` or ``@N``."""

    type = "model_not_found"
    title = "Model not found"


class PromptKindMismatchError(InvalidInputError):
    """A chat prompt runs on ``/v1/chat/completions``, a text prompt on ``/v1/completions``."""

    type = "prompt_kind_mismatch"
    title = "Prompt kind does not fit the endpoint"
