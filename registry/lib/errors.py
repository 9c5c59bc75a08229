"""Domain errors and their RFC 9457 problem+json rendering.

Every error a client can see is a ``RegistryError`` subclass carrying its HTTP
status and a stable ``type`` slug. Domain errors live beside their services;
this module holds the base classes and the one handler that renders them.
Errors of lower layers (Litestar validation, SQLAlchemy connectivity) are
translated here, where they enter the HTTP boundary.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from asyncpg.exceptions import DataError as AsyncpgDataError
from litestar import Request, Response
from litestar.exceptions import (
    ClientException,
    HTTPException,
    InternalServerException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.exceptions.base_exceptions import SerializationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import ParameterKwarg
from sqlalchemy import exc as sa_exc

from registry.lib.routing import encoded_name_path

logger = structlog.get_logger("registry.errors")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPES: dict[str, type[RegistryError]] = {}


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class RegistryError(Exception):
    """An internal error. Subclasses set ``status_code``, ``type`` and ``title``."""

    status_code: int = 500
    type: str = "internal_error"
    title: str = "Internal server error"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        PROBLEM_TYPES.setdefault(cls.type, cls)

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.extra = extra


PROBLEM_TYPES[RegistryError.type] = RegistryError


class BadRequestError(RegistryError):
    """The request could not be read: malformed JSON or an unusable parameter."""

    status_code = 400
    type = "bad_request"
    title = "Bad request"


class MalformedJsonError(BadRequestError):
    """The request body is not valid JSON."""

    type = "malformed_json"
    title = "Malformed JSON"


class UnauthorizedError(RegistryError):
    """No API key, or a key that is unknown, revoked or expired."""

    status_code = 401
    type = "unauthorized"
    title = "Unauthorized"


class ForbiddenError(RegistryError):
    """The API key is valid but lacks the scope the route requires."""

    status_code = 403
    type = "forbidden"
    title = "Forbidden"


class NotFoundError(RegistryError):
    """The resource does not exist."""

    status_code = 404
    type = "not_found"
    title = "Not found"


class MethodNotAllowedError(RegistryError):
    """The route exists but not for this HTTP method."""

    status_code = 405
    type = "method_not_allowed"
    title = "Method not allowed"


class RequestTimeoutError(RegistryError):
    """The request body did not arrive in time; the connection is closed after this answer."""

    status_code = 408
    type = "request_timeout"
    title = "Request timeout"


class ConflictError(RegistryError):
    """The request conflicts with the current state of the resource."""

    status_code = 409
    type = "conflict"
    title = "Conflict"


class PayloadTooLargeError(RegistryError):
    """The request body is over the configured limit."""

    status_code = 413
    type = "payload_too_large"
    title = "Payload too large"


class UnsupportedMediaTypeError(RegistryError):
    """Request bodies must be JSON (``Content-Type: application/json``)."""

    status_code = 415
    type = "unsupported_media_type"
    title = "Unsupported media type"


class UriTooLongError(RegistryError):
    """The request target (path and query) is over the configured limit."""

    status_code = 414
    type = "uri_too_long"
    title = "URI too long"


class HeadersTooLargeError(RegistryError):
    """The request has more header lines, or more header bytes, than the configured limits."""

    status_code = 431
    type = "headers_too_large"
    title = "Request header fields too large"


class InvalidInputError(RegistryError):
    """The request is well-formed but its content is invalid; ``errors`` lists each field."""

    status_code = 422
    type = "validation_error"
    title = "Validation failed"


class RateLimitedError(RegistryError):
    """Too many requests or over budget; retry after ``Retry-After`` seconds."""

    status_code = 429
    type = "rate_limited"
    title = "Too many requests"


class ClientDisconnectedError(RegistryError):
    """The client closed the connection before the answer was ready; nobody receives this answer."""

    status_code = 499  # as nginx logs a client that closed the request
    type = "client_closed_request"
    title = "Client closed request"


class ServiceUnavailableError(RegistryError):
    """A dependency the request needs is unreachable; retry shortly."""

    status_code = 503
    type = "service_unavailable"
    title = "Service unavailable"


class DatabaseUnavailableError(ServiceUnavailableError):
    """The database cannot be reached or has no free connection."""

    type = "database_unavailable"
    title = "Database unavailable"


# --------------------------------------------------------------------------- rendering


def problem_body(error: RegistryError, *, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"/problems/{error.type}",
        "title": error.title,
        "status": error.status_code,
        "detail": error.detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id:
        body["request_id"] = request_id
    if error.errors:
        body["errors"] = [{"field": e.field, "message": e.message} for e in error.errors]
    body.update(error.extra)
    return body


# The document a path answers an error with instead of problem+json: (error, instance, request id) -> document.
ErrorDocument = Callable[[RegistryError, str, str | None], Any]


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """Paths whose errors are answered in a document of their own (the OpenAI door's error object).

    The app factory passes it in, to the exception handler and to what refuses requests before routing,
    so a refusal there is shaped as the route's own errors are, without this layer knowing the domain.
    """

    paths: tuple[str, ...]  # each path, and every path below it
    document: ErrorDocument
    media_type: str = "application/json"

    def covers(self, path: str) -> bool:
        return any(path == own or path.startswith(f"{own}/") for own in self.paths)


def error_content(
    error: RegistryError, instance: str, request_id: str | None, shape: ErrorShape | None = None
) -> tuple[Any, str]:
    """The document and media type ``error`` is answered with on ``instance``: problem+json unless ``shape``'s."""
    if shape is not None and shape.covers(instance):
        return shape.document(error, instance, request_id), shape.media_type
    return problem_body(error, instance=instance, request_id=request_id), PROBLEM_MEDIA_TYPE


def problem_response(
    error: RegistryError, request: Request[Any, Any, Any] | None, shape: ErrorShape | None = None
) -> Response[Any]:
    if request is None:
        content, media_type = problem_body(error), PROBLEM_MEDIA_TYPE
    else:
        request_id = request.scope.get("state", {}).get("request_id")
        content, media_type = error_content(error, request.url.path, request_id, shape)
    return Response(
        content=content,
        status_code=error.status_code,
        media_type=media_type,
        headers=error.headers,
    )


_MSGSPEC_PATH = re.compile(r" - at `\$(?:\.data)?\.?([^`]*)`$")
# An object's field that is missing or not one of its own: msgspec names it in the message, not in the path.
_MSGSPEC_NAMED_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`")


def field_error(exc: msgspec.ValidationError, *, whole: str) -> FieldError:
    """msgspec's refusal as the field it names (its JSON path, and a missing or unknown field's name), or ``whole``
    for the document itself."""
    message = str(exc)
    match = _MSGSPEC_PATH.search(message)
    text = message[: match.start()] if match else message
    field = match.group(1) if match else ""
    if named := _MSGSPEC_NAMED_FIELD.match(text):
        field = f"{field}.{named[1]}" if field else named[1]
    return FieldError(field or whole, text)


# Litestar's refusal of a request without a parameter its handler requires (its detail; no field list).
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']*)'")


def _refused_part(exc: ValidationException) -> str:
    """Which part of the request Litestar refused: the body, or the kind of parameter (query, header, path...)."""
    missing = _MISSING_PARAMETER.match(str(exc.detail))
    if missing:
        return missing[1]
    refused_query = any(item.get("source") == "query" for item in (exc.extra or []) if isinstance(item, dict))
    return "query" if refused_query else "body"


def _validation_errors(exc: ValidationException) -> list[FieldError]:
    """Field errors from Litestar's validation exception, with JSON paths from msgspec."""
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        return [field_error(cause, whole="body")]
    missing = _MISSING_PARAMETER.match(str(exc.detail))
    if missing:  # named by the parameter, not the request, and without the path Litestar's detail repeats
        return [FieldError(missing[2], f"required: the {missing[1]} parameter is missing")]
    extra = exc.extra if isinstance(exc.extra, list) else []
    return [
        FieldError(str(item.get("key") or item.get("source") or "request"), str(item.get("message", "")))
        for item in extra
        if isinstance(item, dict)
    ] or [FieldError("request", exc.detail)]


# Byte order marks a body may start with, which JSON does not allow (RFC 8259 8.1) and msgspec refuses at byte 0.
_BYTE_ORDER_MARKS = (
    (b"\xef\xbb\xbf", "a byte order mark (BOM); send UTF-8 JSON without one"),
    (b"\xff\xfe", "a UTF-16 byte order mark; send UTF-8 JSON"),
    (b"\xfe\xff", "a UTF-16 byte order mark; send UTF-8 JSON"),
)
# A backslash escape in a JSON string: \uXXXX (its code unit captured) or a backslash and any other byte.
_JSON_ESCAPE = re.compile(rb"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)
# What may still follow a high surrogate's escape in a body cut short before its low surrogate's escape.
_LOW_SURROGATE_ESCAPE_START = re.compile(rb"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]{0,2})?)?)?)?")


def _lone_surrogate(body: bytes) -> re.Match[bytes] | None:
    """The first ``\\uXXXX`` escape of ``body`` that is half a UTF-16 surrogate pair without its other half.

    A high surrogate at the very end of a body cut short is not one: its low surrogate may be what is missing.
    """
    high: re.Match[bytes] | None = None
    for escape in _JSON_ESCAPE.finditer(body):
        unit = int(escape[1], 16) if escape[1] else None
        if high is not None:
            if escape.start() == high.end() and unit is not None and 0xDC00 <= unit <= 0xDFFF:
                high = None
                continue
            break
        if unit is not None and 0xD800 <= unit <= 0xDBFF:
            high = escape
        elif unit is not None and 0xDC00 <= unit <= 0xDFFF:
            return escape
    if high is not None and _LOW_SURROGATE_ESCAPE_START.fullmatch(body, high.end()):
        return None  # cut short where its low surrogate would be
    return high


def malformed_json_detail(body: bytes, exc: msgspec.DecodeError) -> str:
    """Why ``body`` is not JSON, for msgspec's refusal ``exc`` of it.

    msgspec words two careless bodies misleadingly: one that starts with a byte order mark is an
    "invalid character (byte 0)", and a lone surrogate escape ("\\ud800") at the end of a string is
    "truncated" (elsewhere an "invalid utf-16 surrogate pair", without saying which escape). Those are
    named here; any other refusal keeps msgspec's words.
    """
    message = str(exc)
    for mark, named in _BYTE_ORDER_MARKS:
        if body.startswith(mark):
            return f"the body is not valid JSON: it starts with {named}"
    if ("truncated" in message or "surrogate" in message) and (lone := _lone_surrogate(body)):
        return (
            f"the body is not valid JSON: invalid \\u escape at byte {lone.start()}: {lone[0].decode('ascii')} is a "
            "lone UTF-16 surrogate; a high surrogate (\\ud800-\\udbff) must be followed at once by a low one "
            "(\\udc00-\\udfff)"
        )
    return f"the body is not valid JSON: {message.removeprefix('JSON is malformed: ')}"


# What Litestar's body read raises (a 500) when the client goes away before its body is whole.
_LITESTAR_BODY_DISCONNECT = "client disconnected prematurely"


def translate_exception(exc: Exception) -> RegistryError:
    """Map any exception reaching the HTTP boundary onto a ``RegistryError``."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc)
        return InvalidInputError(f"the request {_refused_part(exc)} is invalid", errors=errors)
    if isinstance(exc, NotAuthorizedException):
        return UnauthorizedError(exc.detail or "authentication required", headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, PermissionDeniedException):
        return ForbiddenError(exc.detail)
    if isinstance(exc, NotFoundException):
        return NotFoundError("no route matches this path" if exc.detail == "Not Found" else exc.detail)
    if isinstance(exc, MethodNotAllowedException):
        return MethodNotAllowedError(exc.detail, headers=exc.headers or {})
    if isinstance(exc, InternalServerException) and exc.detail == _LITESTAR_BODY_DISCONNECT:
        return ClientDisconnectedError("the client closed the connection while sending the request body")
    if isinstance(exc, RequestEntityTooLarge):
        return PayloadTooLargeError("the request body is over the size limit")
    if isinstance(exc, ClientException) and isinstance(exc.__cause__, SerializationException):
        reason = str(exc.detail).replace("JSON is malformed: ", "")
        return MalformedJsonError(f"the body is not valid JSON: {reason}")
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        error = BadRequestError(exc.detail, headers=exc.headers or {})
        error.status_code = exc.status_code
        return error
    if isinstance(
        exc, sa_exc.TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError | ConnectionError | OSError
    ):
        return DatabaseUnavailableError("the database is unreachable; retry shortly", headers={"Retry-After": "1"})
    if isinstance(exc, sa_exc.DBAPIError) and _is_unstorable_value(exc):
        return InvalidInputError("a value in the request is out of range or cannot be stored")
    if isinstance(exc, sa_exc.DBAPIError) and (exc.connection_invalidated or _is_unavailable_state(exc)):
        return DatabaseUnavailableError("the database connection was lost; retry", headers={"Retry-After": "1"})
    if isinstance(exc, sa_exc.IntegrityError):
        return ConflictError("the change conflicts with a concurrent change; retry")
    return RegistryError("an unexpected error occurred; the request id identifies it in the logs")


def _is_unstorable_value(exc: sa_exc.DBAPIError) -> bool:
    """A parameter the database cannot take: an integer past its column's range, a NUL in text.

    asyncpg raises its ``DataError`` while encoding such a parameter, before the query is sent;
    SQLAlchemy passes it on as a generic ``DBAPIError``, so the cause chain is checked.
    """
    if isinstance(exc, sa_exc.DataError):
        return True
    cause: BaseException | None = exc.orig
    while cause is not None:
        if isinstance(cause, AsyncpgDataError):
            return True
        cause = cause.__cause__
    return False


# SQLSTATEs of a server going away or not yet there: connection exceptions (08) and shutdown or startup
# (57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now), not query cancellation (57014).
_UNAVAILABLE_SQLSTATES = ("08", "57P")


def _is_unavailable_state(exc: sa_exc.DBAPIError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


ExceptionHandler = Callable[[Request[Any, Any, Any], Exception], Response[Any]]


def exception_handler(shape: ErrorShape | None = None) -> ExceptionHandler:
    """The single exception handler of an app: everything becomes problem+json, or ``shape``'s document on its paths."""

    def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if isinstance(exc, NotFoundException) and exc.detail == "Not Found":
            return problem_response(_route_not_found(request), request, shape)
        error = translate_and_log(exc, request.url.path)
        if isinstance(exc, ValidationException) and _refused_part(exc) == "query":
            error = _named_as_sent(request, error)
        return problem_response(error, request, shape)

    return exception_to_response


exception_to_response = exception_handler()


def _query_names(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The handler's arguments read from a query parameter of another name (``export_format`` from ``format``)."""
    handler = request.scope.get("route_handler")
    parameters = getattr(getattr(handler, "parsed_fn_signature", None), "parameters", {})
    names = {}
    for argument, parameter in parameters.items():
        definition = parameter.kwarg_definition
        sent_as = getattr(definition, "name", None) or getattr(definition, "query", None)
        if isinstance(definition, ParameterKwarg) and isinstance(sent_as, str) and sent_as != argument:
            names[argument] = sent_as
    return names


def _named_as_sent(request: Request[Any, Any, Any], error: RegistryError) -> RegistryError:
    """Litestar names a refused query parameter by the handler's argument; the problem names it as the caller sent
    it (``format``, never ``export_format``)."""
    names = _query_names(request)
    error.errors = [FieldError(names.get(e.field, e.field), e.message) for e in error.errors]
    return error


def _route_not_found(request: Request[Any, Any, Any]) -> NotFoundError:
    """No route serves the path; if the name's slashes were meant as ``%2F``, say so."""
    meant = encoded_name_path(request.app, request.scope["path"], request.method)
    if meant is None:
        return NotFoundError("no route matches this path")
    return NotFoundError(
        f"no route matches this path; a name containing '/' is sent with each '/' as %2F, so it stays one "
        f"path segment: {meant}"
    )


def translate_and_log(exc: Exception, path: str) -> RegistryError:
    """``translate_exception``, logging what the server is to blame for (5xx) with its traceback if unexpected."""
    error = translate_exception(exc)
    if error.status_code >= 500:
        logger.error(
            "request failed",
            error_type=error.type,
            path=path,
            exc_info=exc if not isinstance(exc, RegistryError) else None,
        )
    return error
