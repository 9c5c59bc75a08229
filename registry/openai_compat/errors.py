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


# Problems saying that the model a request names has no version to run. OpenAI's API answers an unknown model with
# the code ``model_not_found``, as ``GET /v1/models/{model}`` answers these here, so a completion refused by one of
# them carries that code as well: a caller catching it sees the same for a model whichever endpoint it called. The
# error's ``type`` and its problem keep the registry's cause (``prompt_not_found``...).
MODEL_NOT_FOUND_CAUSES = frozenset(
    {"prompt_not_found", "prompt_version_not_found", "config_not_found", "config_version_not_found", "label_not_set"}
)


def openai_code(problem_type: str) -> str:
    """The ``code`` of OpenAI's error object for a problem of ``problem_type``: the type itself, or
    ``model_not_found`` for one of ``MODEL_NOT_FOUND_CAUSES``."""
    return ModelNotFoundError.type if problem_type in MODEL_NOT_FOUND_CAUSES else problem_type


class ModelNotFoundError(NotFoundError):
    """``model`` is not ``prompt:NAME`` or ``config:NAME``, optionally with ``@LABEL`` or ``@N``."""

    type = "model_not_found"
    title = "Model not found"


class PromptKindMismatchError(InvalidInputError):
    """A chat prompt runs on ``/v1/chat/completions``, a text prompt on ``/v1/completions``."""

    type = "prompt_kind_mismatch"
    title = "Prompt kind does not fit the endpoint"
