"""Typed errors raised by the client, built from the service's problem+json answers."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """An error answer from the service (or no answer at all, for ``ServiceUnavailable``).

    ``status`` is the HTTP status (None when nothing answered), ``type`` the problem type
    (``prompt_not_found``, ``variables_invalid``...), ``errors`` the per-field problems and
    ``retry_after`` the seconds the service asked to wait, when it said.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.errors = errors or []
        self.body = body or {}
        self.retry_after = retry_after


class BadRequest(RegistryError):
    """The service could not read the request (400)."""


class Unauthorized(RegistryError):
    """No API key, or a key that is unknown, revoked or expired (401)."""


class Forbidden(RegistryError):
    """The API key lacks the scope this call needs (403)."""


class NotFound(RegistryError):
    """The resource does not exist (404)."""


class PromptNotFound(NotFound):
    """No prompt with this name, version or label (404)."""


class Conflict(RegistryError):
    """The call conflicts with the current state, e.g. a stale ``expected_current`` (409)."""


class ValidationFailed(RegistryError):
    """The request content is invalid (422); ``errors`` lists each field."""


class VariablesInvalid(ValidationFailed):
    """The variables do not match the prompt's input schema (422, or found by a local render)."""


class RenderFailed(ValidationFailed):
    """The template failed or hit a sandbox limit; ``reason`` says which (422, or a local render)."""

    @property
    def reason(self) -> str:
        return str(self.body.get("reason") or "template_error")


class RateLimited(RegistryError):
    """Too many requests or over budget (429); ``retry_after`` says when to try again."""


class ServiceUnavailable(RegistryError):
    """The service, or something it needs, cannot be reached right now."""


_BY_TYPE: dict[str, type[RegistryError]] = {
    "prompt_not_found": PromptNotFound,
    "prompt_version_not_found": PromptNotFound,
    "label_not_set": PromptNotFound,
    "variables_invalid": VariablesInvalid,
    "render_failed": RenderFailed,
}
_BY_STATUS: dict[int, type[RegistryError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: ValidationFailed,
    429: RateLimited,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}


def error_from_problem(status: int, body: dict[str, Any], *, retry_after: float | None = None) -> RegistryError:
    """The typed error for a problem+json body (its ``type`` first, then the status)."""
    problem_type = str(body.get("type", "")).rsplit("/", 1)[-1] or None
    cls = _BY_TYPE.get(problem_type or "") or _BY_STATUS.get(status) or RegistryError
    detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    return cls(detail, status=status, type=problem_type, errors=body.get("errors"), body=body, retry_after=retry_after)


def is_outage(error: RegistryError) -> bool:
    """Whether ``error`` means the service could not answer (so a cached copy or a fallback should serve)."""
    return isinstance(error, ServiceUnavailable) or (error.status is not None and error.status >= 500)
